//! Graceful shutdown of the test pods and of `echo_server`, over real
//! sockets: on shutdown (SIGTERM for the process) new connections are
//! refused, requests in flight complete, HTTP/1.1 answers them with
//! `Connection: close`, HTTP/2 and gRPC connections get GOAWAY and close once
//! drained, and the grace period bounds it all.
//!
//! The process tests run the `echo_server` example binary, which `cargo
//! test` builds; with `--test pod_shutdown` alone run `cargo build
//! --examples --all-features` first.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use headless_lb::testing::{Pod, wait_for, wait_for_async};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

mod examples_support;
use examples_support::example;

const DEADLINE: Duration = Duration::from_secs(5);

// ===== clients =====

async fn h1(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (send, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    send
}

async fn h2(addr: SocketAddr) -> http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (send, conn) = http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Empty::new())
        .unwrap()
}

/// A grpc.health.v1 `Check` with an empty request message (5-byte frame header).
fn grpc_check(addr: SocketAddr) -> Request<http_body_util::Full<Bytes>> {
    Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(&[0; 5])))
        .unwrap()
}

/// The `grpc-status` of a gRPC response: from the trailers, or the headers
/// for a trailers-only response.
async fn grpc_status(response: Response<Incoming>) -> Option<String> {
    let (parts, body) = response.into_parts();
    if let Some(s) = parts.headers.get("grpc-status") {
        return s.to_str().ok().map(str::to_owned);
    }
    let collected = body.collect().await.ok()?;
    let trailers = collected.trailers()?;
    trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .map(str::to_owned)
}

/// Reads one frame's type, skipping its payload; `None` when the connection ends.
async fn next_frame(tcp: &mut TcpStream) -> Option<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some(head[3])
}

/// Opens a raw HTTP/2 connection (preface and an empty SETTINGS frame),
/// waits for the server's SETTINGS (so the server has accepted it as
/// HTTP/2), and returns a task that reads frames until a GOAWAY (type 7):
/// true if one came, false if the connection ended without one. Looks at the
/// frames themselves, since hyper's client does not report a GOAWAY.
async fn watch_for_goaway(addr: SocketAddr) -> tokio::task::JoinHandle<bool> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let first = tokio::time::timeout(DEADLINE, next_frame(&mut tcp)).await;
    assert_eq!(first, Ok(Some(4)), "the server's SETTINGS first");
    tokio::spawn(async move {
        while let Some(kind) = next_frame(&mut tcp).await {
            if kind == 7 {
                return true;
            }
        }
        false
    })
}

async fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

// ===== Pod::shutdown in process =====

#[tokio::test]
async fn pod_shutdown_completes_requests_in_flight_and_closes_every_connection() {
    let pod = Pod::start("127.0.0.71:0".parse().unwrap()).await.unwrap();
    let addr = pod.addr();
    pod.set_delay(Duration::from_millis(300));
    let mut one = h1(addr).await;
    let mut two = h2(addr).await;
    // An idle HTTP/1.1 connection that has served a request (keep-alive).
    let mut warm = h1(addr).await;
    {
        let r = warm.send_request(get(addr)).await.unwrap();
        assert_eq!(r.headers().get("connection"), None);
        let _ = r.into_body().collect().await;
        wait_for(DEADLINE, "the warm connection to be idle", || {
            pod.in_flight() == 0
        })
        .await;
        one.ready().await.unwrap();
        let a = tokio::spawn(one.send_request(get(addr)));
        let b = tokio::spawn(two.send_request(get(addr)));
        wait_for(DEADLINE, "two requests in flight", || pod.in_flight() == 2).await;
        let goaway = watch_for_goaway(addr).await;

        let started = Instant::now();
        let grace = Duration::from_secs(5);
        let shutdown = async { pod.shutdown(grace).await };
        let check = async {
            // New connections are refused at once.
            assert!(refuses_connections(addr).await, "listener closed");
            // The idle keep-alive connection is closed, not left to time out.
            wait_for(DEADLINE, "the idle connection to close", || {
                warm.is_closed()
            })
            .await;
            // HTTP/2: every open connection gets GOAWAY.
            let goaway = tokio::time::timeout(DEADLINE, goaway).await;
            assert!(matches!(goaway, Ok(Ok(true))), "no GOAWAY: {goaway:?}");

            let a = a
                .await
                .unwrap()
                .expect("HTTP/1.1 request in flight completes");
            assert_eq!(a.status(), StatusCode::OK);
            assert_eq!(
                a.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "the last HTTP/1.1 response says the connection closes"
            );
            let b = b
                .await
                .unwrap()
                .expect("HTTP/2 request in flight completes");
            assert_eq!(b.status(), StatusCode::OK);
            assert_eq!(
                b.into_body().collect().await.unwrap().to_bytes(),
                addr.to_string()
            );
        };
        let (drained, ()) = tokio::join!(shutdown, check);
        assert!(drained, "every connection finished within the grace");
        assert!(started.elapsed() < grace, "{:?}", started.elapsed());
        // Drained, the HTTP/2 connection closes: the client must open a new
        // one (elsewhere), and a request on this one fails unsent.
        wait_for(DEADLINE, "the HTTP/2 connection to close", || {
            two.is_closed()
        })
        .await;
        assert!(two.send_request(get(addr)).await.is_err());
        assert!(!pod.is_running());
        assert_eq!(pod.requests(), 3);
    }
    // Served again after a restart.
    pod.restart().await.unwrap();
    let mut again = h1(addr).await;
    let r = again.send_request(get(addr)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers().get("connection"), None, "keep-alive again");
}

