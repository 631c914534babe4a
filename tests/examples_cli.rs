//! The example programs' command lines, which ARCHITECTURE.md makes part of the
//! contract: `loadgen` prints one JSON line with every field, bad arguments
//! exit 2 with one stderr line, `watch` prints `+ ADDR` lines.
//!
//! Runs the example binaries that `cargo test` builds next to the test
//! binaries (`target/<profile>/examples/`). With `cargo test --test
//! examples_cli` alone cargo does not build them: run `cargo build --examples`
//! first.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use headless_lb::testing::{DnsServer, Pod};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod examples_support;
use examples_support::{Output, example, finish, json_line, spawn};

const NAME: &str = "web.default.svc.cluster.local";

/// Taken by every loadgen run, so that concurrent tests' load does not skew
/// each other's latencies (and so the balancer's picks) on a small machine.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A DNS server naming `n` pods on one port, from 127.0.0.`first` on.
async fn cluster(first: u8, n: u8) -> (DnsServer, Vec<Pod>, u16) {
    let ips: Vec<IpAddr> = (first..first + n).map(|i| [127, 0, 0, i].into()).collect();
    let pods = Pod::start_all(&ips).await.expect("pods start");
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await.expect("DNS server starts");
    dns.set_ips(NAME, &ips, 5);
    (dns, pods, port)
}

/// Runs an example to completion (the test's runtime keeps serving DNS and pods meanwhile).
async fn run(name: &str, args: &[&str]) -> Output {
    finish(name, spawn(name, args)).await
}

/// Runs loadgen against the cluster and returns its JSON report.
async fn loadgen(dns: &DnsServer, port: u16, extra: &[&str]) -> serde_json::Value {
    let target = format!("{NAME}:{port}");
    let ns = dns.addr().to_string();
    let mut args = vec![target.as_str(), "--nameserver", ns.as_str()];
    args.extend_from_slice(extra);
    let out = {
        let _load = LOAD.lock().await;
        run("loadgen", &args).await
    };
    let report = json_line("loadgen", &out);
    for field in ["requests", "errors"] {
        assert!(report[field].is_u64(), "{field} in {report}");
    }
    for field in [
        "duration_s",
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ] {
        assert!(report[field].is_number(), "{field} in {report}");
    }
    assert!(
        report["per_endpoint"].is_object(),
        "per_endpoint in {report}"
    );
    let keys: Vec<&str> = report.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(keys.len(), 10, "no extra fields: {report}");
    report
}

