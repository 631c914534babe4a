//! A black-holed pod (packets to and from its IP dropped, no RST, as when a
//! deleted pod's IP stops routing) under load, with the clients' defaults,
//! over HTTP/1.1, HTTP/2 and gRPC: every request in flight on it ends within
//! [`BOUND`], no request to another pod fails, the pod gets no new request
//! after [`QUIET_AFTER`], and its reconnects hold no request.
//!
//! The drop is an nftables rule, so each scenario runs in a network
//! namespace of its own: the outer test re-executes this binary under
//! `unshare -n` with [`INNER`] set, and the inner run brings `lo` up, starts
//! pods on 127.0.0.x and the DNS server, and adds the rule. Nothing outside
//! the namespace is touched, and the rule goes with it. Needs root (or
//! `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `unshare`, `ip` and `nft`: without
//! them the outer test skips with a message, unless `CI=true`, where it fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headless_lb::Stats;
use headless_lb::balance::{EndpointState, EndpointStats};
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Set in the environment of the run inside the namespace.
const INNER: &str = "HEADLESS_LB_BLACK_HOLE_NETNS";
const SERVICE: &str = "web.default.svc.cluster.local";
/// The bound the README documents: a request in flight on a black-holed pod
/// fails within this of the black hole (or of its start, if later). The
/// defaults give about 10-11 s (`tcp_user_timeout` 10 s, keepalive probes
/// from 5 s on, one a second).
const BOUND: Duration = Duration::from_secs(15);
/// After this, the black-holed pod must get no new request.
const QUIET_AFTER: Duration = Duration::from_secs(1);
/// The default `connect_timeout`: no request may wait this long once the
/// pod is out of picks (its reconnects run in the background).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the whole inner run may take before the outer test kills it.
const RUN_LIMIT: Duration = Duration::from_secs(50);
/// Load: this many callers in a loop; each pod answers after `POD_DELAY`, so
/// that a few requests are always in flight on every pod. The delay is
/// longer than the pod's delayed ACK (40 ms and up), so that the requests
/// in flight at the drop were acknowledged and wait only to read: the case
/// `TCP_USER_TIMEOUT` alone misses and keepalive probes catch. (Requests
/// sent after the drop, before the balancer stops picking the pod, are the
/// other case: unacknowledged data.)
const CONCURRENCY: usize = 8;
const POD_DELAY: Duration = Duration::from_millis(200);
/// The pods: 127.0.0.2 ..= 127.0.0.5; the victim is the first.
const PODS: [u8; 4] = [2, 3, 4, 5];

// ===== the outer tests: one namespace per protocol =====

#[test]
fn http1_requests_on_a_black_holed_pod_end_within_the_bound() {
    in_namespace("netns_http1");
}

#[test]
fn http2_requests_on_a_black_holed_pod_end_within_the_bound() {
    in_namespace("netns_http2");
}

#[cfg(feature = "tonic")]
#[test]
fn grpc_requests_on_a_black_holed_pod_end_within_the_bound() {
    in_namespace("netns_grpc");
}

/// Runs the test `inner` of this binary in a new network namespace, or
/// skips (fails under `CI=true`) when namespaces or nftables are missing.
fn in_namespace(inner: &str) {
    if let Err(why) = preflight() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true and the black-hole test cannot run: {why}");
        eprintln!("skipped: the black-hole test needs a network namespace and nftables: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .env(INNER, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    // Read both pipes on threads so that a chatty child cannot block.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the inner run") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    println!("{out}");
    eprintln!("{err}");
    let status = status.unwrap_or_else(|| panic!("{inner} ran longer than {RUN_LIMIT:?}"));
    assert!(
        status.success(),
        "{inner} failed in its namespace: {status}"
    );
    assert!(
        out.contains("1 passed"),
        "{inner} did not run in its namespace"
    );
}

