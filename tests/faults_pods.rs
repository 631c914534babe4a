//! Pod fault injection over real sockets: hung pods, pods answering 503,
//! pods resetting mid-response, a pod moving to a new IP, and a real process
//! frozen with SIGSTOP, each under load through the balanced client.
//!
//! Each test uses its own `127.0.N.x` range; waits are `wait_for` with a
//! deadline. The fixed durations are the scenarios' own (how long load runs
//! against a fault), and they say so.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use headless_lb::RefreshPolicy;
use headless_lb::balance::{EndpointState, EndpointStats};
use headless_lb::http::{Client, ClientBuilder, Protocol};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

const SERVICE: &str = "web.default.svc.cluster.local";
/// Generous deadline for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(10);
/// A request still unanswered after this is a bug, recorded as a failure.
const HUNG: Duration = Duration::from_secs(5);

// ===== fixtures =====

/// `127.0.net.1 ..= 127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// A refresh every 100–200 ms, so that DNS changes reach the client quickly.
fn fast_policy() -> RefreshPolicy {
    RefreshPolicy {
        min_refresh: Duration::from_millis(100),
        max_refresh: Duration::from_millis(200),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(200),
        ..RefreshPolicy::default()
    }
}

fn builder(dns: &DnsServer, protocol: Protocol) -> ClientBuilder {
    Client::builder()
        .nameserver(dns.addr())
        .protocol(protocol)
        .refresh_policy(fast_policy())
}

fn stats_of(client: &Client, addr: SocketAddr) -> EndpointStats {
    client
        .stats()
        .endpoints
        .into_iter()
        .find(|e| e.address == addr)
        .unwrap_or_else(|| panic!("{addr} not in the stats"))
}

/// Waits until the client lists exactly `addrs`, every one Ready.
async fn wait_ready(client: &Client, addrs: &[SocketAddr]) {
    let want: BTreeMap<SocketAddr, EndpointState> =
        addrs.iter().map(|a| (*a, EndpointState::Ready)).collect();
    wait_for(DEADLINE, &format!("exactly {want:?}"), || {
        let listed: BTreeMap<_, _> = client
            .stats()
            .endpoints
            .into_iter()
            .filter(|e| e.state != EndpointState::Draining)
            .map(|e| (e.address, e.state))
            .collect();
        listed == want
    })
    .await;
}

/// Pods on `127.0.net.1..=n` (one port), DNS listing them with TTL 0.
async fn pods_and_dns(net: u8, n: u8) -> (Vec<Pod>, DnsServer, u16) {
    let pods = Pod::start_all(&ips(net, n)).await.unwrap();
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips(net, n), 0);
    (pods, dns, port)
}

fn target(port: u16) -> String {
    format!("{SERVICE}:{port}")
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    started: Instant,
    result: Result<Answer, Failure>,
}

/// A response: its status and body (the pod's address).
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    body: String,
}

#[derive(Debug, Clone)]
struct Failure {
    timeout: bool,
    /// The endpoint the error names, if any.
    endpoint: Option<SocketAddr>,
    /// The response head arrived and the body failed.
    in_body: bool,
    /// Shown in assertion messages.
    #[allow(dead_code)]
    message: String,
}

async fn fetch(client: &Client) -> Outcome {
    let started = Instant::now();
    let result = match tokio::time::timeout(HUNG, fetch_inner(client)).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            timeout: false,
            endpoint: None,
            in_body: false,
            message: format!("hung for {HUNG:?}"),
        }),
    };
    Outcome { started, result }
}

async fn fetch_inner(client: &Client) -> Result<Answer, Failure> {
    let rsp = client.get("/").await.map_err(|e| Failure {
        timeout: e.is_timeout(),
        endpoint: e.endpoint(),
        in_body: false,
        message: e.to_string(),
    })?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure {
            timeout: false,
            endpoint: None,
            in_body: true,
            message: format!("body: {e}"),
        })?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `concurrency` workers sending one request after the other until stopped
/// or until `total` requests were started.
struct Load {
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    workers: JoinSet<Vec<Outcome>>,
}

