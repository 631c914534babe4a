//! The test pod's controls: delay, status, hang, kill, restart, drop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use headless_lb::http::{HttpEndpoint, HttpEndpointBuilder, Protocol};
use headless_lb::testing::Pod;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use tower::ServiceExt;

type Body = Full<Bytes>;

const DEADLINE: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn client(pod: &Pod) -> HttpEndpoint<Body> {
    HttpEndpointBuilder::new(Protocol::Http1).make(pod.addr())
}

async fn status_and_body(svc: HttpEndpoint<Body>) -> (StatusCode, String) {
    let response = svc
        .oneshot(Request::get("/").body(Body::default()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn port_zero_binds_a_free_port_on_the_given_loopback_ip() {
    let a = Pod::start(addr("127.0.0.31:0")).await.unwrap();
    let b = Pod::start(addr("127.0.0.32:0")).await.unwrap();
    assert_eq!(a.addr().ip(), addr("127.0.0.31:0").ip());
    assert_ne!(a.addr().port(), 0);
    assert_eq!(status_and_body(client(&a)).await.1, a.addr().to_string());
    assert_eq!(status_and_body(client(&b)).await.1, b.addr().to_string());
}

#[tokio::test]
async fn delay_holds_each_answer() {
    let pod = Pod::start(addr("127.0.0.33:0")).await.unwrap();
    pod.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(status_and_body(client(&pod)).await.0, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn status_changes_the_answer_but_not_the_body() {
    let pod = Pod::start(addr("127.0.0.34:0")).await.unwrap();
    pod.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = status_and_body(client(&pod)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, pod.addr().to_string());
    assert_eq!(pod.requests(), 1);
}

#[tokio::test]
async fn hang_holds_requests_in_flight_until_released() {
    let pod = Pod::start(addr("127.0.0.35:0")).await.unwrap();
    pod.set_hang(true);
    let request = tokio::spawn(status_and_body(client(&pod)));
    wait_until("the request is held", || pod.in_flight() == 1).await;
    assert_eq!(pod.requests(), 0);
    assert!(!request.is_finished());
    pod.set_hang(false);
    assert_eq!(request.await.unwrap().0, StatusCode::OK);
    assert_eq!((pod.requests(), pod.in_flight()), (1, 0));
}

#[tokio::test]
async fn kill_refuses_connections_and_ends_open_ones_and_restart_serves_again() {
    let pod = Pod::start(addr("127.0.0.36:0")).await.unwrap();
    let mut open = TcpStream::connect(pod.addr()).await.unwrap();
    wait_until("the pod accepted", || pod.connections() == 1).await;

    pod.kill().await;
    assert!(!pod.is_running());
    let err = TcpStream::connect(pod.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The open connection was closed by the pod: reading sees EOF (or a reset).
    let mut buf = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut open, &mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    pod.restart().await.unwrap();
    assert!(pod.is_running());
    assert_eq!(status_and_body(client(&pod)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn kill_ends_requests_held_by_hang_on_both_protocols() {
    let pod = Pod::start(addr("127.0.0.37:0")).await.unwrap();
    pod.set_hang(true);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(protocol).make(pod.addr());
        let request = tokio::spawn(svc.oneshot(Request::get("/").body(Body::default()).unwrap()));
        wait_until("the request is held", || pod.in_flight() == 1).await;
        pod.kill().await;
        assert!(request.await.unwrap().is_err(), "{protocol:?}");
        wait_until("nothing is in flight", || pod.in_flight() == 0).await;
        pod.restart().await.unwrap();
    }
}

#[tokio::test]
async fn dropping_a_pod_kills_it() {
    let pod = Pod::start(addr("127.0.0.38:0")).await.unwrap();
    let addr = pod.addr();
    drop(pod);
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(start.elapsed() < DEADLINE, "the listener is still open");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}
