//! The balanced HTTP client end to end: real hyper pods on distinct loopback
//! addresses (all on one port, as the pods of a Kubernetes service are), real
//! DNS answers with a 1 s TTL, and both HTTP/1.1 and HTTP/2.
//!
//! Every test uses its own `127.0.N.x` range (the whole of 127/8 is loopback
//! on Linux), so that tests can run in parallel. Waits are `wait_for` with a
//! deadline; the only fixed waits are the scenario's own durations (the
//! rollout's grace period, the DNS outage), and they say so.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use headless_lb::RefreshPolicy;
use headless_lb::balance::{EndpointState, EndpointStats};
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{AUTHORITY_HEADER, DnsServer, Fault, Pod, wait_for};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const SERVICE: &str = "web.default.svc.cluster.local";
/// The TTL of every DNS answer: the client re-resolves about once a second.
const TTL: u32 = 1;
/// A request that takes longer than this is counted as failed ("hung"), so
/// that a bug shows up as a failure rather than a test that never ends.
const HUNG: Duration = Duration::from_secs(10);

/// Spread and latency measurements take this exclusively; every other test
/// holds it shared, so that the slow-pod figures are not another test's load.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ===== fixtures =====

/// `127.0.net.1 ..= 127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

/// A DNS server answering `SERVICE` with the addresses of `pods`.
async fn dns_for(pods: &[&Pod]) -> DnsServer {
    let dns = DnsServer::start().await.unwrap();
    set_dns(&dns, pods);
    dns
}

fn set_dns(dns: &DnsServer, pods: &[&Pod]) {
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr().ip()).collect();
    dns.set_ips(SERVICE, &ips, TTL);
}

fn authority(port: u16) -> String {
    format!("{SERVICE}:{port}")
}

fn client(dns: &DnsServer, port: u16, protocol: Protocol) -> Client {
    builder(dns, protocol).build(&authority(port)).unwrap()
}

fn builder(dns: &DnsServer, protocol: Protocol) -> headless_lb::http::ClientBuilder {
    Client::builder().nameserver(dns.addr()).protocol(protocol)
}

fn endpoint(client: &Client, addr: SocketAddr) -> Option<EndpointStats> {
    client
        .stats()
        .endpoints
        .into_iter()
        .find(|e| e.address == addr)
}

fn state_of(client: &Client, addr: SocketAddr) -> Option<EndpointState> {
    endpoint(client, addr).map(|e| e.state)
}

/// The listed endpoints (not draining) and their states.
fn listed(client: &Client) -> BTreeMap<SocketAddr, EndpointState> {
    client
        .stats()
        .endpoints
        .into_iter()
        .filter(|e| e.state != EndpointState::Draining)
        .map(|e| (e.address, e.state))
        .collect()
}

/// Waits until the client lists exactly `pods`, every one Ready.
async fn wait_ready(client: &Client, pods: &[&Pod], deadline: Duration) {
    let want: BTreeMap<_, _> = pods
        .iter()
        .map(|p| (p.addr(), EndpointState::Ready))
        .collect();
    wait_for(deadline, &format!("exactly {want:?}"), || {
        listed(client) == want
    })
    .await;
}

/// One request's outcome, as the load generator records it.
#[derive(Debug, Clone)]
struct Outcome {
    started: Instant,
    ended: Instant,
    /// The responding pod (the body is its address), or why it failed.
    result: Result<String, Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    /// The endpoint the error names, if any.
    endpoint: Option<SocketAddr>,
    message: String,
}

impl Outcome {
    fn latency(&self) -> Duration {
        self.ended - self.started
    }
}

/// GET / and read the body: Ok(the pod's address) for a 200 with a pod's
/// address as the body; anything else is a failure.
async fn fetch(client: &Client) -> Outcome {
    let started = Instant::now();
    let result = match tokio::time::timeout(HUNG, fetch_inner(client)).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            endpoint: None,
            message: format!("hung for {HUNG:?}"),
        }),
    };
    Outcome {
        started,
        ended: Instant::now(),
        result,
    }
}

