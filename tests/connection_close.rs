//! A pod closing a connection: `Connection: close`, HTTP/2 GOAWAY, and an
//! idle keep-alive connection closed just as the next request is written on
//! it. Scripted servers on raw loopback sockets, so the close lands exactly
//! where each test wants it.
//!
//! The rule under test (`src/http/replay.rs`): a closing connection takes no
//! new request; an HTTP/1.1 request that fails on a reused connection before
//! any response byte goes to another pod or connection when it is
//! idempotent and has no body; anything else is returned, never replayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::NotSent;
use headless_lb::http::{Client, HttpEndpoint, HttpEndpointBuilder, Protocol};
use headless_lb::testing::{DnsServer, wait_for};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

type Body = Full<Bytes>;

const SERVICE: &str = "web.default.svc.cluster.local";
const DEADLINE: Duration = Duration::from_secs(5);

/// How the scripted pod treats the second request on its first connection.
#[derive(Clone, Copy, Debug)]
enum Second {
    /// Reads it whole, then closes (FIN): an idle timeout racing the write.
    Close,
    /// Reads it whole, then resets (RST, `SO_LINGER` 0).
    Reset,
    /// Writes the start of a response head, then closes: a response begun.
    Partial,
    /// Answers it normally.
    Answer,
}

/// An HTTP/1.1 pod scripted per connection: the first connection answers
/// its first request (with `Connection: close` if `close_first`) and
/// treats its second as `second` says; later connections answer everything.
/// Logs `conn# METHOD PATH` for every request head it reads.
struct ScriptedPod {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl ScriptedPod {
    async fn start(ip: &str, close_first: bool, second: Second) -> ScriptedPod {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, conn, close_first, second, seen.clone()));
            }
        });
        ScriptedPod { addr, log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    close_first: bool,
    second: Second,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    for n in 0.. {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let line = head.lines().next().unwrap_or_default().to_owned();
        let mut words = line.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        log.lock().unwrap().push(format!("{conn} {method} {path}"));
        if conn == 0 && n == 1 {
            match second {
                Second::Close => return,
                Second::Reset => {
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    return;
                }
                Second::Partial => {
                    let _ = stream.write_all(b"HTTP/1.1 200").await;
                    return;
                }
                Second::Answer => {}
            }
        }
        let close = conn == 0 && n == 0 && close_first;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request head (these tests send no bodies); `None` at EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn request(method: Method, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Body::default())
        .unwrap()
}

fn endpoint(pod: &ScriptedPod, protocol: Protocol) -> HttpEndpoint<Body> {
    HttpEndpointBuilder::new(protocol)
        .authority(format!("{SERVICE}:80").parse().unwrap())
        .make(pod.addr)
}

/// The first request, answered; then waits until its connection is idle
/// in the pool, so that the next request reuses it.
async fn first_exchange(svc: &HttpEndpoint<Body>) {
    let response = svc
        .clone()
        .oneshot(request(Method::GET, "/first"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    wait_for(DEADLINE, "the connection idle in the pool", || {
        svc.idle_connections() == 1
    })
    .await;
}

// ===== the endpoint: what comes back =====

#[tokio::test]
async fn an_idempotent_request_on_a_reused_connection_closed_before_any_response_byte_comes_back_to_be_sent_again()
 {
    for second in [Second::Close, Second::Reset] {
        let pod = ScriptedPod::start("127.0.0.1", false, second).await;
        let svc = endpoint(&pod, Protocol::Http1);
        first_exchange(&svc).await;

        let err = svc
            .clone()
            .oneshot(request(Method::GET, "/second"))
            .await
            .expect_err("the pod closed without answering");
        let not_sent = NotSent::<Request<Body>>::find(&*err)
            .unwrap_or_else(|| panic!("{second:?}: not handed back for another pod: {err}"));
        let again = not_sent.take_request().expect("the request comes back");
        assert_eq!(again.method(), Method::GET);
        assert_eq!(
            again.uri(),
            "/second",
            "the caller's URI, not the rewritten one"
        );
        assert_eq!(pod.log(), ["0 GET /first", "0 GET /second"]);
    }
}

#[tokio::test]
async fn a_post_or_a_request_with_a_body_on_a_closed_reused_connection_is_returned_not_replayed() {
    let with_body = Request::put("/put")
        .body(Body::new(Bytes::from_static(b"x")))
        .unwrap();
    for (req, line) in [
        (request(Method::POST, "/post"), "0 POST /post"),
        (with_body, "0 PUT /put"),
    ] {
        let pod = ScriptedPod::start("127.0.0.1", false, Second::Close).await;
        let svc = endpoint(&pod, Protocol::Http1);
        first_exchange(&svc).await;
        let err = svc.clone().oneshot(req).await.expect_err("no answer");
        assert!(
            NotSent::<Request<Body>>::find(&*err).is_none(),
            "{line}: handed back for a replay: {err}"
        );
        assert_eq!(pod.log(), ["0 GET /first", line]);
    }
}

#[tokio::test]
async fn an_idempotent_request_whose_response_had_begun_is_returned_not_replayed() {
    let pod = ScriptedPod::start("127.0.0.1", false, Second::Partial).await;
    let svc = endpoint(&pod, Protocol::Http1);
    first_exchange(&svc).await;
    let err = svc
        .clone()
        .oneshot(request(Method::GET, "/second"))
        .await
        .expect_err("the response broke off");
    assert!(
        NotSent::<Request<Body>>::find(&*err).is_none(),
        "handed back after a response byte: {err}"
    );
}

#[tokio::test]
async fn a_request_on_a_fresh_connection_closed_before_any_response_byte_is_not_replayed() {
    // The second request on connection 0 is its first exchange's follower;
    // to fail a first exchange, the pod closes at once: `Second` does not
    // apply, so close on the first request by answering nothing.
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = read_head(&mut stream, &mut Vec::new()).await;
        }
    });
    let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(Protocol::Http1).make(addr);
    let err = svc
        .oneshot(request(Method::GET, "/"))
        .await
        .expect_err("no answer");
    assert!(
        NotSent::<Request<Body>>::find(&*err).is_none(),
        "a fresh connection's failure was handed back: {err}"
    );
}

