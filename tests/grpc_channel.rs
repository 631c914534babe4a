//! The balanced gRPC channel against real tonic servers on 127.0.0.x, found through a real DNS server.

#![cfg(feature = "tonic")]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use headless_lb::grpc::Channel;
use headless_lb::resolve::HickoryResolver;
use headless_lb::testing::{DnsServer, GrpcPod, wait_for};
use headless_lb::{Discovery, DnsDiscover, EndpointState};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::channel::Change;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const NAME: &str = "web.default.svc.cluster.local";

/// Taken by the tests that drive load, so that they do not skew each
/// other's latencies (and so the balancer's picks) on a small machine.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A DNS server with TTL 1 s listing gRPC pods on `ips`, all on one port.
struct Cluster {
    dns: DnsServer,
    pods: Vec<GrpcPod>,
    port: u16,
}

impl Cluster {
    async fn start(ips: &[u8]) -> Cluster {
        let dns = DnsServer::start().await.unwrap();
        let ips: Vec<IpAddr> = ips.iter().map(|i| [127, 0, 0, *i].into()).collect();
        let pods = GrpcPod::start_all(&ips).await.unwrap();
        let port = pods[0].addr().port();
        dns.set_ips(NAME, &ips, 1);
        Cluster { dns, pods, port }
    }

    fn target(&self) -> String {
        format!("dns:///{NAME}:{}", self.port)
    }

    fn channel(&self) -> Channel {
        Channel::builder()
            .nameserver(self.dns.addr())
            .endpoint_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .build(&self.target())
            .unwrap()
    }

    fn requests(&self) -> Vec<u64> {
        self.pods.iter().map(GrpcPod::requests).collect()
    }
}

fn check_request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// One health check through `client`, returning the status code.
async fn check<T>(client: &mut HealthClient<T>) -> Code
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    match client.check(check_request()).await {
        Ok(reply) => {
            assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
            Code::Ok
        }
        Err(status) => status.code(),
    }
}

/// `total` checks, `concurrency` at a time; the codes that were not OK.
async fn drive(channel: &Channel, total: usize, concurrency: usize) -> Vec<Code> {
    futures::stream::iter(0..total)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            async move { check(&mut client).await }
        })
        .buffer_unordered(concurrency)
        .filter(|code| std::future::ready(*code != Code::Ok))
        .collect()
        .await
}