impl Load {
    fn start(client: &Client, concurrency: usize, total: Option<usize>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (client, stop, completed, issued) = (
                client.clone(),
                stop.clone(),
                completed.clone(),
                issued.clone(),
            );
            workers.spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(total) = total
                        && issued.fetch_add(1, Ordering::Relaxed) >= total
                    {
                        break;
                    }
                    outcomes.push(fetch(&client).await);
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            });
        }
        Load {
            stop,
            completed,
            workers,
        }
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    async fn join(mut self) -> Vec<Outcome> {
        let mut all = Vec::new();
        while let Some(outcomes) = self.workers.join_next().await {
            all.extend(outcomes.unwrap());
        }
        all.sort_by_key(|o| o.started);
        all
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<&Failure> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect()
}

/// Successful answers per body (pod address) and status.
fn answers(outcomes: &[Outcome]) -> BTreeMap<(String, u16), u64> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        if let Ok(a) = &o.result {
            *counts
                .entry((a.body.clone(), a.status.as_u16()))
                .or_insert(0) += 1;
        }
    }
    counts
}

/// One test per protocol for a scenario `async fn name(protocol, net)`; the
/// HTTP/2 variant uses the next `127.0.N` network.
macro_rules! both_protocols {
    ($name:ident, $net:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http1() {
                super::$name(Protocol::Http1, $net).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http2() {
                super::$name(Protocol::Http2, $net + 1).await
            }
        }
    };
}

// ===== a pod that accepts but never answers =====

/// Three pods answering after `delay`, a client with a `timeout` per
/// request over them, and the first pod hung (reads requests, never
/// answers) from the moment this returns.
struct OneHung {
    pods: Vec<Pod>,
    client: Client,
    addrs: Vec<SocketAddr>,
    hung: SocketAddr,
    _dns: DnsServer,
}

async fn one_hung(protocol: Protocol, net: u8, timeout: Duration, delay: Duration) -> OneHung {
    let (pods, dns, port) = pods_and_dns(net, 3).await;
    for pod in &pods {
        pod.set_delay(delay);
    }
    let client: Client = builder(&dns, protocol)
        .request_timeout(Some(timeout))
        .build(&target(port))
        .unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;
    pods[0].set_hang(true);
    OneHung {
        hung: addrs[0],
        pods,
        client,
        addrs,
        _dns: dns,
    }
}

/// The failed requests all timed out, and they are exactly the requests
/// the balancer sent to the hung pod.
fn assert_only_the_hung_pods_requests_timed_out(failed: &[&Failure], hung: &EndpointStats) {
    assert!(
        failed.iter().all(|f| f.timeout),
        "only timeouts: {failed:?}"
    );
    assert_eq!(
        failed.len() as u64,
        hung.requests,
        "every request sent to the hung pod timed out, and only those"
    );
}

both_protocols!(a_hung_pod_times_out_and_is_avoided, 111);

/// One of three pods hangs (reads requests, never answers); the client has
/// a 300 ms request timeout; 8 workers for 2 s. Every request sent to the
/// hung pod times out and nothing else fails; the hung pod's pending count
/// stays raised while its requests are stuck, so P2C sends it only a small
/// share; the timeouts show in its stats.
async fn a_hung_pod_times_out_and_is_avoided(protocol: Protocol, net: u8) {
    let OneHung {
        pods,
        client,
        addrs,
        hung,
        _dns,
    } = one_hung(protocol, net, Duration::from_millis(300), Duration::ZERO).await;

    let load = Load::start(&client, 8, None);
    let mut max_pending = 0;
    // The scenario's own length: 2 s of load against the hung pod.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        max_pending = max_pending.max(stats_of(&client, hung).pending);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcomes = load.finish().await;
    pods[0].set_hang(false);

    let failed = failures(&outcomes);
    let total = outcomes.len() as u64;
    let hung_stats = stats_of(&client, hung);
    let share = hung_stats.requests as f64 / total as f64;
    eprintln!(
        "{protocol:?}: {total} requests, {} timed out; hung pod: {hung_stats:?}, \
         share {:.1} %, max pending {max_pending}",
        failed.len(),
        share * 100.0
    );
    assert_only_the_hung_pods_requests_timed_out(&failed, &hung_stats);
    assert!(!failed.is_empty(), "the hung pod was tried");
    assert!(max_pending >= 1, "pending stays raised while requests hang");
    assert!(
        share < 0.10,
        "the hung pod got {:.1} % of the requests",
        share * 100.0
    );
    assert_eq!(
        hung_stats.failures, hung_stats.requests,
        "each timed-out request counts as a failure of the hung pod"
    );
    for pod in &addrs[1..] {
        assert_eq!(stats_of(&client, *pod).failures, 0, "{pod}");
    }
}

