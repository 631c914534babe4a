//! [`Pod`]: a real HTTP/1.1 + h2c server on a loopback address, with knobs for latency, errors, hangs and crashes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::server::{Conns, Server, pod_lifecycle, serve_http};
use super::tls::ServerTls;
use crate::sync::lock;

/// How long a pod in [`Pod::set_reset`] mode waits between the first half
/// of a body and the abort, so that the head and that half reach the client.
const RESET_AFTER: Duration = Duration::from_millis(20);

/// A pod's response body: whole, or cut off by [`Pod::set_reset`].
type PodBody = BoxBody<Bytes, io::Error>;

/// The response header carrying the authority a pod saw (`Host` for
/// HTTP/1.1, `:authority` for HTTP/2).
pub const AUTHORITY_HEADER: &str = "x-pod-authority";

/// A pod: an HTTP server answering every request with `200 OK` and its
/// listen address as the body, speaking HTTP/1.1 and HTTP/2 with prior
/// knowledge on the same port.
///
/// Several pods can listen on distinct loopback addresses (127.0.0.11,
/// 127.0.0.12, …), which on Linux needs no setup. Runtime controls change
/// how it answers: [`set_delay`](Self::set_delay),
/// [`set_status`](Self::set_status), [`set_hang`](Self::set_hang),
/// [`set_pauses`](Self::set_pauses) (GC-like stop-the-world pauses),
/// [`set_capacity`](Self::set_capacity) (a CPU-starved pod); and whether
/// it runs at all: [`kill`](Self::kill) (a crash),
/// [`shutdown`](Self::shutdown) (a graceful exit, as on SIGTERM),
/// [`restart`](Self::restart). Dropping a `Pod` kills it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use headless_lb::testing::Pod;
///
/// let pod = Pod::start("127.0.0.11:0".parse().unwrap()).await?;
/// pod.set_delay(std::time::Duration::from_millis(50));
/// assert_eq!(pod.requests(), 0);
/// pod.kill().await; // connections are refused from here on
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pod {
    state: Arc<PodState>,
    server: Server,
}

#[derive(Debug)]
struct PodState {
    addr: SocketAddr,
    body: Bytes,
    delay: Mutex<Duration>,
    status: AtomicU16,
    hang: watch::Sender<bool>,
    reset: AtomicBool,
    requests: AtomicU64,
    in_flight: AtomicU64,
    last_authority: Mutex<Option<String>>,
    last_version: Mutex<Option<Version>>,
    /// The scheme of the last HTTP/2 request (`:scheme`).
    last_scheme: Mutex<Option<String>>,
    /// The connections, and the kill signal requests wait on.
    conns: Arc<Conns>,
}

/// Decrements the in-flight count when a request ends, answered or not.
struct InFlight(Arc<PodState>);

// ===== impl Pod =====

pod_lifecycle!(Pod);

impl Pod {
    /// Like [`start`](Self::start), serving HTTP/1.1 and HTTP/2 over TLS
    /// with `config` (features `testing` and `tls`; certificates from
    /// [`TestCa`](super::TestCa)). Whether a connection speaks h2 follows
    /// the client: by ALPN ([`last_alpn`](Self::last_alpn)), or h2 with
    /// prior knowledge.
    #[cfg(feature = "tls")]
    pub async fn start_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<Pod> {
        Self::start_with(addr, ServerTls::new(config)).await
    }

