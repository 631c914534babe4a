//! A real Prometheus scrapes `loadgen --metrics-listen` while loadgen drives
//! four `echo_server` pods named by Knot DNS, one of them 40 ms slower; the
//! test asks Prometheus' HTTP API (`/api/v1/query`) what a dashboard would.
//!
//! The test starts its own `prometheus` (its own config and data directory
//! in a temporary directory, `--web.listen-address` on a free loopback port,
//! a 1 s scrape interval) and kills it at the end, like its `knotd`.
//! `.ci/run` installs Debian's `prometheus` (and Knot); without them the test
//! fails when `CI=true`, and otherwise prints why and passes.

#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod examples_support;
use examples_support::{EchoServer, free_port_on, spawn};

mod knot_support;
use knot_support::{Knot, binaries};

const NAME: &str = "web.default.svc.cluster.local";
/// How long Prometheus may take to start answering.
const READY_DEADLINE: Duration = Duration::from_secs(20);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 215, last))
}

/// The `prometheus` binary, or `None` (after saying why) when a developer's
/// machine lacks it.
///
/// # Panics
/// When it is missing and `CI=true`: CI must run this test, not skip it.
fn prometheus_binary(test: &str) -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/prometheus");
    let found = if fixed.is_file() {
        Some(fixed)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("prometheus"))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        let msg =
            "prometheus not found; install it with `apt-get install prometheus` (.ci/run does)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {msg}");
        }
        eprintln!("SKIPPED {test}: {msg}");
    }
    found
}

/// A running Prometheus of the test's own; killed, and its directory
/// removed, on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` scraping `http://scrape/metrics` every second.
    async fn start(binary: &Path, scrape: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "headless-lb-prometheus-{}-{}",
            std::process::id(),
            scrape.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create the data directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: loadgen\n    static_configs:\n      - targets: ['{scrape}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Prometheus { child, dir, addr };
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = prometheus.child.try_wait().expect("try_wait prometheus") {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            if get(addr, "/-/ready")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return prometheus;
            }
            assert!(
                Instant::now() < until,
                "prometheus not ready after {READY_DEADLINE:?}:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (code, body) = get(self.addr, &path)
            .await
            .unwrap_or_else(|| panic!("no answer to {promql}"));
        assert_eq!(code, 200, "{promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        json["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (labels, value.unwrap_or(f64::NAN))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` over HTTP/1.0; the status and the body, or `None` if the
/// connection failed.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let code = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a dashboard shows, from a real Prometheus: the per-pod request rate
/// puts the 40 ms slower pod under 10 %, and a killed pod shows state backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_loadgen_slow_pod_share_and_killed_pod_backoff() {
    const TEST: &str = "prometheus_scrapes_loadgen_slow_pod_share_and_killed_pod_backoff";
    let Some(prometheus_bin) = prometheus_binary(TEST) else {
        return;
    };
    let Some(knot_bins) = binaries(TEST) else {
        return;
    };
    let started = Instant::now();
    let lasts = [1, 2, 3, 4];
    let ips: Vec<IpAddr> = lasts.map(ip).to_vec();
    let port = free_port_on(&ips);
    let addr = |last: u8| SocketAddr::new(ip(last), port);
    let (slow, killed) = (addr(4), addr(1));
    let mut pods = BTreeMap::new();
    for last in lasts {
        let delay: &[&str] = if addr(last) == slow {
            &["--delay-ms", "40"]
        } else {
            &[]
        };
        pods.insert(last, EchoServer::start(addr(last), delay).await);
    }
    let records: String = ips.iter().map(|ip| format!("{NAME}. 1 A {ip}\n")).collect();
    let knot = Knot::start(knot_bins, &records).await;

    let metrics_addr = SocketAddr::from((
        [127, 0, 0, 1],
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port(),
    ));
    let _loadgen = spawn(
        "loadgen",
        &[
            format!("{NAME}:{port}"),
            "--nameserver".into(),
            knot.addr.to_string(),
            "--duration".into(),
            "40".into(),
            "--concurrency".into(),
            "16".into(),
            "--metrics-listen".into(),
            metrics_addr.to_string(),
            "--quiet".into(),
        ],
    );
    let prometheus = Prometheus::start(&prometheus_bin, metrics_addr).await;

    // The share per pod over the last 5 s, as the README's query has it.
    let share = "sum by (endpoint) (rate(headless_lb_requests_total{outcome=\"ok\"}[5s])) \
                 / ignoring(endpoint) group_left \
                 sum(rate(headless_lb_requests_total{outcome=\"ok\"}[5s]))";
    let until = Instant::now() + Duration::from_secs(20);
    let mut first_full = None;
    let shares = loop {
        let result = prometheus.query(share).await;
        if result.len() == 4 && result.iter().all(|(_, v)| v.is_finite()) {
            // Once all four show, let a full window of steady state pass.
            let at = *first_full.get_or_insert_with(Instant::now);
            if at.elapsed() >= Duration::from_secs(6) {
                break result;
            }
        }
        assert!(
            Instant::now() < until,
            "no per-pod rate for four pods: {result:?}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("share per pod: {shares:?}");
    let share_of = |a: SocketAddr| {
        shares
            .iter()
            .find(|(l, _)| l.get("endpoint") == Some(&a.to_string()))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no share for {a}: {shares:?}"))
    };
    assert!(share_of(slow) < 0.10, "the slow pod's share: {shares:?}");
    for last in [1, 2, 3] {
        assert!(share_of(addr(last)) > 0.15, "{last}'s share: {shares:?}");
    }

    // A killed pod: refused connections put it in backoff.
    pods.remove(&1);
    let backoff = format!("headless_lb_endpoint_state{{endpoint=\"{killed}\",state=\"backoff\"}}");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let result = prometheus.query(&backoff).await;
        if result.first().is_some_and(|(_, v)| *v == 1.0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the killed pod never showed backoff: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = prometheus
        .query("sum(headless_lb_endpoint_state{state=\"ready\"})")
        .await;
    assert_eq!(ready.first().map(|(_, v)| *v), Some(3.0), "{ready:?}");
    eprintln!("whole test: {:?}", started.elapsed());
}