both_protocols!(a_hung_pod_whose_requests_time_out_gets_only_probes, 122);

/// Three pods answering in 10 ms, one of which hangs, and a request
/// timeout of 30 ms, not far above the pods' latency; 8 workers for 3 s. A
/// request that timed out is no answer, so the pod's silence keeps
/// counting: after the requests it held when it stopped, it gets only
/// probes, at intervals that grow with its silence (about 0.03, 0.09, 0.2,
/// 0.45, 0.9, 1.8 s). Were each timeout counted as an answer, the pod would
/// look fresh again each time, a 30 ms estimate against the others' 10 ms ×
/// their pending requests, and take a share of the requests all along.
async fn a_hung_pod_whose_requests_time_out_gets_only_probes(protocol: Protocol, net: u8) {
    let OneHung {
        pods,
        client,
        hung,
        _dns,
        ..
    } = one_hung(
        protocol,
        net,
        Duration::from_millis(30),
        Duration::from_millis(10),
    )
    .await;

    let load = Load::start(&client, 8, None);
    // The scenario's own length: 3 s of load against the hung pod.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.finish().await;
    pods[0].set_hang(false);

    let failed = failures(&outcomes);
    let hung_stats = stats_of(&client, hung);
    eprintln!(
        "{protocol:?}: {} requests, {} timed out; hung pod: {hung_stats:?}",
        outcomes.len(),
        failed.len()
    );
    assert_only_the_hung_pods_requests_timed_out(&failed, &hung_stats);
    // At most the 8 it held when it stopped, and 6 probes.
    assert!(
        hung_stats.requests <= 14,
        "the hung pod got {} requests in 3 s",
        hung_stats.requests
    );
}

// ===== a pod answering 503 =====

/// One of three pods answers 503 to everything; 900 requests at concurrency
/// 6. The 503s are returned, not retried (the pod answered exactly as many
/// requests as the client got 503s, and as many as the balancer sent it),
/// and they count as the pod's failures in the stats. After 5 of them in a
/// row (failure accrual) the pod is out of picks for a growing backoff: it
/// answers a few percent of the requests, where its fast 503s used to win
/// it a third of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_answering_503_is_returned_not_retried_and_counted() {
    let net = 113;
    let (pods, dns, port) = pods_and_dns(net, 3).await;
    let client: Client = builder(&dns, Protocol::Http1).build(&target(port)).unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;
    pods[0].set_status(StatusCode::SERVICE_UNAVAILABLE);

    let outcomes = Load::start(&client, 6, Some(900)).join().await;
    let counts = answers(&outcomes);
    eprintln!("503 pod: {counts:?}; stats {:?}", client.stats().endpoints);
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let unavailable: u64 = counts
        .iter()
        .filter(|((_, status), _)| *status == 503)
        .map(|(_, n)| n)
        .sum();
    let from_503_pod = counts
        .get(&(addrs[0].to_string(), 503))
        .copied()
        .unwrap_or(0);
    assert_eq!(unavailable, from_503_pod, "only the 503 pod answers 503");
    assert!(unavailable >= 5, "{unavailable}");
    assert!(
        unavailable < 45,
        "the 503 pod answered {unavailable} of 900 requests"
    );
    assert_eq!(pods[0].requests(), unavailable, "no retries");
    let s = stats_of(&client, addrs[0]);
    assert_eq!(s.requests, unavailable, "{s:?}");
    assert_eq!(s.failures, unavailable, "5xx counts as a failure: {s:?}");
    for (pod, addr) in pods.iter().zip(&addrs).skip(1) {
        let s = stats_of(&client, *addr);
        assert_eq!(s.failures, 0, "{s:?}");
        assert_eq!(s.requests, pod.requests(), "{s:?}");
    }
}

// ===== a pod resetting mid-response =====

both_protocols!(a_pod_resetting_mid_response_fails_only_its_requests, 114);