    async fn start_with(addr: SocketAddr, tls: ServerTls) -> io::Result<Pod> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let conns = Conns::new(tls);
        let state = Arc::new(PodState {
            addr,
            body: Bytes::from(addr.to_string()),
            delay: Mutex::new(Duration::ZERO),
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            hang: watch::Sender::new(false),
            reset: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_authority: Mutex::new(None),
            last_version: Mutex::new(None),
            last_scheme: Mutex::new(None),
            conns: conns.clone(),
        });
        let answering = state.clone();
        let handler = Arc::new(move |stream, draining| {
            let state = answering.clone();
            let service = service_fn(move |req| answer(state.clone(), req));
            Box::pin(serve_http(stream, service, draining)) as _
        });
        let server = Server::start(listener, "pod", conns, handler)?;
        Ok(Pod { state, server })
    }

    /// Waits this long before answering each request. Default: none.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Answers with this status (the body is still the address). Default: 200.
    pub fn set_status(&self, status: StatusCode) {
        self.state.status.store(status.as_u16(), Ordering::Relaxed);
    }

    /// While on, requests are read but not answered; turning it off lets the
    /// held requests proceed. Default: off.
    pub fn set_hang(&self, hang: bool) {
        self.state.hang.send_replace(hang);
    }

    /// While on, each response is cut off mid-body: the head and the first
    /// half of the body are sent, then the response fails (HTTP/1.1: the
    /// connection is closed without the end of the chunked body; HTTP/2: the
    /// stream is reset). The client sees a response whose body read fails.
    /// Such requests count in [`requests`](Self::requests). Default: off.
    pub fn set_reset(&self, reset: bool) {
        self.state.reset.store(reset, Ordering::Relaxed);
    }

    /// Requests answered so far (any status).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests received and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The authority of the last request: `Host` for HTTP/1.1, `:authority`
    /// for HTTP/2. Also echoed in the [`AUTHORITY_HEADER`] response header.
    pub fn last_authority(&self) -> Option<String> {
        lock(&self.state.last_authority).clone()
    }

    /// The HTTP version of the last request.
    pub fn last_version(&self) -> Option<Version> {
        *lock(&self.state.last_version)
    }

    /// The protocol the last TLS connection chose by ALPN (`b"h2"`,
    /// `b"http/1.1"`); `None` before one did, and for plain TCP.
    pub fn last_alpn(&self) -> Option<Vec<u8>> {
        self.state.conns.last_alpn()
    }

    /// The `:scheme` of the last HTTP/2 request (`"https"` over TLS);
    /// `None` before one, and for HTTP/1.1, which sends none.
    pub fn last_scheme(&self) -> Option<String> {
        lock(&self.state.last_scheme).clone()
    }

    /// Stops the pod the way a well-behaved server does on SIGTERM, and
    /// returns true if every connection finished within `grace`.
    ///
    /// 1. Closes the listener at once: new connections are refused.
    /// 2. Asks every open connection to close gracefully: an HTTP/2
    ///    connection sends GOAWAY, so the client opens no new stream on it;
    ///    an HTTP/1.1 connection closes if idle, else answers its request in
    ///    flight with `Connection: close` and then closes. A connection
    ///    closes by shutting down its side and reading what the client still
    ///    sends until the client closes too (at most 500 ms), so that the
    ///    kernel never resets it over unread bytes.
    /// 3. Lets the requests in flight finish for at most `grace`; whatever
    ///    is still open then is cut off as by [`kill`](Self::kill), and the
    ///    result is false.
    ///
    /// Idempotent; [`restart`](Self::restart) serves again.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.server.shutdown(grace).await
    }
}

// ===== impl InFlight =====

impl InFlight {
    fn new(state: Arc<PodState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// ===== answering =====

async fn answer(
    state: Arc<PodState>,
    req: Request<Incoming>,
) -> Result<Response<PodBody>, io::Error> {
    let _in_flight = InFlight::new(state.clone());
    // Lets a test that runs a pod in another process (echo_server with
    // RUST_LOG=headless_lb=trace) see that a request is in flight.
    tracing::trace!(pod = %state.addr, version = ?req.version(), "request received");
    let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    *lock(&state.last_authority) = authority.clone();
    *lock(&state.last_version) = Some(req.version());
    if let Some(scheme) = req.uri().scheme_str() {
        *lock(&state.last_scheme) = Some(scheme.to_owned());
    }

    let mut killed = state.conns.killed();
    let mut hang = state.hang.subscribe();
    let wait = async {
        let _ = hang.wait_for(|hang| !hang).await;
        let delay = *lock(&state.delay);
        // The delay is the request's work: it queues for a place under the
        // capacity limit and stops during pauses (`set_pauses`).
        state.conns.variance().serve(delay).await;
    };
    tokio::select! {
        () = wait => {}
        _ = killed.changed() => {
            // A dead process answers nothing: fail the request, which makes
            // hyper drop it (HTTP/1.1: close the connection; HTTP/2: reset
            // the stream) instead of sending an empty 200 that could reach
            // the client if the write beats the connection's abort.
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "pod killed"));
        }
    }

    let status = StatusCode::from_u16(state.status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if state.reset.load(Ordering::Relaxed) {
        cut_off(state.body.clone())
    } else {
        whole(state.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        response.headers_mut().insert(AUTHORITY_HEADER, value);
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    Ok(response)
}

fn whole(bytes: Bytes) -> PodBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The first half of `bytes`, then (after [`RESET_AFTER`]) an error, which
/// makes hyper abort the response.
fn cut_off(bytes: Bytes) -> PodBody {
    let half = bytes.slice(..bytes.len() / 2);
    let first = futures::stream::iter([Ok(Frame::data(half))]);
    let abort = futures::stream::once(async {
        tokio::time::sleep(RESET_AFTER).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "pod reset mid-response",
        ))
    });
    BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(first, abort)))
}