fn per_endpoint(report: &serde_json::Value) -> Vec<(SocketAddr, u64)> {
    report["per_endpoint"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().expect("keys are addresses"), v.as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_balanced_modes_reach_every_pod() {
    let (dns, pods, port) = cluster(41, 3).await;
    for mode in ["p2c", "round-robin", "random"] {
        let report = loadgen(
            &dns,
            port,
            &["--mode", mode, "--requests", "300", "--concurrency", "4"],
        )
        .await;
        assert_eq!(report["requests"], 300, "{mode}: {report}");
        assert_eq!(report["errors"], 0, "{mode}: {report}");
        let seen = per_endpoint(&report);
        let mut addrs: Vec<SocketAddr> = seen.iter().map(|(a, _)| *a).collect();
        addrs.sort();
        let pod_addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
        assert_eq!(addrs, pod_addrs, "{mode}: every pod answered: {report}");
        assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 300, "{report}");
        let p50 = report["p50_ms"].as_f64().unwrap();
        let max = report["max_ms"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= max, "{mode}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_direct_mode_and_duration_bound() {
    let (dns, pods, port) = cluster(45, 2).await;
    let report = loadgen(&dns, port, &["--mode", "direct", "--requests", "50"]).await;
    assert_eq!(report["requests"], 50, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let seen = per_endpoint(&report);
    assert_eq!(seen.len(), 1, "direct sends to one pod: {report}");
    assert!(pods.iter().any(|p| p.addr() == seen[0].0), "{report}");

    let report = loadgen(
        &dns,
        port,
        &["--duration", "1", "--concurrency", "2", "--http2"],
    )
    .await;
    let secs = report["duration_s"].as_f64().unwrap();
    assert!((1.0..5.0).contains(&secs), "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(per_endpoint(&report).len(), 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_counts_non_2xx_and_timeouts_as_errors() {
    let (dns, pods, port) = cluster(47, 2).await;
    pods[0].set_status(http::StatusCode::SERVICE_UNAVAILABLE);
    pods[1].set_hang(true);
    let report = loadgen(
        &dns,
        port,
        &[
            "--mode",
            "round-robin",
            "--requests",
            "4",
            "--concurrency",
            "2",
            "--timeout-ms",
            "200",
        ],
    )
    .await;
    assert_eq!(report["requests"], 4, "{report}");
    assert_eq!(report["errors"], 4, "{report}");
    // Only the 503s are responses; the hung pod never answered.
    assert_eq!(per_endpoint(&report), vec![(pods[0].addr(), 2)], "{report}");
}

/// Exit status 2, exactly one line on stderr, nothing on stdout.
fn assert_usage_error(name: &str, args: &[&str], out: &Output) {
    assert_eq!(
        out.code,
        Some(2),
        "{name} {args:?}: stderr {:?}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "{name} {args:?}: one stderr line, got {:?}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{name} {args:?}: {:?}", out.stdout);
}

#[tokio::test]
async fn bad_arguments_exit_2_with_one_line() {
    let cases: &[(&str, &[&str])] = &[
        ("loadgen", &[]),
        ("loadgen", &["web:0"]),
        ("loadgen", &["web:80", "--mode", "bogus"]),
        ("loadgen", &["web:80", "--concurrency", "0"]),
        ("loadgen", &["web:80", "--duration", "1", "--requests", "5"]),
        ("loadgen", &["web:80", "--duration", "-3"]),
        ("loadgen", &["web:80", "--path", "no-slash"]),
        ("loadgen", &["web:80", "--timeout-ms", "x"]),
        ("loadgen", &["web:80", "--nameserver", "nope"]),
        #[cfg(not(feature = "tonic"))]
        ("loadgen", &["web:80", "--protocol", "grpc"]),
        ("loadgen", &["web:80", "--unknown"]),
        ("echo_server", &[]),
        ("echo_server", &["--listen", "nope"]),
        (
            "echo_server",
            &["--listen", "127.0.0.1:0", "--delay-ms", "x"],
        ),
        ("watch", &[]),
        ("watch", &["web:0"]),
        ("watch", &["web:80", "--nameserver", "nope"]),
        ("http_client", &[]),
        ("http_client", &["web:0"]),
    ];
    for (name, args) in cases {
        let out = run(name, args).await;
        assert_usage_error(name, args, &out);
    }
    #[cfg(not(feature = "tonic"))]
    {
        let out = run("loadgen", &["web:80", "--protocol", "grpc"]).await;
        assert!(out.stderr.contains("--features tonic"), "{:?}", out.stderr);
    }
}

#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_grpc_p2c_avoids_a_slow_pod() {
    use headless_lb::testing::GrpcPod;

    let ips: Vec<IpAddr> = (55..58u8).map(|i| [127, 0, 0, i].into()).collect();
    let pods = GrpcPod::start_all(&ips).await.expect("gRPC pods start");
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await.expect("DNS server starts");
    dns.set_ips(NAME, &ips, 5);
    let slow = pods[2].addr();
    pods[2].set_delay(Duration::from_millis(40));

    let report = loadgen(
        &dns,
        port,
        &[
            "--protocol",
            "grpc",
            "--requests",
            "600",
            "--concurrency",
            "16",
        ],
    )
    .await;
    eprintln!("{report}");
    assert_eq!(report["requests"], 600, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let seen = per_endpoint(&report);
    let mut addrs: Vec<SocketAddr> = seen.iter().map(|(a, _)| *a).collect();
    addrs.sort();
    let pod_addrs: Vec<SocketAddr> = pods.iter().map(GrpcPod::addr).collect();
    assert_eq!(addrs, pod_addrs, "every pod served: {report}");
    assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 600, "{report}");
    let to_slow = seen.iter().find(|(a, _)| *a == slow).unwrap().1;
    assert!(to_slow < 60, "the slow pod got {to_slow} of 600: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_a_line_per_endpoint() {
    let (dns, pods, port) = cluster(51, 2).await;
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr().ip()).collect();
    dns.set_ips(NAME, &ips, 1);
    let mut child = Command::new(example("watch"))
        .args([
            "--nameserver",
            &dns.addr().to_string(),
            &format!("{NAME}:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let read = async {
        while seen.len() < pods.len() {
            match lines.next_line().await.expect("watch's stdout") {
                Some(line) => seen.push(line),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("watch printed only {seen:?} within 10 s"));
    seen.sort();
    let want: Vec<String> = pods.iter().map(|p| format!("+ {}", p.addr())).collect();
    assert_eq!(seen, want);

    // A pod going away prints `- ADDR` (TTL 1 s: re-resolved within about 1.1 s).
    dns.set_ips(NAME, &[pods[0].addr().ip()], 1);
    let gone = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("watch prints the removal within 10 s")
        .expect("watch's stdout");
    assert_eq!(gone, Some(format!("- {}", pods[1].addr())));

    child.kill().await.expect("watch is killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_rate_appends_rate_and_overload_to_the_same_keys() {
    let (dns, _pods, port) = cluster(59, 2).await;
    let target = format!("{NAME}:{port}");
    let ns = dns.addr().to_string();
    let out = {
        let _load = LOAD.lock().await;
        run(
            "loadgen",
            &[
                &target,
                "--nameserver",
                &ns,
                "--rate",
                "100",
                "--requests",
                "20",
            ],
        )
        .await
    };
    let report = json_line("loadgen", &out);
    let keys = [
        "requests",
        "errors",
        "duration_s",
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "per_endpoint",
        "rate",
        "overload",
    ];
    assert_eq!(report.as_object().unwrap().len(), keys.len(), "{report}");
    // The parsed object sorts its keys: the order is checked on the line.
    let at: Vec<usize> = keys
        .iter()
        .map(|key| {
            out.stdout
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {}", out.stdout))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "the closed loop's keys in their order, then the open loop's: {}",
        out.stdout
    );
    assert_eq!(report["requests"], 20, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["overload"], 0, "{report}");
    assert_eq!(report["rate"].as_f64(), Some(100.0), "{report}");
    let answered: u64 = per_endpoint(&report).iter().map(|(_, n)| n).sum();
    assert_eq!(answered, 20, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_rate_counts_requests_beyond_the_bound_as_overload() {
    let (dns, pods, port) = cluster(61, 1).await;
    // 2 in flight at most, each 100 ms: at most about 20 a second are sent
    // of the 200 a second due.
    pods[0].set_delay(Duration::from_millis(100));
    let report = {
        let target = format!("{NAME}:{port}");
        let ns = dns.addr().to_string();
        let _load = LOAD.lock().await;
        let out = run(
            "loadgen",
            &[
                &target,
                "--nameserver",
                &ns,
                "--rate",
                "200",
                "--requests",
                "40",
                "--concurrency",
                "2",
            ],
        )
        .await;
        json_line("loadgen", &out)
    };
    eprintln!("{report}");
    let overload = report["overload"].as_u64().expect("overload");
    let errors = report["errors"].as_u64().expect("errors");
    // Every due request is accounted for, sent or not.
    assert_eq!(report["requests"], 40, "{report}");
    assert!(overload > 0, "{report}");
    // The sent ones all succeeded: the errors are the overloaded ones.
    assert_eq!(errors, overload, "{report}");
    let answered: u64 = per_endpoint(&report).iter().map(|(_, n)| n).sum();
    assert_eq!(answered + overload, 40, "{report}");
    // 40 due over 0.2 s; 2 at a time for 100 ms each: at most 2 per 100 ms
    // (and the 2 in flight at the end), so at least 34 found the bound full.
    assert!(overload >= 34, "{report}");
}

#[tokio::test]
async fn bad_rate_and_variance_flags_exit_2_with_one_line() {
    let cases: &[(&str, &[&str])] = &[
        ("loadgen", &["web:80", "--rate", "0"]),
        ("loadgen", &["web:80", "--rate", "-5"]),
        ("loadgen", &["web:80", "--rate", "x"]),
        ("loadgen", &["web:80", "--rate", "inf"]),
        (
            "echo_server",
            &["--listen", "127.0.0.1:0", "--pause-ms", "10"],
        ),
        (
            "echo_server",
            &["--listen", "127.0.0.1:0", "--pause-every-ms", "10"],
        ),
        (
            "echo_server",
            &[
                "--listen",
                "127.0.0.1:0",
                "--pause-every-ms",
                "0",
                "--pause-ms",
                "10",
            ],
        ),
        (
            "echo_server",
            &["--listen", "127.0.0.1:0", "--capacity", "0"],
        ),
        (
            "echo_server",
            &["--listen", "127.0.0.1:0", "--capacity", "x"],
        ),
    ];
    for (name, args) in cases {
        let out = run(name, args).await;
        assert_usage_error(name, args, &out);
    }
}