/// One of three pods sends half a body, then aborts; 600 requests at
/// concurrency 6. Exactly the requests that pod answered fail, in the body
/// read, and they count as its failures; the other pods' answers are whole.
async fn a_pod_resetting_mid_response_fails_only_its_requests(protocol: Protocol, net: u8) {
    let (pods, dns, port) = pods_and_dns(net, 3).await;
    let client: Client = builder(&dns, protocol).build(&target(port)).unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;
    pods[0].set_reset(true);

    let outcomes = Load::start(&client, 6, Some(600)).join().await;
    let failed = failures(&outcomes);
    let counts = answers(&outcomes);
    let reset_stats = stats_of(&client, addrs[0]);
    eprintln!(
        "{protocol:?} reset: {} failed; answers {counts:?}; reset pod {reset_stats:?}",
        failed.len()
    );
    assert!(!failed.is_empty(), "the resetting pod was used");
    assert_eq!(
        failed.len() as u64,
        pods[0].requests(),
        "exactly the resetting pod's requests failed: {failed:?}"
    );
    // Mostly in the body read; under load the reset can overtake the head
    // (HTTP/2: RST_STREAM processed before HEADERS were handed over), and
    // then the request itself fails, naming the resetting pod.
    eprintln!(
        "{protocol:?} reset: {} of {} failed in the body",
        failed.iter().filter(|f| f.in_body).count(),
        failed.len()
    );
    assert!(
        failed
            .iter()
            .all(|f| f.in_body || f.endpoint == Some(addrs[0])),
        "they fail in the body or name the resetting pod: {failed:?}"
    );
    for (pod, addr) in pods.iter().zip(&addrs).skip(1) {
        assert_eq!(
            counts.get(&(addr.to_string(), 200)).copied().unwrap_or(0),
            pod.requests(),
            "{addr}'s answers arrived whole"
        );
        assert_eq!(stats_of(&client, *addr).failures, 0);
    }
    assert_eq!(
        reset_stats.failures,
        failed.len() as u64,
        "a body cut off counts as a failure: {reset_stats:?}"
    );
}

// ===== a pod that comes back on a new IP =====

/// Three pods under load; pod .1 dies and comes back as .4 (same port), and
/// DNS is updated. Only requests on the dead pod, within 250 ms of its death,
/// may fail: those in flight, and (HTTP/1.1) a request that took an idle
/// pooled connection whose close the client had not seen yet. After the
/// DNS change the new address takes its share and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_restarted_on_a_new_ip_gets_the_traffic_once_dns_says_so() {
    let net = 116;
    let (mut pods, dns, port) = pods_and_dns(net, 3).await;
    let client: Client = builder(&dns, Protocol::Http1).build(&target(port)).unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;

    let load = Load::start(&client, 8, None);
    load_flows(&load, 200).await;
    let killed_at = Instant::now();
    pods[0].kill().await;
    let killed = Instant::now();
    let moved = Pod::start(SocketAddr::new(ip(net, 4), port)).await.unwrap();
    dns.set_ips(SERVICE, &[ip(net, 2), ip(net, 3), ip(net, 4)], 0);
    let new_set = [addrs[1], addrs[2], moved.addr()];
    wait_ready(&client, &new_set).await;
    let settled = Instant::now();
    // The scenario's own length: 1 s of load on the new set.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    pods.push(moved);

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let after: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.started >= settled)
        .cloned()
        .collect();
    let counts = answers(&after);
    eprintln!(
        "moved pod: {} requests, {} failed (kill took {:?}), after the move {counts:?}",
        outcomes.len(),
        failed.len(),
        killed - killed_at
    );
    for o in &failed {
        assert!(
            o.started < killed + Duration::from_millis(250),
            "a request started {:?} after the kill failed: {o:?}",
            o.started - killed
        );
        let failure = o.result.as_ref().unwrap_err();
        assert_eq!(failure.endpoint, Some(addrs[0]), "{o:?}");
    }
    assert!(failures(&after).is_empty());
    let on_new = counts
        .get(&(pods[3].addr().to_string(), 200))
        .copied()
        .unwrap_or(0);
    let total: u64 = counts.values().sum();
    assert!(
        on_new as f64 >= 0.15 * total as f64,
        "the new address took {on_new} of {total}"
    );
    assert!(!counts.contains_key(&(addrs[0].to_string(), 200)));
}

async fn load_flows(load: &Load, n: u64) {
    let until = load.completed() + n;
    wait_for(DEADLINE, &format!("{n} more requests"), || {
        load.completed() >= until
    })
    .await;
}

// ===== a real process frozen with SIGSTOP =====

/// `echo_server` as a child process, killed on drop.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
}