async fn fetch_inner(client: &Client) -> Result<String, Failure> {
    let rsp = client.get("/").await.map_err(|e| Failure {
        endpoint: e.endpoint(),
        message: e.to_string(),
    })?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure {
            endpoint: None,
            message: format!("body: {e}"),
        })?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 || body.parse::<SocketAddr>().is_err() {
        return Err(Failure {
            endpoint: body.parse().ok(),
            message: format!("status {status}, body {body:?}"),
        });
    }
    Ok(body)
}

/// Continuous load: `concurrency` workers sending one request after the
/// other until stopped, or until `total` requests were started.
struct Load {
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    workers: JoinSet<Vec<Outcome>>,
}

impl Load {
    fn start(client: &Client, concurrency: usize, total: Option<usize>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let (stop, completed, failed, issued) = (
                stop.clone(),
                completed.clone(),
                failed.clone(),
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
                    let outcome = fetch(&client).await;
                    if outcome.result.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(outcome);
                }
                outcomes
            });
        }
        Load {
            stop,
            completed,
            failed,
            workers,
        }
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have completed, proving load still flows.
    async fn wait_more(&self, n: u64, deadline: Duration) {
        let until = self.completed() + n;
        wait_for(deadline, &format!("{n} more requests"), || {
            self.completed() >= until
        })
        .await;
    }

    /// Stops the workers (each finishes its current request) and returns
    /// every outcome, in start order.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits for the workers to end on their own (a `total` was given) and
    /// returns every outcome, in start order.
    async fn join(mut self) -> Vec<Outcome> {
        let mut all = Vec::new();
        while let Some(outcomes) = self.workers.join_next().await {
            all.extend(outcomes.unwrap());
        }
        all.sort_by_key(|o| o.started);
        all
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.result.is_err()).collect()
}

fn per_pod(outcomes: &[Outcome]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        if let Ok(pod) = &o.result {
            *counts.entry(pod.clone()).or_insert(0) += 1;
        }
    }
    counts
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    assert!(!latencies.is_empty());
    latencies.sort();
    let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
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

// ===== 1. equal pods share the load =====

both_protocols!(equal_pods_share_evenly, 10);