/// Can this machine give a test a network namespace with nftables?
fn preflight() -> Result<(), String> {
    let output = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && nft list ruleset"])
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`unshare -n sh -c 'ip link set lo up && nft list ruleset'` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

// ===== the inner runs (inside the namespace only) =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the black-hole tests inside a network namespace of its own"]
async fn netns_http1() {
    http(Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the black-hole tests inside a network namespace of its own"]
async fn netns_http2() {
    http(Protocol::Http2).await;
}

#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the black-hole tests inside a network namespace of its own"]
async fn netns_grpc() {
    use headless_lb::grpc::Channel;
    use headless_lb::testing::GrpcPod;

    enter_namespace().await;
    let pods = GrpcPod::start_all(&ips()).await.expect("start pods");
    for pod in &pods {
        pod.set_delay(POD_DELAY);
    }
    let addrs: Vec<SocketAddr> = pods.iter().map(GrpcPod::addr).collect();
    let dns = dns().await;
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .build(&format!("dns:///{SERVICE}:{}", addrs[0].port()))
        .expect("build the channel");
    scenario("gRPC", Driver::Grpc(channel), &addrs).await;
}

async fn http(protocol: Protocol) {
    enter_namespace().await;
    let pods = Pod::start_all(&ips()).await.expect("start pods");
    for pod in &pods {
        pod.set_delay(POD_DELAY);
    }
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let dns = dns().await;
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .protocol(protocol)
        .build(&format!("{SERVICE}:{}", addrs[0].port()))
        .expect("build the client");
    scenario(&format!("{protocol:?}"), Driver::Http(client), &addrs).await;
}

/// Refuses to run outside a namespace made for it; brings `lo` up.
async fn enter_namespace() {
    assert!(
        std::env::var_os(INNER).is_some(),
        "runs only inside the network namespace the black-hole tests make \
         (it adds nftables rules); run those tests instead"
    );
    sh("ip link set lo up").await;
}

fn ips() -> Vec<IpAddr> {
    PODS.iter()
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, *i)))
        .collect()
}

/// DNS on 127.0.0.1 listing every pod, TTL 1 s; it keeps listing the
/// victim, as DNS does until a deleted pod's record expires.
async fn dns() -> DnsServer {
    let dns = DnsServer::start().await.expect("start DNS");
    dns.set_ips(SERVICE, &ips(), 1);
    dns
}

async fn sh(script: &str) {
    let status = tokio::process::Command::new("sh")
        .args(["-c", script])
        .status()
        .await
        .unwrap_or_else(|e| panic!("run `{script}`: {e}"));
    assert!(status.success(), "`{script}` failed: {status}");
}

/// Drops every packet to and from `ip`: no RST, no ICMP, as for a deleted
/// pod's IP. Output hook: on loopback every packet passes it.
async fn black_hole(ip: IpAddr) {
    sh(&format!(
        "nft add table inet blackhole && \
         nft add chain inet blackhole out '{{ type filter hook output priority 0; }}' && \
         nft add rule inet blackhole out ip daddr {ip} drop && \
         nft add rule inet blackhole out ip saddr {ip} drop"
    ))
    .await;
}

/// The client under test, either kind.
#[derive(Clone)]
enum Driver {
    Http(Client),
    #[cfg(feature = "tonic")]
    Grpc(headless_lb::grpc::Channel),
}

impl Driver {
    /// One request, read to its end; the error's text on failure.
    async fn one(&self) -> Result<(), String> {
        match self {
            Driver::Http(client) => {
                let response = client.get("/").await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("status {}", response.status()));
                }
                response
                    .into_body()
                    .collect()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            #[cfg(feature = "tonic")]
            Driver::Grpc(channel) => {
                use tonic_health::pb::HealthCheckRequest;
                use tonic_health::pb::health_client::HealthClient;
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                HealthClient::new(channel.clone())
                    .check(request)
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        }
    }

    fn stats(&self) -> Stats {
        match self {
            Driver::Http(client) => client.stats(),
            #[cfg(feature = "tonic")]
            Driver::Grpc(channel) => channel.stats(),
        }
    }

    fn of(&self, addr: SocketAddr) -> EndpointStats {
        self.stats()
            .endpoints
            .into_iter()
            .find(|e| e.address == addr)
            .unwrap_or_else(|| panic!("{addr} not in the stats"))
    }
}

