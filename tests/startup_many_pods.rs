//! Start-up against 10 000 pods without subsetting, at the common open-file limit of 1 024.
//!
//! The parent starts 10 000 `testing::Pod`s on 127.0.{100..139}.x (one port) and runs this
//! same test binary again as a child under `ulimit -n 1024`, where an `http::Client` gets all
//! 10 000 addresses in its first answer (from a `Resolve` of the test's own: a DNS answer
//! holds at most about 4 000 A records). The child must answer its first request within 1 s
//! of that answer, serve every request after it, never hold more than the limit allows, and
//! warn once that it uses a random subset of `max_connected` (512) pods.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_lb::balance::EndpointState;
use headless_lb::http::Client;
use headless_lb::resolve::{Resolution, Resolve, ResolveFuture};
use headless_lb::target::Target;
use headless_lb::testing::Pod;
use http_body_util::BodyExt;

const PODS: usize = 10_000;
const CHILD_ENV: &str = "HLB_STARTUP_CHILD_PORT";
const REQUESTS: usize = 2_000;
/// Set in the run of the parent test under a raised open-file limit.
const RAISED_ENV: &str = "HLB_STARTUP_RAISED";

fn ips() -> Vec<IpAddr> {
    (0..PODS)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                100 + (i / 250) as u8,
                (i % 250) as u8 + 1,
            ))
        })
        .collect()
}

/// Answers every lookup with the same 10 000 addresses and records when it first did.
struct Fixed {
    endpoints: BTreeSet<SocketAddr>,
    first_answer: std::sync::OnceLock<Instant>,
}

impl Resolve for Fixed {
    fn resolve(&self, _: &Target) -> ResolveFuture {
        self.first_answer.get_or_init(Instant::now);
        let endpoints = self.endpoints.clone();
        Box::pin(async move {
            Ok(Resolution {
                endpoints,
                ttl: Duration::from_secs(30),
            })
        })
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft open-file limit of this process.
fn soft_nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The child's side: runs only when the parent started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_client_under_1024_open_files() {
    let Some(port) = std::env::var(CHILD_ENV).ok() else {
        return; // Run as part of the parent test only.
    };
    let port: u16 = port.parse().unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    assert_eq!(soft_nofile(), Some(1024), "the parent sets ulimit -n 1024");
    let resolver = Arc::new(Fixed {
        endpoints: ips()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        first_answer: std::sync::OnceLock::new(),
    });
    let client: Client = Client::builder()
        .resolver(resolver.clone())
        .build(&format!("many.default.svc.cluster.local:{port}"))
        .unwrap();

    let response = client.get("/").await.expect("the first request");
    response.into_body().collect().await.unwrap();
    let first = resolver.first_answer.get().unwrap().elapsed();

    let mut max_fds = open_fds();
    let mut failures = 0usize;
    let mut requests = 0usize;
    for _ in 0..REQUESTS / 16 {
        let batch: Vec<_> = (0..16)
            .map(|_| {
                let client = client.clone();
                async move {
                    let response = client.get("/").await?;
                    response.into_body().collect().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                }
            })
            .collect();
        for result in futures::future::join_all(batch).await {
            requests += 1;
            if let Err(e) = result {
                failures += 1;
                eprintln!("request failed: {e:?}");
            }
        }
        max_fds = max_fds.max(open_fds());
    }
    let stats = client.stats();
    let used = stats
        .endpoints
        .iter()
        .filter(|e| e.state != EndpointState::Draining)
        .count();
    let ready = stats
        .endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Ready)
        .count();
    println!(
        "{}",
        serde_json::json!({
            "first_response_ms": first.as_secs_f64() * 1e3,
            "requests": requests,
            "failures": failures,
            "listed": stats.discovery.endpoints,
            "used": used,
            "ready": ready,
            "max_open_fds": max_fds,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_start_within_a_second_at_1024_open_files() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    // The pods need about 10 000 descriptors of this process's own: below
    // that, run this test again in a process whose soft limit is raised
    // (allowed up to the hard limit without privileges).
    let soft = soft_nofile().unwrap_or(0);
    if soft < 12_000 {
        assert!(
            std::env::var_os(RAISED_ENV).is_none(),
            "`ulimit -n 16384` did not take ({soft}): this test needs 12 000 open files"
        );
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"ulimit -n 16384 && exec "$0" --exact ten_thousand_pods_start_within_a_second_at_1024_open_files --nocapture"#)
            .arg(std::env::current_exe().unwrap())
            .env(RAISED_ENV, "1")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the run with a raised open-file limit failed"
        );
        return;
    }
    let pods = Pod::start_all(&ips()).await.unwrap();
    let port = pods[0].addr().port();

    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -n 1024 && exec "$0" --exact child_client_under_1024_open_files --nocapture --test-threads 1"#)
        .arg(&exe)
        .env(CHILD_ENV, port.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the child finishes within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    // The harness prints "test NAME ... " before the test's own line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("{\"").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    eprintln!("child: {report}");

    assert!(
        report["first_response_ms"].as_f64().unwrap() < 1000.0,
        "{report}"
    );
    assert_eq!(report["failures"], 0, "{report}\n{stderr}");
    assert_eq!(report["requests"], REQUESTS, "{report}");
    assert_eq!(report["listed"], PODS, "{report}");
    // Half of 1 024.
    assert_eq!(report["used"], 512, "{report}");
    assert!(report["max_open_fds"].as_u64().unwrap() < 1024, "{report}");
    assert!(
        stderr
            .matches("more pods than this client may connect to")
            .count()
            == 1,
        "one warning: {stderr}"
    );
    // Counted at the pods: no more pods were connected to than the child used.
    let connected = pods.iter().filter(|p| p.connections() > 0).count();
    assert!(connected <= 512, "{connected} pods were connected to");
}