/// 4 equal pods, 4 000 requests at concurrency 16: every pod within ±20 % of
/// the mean; every pod saw the service's authority, never its own address.
async fn equal_pods_share_evenly(protocol: Protocol, net: u8) {
    // A spread measurement too: alone, so that it measures the balancer.
    let _alone = QUIET.write().await;
    let pods = Pod::start_all(&ips(net, 4)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    let client = client(&dns, port, protocol);
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    let started = Instant::now();
    let outcomes = Load::start(&client, 16, Some(4_000)).join().await;
    let elapsed = started.elapsed();

    assert_eq!(outcomes.len(), 4_000);
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let counts: Vec<u64> = pods.iter().map(Pod::requests).collect();
    eprintln!("{protocol:?}: 4000 requests in {elapsed:?}, per pod {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 4_000);
    let mean = 1_000.0;
    for (pod, &n) in pods.iter().zip(&counts) {
        assert!(
            (n as f64 - mean).abs() <= 0.2 * mean,
            "{} got {n} of 4000 requests, outside ±20 % of {mean}: {counts:?}",
            pod.addr()
        );
        assert_eq!(
            pod.last_authority().as_deref(),
            Some(authority(port).as_str()),
            "Host / :authority must be the service"
        );
        let want = match protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            _ => http::Version::HTTP_2,
        };
        assert_eq!(pod.last_version(), Some(want));
    }
    let rsp = client.get("/").await.unwrap();
    assert_eq!(
        rsp.headers()[AUTHORITY_HEADER].to_str().unwrap(),
        authority(port)
    );
    // The body holds the request's pending count until it is read or dropped.
    drop(rsp);
    wait_for(Duration::from_secs(2), "pending back to 0", || {
        client.stats().endpoints.iter().all(|e| e.pending == 0)
    })
    .await;
}

// ===== 2. a slow pod is avoided =====

both_protocols!(slow_pod_is_avoided, 12);

/// One pod 50 ms slower, 2 000 requests at concurrency 16: it gets < 10 %
/// of them, and the client's p99 stays within 2× the fast pods' p99.
///
/// The p99 half needs the slow pod to get under 1 % of the requests. Before
/// the first response no balancer knows which pod is slow, so the first 16
/// requests spread evenly and 4 land on it; the measured run follows a
/// 200-request warm-up so that the check is on the steady state ("stays").
/// Figures on this 2-core machine, with two CPU-bound processes running
/// beside the test: the slow pod gets 1-2 (HTTP/1.1) and 5 (HTTP/2) of the
/// 2 000 measured requests. The check depends on the fast pods answering
/// well under a sixth of the slow pod's latency: P2C weighs the RTT times
/// (pending + 1), with ~5 requests pending per fast pod. With unoptimised
/// dependencies (before the `profile.dev.package."*"` setting) a request
/// cost milliseconds of CPU, the fast pods' estimates reached ~9 ms under
/// load, and the slow pod got 13-25 requests; before the first response
/// replaced the 30 ms prior, fast pods kept a ~29 ms estimate throughout
/// and it got 1.3 % even on an idle machine.
async fn slow_pod_is_avoided(protocol: Protocol, net: u8) {
    let (share, p99_all, p99_fast) = slow_pod_run(protocol, net).await;
    assert!(
        share < 0.10,
        "the slow pod got {:.1} % of requests",
        share * 100.0
    );
    assert!(
        p99_all <= p99_fast * 2,
        "p99 {p99_all:?} is more than 2× the fast pods' p99 {p99_fast:?}"
    );
}

/// Runs the slow-pod scenario; returns the slow pod's share of requests, the
/// client's p99 and the fast pods' p99.
async fn slow_pod_run(protocol: Protocol, net: u8) -> (f64, Duration, Duration) {
    let _alone = QUIET.write().await;
    let pods = Pod::start_all(&ips(net, 4)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    let slow = &pods[3];
    slow.set_delay(Duration::from_millis(50));
    let client = client(&dns, port, protocol);
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    let warm_up = Load::start(&client, 16, Some(200)).join().await;
    assert!(failures(&warm_up).is_empty(), "{:?}", failures(&warm_up));
    let outcomes = Load::start(&client, 16, Some(2_000)).join().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));

    let slow_name = slow.addr().to_string();
    let slow_n = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|b| *b == slow_name))
        .count();
    let share = slow_n as f64 / outcomes.len() as f64;
    let mut all: Vec<Duration> = outcomes.iter().map(Outcome::latency).collect();
    let mut fast: Vec<Duration> = outcomes
        .iter()
        .filter(|o| !o.result.as_ref().is_ok_and(|b| *b == slow_name))
        .map(Outcome::latency)
        .collect();
    let (p99_all, p99_fast) = (percentile(&mut all, 99.0), percentile(&mut fast, 99.0));
    eprintln!(
        "{protocol:?}: slow pod got {slow_n}/2000 ({:.2} %), p99 all {p99_all:?}, p99 fast pods {p99_fast:?}, per pod {:?}",
        share * 100.0,
        per_pod(&outcomes)
    );
    (share, p99_all, p99_fast)
}

// ===== 3. a killed pod backs off and rejoins =====

both_protocols!(killed_pod_backs_off_and_rejoins, 14);

