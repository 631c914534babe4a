//! DNS fault injection over real sockets: what discovery and the balanced
//! client do when the DNS server misbehaves after a good answer.
//!
//! The resolver-level classification of each fault (garbage is transient,
//! a late answer is a timeout, …) is covered in `dns_resolve.rs`; here the
//! question is the contract one level up: the last good set is kept, the
//! error shows in the discovery stats, nothing panics, and requests under
//! load never fail because of DNS.
//!
//! Each test uses its own `127.0.N.x` range; waits are `wait_for` with a
//! deadline. The only fixed durations are the faults' own (how long DNS is
//! broken), and they say so.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use headless_lb::http::Client;
use headless_lb::resolve::HickoryResolver;
use headless_lb::testing::{DnsServer, Fault, FaultyDns, FaultyMode, Pod, wait_for};
use headless_lb::{Discovery, RefreshPolicy, ResolveError};
use http_body_util::BodyExt;
use tokio::task::JoinSet;

const SERVICE: &str = "web.default.svc.cluster.local";
const PORT: u16 = 8080;
/// The resolver's per-query timeout: short, so that the timeout faults are quick.
const QUERY_TIMEOUT: Duration = Duration::from_millis(200);
/// Generous deadline for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(10);

/// `127.0.net.1 ..= 127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

fn addrs(ips: &[IpAddr], port: u16) -> BTreeSet<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
}

/// Fast refresh and backoff (100 ms, no jitter) so that a few seconds of
/// fault mean many lookups.
fn fast_policy() -> RefreshPolicy {
    RefreshPolicy {
        min_refresh: Duration::from_millis(100),
        max_refresh: Duration::from_millis(200),
        jitter: 0.0,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(200),
        lookup_timeout: Duration::from_secs(2),
        ..RefreshPolicy::default()
    }
}

fn resolver(nameserver: SocketAddr) -> Arc<HickoryResolver> {
    Arc::new(
        HickoryResolver::builder()
            .nameserver(nameserver)
            .timeout(QUERY_TIMEOUT)
            .attempts(1)
            .build()
            .expect("resolver"),
    )
}

fn discovery(nameserver: SocketAddr) -> Discovery {
    let target = format!("{SERVICE}:{PORT}").parse().expect("target");
    Discovery::spawn_with_policy(target, resolver(nameserver), fast_policy())
}

/// Samples the published set every few milliseconds until stopped and
/// returns every distinct set seen: a set that shrank, even briefly, shows up.
struct SetWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<BTreeSet<SocketAddr>>>,
}

impl SetWatch {
    fn start(discovery: &Discovery) -> SetWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sets = discovery.watch();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen: Vec<BTreeSet<SocketAddr>> = vec![(**sets.borrow_and_update()).clone()];
            while !flag.load(Ordering::Relaxed) {
                // Every published set, not a sample: `changed` sees each one.
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_millis(20), sets.changed()).await
                {
                    let set = (**sets.borrow_and_update()).clone();
                    if seen.last() != Some(&set) {
                        seen.push(set);
                    }
                }
            }
            seen
        });
        SetWatch { stop, task }
    }

    async fn finish(self) -> Vec<BTreeSet<SocketAddr>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// One discovery scenario: a good answer, then `mode` for a while. The set
