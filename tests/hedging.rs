//! Hedged requests over real sockets: two pods on `127.0.N.1` and `.2` behind
//! a real DNS server, one of them slow or hung, and the balanced HTTP client
//! (HTTP/1.1 and h2c) or gRPC channel with and without a [`HedgePolicy`].
//!
//! With two pods of equal estimate, P2C sends concurrent requests to the
//! less loaded, so a burst of them starts some on the slow pod, which is
//! what every test here needs; when the fast pod answered each request of a
//! burst before the next was picked, none did, and [`until`] sends another
//! burst. Every test uses its own `127.0.N.x` range; waits are `wait_for`
//! with a deadline, and the slow pod's delay is the only fixed time, the
//! thing measured against.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::http::{Client, Protocol, ServedBy};
use headless_lb::testing::{DnsServer, Pod, wait_for, wait_for_async};
use headless_lb::{BuildError, HedgePolicy, HedgePolicyError, HedgeStats, Idempotent};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinSet;
use tokio::time::Instant;

const SERVICE: &str = "web.default.svc.cluster.local";
/// How long the slow pod takes: what a request stuck on it would wait.
const SLOW: Duration = Duration::from_secs(2);
/// The hedge delay of the fixed policies here.
const HEDGE_AFTER: Duration = Duration::from_millis(50);
/// Requests sent at once in a burst: half start on each pod.
const BURST: usize = 8;

/// Latency figures want the machine to themselves.
static QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ===== fixtures =====

/// Two pods, `slow` first, on `127.0.net.1` and `.2`, one port, in DNS.
struct Pair {
    _dns: DnsServer,
    dns_addr: SocketAddr,
    slow: Pod,
    fast: Pod,
    port: u16,
}

impl Pair {
    async fn start(net: u8) -> Pair {
        let ips: Vec<IpAddr> = (1..=2)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
            .collect();
        let mut pods = Pod::start_all(&ips).await.unwrap();
        let fast = pods.pop().unwrap();
        let slow = pods.pop().unwrap();
        let dns = DnsServer::start().await.unwrap();
        dns.set_ips(SERVICE, &ips, 1);
        let port = slow.addr().port();
        Pair {
            dns_addr: dns.addr(),
            _dns: dns,
            slow,
            fast,
            port,
        }
    }

    fn builder(&self, protocol: Protocol) -> headless_lb::http::ClientBuilder {
        Client::builder()
            .nameserver(self.dns_addr)
            .protocol(protocol)
    }

    async fn client(&self, protocol: Protocol, policy: Option<HedgePolicy>) -> Client {
        let mut builder = self.builder(protocol);
        if let Some(policy) = policy {
            builder = builder.hedge(policy);
        }
        let client = builder.build(&format!("{SERVICE}:{}", self.port)).unwrap();
        ready(&client).await;
        client
    }
}

/// Waits until both pods are Ready in `client`.
async fn ready(client: &Client) {
    wait_for(Duration::from_secs(5), "both pods ready", || {
        let stats = client.stats().endpoints;
        stats.len() == 2
            && stats
                .iter()
                .all(|e| e.state == headless_lb::EndpointState::Ready)
    })
    .await;
}

fn hedge_stats(client: &Client) -> HedgeStats {
    client.stats().hedging.expect("the client hedges")
}

/// What one request of a burst saw.
#[derive(Debug)]
struct Answer {
    status: u16,
    served_by: Option<SocketAddr>,
    took: Duration,
}