/// A pod crashes under load while DNS still lists it: only requests in
/// flight on it can fail, every request started after the crash succeeds,
/// stats show it backing off, and after a restart it is Ready and serving
/// again within the backoff cap.
async fn killed_pod_backs_off_and_rejoins(protocol: Protocol, net: u8) {
    let _shared = QUIET.read().await;
    const BACKOFF_MAX: Duration = Duration::from_millis(500);
    let pods = Pod::start_all(&ips(net, 3)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    for pod in &pods {
        // Long enough that requests are in flight on the pod when it dies.
        pod.set_delay(Duration::from_millis(10));
    }
    let client = builder(&dns, protocol)
        .endpoint_backoff(Duration::from_millis(50), BACKOFF_MAX)
        .build(&authority(port))
        .unwrap();
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    let victim = &pods[0];
    let load = Load::start(&client, 16, None);
    load.wait_more(200, Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(2),
        "requests in flight on the victim",
        || victim.in_flight() > 0,
    )
    .await;

    let kill_started = Instant::now();
    let pending_before = endpoint(&client, victim.addr()).unwrap().pending as u64;
    let in_flight_before = victim.in_flight();
    victim.kill().await;
    let killed = Instant::now();

    wait_for(Duration::from_secs(2), "the victim in Backoff", || {
        state_of(&client, victim.addr()) == Some(EndpointState::Backoff)
    })
    .await;
    let seen_down = Instant::now();
    // Keep the load on while it is down: several reconnect attempts fail.
    load.wait_more(500, Duration::from_secs(10)).await;
    wait_for(
        Duration::from_secs(2),
        "a failed reconnect recorded",
        || endpoint(&client, victim.addr()).unwrap().failures > 0,
    )
    .await;
    assert_eq!(
        state_of(&client, victim.addr()),
        Some(EndpointState::Backoff),
        "a dead pod stays out of picks"
    );
    let served_while_dead = victim.requests();

    victim.restart().await.unwrap();
    let restarted = Instant::now();
    wait_for(
        BACKOFF_MAX + Duration::from_millis(1_500),
        "the victim Ready again",
        || state_of(&client, victim.addr()) == Some(EndpointState::Ready),
    )
    .await;
    let rejoined_after = restarted.elapsed();
    wait_for(Duration::from_secs(2), "the victim serving again", || {
        victim.requests() > served_while_dead
    })
    .await;
    let serving_after = restarted.elapsed();
    let outcomes = load.finish().await;

    let failed = failures(&outcomes);
    let started_during_kill = outcomes
        .iter()
        .filter(|o| o.started >= kill_started && o.started < killed)
        .count() as u64;
    eprintln!(
        "{protocol:?}: {} requests, {} failed; at kill: pod in flight {in_flight_before}, client pending {pending_before}, started during kill {started_during_kill}; kill took {:?}; Ready {rejoined_after:?} and serving {serving_after:?} after restart",
        outcomes.len(),
        failed.len(),
        killed - kill_started,
    );
    // Requests that started after the kill returned but before the client
    // processed the close can still go out on the dead connection (the pod's
    // FIN is in the client's socket, not yet seen by hyper): they may have
    // reached the server as far as the client can tell, so they are not
    // retried, and fail. Everything from the moment stats showed the pod
    // down must succeed.
    let after_kill = failed.iter().filter(|f| f.started >= killed).count();
    for f in &failed {
        assert!(
            f.started < seen_down,
            "a request started {:?} after stats showed the pod down failed: {:?}",
            f.started - seen_down,
            f.result
        );
        let err = f.result.as_ref().unwrap_err();
        assert!(
            err.endpoint.is_none_or(|e| e == victim.addr()),
            "a failure on another pod: {} ({:?})",
            err.message,
            err.endpoint
        );
    }
    eprintln!(
        "{protocol:?}: {after_kill} failures started after the kill returned (stats showed Backoff {:?} after it)",
        seen_down - killed
    );
    // What was in flight on the pod when it died (plus whatever started
    // while `kill` ran) bounds the failures of requests started before that.
    let before_kill = failed.iter().filter(|f| f.started < killed).count() as u64;
    let in_flight = pending_before.max(in_flight_before) + started_during_kill;
    assert!(
        before_kill <= in_flight,
        "{before_kill} failures of requests started before the kill returned, more than the {in_flight} in flight"
    );
    assert!(
        failed.len() <= 16,
        "{} failures, more than could be in flight (concurrency 16)",
        failed.len()
    );
    assert!(served_while_dead > 0);
    assert!(rejoined_after <= BACKOFF_MAX + Duration::from_millis(1_500));
}

// ===== 4. a pod removed from DNS drains =====

both_protocols!(removed_pod_drains, 16);

/// A pod leaves DNS while requests are held in flight on it: they complete
/// with 200, it gets no new requests, and stats show it Draining, then gone.
async fn removed_pod_drains(protocol: Protocol, net: u8) {
    let _shared = QUIET.read().await;
    let pods = Pod::start_all(&ips(net, 3)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    let client = client(&dns, port, protocol);
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    let leaving = &pods[2];
    let load = Load::start(&client, 16, None);
    wait_for(Duration::from_secs(5), "the leaving pod serving", || {
        leaving.requests() > 50
    })
    .await;

    // Hold its requests so that some are in flight when DNS drops it.
    leaving.set_hang(true);
    wait_for(
        Duration::from_secs(2),
        "requests held on the leaving pod",
        || leaving.in_flight() >= 2,
    )
    .await;
    set_dns(&dns, &[&pods[0], &pods[1]]);
    wait_for(Duration::from_secs(3), "the leaving pod Draining", || {
        state_of(&client, leaving.addr()) == Some(EndpointState::Draining)
    })
    .await;
    let draining = endpoint(&client, leaving.addr()).unwrap();
    let held = leaving.in_flight();
    assert!(
        draining.pending > 0 && held > 0,
        "requests in flight while draining: {draining:?}, held {held}"
    );
    // Load keeps flowing to the others; the draining pod takes nothing new.
    load.wait_more(300, Duration::from_secs(5)).await;
    assert_eq!(
        endpoint(&client, leaving.addr()).unwrap().requests,
        draining.requests,
        "a draining endpoint was dispatched new requests"
    );

    let answered_before = leaving.requests();
    leaving.set_hang(false);
    wait_for(Duration::from_secs(2), "held requests answered", || {
        leaving.in_flight() == 0
    })
    .await;
    let answered = leaving.requests();
    wait_for(Duration::from_secs(2), "the drained endpoint gone", || {
        endpoint(&client, leaving.addr()).is_none()
    })
    .await;
    load.wait_more(300, Duration::from_secs(5)).await;
    let outcomes = load.finish().await;

    eprintln!(
        "{protocol:?}: {} requests, {held} held on the leaving pod at drain (client pending {}), answered {} after release, failures {}",
        outcomes.len(),
        draining.pending,
        answered - answered_before,
        failures(&outcomes).len()
    );
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert!(answered - answered_before >= held);
    assert_eq!(
        leaving.requests(),
        answered,
        "the removed pod got new requests"
    );
    assert_eq!(
        listed(&client),
        BTreeMap::from([
            (pods[0].addr(), EndpointState::Ready),
            (pods[1].addr(), EndpointState::Ready)
        ])
    );
}

// ===== 5. rolling replacement =====

both_protocols!(rolling_replacement_loses_nothing, 18);

/// Every pod replaced, one at a time, as a Deployment rollout does: start a
/// new pod, add it to DNS, remove the old one, wait TTL + 1 s, kill the old
/// one. Zero failed requests under continuous load.
async fn rolling_replacement_loses_nothing(protocol: Protocol, net: u8) {
    let _shared = QUIET.read().await;
    // Old pods .1-.3, new pods .4-.6; all started up front on the one port
    // (the new ones are not in DNS until their turn, so nobody knows them).
    let pods = Pod::start_all(&ips(net, 6)).await.unwrap();
    let port = pods[0].addr().port();
    let (old, new) = pods.split_at(3);
    for pod in new {
        pod.kill().await;
    }
    let dns = dns_for(&old.iter().collect::<Vec<_>>()).await;
    let client = client(&dns, port, protocol);
    wait_ready(
        &client,
        &old.iter().collect::<Vec<_>>(),
        Duration::from_secs(5),
    )
    .await;

    let load = Load::start(&client, 8, None);
    load.wait_more(200, Duration::from_secs(5)).await;
    let mut serving: Vec<&Pod> = old.iter().collect();
    for (old_pod, new_pod) in old.iter().zip(new) {
        new_pod.restart().await.unwrap();
        serving.push(new_pod);
        set_dns(&dns, &serving);
        serving.retain(|p| p.addr() != old_pod.addr());
        set_dns(&dns, &serving);
        // The rollout's grace period (TTL + 1 s) is the scenario, not a
        // synchronisation: the client must be done with the old pod by then.
        tokio::time::sleep(Duration::from_secs(u64::from(TTL) + 1)).await;
        assert!(
            !listed(&client).contains_key(&old_pod.addr()),
            "{} still listed TTL + 1 s after leaving DNS",
            old_pod.addr()
        );
        old_pod.kill().await;
        load.wait_more(100, Duration::from_secs(5)).await;
    }
    wait_ready(&client, &serving, Duration::from_secs(3)).await;
    for pod in new {
        let before = pod.requests();
        wait_for(Duration::from_secs(3), "every new pod serving", || {
            pod.requests() > before
        })
        .await;
    }
    let outcomes = load.finish().await;
    eprintln!(
        "{protocol:?}: {} requests, {} failed, per pod {:?}",
        outcomes.len(),
        failures(&outcomes).len(),
        per_pod(&outcomes)
    );
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
}

// ===== 6. zero endpoints =====

/// A name without records: a request fails with `NoEndpoints` naming the
/// target after `failfast_timeout`, not before and not much after; once a pod
/// appears in DNS, requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_fails_fast_then_recovers() {
    let _shared = QUIET.read().await;
    const FAILFAST: Duration = Duration::from_millis(300);
    let pod = Pod::start(SocketAddr::new(ips(20, 1)[0], 0)).await.unwrap();
    let port = pod.addr().port();
    let dns = DnsServer::start().await.unwrap();
    // NXDOMAIN's negative TTL decides when the client asks again: keep it at
    // the 1 s floor so that the recovery below takes about a second.
    dns.set_negative_ttl(1);
    let client = builder(&dns, Protocol::Http1)
        .failfast_timeout(FAILFAST)
        .build(&authority(port))
        .unwrap();

    let started = Instant::now();
    let err = client.get("/").await.unwrap_err();
    let waited = started.elapsed();
    eprintln!("failed after {waited:?}: {err}");
    assert!(err.is_no_endpoints(), "{err:?}");
    assert!(waited >= FAILFAST, "failed after {waited:?}");
    assert!(waited < Duration::from_secs(2), "failed after {waited:?}");
    assert!(
        err.to_string().contains(&authority(port)),
        "the error names the target: {err}"
    );
    assert!(client.stats().endpoints.is_empty());

    set_dns(&dns, &[&pod]);
    wait_ready(&client, &[&pod], Duration::from_secs(5)).await;
    let outcome = fetch(&client).await;
    assert_eq!(outcome.result.unwrap(), pod.addr().to_string());
}

// ===== 7. a DNS outage under load =====

/// The DNS server goes silent for 5 s under load: nothing fails, during or
/// after. (The contract's scenario is 30 s; what matters is that the outage
/// outlasts several TTLs and lookup timeouts, which 5 s with a 1 s TTL and a
/// 1 s lookup timeout does, at a sixth of the time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_outage_under_load_fails_nothing() {
    let _shared = QUIET.read().await;
    const OUTAGE: Duration = Duration::from_secs(5);
    let pods = Pod::start_all(&ips(22, 3)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    let policy = RefreshPolicy {
        lookup_timeout: Duration::from_secs(1),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(1),
        ..RefreshPolicy::default()
    };
    let client = builder(&dns, Protocol::Http1)
        .refresh_policy(policy)
        .build(&authority(port))
        .unwrap();
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    let load = Load::start(&client, 8, None);
    load.wait_more(200, Duration::from_secs(5)).await;
    dns.set_fault(Fault::Silent);
    let outage = Instant::now();
    let queries = dns.queries();
    wait_for(OUTAGE, "the client seeing lookups fail", || {
        client.stats().discovery.consecutive_failures >= 2
    })
    .await;
    // The rest of the outage is the scenario's duration, not a synchronisation.
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    let during = load.completed();
    let failed_during = load.failed();
    let discovery = client.stats().discovery;
    assert!(dns.queries() > queries, "the client kept asking");
    assert_eq!(listed(&client).len(), 3, "the last good set is kept");
    dns.set_fault(Fault::None);

    wait_for(
        Duration::from_secs(5),
        "a good lookup after the outage",
        || {
            let d = client.stats().discovery;
            d.consecutive_failures == 0 && d.last_error.is_none()
        },
    )
    .await;
    load.wait_more(300, Duration::from_secs(5)).await;
    let outcomes = load.finish().await;
    eprintln!(
        "{} requests ({during} by the end of the outage, {failed_during} failed then), {} failed in all; {} failed lookups in a row during the outage, last error {:?}",
        outcomes.len(),
        failures(&outcomes).len(),
        discovery.consecutive_failures,
        discovery.last_error.map(|e| e.to_string())
    );
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert_eq!(per_pod(&outcomes).len(), 3);
}

// ===== 8. an idle client follows discovery =====

/// With no traffic at all, scaling 2 → 3 → 1 pods in DNS shows in stats:
/// the listed addresses, each Ready (connected before any request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_applies_discovery_changes() {
    let _shared = QUIET.read().await;
    let pods = Pod::start_all(&ips(24, 3)).await.unwrap();
    let port = pods[0].addr().port();
    let dns = dns_for(&[&pods[0], &pods[1]]).await;
    let client = client(&dns, port, Protocol::Http1);

    wait_ready(&client, &[&pods[0], &pods[1]], Duration::from_secs(5)).await;
    set_dns(&dns, &[&pods[0], &pods[1], &pods[2]]);
    wait_ready(
        &client,
        &[&pods[0], &pods[1], &pods[2]],
        Duration::from_secs(5),
    )
    .await;
    set_dns(&dns, &[&pods[1]]);
    wait_ready(&client, &[&pods[1]], Duration::from_secs(5)).await;
    wait_for(Duration::from_secs(2), "removed endpoints gone", || {
        client.stats().endpoints.len() == 1
    })
    .await;

    for pod in &pods {
        assert_eq!(pod.requests(), 0, "no request was sent");
        assert!(
            pod.connections() > 0,
            "{} connected before traffic",
            pod.addr()
        );
    }
    assert!(client.stats().discovery.generation >= 3);
}