#[tokio::test]
async fn pod_shutdown_cuts_off_what_outlives_the_grace() {
    let pod = Pod::start("127.0.0.72:0".parse().unwrap()).await.unwrap();
    let addr = pod.addr();
    pod.set_hang(true);
    let mut one = h1(addr).await;
    let mut two = h2(addr).await;
    let a = tokio::spawn(one.send_request(get(addr)));
    let b = tokio::spawn(two.send_request(get(addr)));
    wait_for(DEADLINE, "two requests in flight", || pod.in_flight() == 2).await;
    let started = Instant::now();
    let drained = pod.shutdown(Duration::from_millis(300)).await;
    assert!(!drained, "hung requests cannot drain");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(a.await.unwrap().is_err(), "cut off");
    assert!(b.await.unwrap().is_err(), "cut off");
    assert!(refuses_connections(addr).await);
}

/// Reads one HTTP/1.1 response with a `content-length` off `tcp`; its head.
async fn read_response(tcp: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
            .await
            .expect("the pod answers")
            .expect("read");
        assert!(n > 0, "the pod closed mid-response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("content-length"));
        if got.len() >= end + 4 + length {
            return head;
        }
    }
}

#[tokio::test]
async fn pod_shutdown_reads_what_a_client_still_sends_instead_of_resetting_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = Pod::start("127.0.0.77:0".parse().unwrap()).await.unwrap();
    let addr = pod.addr();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: pod\r\n\r\n")
        .await
        .unwrap();
    let head = read_response(&mut tcp).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let shutdown = tokio::spawn(async move { pod.shutdown(DEADLINE).await });
    let mut buf = [0u8; 64];
    let eof = tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "the idle connection closes: {eof:?}"
    );
    // A client that has not read the close yet goes on writing (an h2
    // PING ack, a WINDOW_UPDATE, the next request). The pod must read that
    // and drop it: closing with it unread sends RST, which destroys what the
    // client has not read yet (HTTP/2 responses, the last GOAWAY). So the
    // client may write for 100 ms (the pod lingers 500 ms) without a reset.
    for i in 0..20 {
        if let Err(err) = tcp.write_all(b"x").await {
            panic!("write {i} after the close: {err}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = tcp.read(&mut buf).await;
    assert!(matches!(end, Ok(0)), "EOF, not a reset: {end:?}");
    assert!(shutdown.await.unwrap(), "drained within the grace");
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_pod_shutdown_sends_goaway_and_completes_rpcs_in_flight() {
    use headless_lb::testing::GrpcPod;

    let pod = GrpcPod::start("127.0.0.73:0".parse().unwrap())
        .await
        .unwrap();
    let addr = pod.addr();
    pod.set_delay(Duration::from_millis(300));
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let rpc = tokio::spawn(send.send_request(grpc_check(addr)));
    wait_for(DEADLINE, "an RPC in flight", || pod.in_flight() == 1).await;
    let goaway = watch_for_goaway(addr).await;
    let shutdown = pod.shutdown(Duration::from_secs(5));
    let check = async {
        assert!(refuses_connections(addr).await, "listener closed");
        let goaway = tokio::time::timeout(DEADLINE, goaway).await;
        assert!(matches!(goaway, Ok(Ok(true))), "no GOAWAY: {goaway:?}");
        let response = rpc.await.unwrap().expect("the RPC in flight completes");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
    };
    let (drained, ()) = tokio::join!(shutdown, check);
    assert!(drained);
    wait_for(DEADLINE, "the connection to close", || send.is_closed()).await;
    assert_eq!(pod.requests(), 1);
}

// ===== echo_server on SIGTERM =====

/// A running `echo_server` and its stderr lines.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl EchoServer {
    async fn start(args: &[&str]) -> EchoServer {
        let mut child = Command::new(example("echo_server"))
            .args(args)
            // The pods log "request received" at trace: how the test knows
            // that requests are in flight in the other process.
            .env("RUST_LOG", "warn,headless_lb=trace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("echo_server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = EchoServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            log: Vec::new(),
        };
        let line = server.line_with("listening on").await;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server.addr = addr;
        server
    }

    /// Waits for the next stderr line containing `needle`.
    async fn line_with(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no stderr line with {needle:?}; stderr so far: {:#?}",
                self.log
            ),
        }
    }

    /// Sends SIGTERM, as the kubelet does after the preStop hook.
    async fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
    }

    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("echo_server still running after {within:?}"))
            .expect("wait");
        status.code()
    }
}

