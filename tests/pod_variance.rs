//! Realistic pod variance and open-loop load: the test pods' capacity limit
//! and stop-the-world pauses (`Pod`, `GrpcPod`, and `echo_server`'s flags),
//! and `loadgen --rate` over `echo_server` processes.
//!
//! The example tests run the example binaries: with `cargo test --test
//! pod_variance` alone cargo does not build them; run `cargo build
//! --all-features --example loadgen --example echo_server` first.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

mod examples_support;
use examples_support::{EchoServer, finish, free_port_on, json_line, spawn};

const NAME: &str = "web.default.svc.cluster.local";

/// How long a condition may take to come true before the test fails.
const DEADLINE: Duration = Duration::from_secs(5);

/// The service time every capacity test gives a request.
const DELAY: Duration = Duration::from_millis(50);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends one GET to `pod` and returns how long the whole answer took.
async fn timed_get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    pod: SocketAddr,
) -> Duration {
    let sent = Instant::now();
    let uri: http::Uri = format!("http://{pod}/").parse().unwrap();
    let response = client.get(uri).await.expect("the pod answers");
    assert!(response.status().is_success(), "{}", response.status());
    response
        .into_body()
        .collect()
        .await
        .expect("the whole body");
    sent.elapsed()
}

/// A plain HTTP/1.1 client: each of two concurrent requests gets a
/// connection of its own, so that only the pod can make them wait.
fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The latencies of two requests sent at once.
async fn two_at_once(pod: SocketAddr) -> [Duration; 2] {
    let client = http_client();
    let (a, b) = tokio::join!(timed_get(&client, pod), timed_get(&client, pod));
    let mut both = [a, b];
    both.sort();
    both
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_queues_the_requests_beyond_it() {
    let pod = Pod::start(addr("127.0.0.181:0")).await.unwrap();
    pod.set_delay(DELAY);
    // Warm up: connections and code paths, so that the timed runs measure
    // the pod.
    two_at_once(pod.addr()).await;

    pod.set_capacity(Some(1));
    let [first, second] = two_at_once(pod.addr()).await;
    eprintln!("capacity 1: {first:?} and {second:?}");
    assert!(first >= DELAY, "{first:?}");
    // The second waited for the first's whole service time.
    assert!(second >= 2 * DELAY, "queued: {second:?}");

    pod.set_capacity(Some(2));
    let [first, second] = two_at_once(pod.addr()).await;
    eprintln!("capacity 2: {first:?} and {second:?}");
    assert!(first >= DELAY, "{first:?}");
    assert!(second < 2 * DELAY, "served side by side: {second:?}");

    pod.set_capacity(None);
    let [_, second] = two_at_once(pod.addr()).await;
    assert!(second < 2 * DELAY, "no limit: {second:?}");
    assert_eq!(pod.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_capacity_serves_the_queued_requests() {
    let pod = Pod::start(addr("127.0.0.182:0")).await.unwrap();
    pod.set_capacity(Some(0));
    let client = http_client();
    let waiting = tokio::spawn({
        let client = client.clone();
        let pod = pod.addr();
        async move { timed_get(&client, pod).await }
    });
    wait_for(DEADLINE, "the request to queue", || pod.in_flight() == 1).await;
    assert_eq!(pod.requests(), 0, "nothing is served at capacity 0");
    pod.set_capacity(Some(1));
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the queued request is served once the capacity is raised")
        .unwrap();
    assert_eq!(pod.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_arriving_during_a_pause_waits_for_its_end() {
    const PAUSE: Duration = Duration::from_millis(200);
    let pod = Pod::start(addr("127.0.0.183:0")).await.unwrap();
    let client = http_client();
    timed_get(&client, pod.addr()).await;
    let paused = Instant::now();
    pod.pause_for(PAUSE);
    assert_eq!(pod.pauses(), 1);
    timed_get(&client, pod.addr()).await;
    let waited = paused.elapsed();
    eprintln!("answered {waited:?} after a {PAUSE:?} pause began");
    assert!(waited >= PAUSE, "{waited:?}");
    // Once the pause is over the pod answers at its usual pace.
    let after = timed_get(&client, pod.addr()).await;
    assert!(after < PAUSE, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_a_request_in_flight_and_stops_its_work() {
    const WORK: Duration = Duration::from_millis(100);
    const PAUSE: Duration = Duration::from_millis(300);
    let pod = Pod::start(addr("127.0.0.184:0")).await.unwrap();
    pod.set_delay(WORK);
    let client = http_client();
    let sent = Instant::now();
    let request = tokio::spawn({
        let pod = pod.addr();
        async move { timed_get(&client, pod).await }
    });
    wait_for(DEADLINE, "the request to reach the pod", || {
        pod.in_flight() == 1
    })
    .await;
    let paused = Instant::now();
    pod.pause_for(PAUSE);
    let latency = request.await.unwrap();
    eprintln!(
        "request of {WORK:?} work with a {PAUSE:?} pause: {latency:?}, {:?} after the pause began",
        paused.elapsed()
    );
    // No response leaves a paused pod...
    assert!(paused.elapsed() >= PAUSE, "{:?}", paused.elapsed());
    // ... and the work stood still meanwhile: all of it, plus the pause.
    assert!(sent.elapsed() >= WORK + PAUSE, "{:?}", sent.elapsed());
}

/// Pure timer logic, so under tokio's paused clock: 100 s of pauses with a
/// mean interval of 100 ms start about 1000 times.
#[tokio::test(start_paused = true)]
async fn pauses_start_at_poisson_times() {
    let pod = Pod::start(addr("127.0.0.185:0")).await.unwrap();
    pod.set_pauses(Duration::from_millis(100), Duration::from_millis(1));
    tokio::time::sleep(Duration::from_secs(100)).await;
    let n = pod.pauses();
    // A Poisson count of mean 1000 has a standard deviation of about 32:
    // ±150 is beyond 4.7 of them.
    assert!((850..=1150).contains(&n), "{n} pauses in 100 s");

    pod.set_pauses(Duration::ZERO, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(pod.pauses(), n, "turned off");
}

/// Pods given the same seed pause at the same moments of their schedules;
/// another seed gives other moments. Under the paused clock, so exactly.
#[tokio::test(start_paused = true)]
async fn a_seeded_pause_schedule_repeats() {
    let pods = [
        Pod::start(addr("127.0.0.191:0")).await.unwrap(),
        Pod::start(addr("127.0.0.192:0")).await.unwrap(),
        Pod::start(addr("127.0.0.193:0")).await.unwrap(),
    ];
    let (every, pause) = (Duration::from_millis(100), Duration::from_millis(1));
    pods[0].set_pauses_seeded(every, pause, 7);
    pods[1].set_pauses_seeded(every, pause, 7);
    pods[2].set_pauses_seeded(every, pause, 8);
    let mut differed = false;
    for second in 1..=10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counts = pods.each_ref().map(Pod::pauses);
        assert_eq!(counts[0], counts[1], "same seed, at {second} s: {counts:?}");
        differed |= counts[2] != counts[0];
    }
    assert!(pods[0].pauses() > 50, "{} pauses in 10 s", pods[0].pauses());
    assert!(differed, "another seed, another schedule");
}

#[cfg(feature = "tonic")]
mod grpc {
    use super::*;
    use headless_lb::testing::GrpcPod;
    use tonic::transport::{Channel, Endpoint};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    fn channel(pod: &GrpcPod) -> Channel {
        Endpoint::from_shared(format!("http://{}", pod.addr()))
            .unwrap()
            .connect_lazy()
    }

    async fn timed_check(channel: Channel) -> Duration {
        let sent = Instant::now();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect("the pod answers SERVING");
        sent.elapsed()
    }

    async fn two_at_once(channel: &Channel) -> [Duration; 2] {
        let (a, b) = tokio::join!(timed_check(channel.clone()), timed_check(channel.clone()));
        let mut both = [a, b];
        both.sort();
        both
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_capacity_queues_the_rpcs_beyond_it() {
        let pod = GrpcPod::start(addr("127.0.0.186:0")).await.unwrap();
        pod.set_delay(DELAY);
        let channel = channel(&pod);
        two_at_once(&channel).await;

        pod.set_capacity(Some(1));
        let [first, second] = two_at_once(&channel).await;
        eprintln!("gRPC capacity 1: {first:?} and {second:?}");
        assert!(first >= DELAY, "{first:?}");
        assert!(second >= 2 * DELAY, "queued: {second:?}");

        pod.set_capacity(Some(2));
        let [first, second] = two_at_once(&channel).await;
        eprintln!("gRPC capacity 2: {first:?} and {second:?}");
        assert!(first >= DELAY, "{first:?}");
        assert!(second < 2 * DELAY, "served side by side: {second:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_a_pause_holds_rpcs_arriving_and_in_flight() {
        const WORK: Duration = Duration::from_millis(100);
        const PAUSE: Duration = Duration::from_millis(300);
        let pod = GrpcPod::start(addr("127.0.0.187:0")).await.unwrap();
        let channel = channel(&pod);
        timed_check(channel.clone()).await;

        // Arriving during a pause.
        let paused = Instant::now();
        pod.pause_for(PAUSE);
        timed_check(channel.clone()).await;
        assert!(paused.elapsed() >= PAUSE, "{:?}", paused.elapsed());

        // In flight when the pause begins.
        pod.set_delay(WORK);
        let sent = Instant::now();
        let rpc = tokio::spawn(timed_check(channel.clone()));
        wait_for(DEADLINE, "the RPC to reach the pod", || {
            pod.in_flight() == 1
        })
        .await;
        let paused = Instant::now();
        pod.pause_for(PAUSE);
        rpc.await.unwrap();
        eprintln!(
            "gRPC RPC of {WORK:?} work with a {PAUSE:?} pause: {:?}",
            sent.elapsed()
        );
        assert!(paused.elapsed() >= PAUSE, "{:?}", paused.elapsed());
        assert!(sent.elapsed() >= WORK + PAUSE, "{:?}", sent.elapsed());
        assert_eq!(pod.pauses(), 2);
    }
}

// ===== echo_server and loadgen processes =====

/// Taken by every test that runs loadgen, so that two runs' load does not
/// skew each other's latencies on a small machine.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `echo_server` process on `ip` with `flags`, and a DNS server naming it.
async fn echo_pod(ip: [u8; 4], flags: &[&str]) -> (DnsServer, EchoServer) {
    let ip = IpAddr::from(ip);
    let port = free_port_on(&[ip]);
    let server = EchoServer::start(SocketAddr::new(ip, port), flags).await;
    let dns = DnsServer::start().await.expect("DNS server starts");
    dns.set_ips(NAME, &[ip], 5);
    (dns, server)
}

/// Runs loadgen against the pod `dns` names and returns its JSON report.
async fn loadgen(dns: &DnsServer, pod: &EchoServer, extra: &[&str]) -> serde_json::Value {
    let target = format!("{NAME}:{}", pod.addr().port());
    let ns = dns.addr().to_string();
    let mut args = vec![target.as_str(), "--nameserver", ns.as_str(), "--quiet"];
    args.extend_from_slice(extra);
    let out = {
        let _load = LOAD.lock().await;
        finish("loadgen", spawn("loadgen", &args)).await
    };
    let report = json_line("loadgen", &out);
    eprintln!("loadgen {extra:?}: {report}");
    report
}

fn f64_of(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

fn u64_of(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_rate_times_duration() {
    let (dns, pod) = echo_pod([127, 0, 0, 188], &[]).await;
    const RATE: f64 = 400.0;
    const SECS: f64 = 2.0;
    let report = loadgen(
        &dns,
        &pod,
        &["--rate", "400", "--duration", "2", "--concurrency", "64"],
    )
    .await;
    // Requests are due at i / rate for every i / rate below the duration,
    // so the count is rate × duration; the tolerance of 1 % is for a
    // rounding of the due times, none is expected.
    let requests = u64_of(&report, "requests") as f64;
    let expected = RATE * SECS;
    assert!(
        (requests - expected).abs() <= expected * 0.01,
        "{requests} requests, expected {expected} ± 1 %: {report}"
    );
    assert_eq!(u64_of(&report, "errors"), 0, "{report}");
    assert_eq!(u64_of(&report, "overload"), 0, "{report}");
    assert_eq!(f64_of(&report, "rate"), RATE, "{report}");
    // The last request is due at (n - 1) / rate: the run lasts at least that.
    let last_due = (expected - 1.0) / RATE;
    assert!(f64_of(&report, "duration_s") >= last_due, "{report}");
    let keys: Vec<&str> = report.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(keys.len(), 12, "the ten keys and rate, overload: {report}");

    // A count instead of a duration: that many, on the same schedule.
    let report = loadgen(&dns, &pod, &["--rate", "200", "--requests", "100"]).await;
    assert_eq!(u64_of(&report, "requests"), 100, "{report}");
    assert_eq!(u64_of(&report, "errors"), 0, "{report}");
    assert!(f64_of(&report, "duration_s") >= 99.0 / 200.0, "{report}");
}

/// The point of the open loop: a pod's stop-the-world pauses show in its
/// percentiles. Requests due during a pause wait for its end, so one due a
/// time `t` into a pause of length `P` takes about `P - t`: the latencies of
/// those due during a pause spread evenly over 0..P. With pauses of 100 ms
/// about every 300 ms and 200 requests a second, each pause alone makes 10
/// requests (those due in its first 50 ms) take over 50 ms: more than 1 % of
/// the 600, so the p99 is at least half a pause, and the first request due
/// after a pause began took nearly all of it (max ≥ P - 1/rate). A closed
/// loop stalls with the pod: only its few requests in flight wait, so its
/// max shows the pause but its p99 need not; it is printed, not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_p99_shows_the_pauses_a_closed_loop_omits() {
    const PAUSE_MS: f64 = 100.0;
    const RATE: f64 = 200.0;
    let (dns, pod) = echo_pod(
        [127, 0, 0, 189],
        &["--pause-every-ms", "300", "--pause-ms", "100"],
    )
    .await;
    let open = loadgen(
        &dns,
        &pod,
        &["--rate", "200", "--duration", "3", "--concurrency", "200"],
    )
    .await;
    assert_eq!(u64_of(&open, "errors"), 0, "{open}");
    assert_eq!(u64_of(&open, "overload"), 0, "{open}");
    let p99 = f64_of(&open, "p99_ms");
    assert!(p99 >= PAUSE_MS / 2.0, "open-loop p99 {p99} ms: {open}");
    let max = f64_of(&open, "max_ms");
    assert!(
        max >= PAUSE_MS - 1e3 / RATE,
        "open-loop max {max} ms: {open}"
    );

    let closed = loadgen(&dns, &pod, &["--duration", "3", "--concurrency", "4"]).await;
    assert_eq!(u64_of(&closed, "errors"), 0, "{closed}");
    // Its requests in flight when a pause began were held to its end.
    let closed_max = f64_of(&closed, "max_ms");
    assert!(
        closed_max >= PAUSE_MS / 2.0,
        "closed-loop max {closed_max} ms: {closed}"
    );
    eprintln!(
        "pauses of {PAUSE_MS} ms every ~300 ms: open loop at {RATE}/s p50 {} p99 {p99} p99.9 {} max {max} ms; \
         closed loop (4 in flight, {} rps) p50 {} p99 {} p99.9 {} max {closed_max} ms",
        open["p50_ms"],
        open["p999_ms"],
        closed["rps"],
        closed["p50_ms"],
        closed["p99_ms"],
        closed["p999_ms"],
    );
}

/// `--capacity 1` serialises the service: 20 requests of 50 ms, 4 at a
/// time, take at least 20 × 50 ms.
async fn capacity_serialises(ip: [u8; 4], protocol: &str) {
    let (dns, pod) = echo_pod(
        ip,
        &[
            "--protocol",
            protocol,
            "--delay-ms",
            "50",
            "--capacity",
            "1",
        ],
    )
    .await;
    let report = loadgen(
        &dns,
        &pod,
        &[
            "--protocol",
            protocol,
            "--requests",
            "20",
            "--concurrency",
            "4",
        ],
    )
    .await;
    assert_eq!(u64_of(&report, "requests"), 20, "{report}");
    assert_eq!(u64_of(&report, "errors"), 0, "{report}");
    assert!(f64_of(&report, "duration_s") >= 1.0, "{protocol}: {report}");
    // Each waited behind the others in flight: at least two services.
    assert!(f64_of(&report, "p50_ms") >= 100.0, "{protocol}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_capacity_serialises_http() {
    capacity_serialises([127, 0, 0, 190], "http").await;
}

#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_capacity_serialises_grpc() {
    capacity_serialises([127, 0, 0, 191], "grpc").await;
}
