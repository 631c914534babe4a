//! The per-endpoint HTTP service against real pods on 127.0.0.x: connecting in
//! `poll_ready`, addressing, pooling, crashes, and requests handed back unsent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use headless_lb::http::{ConnectError, HttpEndpoint, HttpEndpointBuilder, Protocol};
use headless_lb::testing::{AUTHORITY_HEADER, Pod, wait_for};
use headless_lb::{Endpoint, MakeEndpoint, NotSent};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

type Body = Full<Bytes>;

const SERVICE: &str = "web.default.svc.cluster.local:8080";
const DEADLINE: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn endpoint(protocol: Protocol, pod: &Pod) -> HttpEndpoint<Body> {
    HttpEndpointBuilder::new(protocol)
        .authority(SERVICE.parse().unwrap())
        .make(pod.addr())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::default()).unwrap()
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends one request and returns status, body and the authority the pod saw.
async fn send(
    svc: &HttpEndpoint<Body>,
    uri: &str,
) -> Result<(StatusCode, String, String), tower::BoxError> {
    let response = svc.clone().oneshot(get(uri)).await?;
    let status = response.status();
    let seen = response.headers()[AUTHORITY_HEADER].to_str()?.to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?, seen))
}

fn connect_error(err: tower::BoxError) -> ConnectError {
    match err.downcast::<ConnectError>() {
        Ok(err) => *err,
        Err(err) => panic!("expected a ConnectError, got {err}"),
    }
}

#[test]
fn endpoint_is_a_cloneable_send_sync_service() {
    fn assert_service<S>()
    where
        S: Service<Request<Body>> + Clone + Send + Sync + 'static,
        S::Future: Send,
    {
    }
    assert_service::<HttpEndpoint<Body>>();
}

#[tokio::test]
async fn ready_opens_a_connection_before_any_request() {
    for (ip, protocol) in [
        ("127.0.0.11:0", Protocol::Http1),
        ("127.0.0.12:0", Protocol::Http2),
    ] {
        let pod = Pod::start(addr(ip)).await.unwrap();
        let svc = endpoint(protocol, &pod);
        assert_eq!(
            svc.connections(),
            0,
            "{protocol:?}: nothing opened before ready"
        );
        svc.clone().ready().await.unwrap();
        assert_eq!(svc.connections(), 1);
        wait_until("the pod accepted", || pod.connections() == 1).await;
        assert_eq!(pod.requests(), 0);
    }
}

#[tokio::test]
async fn ready_fails_fast_with_a_refused_connect_error_on_a_closed_port() {
    let pod = Pod::start(addr("127.0.0.13:0")).await.unwrap();
    pod.kill().await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let svc = endpoint(protocol, &pod);
        let start = Instant::now();
        let err = connect_error(svc.clone().ready().await.unwrap_err());
        assert!(err.is_refused(), "{err}");
        assert_eq!(err.addr(), pod.addr());
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(svc.connections(), 0);
    }
}

/// A connector whose connects never finish, like a pod that drops SYNs.
#[derive(Clone)]
struct Blackhole;