#[tokio::test]
async fn a_connection_close_response_retires_its_connection() {
    let pod = ScriptedPod::start("127.0.0.1", true, Second::Answer).await;
    let svc = endpoint(&pod, Protocol::Http1);
    let response = svc
        .clone()
        .oneshot(request(Method::GET, "/first"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    wait_for(DEADLINE, "the closed connection gone", || {
        svc.connections() == 0
    })
    .await;
    let response = svc
        .clone()
        .oneshot(request(Method::POST, "/second"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(pod.log(), ["0 GET /first", "1 POST /second"]);
}

#[tokio::test]
async fn an_http2_connection_that_received_goaway_takes_no_new_request_and_is_replaced() {
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (goaway_tx, goaway_rx) = tokio::sync::watch::channel(false);
    let seen = log.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let mut goaway = goaway_rx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    seen.lock()
                        .unwrap()
                        .push(format!("{conn} {}", req.uri().path()));
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new()))) }
                });
                let connection = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = goaway.wait_for(|go| *go), if conn == 0 => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
    });
    let svc: HttpEndpoint<Body> = HttpEndpointBuilder::new(Protocol::Http2).make(addr);
    svc.clone()
        .oneshot(request(Method::GET, "/first"))
        .await
        .unwrap();
    goaway_tx.send_replace(true);
    wait_for(DEADLINE, "the GOAWAY'd connection retired", || {
        svc.idle_connections() == 0
    })
    .await;
    let response = svc
        .clone()
        .oneshot(request(Method::POST, "/second"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*log.lock().unwrap(), ["0 /first", "1 /second"]);
}

// ===== the client: the retry happens, the POST is not replayed =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_client_a_get_succeeds_on_a_new_connection_and_a_post_fails_once() {
    for (method, path) in [(Method::GET, "/second"), (Method::POST, "/second")] {
        let pod = ScriptedPod::start("127.0.0.1", false, Second::Close).await;
        let dns = DnsServer::start().await.unwrap();
        dns.set_ips(SERVICE, &[pod.addr.ip()], 1);
        let client: Client<Body> = Client::builder()
            .nameserver(dns.addr())
            .max_connections(1)
            .build(&format!("{SERVICE}:{}", pod.addr.port()))
            .unwrap();
        let response = client
            .request(request(Method::GET, "/first"))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        wait_for(DEADLINE, "the connection back in the pool", || {
            pod.log().len() == 1 && client.stats().endpoints[0].pending == 0
        })
        .await;

        let result = client.request(request(method.clone(), path)).await;
        let log = pod.log();
        if method == Method::GET {
            let response = result.expect("the GET is sent again on a new connection");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(log, ["0 GET /first", "0 GET /second", "1 GET /second"]);
        } else {
            let err = result.expect_err("the POST fails");
            assert!(!err.is_not_sent(), "the POST was reported not sent: {err}");
            assert_eq!(log, ["0 GET /first", "0 POST /second"], "replayed");
        }
    }
}