/// One request's start, end and error.
struct Record {
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

async fn scenario(label: &str, driver: Driver, addrs: &[SocketAddr]) {
    let victim = addrs[0];
    wait_for(Duration::from_secs(10), "every pod Ready", || {
        let stats = driver.stats().endpoints;
        stats.len() == addrs.len() && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut callers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (driver, stop, records) = (driver.clone(), stop.clone(), records.clone());
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let error = driver.one().await.err();
                let ended = Instant::now();
                records.lock().unwrap().push(Record {
                    started,
                    ended,
                    error,
                });
            }
        });
    }
    wait_for(
        Duration::from_secs(10),
        "load on every pod, requests in flight on the victim",
        || {
            let stats = driver.stats().endpoints;
            stats.iter().all(|e| e.requests >= 10) && driver.of(victim).pending >= 2
        },
    )
    .await;

    black_hole(victim.ip()).await;
    let holed = Instant::now();
    let in_flight = driver.of(victim).pending;

    // The scenario's own moment: one second into the black hole.
    tokio::time::sleep_until(holed + QUIET_AFTER).await;
    let requests_at_quiet = driver.of(victim).requests;

    wait_for(
        BOUND + Duration::from_secs(5),
        "no request pending on the victim",
        || driver.of(victim).pending == 0,
    )
    .await;
    let drained = holed.elapsed();
    // Out of picks, reconnecting in the background, each attempt ending at
    // connect_timeout: load keeps running through two of them.
    wait_for(Duration::from_secs(5), "the victim out of picks", || {
        driver.of(victim).state == EndpointState::Backoff
    })
    .await;
    tokio::time::sleep(2 * CONNECT_TIMEOUT).await;
    stop.store(true, Ordering::Relaxed);
    while callers.join_next().await.is_some() {}
    let victim_stats = driver.of(victim);
    let records = std::mem::take(&mut *records.lock().unwrap());

    let victim_name = victim.to_string();
    let failed: Vec<&Record> = records.iter().filter(|r| r.error.is_some()).collect();
    let slowest = failed
        .iter()
        .map(|r| r.ended.saturating_duration_since(r.started.max(holed)))
        .max()
        .unwrap_or_default();
    let late: Vec<&Record> = records
        .iter()
        .filter(|r| r.started >= holed + QUIET_AFTER)
        .collect();
    let late_failed = late.iter().filter(|r| r.error.is_some()).count();
    let late_slowest = late
        .iter()
        .map(|r| r.ended - r.started)
        .max()
        .unwrap_or_default();
    println!(
        "black hole, {label}: {} requests, {in_flight} in flight on {victim} at the drop, {} failed, \
         the slowest failure ended {slowest:?} into the black hole, the victim drained after \
         {drained:?}; {} requests started after {QUIET_AFTER:?}, the slowest took \
         {late_slowest:?}; victim {victim_stats:?}",
        records.len(),
        failed.len(),
        late.len(),
    );

    assert!(
        in_flight >= 1,
        "no request was in flight on the victim when its packets were dropped"
    );
    assert!(
        drained <= BOUND,
        "requests stayed pending on the victim for {drained:?}, past {BOUND:?}"
    );
    assert!(
        slowest <= BOUND,
        "a failed request ended {slowest:?} into the black hole, past {BOUND:?}"
    );
    for record in &failed {
        let error = record.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&victim_name),
            "a request failed that was not on the victim {victim}: {error}"
        );
    }
    assert_eq!(
        victim_stats.requests, requests_at_quiet,
        "the victim got requests after {QUIET_AFTER:?} of black hole"
    );
    assert_eq!(
        late_failed, 0,
        "requests started after the victim was out failed"
    );
    assert!(
        late_slowest < CONNECT_TIMEOUT,
        "a request started after the victim was out took {late_slowest:?}: a reconnect held it"
    );
    assert!(!late.is_empty(), "no load ran after the victim was out");
}