impl Service<Endpoint> for Blackhole {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Endpoint) -> Self::Future {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn connect_timeout_applies_to_any_connector() {
    let svc: HttpEndpoint<Body, Blackhole> = HttpEndpointBuilder::new(Protocol::Http1)
        .connect_timeout(Duration::from_millis(300))
        .connector(Blackhole)
        .make(addr("127.0.0.14:8080"));
    let start = tokio::time::Instant::now();
    let err = connect_error(svc.clone().ready().await.unwrap_err());
    assert!(err.is_timeout(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn waiters_on_one_connect_all_get_its_error() {
    let pod = Pod::start(addr("127.0.0.15:0")).await.unwrap();
    pod.kill().await;
    let svc = endpoint(Protocol::Http2, &pod);
    let results = futures::future::join_all((0..5).map(|_| svc.clone().ready_oneshot())).await;
    for result in results {
        assert!(connect_error(result.unwrap_err()).is_refused());
    }
}

#[tokio::test]
async fn both_protocols_answer_200_with_the_pod_address_and_the_service_authority() {
    for (ip, protocol, version) in [
        ("127.0.0.16:0", Protocol::Http1, Version::HTTP_11),
        ("127.0.0.17:0", Protocol::Http2, Version::HTTP_2),
    ] {
        let pod = Pod::start(addr(ip)).await.unwrap();
        let svc = endpoint(protocol, &pod);
        for uri in [
            "/api/x",
            "http://web.default.svc.cluster.local:8080/api/y?z=1",
        ] {
            let (status, body, seen) = send(&svc, uri).await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, pod.addr().to_string());
            assert_eq!(seen, SERVICE, "{protocol:?} {uri}");
            assert_eq!(pod.last_authority().as_deref(), Some(SERVICE));
            assert_eq!(pod.last_version(), Some(version));
        }
        assert_eq!(pod.requests(), 2);
    }
}

#[tokio::test]
async fn ipv6_pod_is_reached_and_addressed_with_brackets() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let pod = Pod::start(addr("[::1]:0")).await.unwrap();
        // No configured authority: the endpoint's own address is used.
        let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(protocol).make(pod.addr());
        let (status, body, seen) = send(&svc, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("[::1]:{}", pod.addr().port()));
        assert_eq!(seen, format!("[::1]:{}", pod.addr().port()), "{protocol:?}");
    }
}

#[tokio::test]
async fn http1_pool_reuses_an_idle_connection() {
    let pod = Pod::start(addr("127.0.0.18:0")).await.unwrap();
    let svc = endpoint(Protocol::Http1, &pod);
    for _ in 0..10 {
        send(&svc, "/").await.unwrap();
        // The connection returns to the pool once the exchange is over.
        wait_until("the connection is idle again", || {
            svc.idle_connections() == 1
        })
        .await;
    }
    assert_eq!(pod.requests(), 10);
    assert_eq!(pod.connections(), 1);
    assert_eq!(svc.connections(), 1);
}

#[tokio::test]
async fn http1_pool_opens_connections_up_to_the_cap_then_waits() {
    let pod = Pod::start(addr("127.0.0.19:0")).await.unwrap();
    pod.set_hang(true);
    let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(Protocol::Http1)
        .max_connections(3)
        .make(pod.addr());
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send_owned(svc.clone())))
        .collect();
    wait_until("three requests are held", || pod.in_flight() == 3).await;
    assert_eq!(pod.connections(), 3);

    let mut fourth = svc.clone();
    let mut ready = Box::pin(fourth.ready());
    assert!(
        (&mut ready).now_or_never().is_none(),
        "a fourth connection must wait"
    );
    pod.set_hang(false);
    ready.await.unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(pod.connections(), 3);
}

/// An HTTP/1.1 endpoint capped at one connection, and that connection busy
/// with a request the pod holds until `set_hang(false)`.
async fn one_busy_connection(
    ip: &str,
) -> (
    Pod,
    HttpEndpoint<Body>,
    tokio::task::JoinHandle<Result<StatusCode, tower::BoxError>>,
) {
    let pod = Pod::start(addr(ip)).await.unwrap();
    pod.set_hang(true);
    let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(Protocol::Http1)
        .max_connections(1)
        .make(pod.addr());
    let holder = tokio::spawn(send_owned(svc.clone()));
    wait_until("the only connection is busy", || pod.in_flight() == 1).await;
    (pod, svc, holder)
}

/// With every connection busy, HTTP/1.1 callers get a connection in the
/// order they started waiting: each one that comes free goes to the longest
/// waiter, not to whichever of the woken callers runs first.
#[tokio::test]
async fn http1_waiters_get_connections_in_arrival_order() {
    let (pod, svc, holder) = one_busy_connection("127.0.0.30:0").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..8 {
        let (svc, order) = (svc.clone(), order.clone());
        let mut waiter = Box::pin(async move {
            let status = send_owned(svc).await;
            order.lock().unwrap().push(i);
            status
        });
        // One poll queues it (no connection is free), then it runs on its own.
        assert!(
            futures::poll!(&mut waiter).is_pending(),
            "waiter {i} must wait"
        );
        waiters.push(tokio::spawn(waiter));
    }
    pod.set_hang(false);
    assert_eq!(holder.await.unwrap().unwrap(), StatusCode::OK);
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    assert_eq!(pod.connections(), 1);
}

/// Records that its task was woken.
struct Woken(AtomicBool);

impl futures::task::ArcWake for Woken {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.store(true, Ordering::SeqCst);
    }
}