/// Checks `concurrency` at a time until `stop` is set; counts errors.
fn drive_until(
    channel: &Channel,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut client = HealthClient::new(channel.clone());
        let (stop, errors) = (stop.clone(), errors.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let code = check(&mut client).await;
                if code != Code::Ok {
                    assert_eq!(code, Code::Unavailable, "a failed RPC is UNAVAILABLE");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    workers
}

async fn wait_ready(channel: &Channel, n: usize) {
    wait_for(Duration::from_secs(3), "endpoints ready", || {
        let stats = channel.stats();
        stats
            .endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .count()
            == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_name_the_pod_that_served_them() {
    let cluster = Cluster::start(&[98, 99]).await;
    let channel = cluster.channel();
    wait_ready(&channel, 2).await;
    let pods: Vec<SocketAddr> = cluster.pods.iter().map(GrpcPod::addr).collect();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..20 {
        let before = cluster.requests();
        let reply = client.check(check_request()).await.unwrap();
        let served_by = reply
            .extensions()
            .get::<headless_lb::http::ServedBy>()
            .expect("ServedBy on every response")
            .0;
        let answered: Vec<SocketAddr> = cluster
            .requests()
            .iter()
            .zip(&before)
            .zip(&pods)
            .filter(|((after, before), _)| after > before)
            .map(|(_, addr)| *addr)
            .collect();
        assert_eq!(answered, vec![served_by]);
    }
}

/// 4 equal pods, 4 000 RPCs at concurrency 16: every pod within ±20 % of the
/// mean. The run must be long enough that a scheduling hiccup (one peak that
/// the peak-EWMA follows for a few dozen responses) is noise: at 1 200 RPCs,
/// about 0.15 s, one CI run saw a pod at 236 against a mean of 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spreads_rpcs_evenly_over_equal_pods() {
    let _load = LOAD.lock().await;
    let cluster = Cluster::start(&[101, 102, 103, 104]).await;
    let channel = cluster.channel();
    wait_ready(&channel, 4).await;
    // Past the first RPC on each connection, which is slower.
    assert!(drive(&channel, 100, 16).await.is_empty());
    let before = cluster.requests();

    let errors = drive(&channel, 4000, 16).await;
    assert!(errors.is_empty(), "{errors:?}");

    let counts: Vec<u64> = cluster
        .requests()
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    eprintln!("RPCs per pod: {counts:?}");
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    for (pod, n) in cluster.pods.iter().zip(&counts) {
        let off = (*n as f64 - mean).abs() / mean;
        assert!(
            off <= 0.2,
            "{} got {n} RPCs, mean {mean}: {counts:?}",
            pod.addr()
        );
    }
    // The channel's own accounting agrees with the servers'.
    let sent: u64 = channel.stats().endpoints.iter().map(|e| e.requests).sum();
    assert_eq!(sent, 4100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn avoids_a_pod_50ms_slower() {
    let _load = LOAD.lock().await;
    let cluster = Cluster::start(&[111, 112, 113, 114]).await;
    cluster.pods[0].set_delay(Duration::from_millis(50));
    let channel = cluster.channel();
    wait_ready(&channel, 4).await;

    let errors = drive(&channel, 4000, 16).await;
    assert!(errors.is_empty(), "{errors:?}");

    let counts = cluster.requests();
    let total: u64 = counts.iter().sum();
    let share = counts[0] as f64 / total as f64;
    eprintln!("RPCs per pod, slow one first: {counts:?}");
    assert!(
        share < 0.10,
        "slow pod took {:.1} %: {counts:?}",
        share * 100.0
    );
}

/// A pod answering UNAVAILABLE to every RPC answers fast, so on RTT alone it
/// would look like the best pod; after 5 failures in a row it is out of
/// picks for a growing backoff, and gets a few percent of 900 RPCs instead
/// of a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_answering_unavailable_to_everything_is_taken_out_of_picks() {
    let _load = LOAD.lock().await;
    let cluster = Cluster::start(&[116, 117, 118]).await;
    let channel = cluster.channel();
    wait_ready(&channel, 3).await;
    cluster.pods[0].set_status(Some(Code::Unavailable));

    let errors = drive(&channel, 900, 6).await;
    let counts = cluster.requests();
    eprintln!(
        "RPCs per pod, failing one first: {counts:?}; errors {}",
        errors.len()
    );
    assert!(errors.iter().all(|c| *c == Code::Unavailable), "{errors:?}");
    assert_eq!(
        errors.len() as u64,
        counts[0],
        "exactly its RPCs failed, none retried"
    );
    assert!(
        (5..45).contains(&counts[0]),
        "the failing pod answered {} of 900: {counts:?}",
        counts[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pod_fails_only_its_rpcs_in_flight_and_rejoins_after_restart() {
    let _load = LOAD.lock().await;
    let cluster = Cluster::start(&[121, 122, 123, 124]).await;
    for pod in &cluster.pods {
        pod.set_delay(Duration::from_millis(5));
    }
    let channel = cluster.channel();
    wait_ready(&channel, 4).await;

    const CONCURRENCY: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = drive_until(&channel, CONCURRENCY, stop.clone(), errors.clone());
    let victim = &cluster.pods[0];
    wait_for(Duration::from_secs(3), "the victim serving", || {
        victim.requests() > 20
    })
    .await;
    let in_flight_at_kill = victim.in_flight();
    victim.kill().await;
    let before = cluster.requests();
    wait_for(Duration::from_secs(3), "400 RPCs after the kill", || {
        let now = cluster.requests();
        now.iter().sum::<u64>() - before.iter().sum::<u64>() >= 400
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }
    let failed = errors.load(Ordering::Relaxed);
    assert!(
        failed <= CONCURRENCY as u64,
        "{failed} RPCs failed; at most the {CONCURRENCY} in flight may (the victim had {in_flight_at_kill})"
    );
    let stats = channel.stats();
    let victim_stats = stats
        .endpoints
        .iter()
        .find(|e| e.address == victim.addr())
        .unwrap();
    assert_ne!(victim_stats.state, EndpointState::Ready, "{victim_stats:?}");

    // Later RPCs all succeed.
    let errors = drive(&channel, 200, 8).await;
    assert!(errors.is_empty(), "after the kill: {errors:?}");

    // It rejoins once it is back.
    victim.restart().await.unwrap();
    let served = victim.requests();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = drive_until(&channel, 4, stop.clone(), errors.clone());
    wait_for(Duration::from_secs(3), "the restarted pod serving", || {
        victim.requests() > served + 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_added_to_dns_gets_rpcs_within_ttl_plus_one_second() {
    let _load = LOAD.lock().await;
    let cluster = Cluster::start(&[131, 132, 133]).await;
    let listed: Vec<IpAddr> = cluster.pods[..2].iter().map(|p| p.addr().ip()).collect();
    cluster.dns.set_ips(NAME, &listed, 1);
    let channel = cluster.channel();
    wait_ready(&channel, 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = drive_until(&channel, 4, stop.clone(), errors.clone());
    let newcomer = &cluster.pods[2];
    assert_eq!(newcomer.requests(), 0);
    let all: Vec<IpAddr> = cluster.pods.iter().map(|p| p.addr().ip()).collect();
    let added = Instant::now();
    cluster.dns.set_ips(NAME, &all, 1);
    wait_for(Duration::from_secs(2), "RPCs on the new pod", || {
        newcomer.requests() > 0
    })
    .await;
    let took = added.elapsed();
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    eprintln!("new pod served after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_endpoints_fail_with_unavailable_after_failfast_timeout() {
    let dns = DnsServer::start().await.unwrap();
    let target = format!("dns:///{NAME}:50051");
    let failfast = Duration::from_millis(300);
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .failfast_timeout(failfast)
        .build(&target)
        .unwrap();
    wait_for(Duration::from_secs(3), "the first DNS answer", || {
        channel.stats().discovery.last_error.is_some()
    })
    .await;

    let mut client = HealthClient::new(channel.clone());
    for _ in 0..2 {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(2), client.check(check_request()))
            .await
            .expect("an RPC without endpoints must not hang")
            .expect_err("no endpoints");
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            took >= failfast && took < failfast + Duration::from_millis(500),
            "failed after {took:?}"
        );
        assert!(status.message().contains(&target), "{}", status.message());
        assert!(
            status.message().contains("no records"),
            "names the DNS error: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_server_stream_keeps_its_pod_pending_until_it_ends() {
    let cluster = Cluster::start(&[141, 142]).await;
    let channel = cluster.channel();
    wait_ready(&channel, 2).await;
    let pending = |addr: SocketAddr| {
        channel
            .stats()
            .endpoints
            .iter()
            .find(|e| e.address == addr)
            .map(|e| e.pending)
            .unwrap()
    };

    let mut client = HealthClient::new(channel.clone());
    let mut stream = client.watch(check_request()).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let streaming = cluster
        .pods
        .iter()
        .find(|p| p.open_streams() == 1)
        .expect("one pod holds the stream");
    let other = cluster.pods.iter().find(|p| p.open_streams() == 0).unwrap();
    assert_eq!(pending(streaming.addr()), 1);

    // Unary RPCs come and go; the stream's count stays.
    let errors = drive(&channel, 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(pending(streaming.addr()), 1);
    assert_eq!(pending(other.addr()), 0);

    streaming.end_streams();
    assert!(stream.message().await.unwrap().is_none(), "stream ended OK");
    assert_eq!(pending(streaming.addr()), 0);
    let failures: u64 = channel.stats().endpoints.iter().map(|e| e.failures).sum();
    assert_eq!(failures, 0);

    // Dropping an open stream releases its count too.
    let stream = client.watch(check_request()).await.unwrap().into_inner();
    wait_for(Duration::from_secs(1), "the second stream pending", || {
        channel
            .stats()
            .endpoints
            .iter()
            .map(|e| e.pending)
            .sum::<usize>()
            == 1
    })
    .await;
    drop(stream);
    assert_eq!(
        channel
            .stats()
            .endpoints
            .iter()
            .map(|e| e.pending)
            .sum::<usize>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_and_broken_streams_count_as_endpoint_failures() {
    let cluster = Cluster::start(&[151]).await;
    let pod = &cluster.pods[0];
    let channel = cluster.channel();
    wait_ready(&channel, 1).await;
    let failures = || channel.stats().endpoints[0].failures;
    let mut client = HealthClient::new(channel.clone());

    pod.set_status(Some(Code::NotFound));
    assert_eq!(check(&mut client).await, Code::NotFound);
    assert_eq!(
        failures(),
        0,
        "an application error is not the pod's failure"
    );

    pod.set_status(Some(Code::Unavailable));
    assert_eq!(check(&mut client).await, Code::Unavailable);
    assert_eq!(failures(), 1);
    pod.set_status(None);

    // A stream cut by the pod's crash fails with UNAVAILABLE and counts.
    let mut stream = client.watch(check_request()).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    pod.kill().await;
    let status = stream.message().await.expect_err("the stream broke");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(failures(), 2);
    assert_eq!(channel.stats().endpoints[0].pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_discover_feeds_tonics_balance_channel() {
    let cluster = Cluster::start(&[161, 162, 163]).await;
    let target = format!("{NAME}:{}", cluster.port);
    let resolver = Arc::new(
        HickoryResolver::builder()
            .nameserver(cluster.dns.addr())
            .build()
            .unwrap(),
    );
    let discovery = Discovery::spawn(target.parse().unwrap(), resolver);
    let origin: http::Uri = format!("http://{target}").parse().unwrap();
    let mut changes = DnsDiscover::from_fn(discovery, move |addr: SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .origin(origin.clone())
    });
    let (channel, sender) = tonic::transport::Channel::balance_channel::<SocketAddr>(16);
    let feeder = tokio::spawn(async move {
        while let Some(Ok(change)) = changes.next().await {
            // tonic has its own `Change`, not tower's.
            let change = match change {
                tower::discover::Change::Insert(addr, endpoint) => Change::Insert(addr, endpoint),
                tower::discover::Change::Remove(addr) => Change::Remove(addr),
            };
            if sender.send(change).await.is_err() {
                break;
            }
        }
    });

    let mut client = HealthClient::new(channel);
    // tonic's balancer waits for its first endpoint rather than failing.
    let mut seen = BTreeMap::new();
    for _ in 0..300 {
        assert_eq!(check(&mut client).await, Code::Ok);
    }
    for pod in &cluster.pods {
        seen.insert(pod.addr(), pod.requests());
    }
    assert!(seen.values().all(|n| *n > 0), "every pod served: {seen:?}");
    assert_eq!(seen.values().sum::<u64>(), 300);
    feeder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_fails_an_rpc_to_a_silent_pod_with_unavailable() {
    // A pod that accepts connections and then never answers anything, as
    // one behind a dropped route or on a frozen node looks.
    let silent = tokio::net::TcpListener::bind("127.0.0.171:0")
        .await
        .unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &[addr.ip()], 1);
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(300));
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .http2_keep_alive(Some(interval), timeout)
        .build(&format!("{NAME}:{}", addr.port()))
        .unwrap();

    let mut client = HealthClient::new(channel.clone());
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(3), client.check(check_request()))
        .await
        .expect("keepalive must end the RPC")
        .expect_err("nobody answers");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(took >= interval, "failed after {took:?}");
    assert_eq!(channel.stats().endpoints[0].failures, 1);
    held.abort();
}

/// What a [`refusing_pod`] reads of an RPC's body before it refuses it.
#[derive(Clone, Copy)]
enum Reads {
    /// All of it.
    Whole,
    /// Its first frame.
    First,
}

/// A pod that reads each RPC's body (or only its first frame) and then
/// resets the stream with `REFUSED_STREAM` (RFC 9113 §8.7: the stream was
/// not processed), as a pod does that is shutting down; returns how many it
/// refused.
async fn refusing_pod(
    addr: SocketAddr,
    reads: Reads,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let count = count.clone();
                    tokio::spawn(async move {
                        // The whole body first: the client has sent it and
                        // can no longer hand it back unread.
                        let mut body = request.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            if let Reads::First = reads {
                                break;
                            }
                        }
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        count.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    (refused, task)
}

/// A good pod on `127.0.0.{good}` and a [`refusing_pod`] on `127.0.0.{bad}`,
/// both listed in DNS, and a channel with both ready.
struct Refusal {
    good: GrpcPod,
    refused: Arc<AtomicU64>,
    refusing: tokio::task::JoinHandle<()>,
    channel: Channel,
    _dns: DnsServer,
}

impl Refusal {
    async fn start(good: u8, bad: u8, reads: Reads) -> Refusal {
        let pod = GrpcPod::start(SocketAddr::from(([127, 0, 0, good], 0)))
            .await
            .unwrap();
        let port = pod.addr().port();
        let (refused, refusing) =
            refusing_pod(SocketAddr::from(([127, 0, 0, bad], port)), reads).await;
        let dns = DnsServer::start().await.unwrap();
        let ips: Vec<IpAddr> = vec![[127, 0, 0, good].into(), [127, 0, 0, bad].into()];
        dns.set_ips(NAME, &ips, 30);
        let channel = Channel::builder()
            .nameserver(dns.addr())
            .build(&format!("dns:///{NAME}:{port}"))
            .unwrap();
        wait_ready(&channel, 2).await;
        Refusal {
            good: pod,
            refused,
            refusing,
            channel,
            _dns: dns,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_refused_unprocessed_after_its_body_was_sent_goes_to_another_pod() {
    let _load = LOAD.lock().await;
    let Refusal {
        good,
        refused,
        refusing,
        channel,
        _dns,
    } = Refusal::start(181, 182, Reads::Whole).await;

    // P2C sends some RPCs to the refusing pod; each must be sent again, with
    // the body the channel recorded and the head the endpoint handed back,
    // to the other pod, and succeed.
    let mut client = HealthClient::new(channel.clone());
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        let status = client.check(check_request()).await.map(drop);
        assert!(status.is_ok(), "RPC {sent} failed: {status:?}");
        sent += 1;
    }
    let refused = refused.load(Ordering::Relaxed);
    assert!(
        refused >= 5,
        "the refusing pod saw {refused} of {sent} RPCs"
    );
    assert_eq!(
        good.requests(),
        sent,
        "every RPC was answered by the good pod"
    );
    refusing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_refused_before_its_end_goes_to_another_pod_whole() {
    let _load = LOAD.lock().await;
    let Refusal {
        good,
        refused,
        refusing,
        channel,
        _dns,
    } = Refusal::start(183, 184, Reads::First).await;

    // Each RPC is a client stream: one message, then the stream stays open
    // until the good pod has the RPC. One that P2C sends to the refusing pod
    // is refused after its first frame, with the rest of its body still
    // with the caller; the channel must send the frame it sent and then the
    // rest to the good pod.
    let good_addr = good.addr();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
        let stats = channel.clone();
        let at_good_pod = async move {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let pending = stats
                    .stats()
                    .endpoints
                    .iter()
                    .any(|e| e.address == good_addr && e.pending > 0);
                if pending {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let messages = futures::stream::iter([check_request()])
            .chain(futures::stream::once(at_good_pod).filter_map(|()| async { None }));
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            grpc.client_streaming(tonic::Request::new(messages), path, codec),
        )
        .await
        .expect("the RPC ends");
        assert!(answer.is_ok(), "RPC {sent} failed: {answer:?}");
        sent += 1;
    }
    let refused = refused.load(Ordering::Relaxed);
    assert!(
        refused >= 3,
        "the refusing pod saw {refused} of {sent} RPCs"
    );
    assert_eq!(
        good.requests(),
        sent,
        "every RPC was answered by the good pod"
    );
    refusing.abort();
}