// ===== 9. cancelled requests leave no load behind =====

/// 50 requests dropped 20 ms into a 200 ms answer leave every pending count
/// at 0, and the client still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_leave_no_pending() {
    let _shared = QUIET.read().await;
    for (protocol, net) in [(Protocol::Http1, 26), (Protocol::Http2, 27)] {
        let pods = Pod::start_all(&ips(net, 2)).await.unwrap();
        let port = pods[0].addr().port();
        let refs: Vec<&Pod> = pods.iter().collect();
        let dns = dns_for(&refs).await;
        for pod in &pods {
            pod.set_delay(Duration::from_millis(200));
        }
        let client = client(&dns, port, protocol);
        wait_ready(&client, &refs, Duration::from_secs(5)).await;

        let mut requests = JoinSet::new();
        for _ in 0..50 {
            let client = client.clone();
            requests.spawn(async move {
                tokio::time::timeout(Duration::from_millis(20), client.get("/"))
                    .await
                    .is_err()
            });
        }
        let mut dropped = 0;
        while let Some(timed_out) = requests.join_next().await {
            dropped += usize::from(timed_out.unwrap());
        }
        assert_eq!(dropped, 50, "{protocol:?}: every request was cut short");
        wait_for(Duration::from_secs(2), "pending back to 0", || {
            client.stats().endpoints.iter().all(|e| e.pending == 0)
        })
        .await;

        for pod in &pods {
            pod.set_delay(Duration::ZERO);
        }
        for _ in 0..10 {
            let outcome = fetch(&client).await;
            assert!(outcome.result.is_ok(), "{protocol:?}: {:?}", outcome.result);
        }
        wait_for(Duration::from_secs(2), "pending back to 0", || {
            client.stats().endpoints.iter().all(|e| e.pending == 0)
        })
        .await;
        assert!(listed(&client).values().all(|s| *s == EndpointState::Ready));
    }
}