/// A waiter that goes away after the free connection was handed to it (its
/// task woken, never polled again) passes the connection on: the callers
/// behind it are not left waiting.
#[tokio::test]
async fn a_waiter_dropped_after_the_handover_passes_the_connection_on() {
    let (pod, svc, holder) = one_busy_connection("127.0.0.30:0").await;
    let mut first = svc.clone();
    let mut first_ready = Box::pin(first.ready());
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = futures::task::waker(woken.clone());
    let polled = first_ready.as_mut().poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending(), "the first waiter must wait");
    let mut second = Box::pin(send_owned(svc.clone()));
    assert!(futures::poll!(&mut second).is_pending());
    let second = tokio::spawn(second);

    pod.set_hang(false);
    assert_eq!(holder.await.unwrap().unwrap(), StatusCode::OK);
    wait_until("the connection is handed to the first waiter", || {
        woken.0.load(Ordering::SeqCst)
    })
    .await;
    drop(first_ready);
    drop(first);
    let status = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("the second waiter gets the connection")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pod.connections(), 1);
}

async fn send_owned(svc: HttpEndpoint<Body>) -> Result<StatusCode, tower::BoxError> {
    let response = svc.oneshot(get("/")).await?;
    Ok(response.status())
}

#[tokio::test]
async fn http2_multiplexes_concurrent_requests_over_one_connection() {
    let pod = Pod::start(addr("127.0.0.20:0")).await.unwrap();
    pod.set_hang(true);
    let svc = endpoint(Protocol::Http2, &pod);
    let held: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send_owned(svc.clone())))
        .collect();
    wait_until("five requests are held", || pod.in_flight() == 5).await;
    pod.set_hang(false);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(pod.connections(), 1);
    assert_eq!(svc.connections(), 1);
}

#[tokio::test]
async fn ready_fails_after_kill_and_succeeds_after_restart() {
    for (ip, protocol) in [
        ("127.0.0.21:0", Protocol::Http1),
        ("127.0.0.22:0", Protocol::Http2),
    ] {
        let pod = Pod::start(addr(ip)).await.unwrap();
        let svc = endpoint(protocol, &pod);
        send(&svc, "/").await.unwrap();

        pod.kill().await;
        wait_until("the endpoint saw its connection close", || {
            svc.connections() == 0
        })
        .await;
        let err = connect_error(svc.clone().ready().await.unwrap_err());
        assert!(err.is_refused(), "{protocol:?}: {err}");

        pod.restart().await.unwrap();
        svc.clone().ready().await.unwrap();
        let (status, body, _) = send(&svc, "/").await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, pod.addr().to_string()));
    }
}

#[tokio::test]
async fn call_on_a_connection_closed_before_the_write_returns_the_request_unsent() {
    for (ip, protocol) in [
        ("127.0.0.23:0", Protocol::Http1),
        ("127.0.0.24:0", Protocol::Http2),
    ] {
        let pod = Pod::start(addr(ip)).await.unwrap();
        let mut svc = endpoint(protocol, &pod);
        // Reserve a connection, then let the pod crash under it.
        svc.ready().await.unwrap();
        pod.kill().await;
        wait_until("the endpoint saw its connection close", || {
            svc.connections() == 0
        })
        .await;

        let req = Request::post("/original")
            .header("x-request-id", "7")
            .body(Body::from("payload"))
            .unwrap();
        let err = svc.call(req).await.unwrap_err();
        let not_sent = NotSent::<Request<Body>>::find(&*err)
            .unwrap_or_else(|| panic!("{protocol:?}: not a NotSent: {err}"));
        let req = not_sent.take_request().expect("the request is given back");
        assert_eq!(req.uri(), "/original");
        assert_eq!(req.headers()["x-request-id"], "7");
        assert!(
            req.headers().get(http::header::HOST).is_none(),
            "Host is restored"
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "payload");
        assert_eq!(pod.requests(), 0);
    }
}

#[tokio::test]
async fn call_without_ready_is_reported_as_not_sent() {
    let pod = Pod::start(addr("127.0.0.25:0")).await.unwrap();
    let mut svc = endpoint(Protocol::Http1, &pod);
    let err = svc.call(get("/x")).await.unwrap_err();
    assert_eq!(
        NotSent::<Request<Body>>::find(&*err)
            .and_then(NotSent::take_request)
            .expect("the request is given back")
            .uri(),
        "/x"
    );
}

/// Opens plain TCP connections and records the [`Endpoint`] it was asked for.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Endpoint>>>);