#[tokio::test]
async fn echo_server_on_sigterm_drains_http1_and_http2_and_exits_0() {
    let grace = Duration::from_secs(3);
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.74:0",
        "--delay-ms",
        "300",
        "--grace-ms",
        "3000",
    ])
    .await;
    let addr = server.addr;
    let mut one = h1(addr).await;
    let mut two = h2(addr).await;
    let a = tokio::spawn(one.send_request(get(addr)));
    let b = tokio::spawn(two.send_request(get(addr)));
    server.line_with("request received").await;
    server.line_with("request received").await;
    let goaway = watch_for_goaway(addr).await;

    let started = Instant::now();
    server.sigterm().await;
    wait_for_async(DEADLINE, "new connections to be refused", || {
        refuses_connections(addr)
    })
    .await;
    let a = a
        .await
        .unwrap()
        .expect("HTTP/1.1 request in flight completes");
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(
        a.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let b = b
        .await
        .unwrap()
        .expect("HTTP/2 request in flight completes");
    assert_eq!(b.status(), StatusCode::OK);
    let goaway = tokio::time::timeout(DEADLINE, goaway).await;
    assert!(matches!(goaway, Ok(Ok(true))), "no GOAWAY: {goaway:?}");
    assert_eq!(server.exit_code(grace).await, Some(0));
    let took = started.elapsed();
    assert!(took < grace, "exited {took:?} after SIGTERM");
    wait_for(DEADLINE, "the HTTP/2 connection to close", || {
        two.is_closed()
    })
    .await;
    eprintln!("echo_server (HTTP) exited 0 {took:?} after SIGTERM");
}

#[tokio::test]
async fn echo_server_cuts_off_requests_at_the_end_of_the_grace_and_exits_0() {
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.75:0",
        "--delay-ms",
        "10000",
        "--grace-ms",
        "300",
    ])
    .await;
    let addr = server.addr;
    let mut one = h1(addr).await;
    let a = tokio::spawn(one.send_request(get(addr)));
    server.line_with("request received").await;
    let started = Instant::now();
    server.sigterm().await;
    assert_eq!(server.exit_code(DEADLINE).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(a.await.unwrap().is_err(), "the request was cut off");
    server.line_with("grace period of 300 ms over").await;
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn echo_server_grpc_on_sigterm_completes_rpcs_in_flight_and_exits_0() {
    let grace = Duration::from_secs(3);
    let mut server = EchoServer::start(&[
        "--listen",
        "127.0.0.76:0",
        "--protocol",
        "grpc",
        "--delay-ms",
        "300",
        "--grace-ms",
        "3000",
    ])
    .await;
    let addr = server.addr;
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let rpc = tokio::spawn(send.send_request(grpc_check(addr)));
    server.line_with("request received").await;
    let goaway = watch_for_goaway(addr).await;
    let started = Instant::now();
    server.sigterm().await;
    wait_for_async(DEADLINE, "new connections to be refused", || {
        refuses_connections(addr)
    })
    .await;
    let goaway = tokio::time::timeout(DEADLINE, goaway).await;
    assert!(matches!(goaway, Ok(Ok(true))), "no GOAWAY: {goaway:?}");
    let response = rpc.await.unwrap().expect("the RPC in flight completes");
    assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
    assert_eq!(server.exit_code(grace).await, Some(0));
    let took = started.elapsed();
    assert!(took < grace, "exited {took:?} after SIGTERM");
    eprintln!("echo_server (gRPC) exited 0 {took:?} after SIGTERM");
}