// ===== IPv6 =====

/// A pod on [::1] found through an AAAA record: the client connects to the
/// bracketed address and still sends the service's authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_pod_through_aaaa() {
    let _shared = QUIET.read().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let pod = Pod::start("[::1]:0".parse().unwrap()).await.unwrap();
        let port = pod.addr().port();
        let dns = dns_for(&[&pod]).await;
        let client = client(&dns, port, protocol);
        wait_ready(&client, &[&pod], Duration::from_secs(5)).await;
        let outcome = fetch(&client).await;
        assert_eq!(outcome.result.unwrap(), format!("[::1]:{port}"));
        assert_eq!(
            pod.last_authority().as_deref(),
            Some(authority(port).as_str())
        );
    }
}

// ===== tower layers =====

/// The client under `ServiceBuilder::new().concurrency_limit(4).timeout(..)`:
/// requests succeed, at most 4 are ever in flight, and the timeout fires on
/// a pod that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composes_with_tower_layers() {
    let _shared = QUIET.read().await;
    let pods = Pod::start_all(&ips(28, 2)).await.unwrap();
    let port = pods[0].addr().port();
    let refs: Vec<&Pod> = pods.iter().collect();
    let dns = dns_for(&refs).await;
    for pod in &pods {
        pod.set_delay(Duration::from_millis(20));
    }
    let client = client(&dns, port, Protocol::Http1);
    wait_ready(&client, &refs, Duration::from_secs(5)).await;

    // Counts the calls inside the limit: from `call` until the client's
    // response future resolves, which is what `concurrency_limit` bounds (the
    // balancer's own pending count lasts until the body is read, a little
    // longer than the permit).
    let inside = Counter::default();
    let svc = tower::ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_millis(500))
        .layer_fn(|inner| Counting {
            inner,
            counter: inside.clone(),
        })
        .service(client.clone());

    let mut requests = JoinSet::new();
    for _ in 0..40 {
        let svc = svc.clone();
        requests.spawn(async move {
            let rsp = svc
                .oneshot(http::Request::get("/").body(Default::default()).unwrap())
                .await?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await?.to_bytes();
            Ok::<_, tower::BoxError>((status, body))
        });
    }
    let mut ok = 0;
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.unwrap().unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).parse::<SocketAddr>().is_ok());
        ok += 1;
    }
    let most = inside.most.load(Ordering::Relaxed);
    let served: u64 = pods.iter().map(Pod::requests).sum();
    eprintln!("{ok} requests through the layers, at most {most} inside the limit at once");
    assert_eq!(served, 40);
    assert_eq!(ok, 40);
    assert!(
        most <= 4,
        "{most} requests in flight under concurrency_limit(4)"
    );
    assert!(most >= 2, "requests ran concurrently ({most})");

    for pod in &pods {
        pod.set_hang(true);
    }
    let mut svc = svc;
    let started = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::get("/").body(Default::default()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.is::<tower::timeout::error::Elapsed>(),
        "the timeout layer fired: {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    for pod in &pods {
        pod.set_hang(false);
    }
}

/// How many calls are inside a [`Counting`] service now, and at most.
#[derive(Clone, Default)]
struct Counter {
    now: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
}

/// A layer that counts the calls in flight through the service it wraps.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    counter: Counter,
}

impl<S, Req> Service<Req> for Counting<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = self.counter.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.counter.most.fetch_max(now, Ordering::SeqCst);
        let call = self.inner.call(req);
        let counter = self.counter.clone();
        Box::pin(async move {
            let result = call.await;
            counter.now.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}
