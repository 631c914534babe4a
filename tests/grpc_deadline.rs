//! gRPC deadlines on the balanced channel: `grpc-timeout` and the channel's default are enforced on
//! the client, as tonic's own `Channel` does, against real tonic servers found through real DNS.

#![cfg(feature = "tonic")]

use std::net::IpAddr;
use std::time::Duration;

use headless_lb::EndpointState;
use headless_lb::grpc::Channel;
use headless_lb::testing::{DnsServer, GrpcPod, wait_for};
use tokio::time::Instant;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const NAME: &str = "deadline.default.svc.cluster.local";
/// How long the slow pod takes to answer.
const SLOW: Duration = Duration::from_millis(500);
/// The deadline the RPCs carry.
const DEADLINE: Duration = Duration::from_millis(100);
/// Scheduling slack allowed past a deadline on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(150);

/// Taken by the tests here, so that their timings do not skew each other.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster(ips: &[u8]) -> (DnsServer, Vec<GrpcPod>, String) {
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<IpAddr> = ips.iter().map(|i| [127, 0, 0, *i].into()).collect();
    let pods = GrpcPod::start_all(&ips).await.unwrap();
    dns.set_ips(NAME, &ips, 1);
    let target = format!("dns:///{NAME}:{}", pods[0].addr().port());
    (dns, pods, target)
}

/// A health check carrying `deadline` (as tonic's `Request::set_timeout`
/// writes it: `grpc-timeout`), with the time it took and its code.
async fn check<T>(client: &mut HealthClient<T>, deadline: Option<Duration>) -> (Duration, Code)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let start = Instant::now();
    let code = match client.check(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    (start.elapsed(), code)
}

async fn ready(channel: &Channel, pods: usize) {
    wait_for(Duration::from_secs(5), "every pod ready", || {
        let stats = channel.stats().endpoints;
        stats.len() == pods && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;
}

#[tokio::test]
async fn an_rpc_past_its_deadline_ends_with_deadline_exceeded_as_soon_as_tonics_does() {
    let _load = LOAD.lock().await;
    let (dns, pods, target) = cluster(&[61]).await;
    pods[0].set_delay(SLOW);

    let channel = Channel::builder()
        .nameserver(dns.addr())
        .build(&target)
        .unwrap();
    ready(&channel, 1).await;
    let mut ours = HealthClient::new(channel.clone());
    let (took, code) = check(&mut ours, Some(DEADLINE)).await;
    assert_eq!(code, Code::DeadlineExceeded, "took {took:?}");
    assert!(
        took >= DEADLINE && took < DEADLINE + SLACK,
        "ours ended after {took:?}, the deadline was {DEADLINE:?}"
    );

    // tonic's own channel to the same pod, the same RPC: it enforces the
    // deadline too (and reports it as CANCELLED, "Timeout expired").
    let tonic_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", pods[0].addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut theirs = HealthClient::new(tonic_channel);
    let (tonic_took, tonic_code) = check(&mut theirs, Some(DEADLINE)).await;
    assert_ne!(tonic_code, Code::Ok);
    assert!(
        tonic_took >= DEADLINE && tonic_took < DEADLINE + SLACK,
        "tonic ended after {tonic_took:?}"
    );

    // Without a deadline the slow answer arrives: nothing else cut it short.
    let (took, code) = check(&mut ours, None).await;
    assert_eq!(code, Code::Ok);
    assert!(took >= SLOW, "{took:?}");
}

#[tokio::test]
async fn the_channels_default_timeout_applies_and_a_shorter_rpc_deadline_wins() {
    let _load = LOAD.lock().await;
    let (dns, pods, target) = cluster(&[62]).await;
    pods[0].set_delay(SLOW);
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .timeout(Duration::from_millis(250))
        .build(&target)
        .unwrap();
    ready(&channel, 1).await;
    let mut client = HealthClient::new(channel);

    let (took, code) = check(&mut client, None).await;
    assert_eq!(code, Code::DeadlineExceeded);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(250) + SLACK,
        "{took:?}"
    );
    let (took, code) = check(&mut client, Some(DEADLINE)).await;
    assert_eq!(code, Code::DeadlineExceeded);
    assert!(took < DEADLINE + SLACK, "{took:?}");

    // A longer RPC deadline does not extend the channel's.
    let (took, code) = check(&mut client, Some(Duration::from_secs(5))).await;
    assert_eq!(code, Code::DeadlineExceeded);
    assert!(took < Duration::from_millis(250) + SLACK, "{took:?}");
}

#[tokio::test]
async fn a_pod_that_misses_deadlines_gets_few_calls_and_is_not_taken_out() {
    let _load = LOAD.lock().await;
    let (dns, pods, target) = cluster(&[63, 64, 65]).await;
    pods[0].set_delay(SLOW);
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .build(&target)
        .unwrap();
    ready(&channel, 3).await;

    const CALLERS: usize = 4;
    const CALLS: usize = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let mut client = HealthClient::new(channel.clone());
        tasks.spawn(async move {
            let mut exceeded = 0u64;
            for _ in 0..CALLS {
                let (_, code) = check(&mut client, Some(DEADLINE)).await;
                match code {
                    Code::Ok => {}
                    Code::DeadlineExceeded => exceeded += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            exceeded
        });
    }
    let mut exceeded = 0;
    while let Some(n) = tasks.join_next().await {
        exceeded += n.unwrap();
    }
    let total = (CALLERS * CALLS) as u64;
    // The slow pod never answers within the deadline, so the calls it got
    // are the ones that missed it, and the fast pods answered all others.
    let answered_fast: u64 = pods[1..].iter().map(GrpcPod::requests).sum();
    assert_eq!(
        answered_fast + exceeded,
        total,
        "every call missing its deadline went to the slow pod"
    );
    assert!(
        exceeded * 10 < total,
        "the slow pod got {exceeded} of {total} calls"
    );
    // Missing a caller's deadline is not a failure of the pod: it stays in
    // the pick set (its RTT estimate is what steers calls away).
    let slow = channel
        .stats()
        .endpoints
        .into_iter()
        .find(|e| e.address == pods[0].addr())
        .unwrap();
    assert_eq!(slow.state, EndpointState::Ready, "{slow:?}");
}