/// must stay the good one, the error must satisfy `expect`, and lookups must
/// go on (backing off, not stuck); then a good answer with another set is
/// picked up again.
async fn fault_keeps_the_set(
    net: u8,
    mode: FaultyMode,
    what: &str,
    expect: fn(&ResolveError) -> bool,
) -> FaultyDns {
    let dns = FaultyDns::start(FaultyMode::Answer).await.unwrap();
    let good = ips(net, 3);
    // TTL 0: the refresh loop asks again after min_refresh (100 ms).
    dns.set_ips(&good, 0);
    let d = discovery(dns.addr());
    wait_for(DEADLINE, "the first answer", || {
        *d.endpoints() == addrs(&good, PORT)
    })
    .await;
    let watch = SetWatch::start(&d);

    dns.set_mode(mode);
    let lookups_before = d.stats().lookups;
    wait_for(DEADLINE, &format!("three failed lookups ({what})"), || {
        d.stats().consecutive_failures >= 3
    })
    .await;
    let stats = d.stats();
    let error = stats.last_error.clone().expect("an error in the stats");
    eprintln!("{what}: {error}");
    assert!(error.is_transient(), "{what}: {error:?} is not transient");
    assert!(expect(&error), "{what}: unexpected error {error:?}");
    assert!(stats.lookups >= lookups_before + 3, "{stats:?}");
    assert_eq!(*d.endpoints(), addrs(&good, PORT), "{what}: set changed");
    assert_eq!(stats.endpoints, 3, "{stats:?}");

    // The fault ends with a changed answer: discovery catches up.
    let next = ips(net, 4);
    dns.set_ips(&next, 0);
    dns.set_mode(FaultyMode::Answer);
    wait_for(DEADLINE, "the set after the fault", || {
        *d.endpoints() == addrs(&next, PORT)
    })
    .await;
    assert!(d.stats().last_error.is_none(), "{:?}", d.stats());

    let seen = watch.finish().await;
    assert_eq!(
        seen,
        vec![addrs(&good, PORT), addrs(&next, PORT)],
        "{what}: every set published during the fault"
    );
    dns
}

