//! [`Pod`]: a real HTTP/1.1 + h2c server on a loopback address, with knobs for latency, errors, hangs and crashes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::tls::ServerTls;

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
/// [`set_status`](Self::set_status), [`set_hang`](Self::set_hang); and whether
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
    addr: SocketAddr,
    state: Arc<PodState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct PodState {
    addr: SocketAddr,
    body: Bytes,
    delay: Mutex<Duration>,
    status: AtomicU16,
    hang: watch::Sender<bool>,
    reset: AtomicBool,
    /// Bumped by every `kill`, to end requests that outlive their
    /// connection (HTTP/2 runs each request in a task of its own).
    kills: watch::Sender<u64>,
    /// True from `shutdown` until `restart`: every connection is asked to
    /// close gracefully (see [`serve`]).
    draining: watch::Sender<bool>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    last_authority: Mutex<Option<String>>,
    last_version: Mutex<Option<Version>>,
    /// TLS for every connection, or plain TCP.
    tls: ServerTls,
    /// The protocol the last TLS connection chose by ALPN.
    last_alpn: Mutex<Option<Vec<u8>>>,
    /// The scheme of the last HTTP/2 request (`:scheme`).
    last_scheme: Mutex<Option<String>>,
    /// One task per accepted connection, so that `kill` can abort them all.
    conns: Mutex<JoinSet<()>>,
}

/// Decrements the in-flight count when a request ends, answered or not.
struct InFlight(Arc<PodState>);

// ===== impl Pod =====

impl Pod {
    /// Starts one pod on each of `ips`, all on the same port, as the pods of
    /// a Kubernetes service are: the port is picked free on the first IP and
    /// the whole set is retried (a few times) if another IP has it taken.
    pub async fn start_all(ips: &[std::net::IpAddr]) -> io::Result<Vec<Pod>> {
        start_on_one_port(ips, Pod::start, Pod::addr).await
    }

    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(addr: SocketAddr) -> io::Result<Pod> {
        Self::start_with(addr, ServerTls::default()).await
    }

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