/// Sends `n` requests made by `request` at once, and collects their answers
/// (a failed request panics: no test here expects one).
async fn burst(
    client: &Client,
    n: usize,
    request: impl Fn() -> http::Request<Full<Bytes>>,
) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let call = client.request(request());
        set.spawn(async move {
            let started = Instant::now();
            let response = call.await.expect("a request failed");
            let took = started.elapsed();
            let status = response.status().as_u16();
            let served_by = response.extensions().get::<ServedBy>().map(|s| s.0);
            response.into_body().collect().await.unwrap();
            Answer {
                status,
                served_by,
                took,
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = set.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

/// Runs `attempt` (a burst) until `done` says it did what the test needs
/// (a request started on the slow pod), at most 20 times.
async fn until<T, F, Fut>(what: &str, mut attempt: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..20 {
        let outcome = attempt().await;
        if done(&outcome) {
            return outcome;
        }
    }
    panic!("20 bursts and never {what}");
}

fn get() -> http::Request<Full<Bytes>> {
    http::Request::get("/").body(Full::default()).unwrap()
}

fn post() -> http::Request<Full<Bytes>> {
    http::Request::post("/")
        .body(Full::new(Bytes::from_static(b"order #1")))
        .unwrap()
}

fn slowest(answers: &[Answer]) -> Duration {
    answers.iter().map(|a| a.took).max().unwrap_or_default()
}

/// `127.0.net.1` to `127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

/// Waits until `endpoints` lists `n` pods, all Ready.
async fn all_ready(n: usize, endpoints: impl Fn() -> Vec<headless_lb::EndpointStats>) {
    wait_for(Duration::from_secs(5), "every pod ready", || {
        let stats = endpoints();
        stats.len() == n
            && stats
                .iter()
                .all(|e| e.state == headless_lb::EndpointState::Ready)
    })
    .await;
}

fn fixed() -> HedgePolicy {
    HedgePolicy::after(HEDGE_AFTER)
        .budget(1.0)
        .burst(BURST as u32)
}

// ===== (a) a slow pod: the hedge answers =====

/// Requests that start on a pod taking [`SLOW`] are answered by the other
/// pod soon after the hedge delay; without hedging they wait it out.
async fn a_slow_pod_is_hedged(net: u8, protocol: Protocol) {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(net).await;
    pair.slow.set_delay(SLOW);

    // Without hedging, a request that starts on the slow pod waits it out.
    let plain = pair.client(protocol, None).await;
    let answers = until(
        "a request on the slow pod",
        || burst(&plain, BURST, get),
        |answers| pair.slow.requests() > 0 || slowest(answers) >= SLOW,
    )
    .await;
    let without = slowest(&answers);
    assert!(
        without >= SLOW,
        "{protocol:?}: without hedging, requests on the slow pod wait: {answers:?}"
    );
    assert!(plain.stats().hedging.is_none());
    drop(plain);

    let hedged = pair.client(protocol, Some(fixed())).await;
    let answers = until(
        "a hedge",
        || burst(&hedged, BURST, get),
        |_| hedge_stats(&hedged).sent > 0,
    )
    .await;
    let with = slowest(&answers);
    let stats = hedge_stats(&hedged);
    eprintln!(
        "{protocol:?}: slowest of {BURST} requests with a pod {SLOW:?} slow: {without:?} without hedging, {with:?} with (after {HEDGE_AFTER:?}); {stats:?}"
    );
    assert!(
        with < SLOW / 4,
        "{protocol:?}: hedged requests answer well before the slow pod: {answers:?}"
    );
    assert!(answers.iter().all(|a| a.status == 200));
    assert!(
        answers
            .iter()
            .all(|a| a.served_by == Some(pair.fast.addr())),
        "{protocol:?}: every answer came from the fast pod: {answers:?}"
    );
    assert!(stats.sent >= 1 && stats.won == stats.sent, "{stats:?}");
    assert_eq!(stats.refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_a_slow_pod_is_hedged_to_the_other() {
    a_slow_pod_is_hedged(230, Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_a_slow_pod_is_hedged_to_the_other() {
    a_slow_pod_is_hedged(231, Protocol::Http2).await;
}

// ===== a second hedge when the first lands on a stalled pod too =====

/// What the second-stall tests use of a pod, HTTP or gRPC.
trait Stalls {
    fn pause_for(&self, pause: Duration);
    fn in_flight(&self) -> u64;
    fn requests(&self) -> u64;
}

/// [`Stalls`] for a test pod type, whose inherent methods of those names it calls.
macro_rules! stalls {
    ($pod:ty) => {
        impl Stalls for $pod {
            fn pause_for(&self, pause: Duration) {
                <$pod>::pause_for(self, pause)
            }
            fn in_flight(&self) -> u64 {
                <$pod>::in_flight(self)
            }
            fn requests(&self) -> u64 {
                <$pod>::requests(self)
            }
        }
    };
}

stalls!(Pod);

/// Three pods; a burst of requests while the first pod is paused, and the
/// second pod paused once only the first still holds requests: the hedges
/// of the requests held on the first go to the second or the third by P2C,
/// and those on the second are held again. With `max_hedges(2)` a second
/// hedge goes to the third pod a delay later; with one hedge (the default)
/// such a request waits out a pause.
///
/// `start` makes three fresh pods, their DNS server and a hedging client;
/// `send` sends a burst of [`BURST`] requests and returns each one's time;
/// `sent` reads the client's hedges sent. Returns the times of the first
/// burst in which a hedge reached the paused second pod, and how many
/// second hedges went out in it.
async fn a_second_stall<P: Stalls, C>(
    start: impl AsyncFn() -> (Vec<P>, DnsServer, C),
    send: impl Fn(&C) -> tokio::task::JoinHandle<Vec<Duration>>,
    sent: impl Fn(&C) -> u64,
) -> (Vec<Duration>, u64) {
    for _ in 0..20 {
        let (pods, _dns, client) = start().await;
        let [first, second, third] = &pods[..] else {
            panic!("three pods")
        };
        first.pause_for(SLOW);
        let requests = send(&client);
        // Every original arrived: those on the other two pods answered, the
        // first holds its own. (Or a hedge went out first: a retry below.)
        wait_for(
            Duration::from_secs(2),
            "only the first pod holding requests",
            || {
                let settled = first.in_flight() > 0
                    && second.in_flight() == 0
                    && third.in_flight() == 0
                    && first.in_flight() + second.requests() + third.requests() == BURST as u64;
                settled || sent(&client) > 0
            },
        )
        .await;
        let held = first.in_flight();
        second.pause_for(SLOW);
        // Read after the pause began: with no hedge sent by then, every
        // hedge that reaches the second pod finds it paused.
        let hedges_before = sent(&client);
        let mut reached_second = false;
        wait_for(
            Duration::from_secs(5),
            "a hedge on the second pod or the answers",
            || {
                reached_second |= second.in_flight() > 0;
                reached_second || requests.is_finished()
            },
        )
        .await;
        let times = requests.await.unwrap();
        if hedges_before == 0 && reached_second {
            return (times, sent(&client) - held);
        }
    }
    panic!("20 bursts and never a hedge on the second paused pod");
}

/// Three HTTP/2 pods on `127.0.net.1` to `.3` and a client hedging with
/// [`fixed`] and `max_hedges`.
async fn http_trio(net: u8, max_hedges: u32) -> (Vec<Pod>, DnsServer, Client) {
    let ips = ips(net, 3);
    let pods = Pod::start_all(&ips).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips, 1);
    let client = Client::builder()
        .nameserver(dns.addr())
        .protocol(Protocol::Http2)
        .hedge(fixed().max_hedges(max_hedges))
        .build(&format!("{SERVICE}:{}", pods[0].addr().port()))
        .unwrap();
    all_ready(3, || client.stats().endpoints).await;
    (pods, dns, client)
}

/// [`a_second_stall`] over HTTP/2.
async fn http_second_stall(net: u8, max_hedges: u32) -> (Vec<Duration>, u64) {
    a_second_stall(
        async || http_trio(net, max_hedges).await,
        |client: &Client| {
            let client = client.clone();
            tokio::spawn(async move {
                let answers = burst(&client, BURST, get).await;
                assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
                answers.iter().map(|a| a.took).collect()
            })
        },
        |client: &Client| hedge_stats(client).sent,
    )
    .await
}

/// The slowest of `times`.
fn max_time(times: &[Duration]) -> Duration {
    times.iter().copied().max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hedge_answers_when_the_first_lands_on_a_stalled_pod_too() {
    let _quiet = QUIET.lock().await;
    let (times, extra) = http_second_stall(242, 2).await;
    eprintln!(
        "max_hedges(2): slowest {:?}, {extra} second hedges",
        max_time(&times)
    );
    assert!(extra >= 1, "a request got a second hedge: {times:?}");
    assert!(
        max_time(&times) < SLOW / 4,
        "no request waits out a pause: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hedge_by_default_so_a_second_stall_is_waited_out() {
    let _quiet = QUIET.lock().await;
    let (times, extra) = http_second_stall(243, 1).await;
    assert_eq!(extra, 0, "one hedge per request at most");
    assert!(
        max_time(&times) >= SLOW / 2,
        "the request whose hedge is held waits for a pause to end: {times:?}"
    );
}

// ===== (d) the losing copy is cancelled at the pod =====

/// The copies left on the hung pod are dropped by the client when the hedge
/// wins; the pod sees them go (its in-flight count drops to 0) long before
/// it would have answered, and answers none. HTTP/1.1: the pod sees the
/// connection close (the only way to cancel an HTTP/1.1 request), so the
/// connection is not reused; the next request to the pod needs a new one.
/// HTTP/2: the stream is reset, and the connection stays.
async fn the_loser_is_cancelled_at_the_pod(net: u8, protocol: Protocol) {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(net).await;
    pair.slow.set_hang(true);
    let client = pair.client(protocol, Some(fixed())).await;

    let started = Instant::now();
    let answers = until(
        "a hedge",
        || burst(&client, BURST, get),
        |_| hedge_stats(&client).sent > 0,
    )
    .await;
    assert!(slowest(&answers) < SLOW / 4, "{answers:?}");
    let stats = hedge_stats(&client);
    wait_for(
        SLOW / 2,
        "the hung pod to see its requests cancelled",
        || pair.slow.in_flight() == 0,
    )
    .await;
    let cancelled_after = started.elapsed();
    assert_eq!(pair.slow.requests(), 0, "the hung pod answered nothing");
    eprintln!(
        "{protocol:?}: {} requests cancelled on the hung pod within {cancelled_after:?} of the burst",
        stats.sent
    );
    let connections_after_cancel = pair.slow.connections();

    // The pod recovers; requests reach it again (P2C probes it).
    pair.slow.set_hang(false);
    wait_for_async(
        Duration::from_secs(10),
        "the pod to serve again",
        || async {
            burst(&client, 2, get).await;
            pair.slow.requests() > 0
        },
    )
    .await;
    let new_connections = pair.slow.connections() - connections_after_cancel;
    match protocol {
        // Every connection that carried a cancelled request was closed: the
        // pod is reached over a new one.
        Protocol::Http1 => assert!(
            new_connections >= 1,
            "HTTP/1.1: a connection whose request was cancelled is not reused"
        ),
        // One multiplexed connection: the streams were reset, it stays.
        _ => assert_eq!(new_connections, 0, "HTTP/2 keeps its connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_the_losing_copy_is_cancelled_and_its_connection_closed() {
    the_loser_is_cancelled_at_the_pod(232, Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_the_losing_copy_is_cancelled_by_a_stream_reset() {
    the_loser_is_cancelled_at_the_pod(233, Protocol::Http2).await;
}

// ===== (b) the budget holds =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_stay_within_the_budget() {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(234).await;
    // Every answer takes longer than the hedge delay: every request is due
    // a hedge, and only the budget says no.
    pair.slow.set_delay(Duration::from_millis(20));
    pair.fast.set_delay(Duration::from_millis(20));
    let (budget, burst_cap, n) = (0.1, 3u32, 200usize);
    let policy = HedgePolicy::after(Duration::from_millis(1))
        .budget(budget)
        .burst(burst_cap);
    let client = pair.client(Protocol::Http2, Some(policy)).await;

    let mut answers = Vec::new();
    for _ in 0..n / 10 {
        answers.extend(burst(&client, 10, get).await);
    }
    assert_eq!(answers.len(), n);
    let stats = hedge_stats(&client);
    let cap = (budget * n as f64) as u64 + u64::from(burst_cap);
    eprintln!("budget {budget}, burst {burst_cap}, {n} requests: {stats:?}, cap {cap}");
    assert!(stats.sent <= cap, "{stats:?} over the cap {cap}");
    assert!(stats.sent >= cap - 2, "the budget is used: {stats:?}");
    assert_eq!(
        stats.sent + stats.refused,
        n as u64,
        "every request was due a hedge: {stats:?}"
    );
    let served = pair.slow.requests() + pair.fast.requests();
    assert!(
        served <= n as u64 + stats.sent,
        "the pods saw at most one extra request per hedge: {served}"
    );
}

// ===== (c) what must not be sent twice is never hedged =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_never_hedged() {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(235).await;
    let slow = Duration::from_millis(300);
    pair.slow.set_delay(slow);
    let never_hedged = |stats: HedgeStats| {
        assert_eq!((stats.sent, stats.refused), (0, 0), "{stats:?}");
    };

    // A fresh client for each kind of request: a client that waited on the
    // slow pod before sends little there afterwards.
    let client = pair.client(Protocol::Http1, Some(fixed())).await;
    let mut sent = 0;
    let posts = until(
        "a POST on the slow pod",
        || {
            sent += BURST as u64;
            burst(&client, BURST, post)
        },
        |answers| slowest(answers) >= slow,
    )
    .await;
    assert!(slowest(&posts) >= slow, "POSTs on the slow pod waited");
    never_hedged(hedge_stats(&client));

    let client = pair.client(Protocol::Http1, Some(fixed())).await;
    let marked_get = || {
        let mut request = get();
        request.extensions_mut().insert(Idempotent(false));
        request
    };
    until(
        "a GET on the slow pod",
        || {
            sent += BURST as u64;
            burst(&client, BURST, marked_get)
        },
        |answers| slowest(answers) >= slow,
    )
    .await;
    never_hedged(hedge_stats(&client));
    assert_eq!(
        pair.slow.requests() + pair.fast.requests(),
        sent,
        "each request reached one pod, once"
    );

    // A POST its sender marks idempotent is hedged, body and all.
    let client = pair.client(Protocol::Http1, Some(fixed())).await;
    let marked_post = || {
        let mut request = post();
        request.extensions_mut().insert(Idempotent(true));
        request
    };
    let answers = until(
        "a hedge",
        || burst(&client, BURST, marked_post),
        |_| hedge_stats(&client).sent > 0,
    )
    .await;
    assert!(slowest(&answers) < slow, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_copied_is_not_hedged() {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(236).await;
    let slow = Duration::from_millis(300);
    pair.slow.set_delay(slow);
    let client: Client<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>> =
        pair.builder(Protocol::Http2)
            .hedge(fixed())
            .build(&format!("{SERVICE}:{}", pair.port))
            .unwrap();
    wait_for(Duration::from_secs(5), "both pods ready", || {
        client.stats().endpoints.len() == 2
    })
    .await;
    let mut set = JoinSet::new();
    for _ in 0..BURST {
        let request = http::Request::get("/")
            .body(Full::new(Bytes::from_static(b"q")).boxed())
            .unwrap();
        let call = client.request(request);
        set.spawn(async move { call.await.map(|r| r.status()) });
    }
    while let Some(done) = set.join_next().await {
        assert_eq!(done.unwrap().unwrap(), 200);
    }
    let stats = client.stats().hedging.unwrap();
    assert_eq!((stats.sent, stats.refused), (0, 0), "{stats:?}");
}

// ===== never worse than no hedge =====

/// The original fails (its pod crashes) after the hedge went out: the
/// hedge's answer is returned. The hedge fails (its pod crashes) while the
/// original runs: the original's answer is returned. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_of_one_copy_is_ignored_while_the_other_runs() {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(237).await;
    pair.slow.set_hang(true);
    pair.fast.set_delay(Duration::from_millis(400));
    let client = pair.client(Protocol::Http2, Some(fixed())).await;

    let requests = {
        let client = client.clone();
        tokio::spawn(async move { burst(&client, BURST, get).await })
    };
    // Every request is hedged: those on the hung pod to the slow one and
    // the other way round.
    wait_for(Duration::from_secs(2), "every request hedged", || {
        hedge_stats(&client).sent == BURST as u64
    })
    .await;
    // The originals and hedges on the hung pod fail now.
    pair.slow.kill().await;
    let answers = requests.await.unwrap();
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.served_by == Some(pair.fast.addr()))
    );
    let stats = hedge_stats(&client);
    // The originals that were on the crashed pod were answered by their hedge.
    assert!(stats.won >= 1 && stats.won < BURST as u64, "{stats:?}");
}

// ===== the delay from observed answers =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_delay_follows_the_answers_then_hedges_a_hung_pod() {
    let _quiet = QUIET.lock().await;
    let pair = Pair::start(238).await;
    let client = pair
        .client(Protocol::Http2, Some(HedgePolicy::auto()))
        .await;

    assert_eq!(hedge_stats(&client).delay, None, "no answers, no delay");
    for _ in 0..5 {
        burst(&client, 10, get).await;
    }
    let delay = hedge_stats(&client)
        .delay
        .expect("50 answers make a percentile");
    assert!(
        delay >= headless_lb::client::DEFAULT_HEDGE_MIN_DELAY && delay < SLOW / 4,
        "{delay:?}"
    );

    pair.slow.set_hang(true);
    let answers = until(
        "a hedge",
        || burst(&client, BURST, get),
        |_| hedge_stats(&client).sent > 0,
    )
    .await;
    let stats = hedge_stats(&client);
    eprintln!(
        "auto: delay {delay:?}; slowest of {BURST} with a hung pod {:?}; {stats:?}",
        slowest(&answers)
    );
    assert!(slowest(&answers) < SLOW / 4, "{answers:?}");
}

// ===== settings =====

#[tokio::test]
async fn invalid_policies_fail_the_build_with_a_typed_error() {
    let build = |policy: HedgePolicy| {
        Client::builder()
            .hedge(policy)
            .build::<Full<Bytes>>("web.default.svc.cluster.local:8080")
            .map(drop)
    };
    let err = build(HedgePolicy::auto().budget(1.5)).unwrap_err();
    assert!(
        matches!(err, BuildError::Hedge(HedgePolicyError::Budget(b)) if b == 1.5),
        "{err}"
    );
    let err = build(HedgePolicy::percentile(0.0, Duration::ZERO)).unwrap_err();
    assert!(matches!(
        err,
        BuildError::Hedge(HedgePolicyError::Percentile(_))
    ));
    let err = build(HedgePolicy::auto().budget(f64::NAN)).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
    for n in [0, 5] {
        let err = build(HedgePolicy::auto().max_hedges(n)).unwrap_err();
        assert!(
            matches!(err, BuildError::Hedge(HedgePolicyError::MaxHedges(m)) if m == n),
            "{err}"
        );
    }
    assert!(build(HedgePolicy::auto().max_hedges(4)).is_ok());
    assert!(build(HedgePolicy::after(Duration::ZERO).budget(0.0)).is_ok());
}

// ===== gRPC =====

#[cfg(feature = "tonic")]
mod grpc {
    use super::*;
    use headless_lb::grpc::Channel;
    use headless_lb::testing::GrpcPod;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    const CHECK: &str = "/grpc.health.v1.Health/Check";

    struct GrpcPair {
        _dns: DnsServer,
        dns_addr: SocketAddr,
        slow: GrpcPod,
        fast: GrpcPod,
        port: u16,
    }

    impl GrpcPair {
        async fn start(net: u8) -> GrpcPair {
            let ips: Vec<IpAddr> = (1..=2)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
                .collect();
            let mut pods = GrpcPod::start_all(&ips).await.unwrap();
            let fast = pods.pop().unwrap();
            let slow = pods.pop().unwrap();
            let dns = DnsServer::start().await.unwrap();
            dns.set_ips(SERVICE, &ips, 1);
            let port = slow.addr().port();
            GrpcPair {
                dns_addr: dns.addr(),
                _dns: dns,
                slow,
                fast,
                port,
            }
        }

        async fn channel(&self, methods: &[&str]) -> Channel {
            let channel = Channel::builder()
                .nameserver(self.dns_addr)
                .hedge(fixed())
                .hedge_grpc_methods(methods.iter().copied())
                .build(&format!("dns:///{SERVICE}:{}", self.port))
                .unwrap();
            wait_for(Duration::from_secs(5), "both pods ready", || {
                channel.stats().endpoints.len() == 2
                    && channel
                        .stats()
                        .endpoints
                        .iter()
                        .all(|e| e.state == headless_lb::EndpointState::Ready)
            })
            .await;
            channel
        }
    }

    /// `n` health checks at once: (pod that answered, time) each.
    async fn checks(channel: &Channel, n: usize) -> Vec<(Option<SocketAddr>, Duration)> {
        let mut set = JoinSet::new();
        for _ in 0..n {
            let mut client = HealthClient::new(channel.clone());
            set.spawn(async move {
                let started = Instant::now();
                let reply = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(status) => panic!("an RPC failed: {status:?}"),
                };
                let pod = reply.extensions().get::<ServedBy>().map(|s| s.0);
                (pod, started.elapsed())
            });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done.unwrap());
        }
        out
    }

    stalls!(GrpcPod);

    /// Three gRPC pods on `127.0.net.1` to `.3` and a channel hedging the
    /// health check with [`fixed`] and `max_hedges(2)`.
    async fn grpc_trio(net: u8) -> (Vec<GrpcPod>, DnsServer, Channel) {
        let ips = ips(net, 3);
        let pods = GrpcPod::start_all(&ips).await.unwrap();
        let dns = DnsServer::start().await.unwrap();
        dns.set_ips(SERVICE, &ips, 1);
        let channel = Channel::builder()
            .nameserver(dns.addr())
            .hedge(fixed().max_hedges(2))
            .hedge_grpc_methods([CHECK])
            .build(&format!("dns:///{SERVICE}:{}", pods[0].addr().port()))
            .unwrap();
        all_ready(3, || channel.stats().endpoints).await;
        (pods, dns, channel)
    }

    /// The recorded RPC is sent a third time, to the third pod, when its
    /// first hedge is held on a second paused pod.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_a_second_hedge_answers_when_the_first_lands_on_a_stalled_pod_too() {
        let _quiet = QUIET.lock().await;
        let (times, extra) = a_second_stall(
            async || grpc_trio(244).await,
            |channel: &Channel| {
                let channel = channel.clone();
                tokio::spawn(
                    async move { checks(&channel, BURST).await.iter().map(|a| a.1).collect() },
                )
            },
            |channel: &Channel| channel.stats().hedging.unwrap().sent,
        )
        .await;
        eprintln!(
            "gRPC max_hedges(2): slowest {:?}, {extra} second hedges",
            max_time(&times)
        );
        assert!(extra >= 1, "an RPC got a second hedge: {times:?}");
        assert!(max_time(&times) < SLOW / 4, "{times:?}");
    }

    /// A listed method stuck on a slow pod is answered by the other; the
    /// slow pod sees the copy cancelled (the stream reset) long before its
    /// delay ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_a_listed_method_is_hedged_and_the_loser_cancelled() {
        let _quiet = QUIET.lock().await;
        let pair = GrpcPair::start(239).await;
        pair.slow.set_delay(SLOW);
        let channel = pair.channel(&[CHECK]).await;

        let started = Instant::now();
        let answers = until(
            "a hedge",
            || checks(&channel, BURST),
            |_| channel.stats().hedging.unwrap().sent > 0,
        )
        .await;
        let slowest = answers.iter().map(|a| a.1).max().unwrap();
        let stats = channel.stats().hedging.unwrap();
        eprintln!("gRPC: slowest of {BURST} RPCs with a pod {SLOW:?} slow: {slowest:?}; {stats:?}");
        assert!(slowest < SLOW / 4, "{answers:?}");
        assert!(answers.iter().all(|a| a.0 == Some(pair.fast.addr())));
        assert_eq!(stats.won, stats.sent, "{stats:?}");
        wait_for(SLOW / 2, "the slow pod to see its RPCs cancelled", || {
            pair.slow.in_flight() == 0
        })
        .await;
        eprintln!(
            "gRPC: the slow pod's copies cancelled within {:?}",
            started.elapsed()
        );
        assert_eq!(pair.slow.requests(), 0, "the slow pod answered none");
    }

    /// A method not listed is never hedged; a whole-service entry covers it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_a_method_not_listed_is_never_hedged() {
        let _quiet = QUIET.lock().await;
        let pair = GrpcPair::start(240).await;
        let slow = Duration::from_millis(300);
        pair.slow.set_delay(slow);

        let slowest = |answers: &Vec<(Option<SocketAddr>, Duration)>| {
            answers.iter().map(|a| a.1).max().unwrap_or_default()
        };
        let channel = pair.channel(&["/grpc.health.v1.Health/Watch"]).await;
        let mut sent = 0;
        until(
            "an RPC on the slow pod",
            || {
                sent += BURST as u64;
                checks(&channel, BURST)
            },
            |answers| slowest(answers) >= slow,
        )
        .await;
        let stats = channel.stats().hedging.unwrap();
        assert_eq!((stats.sent, stats.refused), (0, 0), "{stats:?}");
        assert_eq!(
            pair.slow.requests() + pair.fast.requests(),
            sent,
            "each RPC reached one pod, once"
        );

        let channel = pair.channel(&["/grpc.health.v1.Health/*"]).await;
        let answers = until(
            "a hedge",
            || checks(&channel, BURST),
            |_| channel.stats().hedging.unwrap().sent > 0,
        )
        .await;
        assert!(slowest(&answers) < slow, "{answers:?}");
    }

    #[tokio::test]
    async fn grpc_invalid_method_names_fail_the_build() {
        let err = Channel::builder()
            .hedge(HedgePolicy::auto())
            .hedge_grpc_methods(["grpc.health.v1.Health/Check"])
            .build("dns:///web.default.svc.cluster.local:50051")
            .unwrap_err();
        assert!(
            matches!(err, BuildError::Hedge(HedgePolicyError::GrpcMethod(ref m)) if m == "grpc.health.v1.Health/Check"),
            "{err}"
        );
    }
}

// ===== a measurement, not a check =====

/// Latency over four pods that each pause for 80 ms at random times about
/// once a second (a GC's stop-the-world, `Pod::set_pauses`), without hedging and with a
/// fixed and an automatic delay; closed loop, 16 in flight, 5 s each. One
/// hedge per request: a request whose hedge lands on a pod that stalls in
/// turn, or that the budget refuses, still waits out a stall.
/// Prints the figures: `cargo test --all-features --test hedging -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints latency percentiles with and without hedging"]
async fn measure_stalling_pods_with_and_without_hedging() {
    let _quiet = QUIET.lock().await;
    let ips: Vec<IpAddr> = (1..=4)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 241, i)))
        .collect();
    let pods = Pod::start_all(&ips).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips, 1);
    let port = pods[0].addr().port();
    for pod in pods.iter() {
        pod.set_pauses(Duration::from_secs(1), Duration::from_millis(80));
    }
    let policies = [
        ("no hedging", None),
        (
            "after 10 ms",
            Some(HedgePolicy::after(Duration::from_millis(10))),
        ),
        (
            "after 10 ms, 2",
            Some(HedgePolicy::after(Duration::from_millis(10)).max_hedges(2)),
        ),
        ("auto (p95)", Some(HedgePolicy::auto())),
        ("auto, burst 50", Some(HedgePolicy::auto().burst(50))),
        (
            "auto, 50, 2",
            Some(HedgePolicy::auto().burst(50).max_hedges(2)),
        ),
    ];
    for (name, policy) in policies {
        let mut builder = Client::builder()
            .nameserver(dns.addr())
            .protocol(Protocol::Http2);
        if let Some(policy) = policy {
            builder = builder.hedge(policy);
        }
        let client: Client = builder.build(&format!("{SERVICE}:{port}")).unwrap();
        wait_for(Duration::from_secs(5), "pods ready", || {
            client.stats().endpoints.len() == 4
        })
        .await;
        let until = Instant::now() + Duration::from_secs(5);
        let mut workers = JoinSet::new();
        for _ in 0..16 {
            let client = client.clone();
            workers.spawn(async move {
                let mut took = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let response = client.get("/").await.expect("a request failed");
                    response.into_body().collect().await.unwrap();
                    took.push(started.elapsed());
                }
                took
            });
        }
        let mut took: Vec<Duration> = workers.join_all().await.concat();
        took.sort_unstable();
        let at = |p: f64| took[((p * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let hedging = client.stats().hedging.unwrap_or_default();
        let stalled = took
            .iter()
            .filter(|d| **d > Duration::from_millis(40))
            .count();
        eprintln!(
            "{name:>14}: {} requests, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, \
             {stalled} over 40 ms; hedges {} ({:.1} %), won {}, refused by the budget {}",
            took.len(),
            ms(at(0.5)),
            ms(at(0.99)),
            ms(at(0.999)),
            ms(*took.last().unwrap()),
            hedging.sent,
            100.0 * hedging.sent as f64 / took.len() as f64,
            hedging.won,
            hedging.refused,
        );
    }
}