impl EchoServer {
    /// Starts `target/<profile>/examples/echo_server --listen addr`; cargo
    /// test builds the examples before running tests.
    fn spawn(addr: SocketAddr) -> EchoServer {
        let exe = std::env::current_exe().expect("the test binary's path");
        let path = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>")
            .join("examples")
            .join("echo_server");
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --examples` first",
            path.display()
        );
        let child = Command::new(&path)
            .args(["--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn echo_server");
        EchoServer { child, addr }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two in-process pods and one `echo_server` process; the client has a
/// 500 ms request timeout, 8 workers. SIGSTOP freezes the process (the
/// kernel still accepts its connections, nobody answers): its requests time
/// out and P2C moves the traffic to the other pods; after SIGCONT it serves
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_frozen_with_sigstop_is_avoided_and_serves_again_after_sigcont() {
    let net = 117;
    let pods = Pod::start_all(&ips(net, 2)).await.unwrap();
    let port = pods[0].addr().port();
    let echo = EchoServer::spawn(SocketAddr::new(ip(net, 3), port));
    wait_for(DEADLINE, "echo_server listening", || {
        std::net::TcpStream::connect_timeout(&echo.addr, Duration::from_millis(100)).is_ok()
    })
    .await;
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &[ip(net, 1), ip(net, 2), ip(net, 3)], 0);
    // The default 10 s decay: the timeouts and the backlog raise the frozen
    // process's RTT estimate to seconds, which would take about a minute to
    // decay below 1 ms pods; probes (every 1, 2, 4 … s while it is idle)
    // bring it back instead.
    let client: Client = builder(&dns, Protocol::Http1)
        .request_timeout(Some(Duration::from_millis(500)))
        .build(&target(port))
        .unwrap();
    let addrs = [pods[0].addr(), pods[1].addr(), echo.addr];
    wait_ready(&client, &addrs).await;

    let load = Load::start(&client, 8, None);
    load_flows(&load, 300).await;
    let before = stats_of(&client, echo.addr).requests;
    assert!(before > 0, "the process served before the freeze");

    echo.signal("-STOP");
    let stopped = Instant::now();
    let at_stop = client.stats().endpoints;
    // The freeze's own length.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let during: u64 = client
        .stats()
        .endpoints
        .iter()
        .map(|e| {
            let was = at_stop
                .iter()
                .find(|s| s.address == e.address)
                .map_or(0, |s| s.requests);
            e.requests - was
        })
        .sum();
    let to_frozen = stats_of(&client, echo.addr).requests
        - at_stop
            .iter()
            .find(|s| s.address == echo.addr)
            .map_or(0, |s| s.requests);

    echo.signal("-CONT");
    let resumed = Instant::now();
    let served_before = pods[0].requests() + pods[1].requests();
    // Requests picked for it after SIGCONT: the next probe (at most 4 s
    // away, see above) is answered fast, its RTT replaces the estimate, and
    // the process competes again.
    let dispatched_at_resume = stats_of(&client, echo.addr).requests;
    wait_for(DEADLINE, "the process to be picked again", || {
        stats_of(&client, echo.addr).requests > dispatched_at_resume + 10
    })
    .await;
    let back_after = resumed.elapsed();
    load_flows(&load, 200).await;
    assert!(pods[0].requests() + pods[1].requests() > served_before);
    let outcomes = load.finish().await;

    let served_after = answers(
        &outcomes
            .iter()
            .filter(|o| o.started >= resumed)
            .cloned()
            .collect::<Vec<_>>(),
    )
    .get(&(echo.addr.to_string(), 200))
    .copied()
    .unwrap_or(0);
    let failed = failures(&outcomes);
    eprintln!(
        "SIGSTOP: {during} requests in 2 s frozen, {to_frozen} sent to the frozen process, \
         {} failed; picked again {back_after:?} after SIGCONT; {served_after} served by it after SIGCONT",
        failed.len()
    );
    assert!(
        failed.iter().all(|f| f.timeout),
        "only timeouts: {failed:?}"
    );
    for o in outcomes.iter().filter(|o| o.result.is_err()) {
        assert!(
            o.started >= stopped - Duration::from_millis(600) && o.started < resumed,
            "a failure outside the freeze: {o:?}"
        );
    }
    assert!(during > 200, "the other pods kept serving: {during}");
    assert!(
        (to_frozen as f64) < 0.05 * during as f64,
        "the frozen process got {to_frozen} of {during}"
    );
    assert!(served_after > 0, "it serves again after SIGCONT");
}

// ===== several pods dying at once =====

both_protocols!(a_never_sent_request_tries_every_pod_until_a_live_one, 118);

/// Six pods; five die at the same instant (a scale-down whose pods stop the
/// moment DNS drops them, or a client losing several subset members at
/// once) while DNS still lists all six. The survivor is the slowest (20 ms;
/// the others answer at once), so P2C prefers the dead pods and a request
/// meets one refused connection after another. Such a request was never
/// sent, so it goes on to a pod it has not tried yet, as often as it takes:
/// all 40 requests (the first on its own, then 4 workers) are answered by
/// the survivor, and every dead pod was tried and backs off. Under the old
/// rule (at most `max_retries`, 2, more pods) the first request failed
/// unsent after three refused connects.
async fn a_never_sent_request_tries_every_pod_until_a_live_one(protocol: Protocol, net: u8) {
    let (pods, dns, port) = pods_and_dns(net, 6).await;
    let client: Client = builder(&dns, protocol).build(&target(port)).unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;
    let (dead, survivor) = (&pods[..5], &pods[5]);
    survivor.set_delay(Duration::from_millis(20));
    // Until every pod has answered once: every RTT is measured, and the
    // survivor's is the highest.
    for _ in 0..200 {
        if pods.iter().all(|p| p.requests() > 0) {
            break;
        }
        assert!(fetch(&client).await.result.is_ok());
    }
    assert!(pods.iter().all(|p| p.requests() > 0), "every pod answered");

    futures::future::join_all(dead.iter().map(Pod::kill)).await;
    // Long enough for the client's connections to see their sockets close:
    // a request written on a connection whose close is still on its way may
    // have reached the pod, and is not retried (the cases above).
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One request on its own first: it meets every dead pod before the
    // survivor. Then 39 from 4 workers.
    let mut outcomes = vec![fetch(&client).await];
    outcomes.extend(Load::start(&client, 4, Some(39)).join().await);

    let counts = answers(&outcomes);
    let stats = client.stats().endpoints;
    eprintln!("{protocol:?} five of six pods dead: answers {counts:?}; stats {stats:?}");
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert_eq!(
        counts.get(&(survivor.addr().to_string(), 200)).copied(),
        Some(40),
        "{counts:?}"
    );
    for pod in dead {
        let s = stats_of(&client, pod.addr());
        assert!(
            s.failures >= 1 && s.state == EndpointState::Backoff,
            "every dead pod was tried and backs off: {s:?}"
        );
    }
}

/// Every listed pod is dead (DNS still lists all six): a request tries each
/// of them, goes back to at most `max_retries` (2) of them, and fails with
/// the typed "never sent" error naming one, well within `failfast_timeout`
/// (1 s here). Requests that then find them all backing off (panic mode)
/// fail the same way. Nothing hangs, nothing spins: a retry on a pod the
/// request already tried waits for the balancer's next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_only_dead_pods_fails_not_sent_within_failfast_timeout() {
    let net = 120;
    let failfast = Duration::from_secs(1);
    let (pods, dns, port) = pods_and_dns(net, 6).await;
    let client: Client = builder(&dns, Protocol::Http1)
        .failfast_timeout(failfast)
        .build(&target(port))
        .unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    wait_ready(&client, &addrs).await;
    futures::future::join_all(pods.iter().map(Pod::kill)).await;
    // As above: the client's connections see their sockets close.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let attempts =
        |client: &Client| -> u64 { client.stats().endpoints.iter().map(|e| e.failures).sum() };
    for round in 0..3 {
        let before = attempts(&client);
        let started = Instant::now();
        let result = tokio::time::timeout(HUNG, client.get("/"))
            .await
            .unwrap_or_else(|_| panic!("round {round}: hung for {HUNG:?}"));
        let took = started.elapsed();
        let Err(err) = result else {
            panic!("round {round}: a dead pod answered");
        };
        let tried = attempts(&client) - before;
        eprintln!("round {round}: failed after {took:?} and {tried} attempts: {err}");
        assert!(err.is_not_sent() && !err.is_no_endpoints(), "{err}");
        assert!(err.endpoint().is_some_and(|e| addrs.contains(&e)), "{err}");
        assert!(
            took <= failfast + Duration::from_millis(500),
            "round {round} took {took:?}"
        );
        assert!(
            (6..=8).contains(&tried),
            "round {round}: every pod once, at most 2 again: {tried} attempts"
        );
    }
}