// ===== discovery under broken answers =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_transient_and_the_set_is_kept() {
    fault_keeps_the_set(101, FaultyMode::Garbage, "garbage", |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_with_tcp_refused_are_transient_and_the_set_is_kept() {
    let dns = fault_keeps_the_set(
        102,
        FaultyMode::TruncatedTcpRefused,
        "truncated, TCP refused",
        |_| true,
    )
    .await;
    eprintln!(
        "truncated, TCP refused: {} UDP, {} TCP queries",
        dns.udp_queries(),
        dns.tcp_queries()
    );
    assert!(dns.udp_queries() >= 3, "queries kept coming");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_timeout_are_timeouts_and_the_set_is_kept() {
    fault_keeps_the_set(
        103,
        FaultyMode::Delay(QUERY_TIMEOUT * 3),
        "answers after 3× the timeout",
        ResolveError::is_timeout,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_is_transient_and_the_set_is_kept() {
    fault_keeps_the_set(
        104,
        FaultyMode::ServFail,
        "SERVFAIL",
        |e| matches!(e, ResolveError::ServerFailure { code, .. } if code == "SERVFAIL"),
    )
    .await;
}

// ===== the balanced client under load while DNS misbehaves =====

/// Continuous GET / from `concurrency` workers until stopped; counts
/// requests and failures (anything but a 200 with a body).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    workers: JoinSet<Vec<String>>,
}

impl Load {
    fn start(client: &Client, concurrency: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (client, stop, done, failed) =
                (client.clone(), stop.clone(), done.clone(), failed.clone());
            workers.spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = get(&client).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                errors
            });
        }
        Load {
            stop,
            done,
            failed,
            workers,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the workers and returns (requests, every failure).
    async fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        while let Some(e) = self.workers.join_next().await {
            errors.extend(e.unwrap());
        }
        assert_eq!(errors.len() as u64, self.failed.load(Ordering::Relaxed));
        (self.done(), errors)
    }
}

async fn get(client: &Client) -> Result<(), String> {
    let rsp = tokio::time::timeout(Duration::from_secs(5), client.get("/"))
        .await
        .map_err(|_| "hung".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != 200 || body.is_empty() {
        return Err(format!("status {status}, body {body:?}"));
    }
    Ok(())
}

/// Three pods behind a real DNS server, a client with a fast refresh, and
/// load at concurrency 8, all Ready.
async fn pods_dns_client(net: u8) -> (Vec<Pod>, DnsServer, Client) {
    let pods = Pod::start_all(&ips(net, 3)).await.unwrap();
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set_negative_ttl(0);
    dns.set_ips(SERVICE, &ips(net, 3), 0);
    let client: Client = Client::builder()
        .resolver(resolver(dns.addr()))
        .refresh_policy(fast_policy())
        .build(&format!("{SERVICE}:{port}"))
        .unwrap();
    wait_for(DEADLINE, "three Ready endpoints", || {
        client
            .stats()
            .endpoints
            .iter()
            .filter(|e| e.state == headless_lb::balance::EndpointState::Ready)
            .count()
            == 3
    })
    .await;
    (pods, dns, client)
}

/// SERVFAIL switched on and off every 150 ms for 3 s while 8 workers send
/// requests: not one request fails, the set is never anything but the three
/// pods, and the failures did reach discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_flapping_under_load_fails_no_request_and_never_shrinks_the_set() {
    let (pods, dns, client) = pods_dns_client(105).await;
    let full = addrs(&ips(105, 3), pods[0].addr().port());
    let watch = SetWatch::start(client.discovery());
    let load = Load::start(&client, 8);

    let errors_seen = Arc::new(AtomicUsize::new(0));
    let lookups_before = client.discovery().stats().lookups;
    // The fault's own schedule: 20 flips of 150 ms.
    for flip in 0..20 {
        dns.set_fault(if flip % 2 == 0 {
            Fault::ServFail
        } else {
            Fault::None
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        if client.discovery().stats().last_error.is_some() {
            errors_seen.fetch_add(1, Ordering::Relaxed);
        }
    }
    dns.set_fault(Fault::None);
    let lookups = client.discovery().stats().lookups - lookups_before;
    let (requests, errors) = load.finish().await;
    let seen = watch.finish().await;

    eprintln!(
        "SERVFAIL flapping: {requests} requests, {} failed, {lookups} lookups, \
         error visible at {} of 20 checks",
        errors.len(),
        errors_seen.load(Ordering::Relaxed)
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(requests > 100, "load flowed: {requests}");
    assert_eq!(seen, vec![full], "the set never changed");
    assert!(lookups >= 10, "discovery kept looking up: {lookups}");
    assert!(
        errors_seen.load(Ordering::Relaxed) >= 1,
        "SERVFAIL reached the discovery stats"
    );
}

/// The name disappears (NXDOMAIN) for 2 s under load and comes back: with
/// the default `KeepLastGood`, not one request fails and the set is kept;
/// meanwhile discovery reports no-records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_for_two_seconds_under_load_fails_no_request() {
    let (pods, dns, client) = pods_dns_client(106).await;
    let port = pods[0].addr().port();
    let full = addrs(&ips(106, 3), port);
    let watch = SetWatch::start(client.discovery());
    let load = Load::start(&client, 8);
    tokio::time::sleep(Duration::from_millis(200)).await;

    dns.remove(SERVICE);
    wait_for(DEADLINE, "NXDOMAIN to reach discovery", || {
        client
            .discovery()
            .stats()
            .last_error
            .as_ref()
            .is_some_and(ResolveError::is_no_records)
    })
    .await;
    let during = load.done();
    // The outage's own length.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.discovery().stats();
    assert!(stats.consecutive_failures >= 3, "{stats:?}");
    assert_eq!(stats.endpoints, 3, "{stats:?}");
    assert!(
        load.done() > during + 50,
        "requests flowed during the outage"
    );

    dns.set_ips(SERVICE, &ips(106, 3), 0);
    wait_for(DEADLINE, "a good answer again", || {
        client.discovery().stats().last_error.is_none()
    })
    .await;
    let (requests, errors) = load.finish().await;
    let seen = watch.finish().await;
    eprintln!(
        "NXDOMAIN for 2 s: {requests} requests, {} failed",
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(seen, vec![full], "the set never changed");
}