impl tower::Service<Endpoint> for Recording {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        self.0.lock().unwrap().push(endpoint.clone());
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(endpoint.addr()).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

#[tokio::test]
async fn the_connector_gets_the_pod_address_the_service_name_and_the_protocol() {
    let pod = Pod::start(addr("127.0.0.26:0")).await.unwrap();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let seen = Recording::default();
        let svc: HttpEndpoint<Body, Recording> = HttpEndpointBuilder::new(protocol)
            .authority("web.default.svc.cluster.local.:8080".parse().unwrap())
            .connector(seen.clone())
            .make(pod.addr());
        let response = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].addr(), pod.addr());
        assert_eq!(seen[0].server_name(), "web.default.svc.cluster.local");
        assert_eq!(seen[0].protocol(), protocol);
    }
}

#[tokio::test]
async fn make_endpoint_builds_one_endpoint_per_pod_speaking_the_builders_protocol() {
    let pod = Pod::start(addr("127.0.0.27:0")).await.unwrap();
    let make = HttpEndpointBuilder::new(Protocol::Http2);
    let pod_endpoint = Endpoint::new(pod.addr(), "web", Protocol::Http1);
    let svc: HttpEndpoint<Body> =
        MakeEndpoint::<http::Request<Body>>::make_endpoint(&make, &pod_endpoint);
    assert_eq!(svc.addr(), pod.addr());
    assert_eq!(svc.protocol(), Protocol::Http2);
    let (status, _, seen) = send(&svc, "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen, pod.addr().to_string());
    assert_eq!(pod.last_version(), Some(http::Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_callers_all_complete_within_the_connection_cap() {
    for (ip, protocol) in [
        ("127.0.0.28:0", Protocol::Http1),
        ("127.0.0.29:0", Protocol::Http2),
    ] {
        let pod = Pod::start(addr(ip)).await.unwrap();
        let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(protocol)
            .max_connections(4)
            .make(pod.addr());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let (status, _, _) = send(&svc, "/").await.unwrap();
                        assert_eq!(status, StatusCode::OK);
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(DEADLINE, all)
            .await
            .expect("no caller is left waiting")
            .into_iter()
            .for_each(|r| r.unwrap());
        assert_eq!(pod.requests(), 500);
        let cap = if protocol == Protocol::Http1 { 4 } else { 1 };
        assert!(
            pod.connections() <= cap,
            "{protocol:?}: {} connections",
            pod.connections()
        );
    }
}

#[tokio::test]
async fn a_new_http2_connection_serves_while_one_the_pod_is_closing_drains_a_stream() {
    let pod = Arc::new(Pod::start(addr("127.0.0.36:0")).await.unwrap());
    let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(Protocol::Http2).make(pod.addr());
    let (status, _, _) = send(&svc, "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // A slow request in flight on the one connection, then the pod asks
    // that connection to close (GOAWAY): it drains the slow request.
    let slow = Duration::from_secs(6);
    pod.set_delay(slow);
    let held = tokio::spawn(send_owned(svc.clone()));
    wait_for(DEADLINE, "the request is in flight", || {
        pod.in_flight() == 1
    })
    .await;
    let draining = {
        let pod = pod.clone();
        tokio::spawn(async move { pod.shutdown(Duration::from_secs(30)).await })
    };
    wait_for(DEADLINE, "the pod stopped listening", || !pod.is_running()).await;
    pod.restart().await.unwrap();
    pod.set_delay(Duration::ZERO);

    // New requests must not wait for the draining connection to end. One
    // that meets the GOAWAY'd connection comes back unsent (hyper hands it
    // back); the next one goes over a new connection.
    let mut answered = false;
    for _ in 0..5 {
        let attempt = tokio::time::timeout(Duration::from_secs(2), send(&svc, "/"))
            .await
            .expect("a new request waited for the draining connection");
        match attempt {
            Ok((status, _, _)) => {
                assert_eq!(status, StatusCode::OK);
                answered = true;
                break;
            }
            Err(err) => assert!(
                NotSent::<Request<Body>>::find(&*err).is_some(),
                "only unsent failures: {err}"
            ),
        }
    }
    assert!(answered, "no new request was answered");
    assert_eq!(pod.connections(), 2);
    assert_eq!(held.await.unwrap().unwrap(), StatusCode::OK);
    draining.abort();
}