    /// [`start_all`](Self::start_all) with TLS: one pod per IP, one port,
    /// each serving with `config`.
    #[cfg(feature = "tls")]
    pub async fn start_all_tls(
        ips: &[std::net::IpAddr],
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<Vec<Pod>> {
        start_on_one_port(ips, |addr| Pod::start_tls(addr, config.clone()), Pod::addr).await
    }

    async fn start_with(addr: SocketAddr, tls: ServerTls) -> io::Result<Pod> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(PodState {
            addr,
            body: Bytes::from(addr.to_string()),
            delay: Mutex::new(Duration::ZERO),
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            hang: watch::Sender::new(false),
            reset: AtomicBool::new(false),
            kills: watch::Sender::new(0),
            draining: watch::Sender::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_authority: Mutex::new(None),
            last_version: Mutex::new(None),
            tls,
            last_alpn: Mutex::new(None),
            last_scheme: Mutex::new(None),
            conns: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        tracing::debug!(pod = %addr, "pod started");
        Ok(Pod {
            addr,
            state,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The address the pod listens on (with the real port if 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
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
        lock(&self.state.last_alpn).clone()
    }

    /// The `:scheme` of the last HTTP/2 request (`"https"` over TLS);
    /// `None` before one, and for HTTP/1.1, which sends none.
    pub fn last_scheme(&self) -> Option<String> {
        lock(&self.state.last_scheme).clone()
    }

    /// True between `start`/`restart` and `kill`.
    pub fn is_running(&self) -> bool {
        lock(&self.accept).is_some()
    }

    /// Crashes the pod: closes the listener, so new connections are refused,
    /// and drops every open connection, as the kernel does when a process
    /// dies. Returns once all sockets are closed. Idempotent.
    pub async fn kill(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            accept.abort();
            // Awaiting a cancelled task returns after its future (holding the
            // listener) has been dropped.
            let _ = accept.await;
            tracing::debug!(pod = %self.addr, "pod killed");
        }
        // Abort the connections before waking the handlers parked on `kills`:
        // a woken handler must never get to write a response on the way out.
        let mut conns = std::mem::take(&mut *lock(&self.state.conns));
        conns.abort_all();
        self.state.kills.send_modify(|k| *k += 1);
        conns.shutdown().await;
    }

    /// Stops the pod the way a well-behaved server does on SIGTERM, and
    /// returns true if every connection finished within `grace`.
    ///
    /// 1. Closes the listener at once: new connections are refused.
    /// 2. Asks every open connection to close gracefully: an HTTP/2
    ///    connection sends GOAWAY, so the client opens no new stream on it;
    ///    an HTTP/1.1 connection closes if idle, else answers its request in
    ///    flight with `Connection: close` and then closes.
    /// 3. Lets the requests in flight finish for at most `grace`; whatever
    ///    is still open then is cut off as by [`kill`](Self::kill), and the
    ///    result is false.
    ///
    /// Idempotent; [`restart`](Self::restart) serves again.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        self.state.draining.send_replace(true);
        let mut conns = std::mem::take(&mut *lock(&self.state.conns));
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
                .await
                .is_ok();
        if drained {
            tracing::debug!(pod = %self.addr, "pod shut down gracefully");
        } else {
            tracing::debug!(pod = %self.addr, open = conns.len(), "grace period over; cutting connections");
            conns.abort_all();
            self.state.kills.send_modify(|k| *k += 1);
            conns.shutdown().await;
        }
        drained
    }

    /// Listens on the same address again after [`kill`](Self::kill) or
    /// [`shutdown`](Self::shutdown). Counters and controls keep their
    /// values. A no-op while running.
    pub async fn restart(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.state.draining.send_replace(false);
        let accept = tokio::spawn(accept_loop(listener, self.state.clone()));
        *lock(&self.accept) = Some(accept);
        tracing::debug!(pod = %self.addr, "pod restarted");
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
        lock(&self.state.conns).abort_all();
        self.state.kills.send_modify(|k| *k += 1);
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

// ===== server =====

async fn accept_loop(listener: TcpListener, state: Arc<PodState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(pod = %state.addr, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::Relaxed);
        let conn_state = state.clone();
        let service = service_fn(move |req| answer(conn_state.clone(), req));
        let mut conns = lock(&state.conns);
        // Reap finished connections so a long-lived pod does not grow.
        while conns.try_join_next().is_some() {}
        let draining = state.draining.subscribe();
        let tls_state = state.clone();
        conns.spawn(async move {
            // TLS handshakes run here, not in the accept loop, so a slow
            // client delays only its own connection.
            let Some(stream) = tls_state.tls.accept(stream).await else {
                return;
            };
            if let Some(alpn) = stream.alpn_protocol() {
                *lock(&tls_state.last_alpn) = Some(alpn);
            }
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = serve(conn, draining, |c| c.graceful_shutdown()).await {
                tracing::trace!(error = %err, "pod connection ended with an error");
            }
        });
    }
}

/// Drives one connection; once `draining` turns true, asks it to close
/// gracefully with `graceful_shutdown` (hyper: HTTP/2 sends GOAWAY; HTTP/1.1
/// closes when idle, or sends `Connection: close` on the response in flight)
/// and drives it until it has.
pub(crate) async fn serve<F: std::future::Future>(
    conn: F,
    mut draining: watch::Receiver<bool>,
    graceful_shutdown: impl FnOnce(std::pin::Pin<&mut F>),
) -> F::Output {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        // `wait_for` sees a flag already set before this connection started.
        // An error means the pod is gone: its connections are aborted anyway.
        _ = draining.wait_for(|draining| *draining) => {}
    }
    graceful_shutdown(conn.as_mut());
    conn.await
}

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

    let mut killed = state.kills.subscribe();
    let mut hang = state.hang.subscribe();
    let wait = async {
        let _ = hang.wait_for(|hang| !hang).await;
        let delay = *lock(&state.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts one server per IP, all on the same port, as the pods of a
/// Kubernetes service are: the port is picked free on the first IP and the
/// whole set is retried (a few times) if another IP has it taken.
pub(crate) async fn start_on_one_port<P, F, Fut>(
    ips: &[std::net::IpAddr],
    start: F,
    addr_of: fn(&P) -> SocketAddr,
) -> io::Result<Vec<P>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = io::Result<P>>,
{
    let Some((first, rest)) = ips.split_first() else {
        return Ok(Vec::new());
    };
    let mut last_err = None;
    for _ in 0..8 {
        let lead = start(SocketAddr::new(*first, 0)).await?;
        let port = addr_of(&lead).port();
        let mut pods = vec![lead];
        for ip in rest {
            match start(SocketAddr::new(*ip, port)).await {
                Ok(pod) => pods.push(pod),
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        if pods.len() == ips.len() {
            return Ok(pods);
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no common free port")))
}
