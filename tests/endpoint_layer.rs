//! The open per-pod stack end to end: `endpoint_layer` around every pod's service, a maker of the
//! user's own through `build_with`, over real pods on 127.0.x.y found through real DNS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::balance::CompleteOnResponse;
use headless_lb::http::{Client, HttpEndpoint, HttpEndpointBuilder, Protocol};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use headless_lb::{EndpointState, make_endpoint_fn};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::ServiceExt;

const SERVICE: &str = "layers.default.svc.cluster.local";
type Body = Full<Bytes>;

/// `127.0.net.1 ..= 127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

async fn cluster(net: u8, n: u8) -> (DnsServer, Vec<Pod>, String) {
    let ips = ips(net, n);
    let pods = Pod::start_all(&ips).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips, 1);
    let target = format!("{SERVICE}:{}", pods[0].addr().port());
    (dns, pods, target)
}

async fn all_ready<F: Fn() -> Vec<headless_lb::EndpointStats>>(stats: F, n: usize) {
    wait_for(Duration::from_secs(5), "every pod ready", || {
        let stats = stats();
        stats.len() == n && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;
}

// ===== a layer that counts what it sees, per pod =====

/// Counts the requests each pod's layered service is called with.
#[derive(Clone, Default)]
struct CountLayer(Arc<Mutex<BTreeMap<SocketAddr, u64>>>);

#[derive(Clone)]
struct Counted<S> {
    addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<SocketAddr, u64>>>,
    inner: S,
}

impl<B> tower::Layer<HttpEndpoint<B>> for CountLayer {
    type Service = Counted<HttpEndpoint<B>>;

    fn layer(&self, inner: HttpEndpoint<B>) -> Self::Service {
        Counted {
            addr: inner.addr(),
            counts: self.0.clone(),
            inner,
        }
    }
}

impl<S: tower::Service<Req>, Req> tower::Service<Req> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> S::Future {
        *self.counts.lock().unwrap().entry(self.addr).or_default() += 1;
        self.inner.call(request)
    }
}

#[tokio::test]
async fn a_layer_sees_every_request_of_its_pod() {
    let (dns, pods, target) = cluster(41, 3).await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let counts = CountLayer::default();
        let client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .endpoint_layer(counts.clone())
            .build::<Body>(&target)
            .unwrap();
        all_ready(|| client.stats().endpoints, 3).await;
        let before: Vec<u64> = pods.iter().map(Pod::requests).collect();
        for _ in 0..300 {
            let response = client.get("/").await.unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap();
        }
        let counts = counts.0.lock().unwrap().clone();
        for (pod, before) in pods.iter().zip(before) {
            let served = pod.requests() - before;
            assert_eq!(
                counts.get(&pod.addr()).copied().unwrap_or(0),
                served,
                "{protocol:?}: the layer of {} saw {counts:?}",
                pod.addr()
            );
            assert!(served > 0, "{protocol:?}: {} served nothing", pod.addr());
        }
    }
}

#[tokio::test]
async fn a_per_pod_timeout_layer_fails_a_hung_pods_requests_while_the_others_serve() {
    let (dns, pods, target) = cluster(42, 3).await;
    let timeout = Duration::from_millis(200);
    let client = Client::builder()
        .nameserver(dns.addr())
        .endpoint_layer(tower::timeout::TimeoutLayer::new(timeout))
        .build::<Body>(&target)
        .unwrap();
    all_ready(|| client.stats().endpoints, 3).await;
    pods[0].set_hang(true);

    let hung = pods[0].addr();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..50 {
                let start = Instant::now();
                let result = client.get("/").await;
                let ok = match result {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        response.into_body().collect().await.unwrap();
                        ok
                    }
                    Err(err) => {
                        // The pod's own timeout, reported as a failure of the pod.
                        assert_eq!(err.endpoint(), Some(hung), "{err}");
                        assert!(format!("{err:?}").contains("Elapsed"), "{err:?}");
                        false
                    }
                };
                outcomes.push((ok, start.elapsed()));
            }
            outcomes
        });
    }
    let mut failed = 0;
    let mut total = 0;
    while let Some(outcomes) = tasks.join_next().await {
        for (ok, took) in outcomes.unwrap() {
            total += 1;
            if !ok {
                failed += 1;
                assert!(
                    took >= timeout && took < timeout + Duration::from_millis(300),
                    "a hung request ended after {took:?}"
                );
            }
        }
    }
    // Failure accrual takes the hung pod out after a few timeouts; the
    // other pods serve everything else.
    eprintln!("{failed} of {total} requests reached the hung pod and timed out");
    assert!(failed > 0, "no request reached the hung pod");
    assert!(failed * 20 < total, "{failed} of {total} failed");
    assert_eq!(pods[0].requests(), 0, "the hung pod answered");
    pods[0].set_hang(false);
}

#[tokio::test]
async fn a_connect_failure_seen_through_a_layer_still_sends_the_request_elsewhere() {
    let (dns, pods, target) = cluster(43, 3).await;
    // A layer that wraps every error in its own type, as error-mapping
    // layers do: the balancer must still see a failed connect as one.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Wrapped(#[source] tower::BoxError);
    let client = Client::builder()
        .nameserver(dns.addr())
        .endpoint_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .endpoint_layer(tower::layer::layer_fn(|inner: HttpEndpoint<Body>| {
            inner.map_err(|e: tower::BoxError| Wrapped(e))
        }))
        .build::<Body>(&target)
        .unwrap();
    all_ready(|| client.stats().endpoints, 3).await;
    pods[0].kill().await;
    let mut failed = 0;
    for _ in 0..200 {
        match client.get("/").await {
            Ok(response) => {
                assert!(response.status().is_success());
                response.into_body().collect().await.unwrap();
            }
            Err(err) => {
                failed += 1;
                eprintln!("{err}");
            }
        }
    }
    assert_eq!(failed, 0, "requests failed though two pods were up");
    wait_for(Duration::from_secs(2), "the killed pod backs off", || {
        client
            .stats()
            .endpoints
            .iter()
            .any(|e| e.address == pods[0].addr() && e.state != EndpointState::Ready)
    })
    .await;
    assert_eq!(
        client.stats().endpoints.len(),
        3,
        "a failed pod is never dropped"
    );
}

#[tokio::test]
async fn build_with_balances_over_a_makers_own_services() {
    let (dns, pods, target) = cluster(44, 3).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let endpoints = HttpEndpointBuilder::new(Protocol::Http2).authority(target.parse().unwrap());
    let make = {
        let seen = seen.clone();
        make_endpoint_fn(move |endpoint: &headless_lb::Endpoint| {
            seen.lock().unwrap().push(endpoint.clone());
            endpoints.make_for::<Body>(endpoint)
        })
    };
    let balanced = Client::builder()
        .nameserver(dns.addr())
        .build_with(&target, make, CompleteOnResponse)
        .unwrap();
    all_ready(|| balanced.stats().endpoints, 3).await;
    for _ in 0..60 {
        let request = http::Request::get("/").body(Body::default()).unwrap();
        let response = balanced.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(response.version(), http::Version::HTTP_2);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one service per pod: {seen:?}");
    for endpoint in &seen {
        assert_eq!(endpoint.server_name(), SERVICE);
    }
    for pod in &pods {
        assert!(pod.requests() > 0, "{} served nothing", pod.addr());
    }
}
