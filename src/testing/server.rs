//! The part every test pod shares: a listener on a loopback address, one task per connection (TLS or not), crash, graceful stop, restart, and the variance of a real pod (stop-the-world pauses, a capacity limit).
//!
//! [`Pod`](super::Pod) and [`GrpcPod`](super::GrpcPod) differ only in what
//! they answer; how a pod lives and dies, and how its service time varies,
//! is here, once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::tls::{ServerStream, ServerTls};
use crate::sync::lock;

/// How long the accept loop waits after a failed accept (EMFILE and the
/// like) before it tries again, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// How long a pod's connection, after it has shut down its side, goes on
/// reading (and dropping) what the client still sends, until the client
/// closes too. A socket closed with unread bytes makes the kernel answer
/// with RST, and a client that meets the RST while writing loses the
/// responses and the GOAWAY still in its receive buffer (h2 fails every
/// stream of the connection on the write error), so a graceful stop would
/// fail requests it had answered. 500 ms is what Go's `net/http` waits
/// (`rstAvoidanceDelay`); a client that reads the close answers in
/// microseconds.
const LINGER: Duration = Duration::from_millis(500);

/// What a pod does with each accepted connection: serve it until it ends,
/// closing gracefully once the receiver turns true.
pub(crate) type Handler =
    Arc<dyn Fn(ServerStream, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send + Sync>;

/// A pod's connections and the signals its request handlers watch.
#[derive(Debug)]
pub(crate) struct Conns {
    /// Bumped by every kill, to end requests that outlive their connection
    /// (HTTP/2 runs each request in a task of its own).
    kills: watch::Sender<u64>,
    /// True from `shutdown` until `restart`: every connection is asked to
    /// close gracefully (see [`serve_http`]).
    draining: watch::Sender<bool>,
    connections: AtomicU64,
    /// TLS for every connection, or plain TCP.
    tls: ServerTls,
    /// The protocol the last TLS connection chose by ALPN.
    last_alpn: Mutex<Option<Vec<u8>>>,
    /// One task per accepted connection, so that a kill can abort them all.
    tasks: Mutex<JoinSet<()>>,
    /// Pauses and the capacity limit every request goes through.
    variance: Variance,
}

/// How a pod's service time varies beyond its fixed delay, the same for
/// every protocol: GC-like stop-the-world pauses, and a capacity limit (a
/// CPU-starved pod). A request handler calls [`Variance::serve`] in place
/// of sleeping its delay.
#[derive(Debug)]
pub(crate) struct Variance {
    gate: Arc<Gate>,
    /// At most this many requests served at once; `None`: no limit. A new
    /// limit replaces the semaphore and closes the old one, whose waiters
    /// then queue on the new one (see [`Variance::slot`]).
    capacity: Mutex<Option<Arc<Semaphore>>>,
    /// The task starting pauses at Poisson times, if a schedule is set.
    schedule: Mutex<Option<JoinHandle<()>>>,
    /// The runtime the pod was started on, where the schedule runs: the
    /// setters are plain `fn`s, callable outside any runtime.
    runtime: tokio::runtime::Handle,
}

/// The pause state requests wait on, shared with the schedule task (which
/// holds only this, so that no cycle keeps a dropped pod alive).
#[derive(Debug)]
struct Gate {
    /// The end of the current or last pause (`None`: never paused). Only
    /// ever moved later, so a waiter that slept until the value it read
    /// needs only re-read it to know whether the pause was extended.
    until: watch::Sender<Option<Instant>>,
    /// Pauses begun so far.
    pauses: AtomicU64,
}

/// A running (or killed) pod: its address, its accept loop and its connections.
pub(crate) struct Server {
    addr: SocketAddr,
    /// "pod" or "grpc pod", for log lines.
    kind: &'static str,
    conns: Arc<Conns>,
    handler: Handler,
    accept: Mutex<Option<JoinHandle<()>>>,
}

// ===== impl Conns =====

impl Conns {
    pub(crate) fn new(tls: ServerTls) -> Arc<Self> {
        Arc::new(Self {
            kills: watch::Sender::new(0),
            draining: watch::Sender::new(false),
            connections: AtomicU64::new(0),
            tls,
            last_alpn: Mutex::new(None),
            tasks: Mutex::new(JoinSet::new()),
            variance: Variance::new(),
        })
    }

    /// The pauses and capacity limit of this pod's requests.
    pub(crate) fn variance(&self) -> &Variance {
        &self.variance
    }

    /// Changes when the pod is killed (or cut off after a shutdown's grace).
    pub(crate) fn killed(&self) -> watch::Receiver<u64> {
        self.kills.subscribe()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The protocol the last TLS connection chose by ALPN.
    pub(crate) fn last_alpn(&self) -> Option<Vec<u8>> {
        lock(&self.last_alpn).clone()
    }

    /// Cuts every connection off, as the kernel does when a process dies:
    /// the sockets close first, so clients see their connection break and a
    /// request handler woken by the kill can never write a response on the
    /// way out; then the handlers that outlive their connection end.
    async fn cut(&self, mut tasks: JoinSet<()>) {
        tasks.abort_all();
        tasks.shutdown().await;
        self.kills.send_modify(|k| *k += 1);
    }
}

// ===== impl Server =====

impl Server {
    /// Serves `listener` with `handler`.
    pub(crate) fn start(
        listener: TcpListener,
        kind: &'static str,
        conns: Arc<Conns>,
        handler: Handler,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let server = Self {
            addr,
            kind,
            conns,
            handler,
            accept: Mutex::new(None),
        };
        server.spawn_accept(listener);
        tracing::debug!(pod = %addr, kind, "pod started");
        Ok(server)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn is_running(&self) -> bool {
        lock(&self.accept).is_some()
    }

    pub(crate) fn connections(&self) -> u64 {
        self.conns.connections()
    }

    pub(crate) fn variance(&self) -> &Variance {
        self.conns.variance()
    }

    /// Closes the listener and returns once it is closed.
    async fn close_listener(&self) -> bool {
        let accept = lock(&self.accept).take();
        let Some(accept) = accept else {
            return false;
        };
        accept.abort();
        // Awaiting a cancelled task returns after its future (holding the
        // listener) has been dropped.
        let _ = accept.await;
        true
    }

    /// A crash: see `Pod::kill`.
    pub(crate) async fn kill(&self) {
        if self.close_listener().await {
            tracing::debug!(pod = %self.addr, kind = self.kind, "pod killed");
        }
        let tasks = std::mem::take(&mut *lock(&self.conns.tasks));
        self.conns.cut(tasks).await;
    }

    /// A graceful stop: see `Pod::shutdown`.
    pub(crate) async fn shutdown(&self, grace: Duration) -> bool {
        self.close_listener().await;
        self.conns.draining.send_replace(true);
        let mut tasks = std::mem::take(&mut *lock(&self.conns.tasks));
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        if drained {
            tracing::debug!(pod = %self.addr, kind = self.kind, "pod shut down gracefully");
        } else {
            tracing::debug!(pod = %self.addr, kind = self.kind, open = tasks.len(), "grace period over; cutting connections");
            self.conns.cut(tasks).await;
        }
        drained
    }

    /// Listens on the same address again; a no-op while running.
    pub(crate) async fn restart(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.conns.draining.send_replace(false);
        self.spawn_accept(listener);
        tracing::debug!(pod = %self.addr, kind = self.kind, "pod restarted");
        Ok(())
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let accept = accept_loop(listener, self.conns.clone(), self.handler.clone());
        *lock(&self.accept) = Some(tokio::spawn(accept));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
        // Connections first, as in `Conns::cut`, without waiting.
        lock(&self.conns.tasks).abort_all();
        self.conns.kills.send_modify(|k| *k += 1);
        // The pause schedule would otherwise run for ever.
        self.conns
            .variance
            .set_pauses(Duration::ZERO, Duration::ZERO, None);
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("kind", &self.kind)
            .field("running", &self.is_running())
            .field("conns", &self.conns)
            .finish_non_exhaustive()
    }
}

// ===== impl Variance =====

/// Far enough ahead to mean "never" without overflowing `Instant` (tokio's
/// own far future is about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Variance {
    /// No pauses, no limit. Must run inside a tokio runtime (pods start in one).
    fn new() -> Self {
        Self {
            gate: Arc::new(Gate {
                until: watch::Sender::new(None),
                pauses: AtomicU64::new(0),
            }),
            capacity: Mutex::new(None),
            schedule: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Serves one request whose work takes `delay`: queues for a slot while
    /// the pod is at capacity, works for `delay` of time outside pauses (a
    /// stop-the-world pause freezes the work, as it freezes every thread of
    /// a real process), then waits for the end of any pause before
    /// returning, so that no response leaves a paused pod. The slot is held
    /// throughout: a request being served, paused or not, occupies it.
    pub(crate) async fn serve(&self, delay: Duration) {
        let _slot = self.slot().await;
        let mut until = self.gate.until.subscribe();
        let mut left = delay;
        // Each turn either ends the work or is cut by a pause's start, so
        // the turns are one more than the pauses during this request.
        loop {
            wait_open(&mut until).await;
            if left.is_zero() {
                return;
            }
            let began = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(left) => left = Duration::ZERO,
                changed = until.changed() => {
                    if changed.is_err() {
                        // The gate is gone with the pod: just finish the work.
                        tokio::time::sleep(left.saturating_sub(began.elapsed())).await;
                        return;
                    }
                    // A pause began (or an earlier one was extended): the
                    // work done so far counts, the rest waits for the end.
                    left = left.saturating_sub(began.elapsed());
                }
            }
        }
    }

    /// A slot under the capacity limit (`None`: no limit), queueing FIFO
    /// while the pod is full.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        // Each turn past the first follows a `set_capacity` that closed the
        // semaphore this request queued on, so the turns are bounded by the
        // changes made while it waits.
        loop {
            let semaphore = lock(&self.capacity).clone()?;
            if let Ok(permit) = semaphore.acquire_owned().await {
                return Some(permit);
            }
        }
    }

    /// See `Pod::set_capacity`.
    pub(crate) fn set_capacity(&self, capacity: Option<usize>) {
        let new = capacity.map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
        let old = std::mem::replace(&mut *lock(&self.capacity), new);
        // Requests queued on the old limit move to the new one; those being
        // served keep their slot of the old one until they finish, so for
        // the time of one service the two limits add up.
        if let Some(old) = old {
            old.close();
        }
    }

    /// See `Pod::pause_for`.
    pub(crate) fn pause_for(&self, pause: Duration) {
        self.gate.pause_for(pause);
    }

    /// See `Pod::pauses`.
    pub(crate) fn pauses(&self) -> u64 {
        self.gate.pauses.load(Ordering::Relaxed)
    }

    /// See `Pod::set_pauses` and `Pod::set_pauses_seeded`: `seed` fixes the
    /// schedule, `None` draws one.
    pub(crate) fn set_pauses(&self, every: Duration, pause: Duration, seed: Option<u64>) {
        let mut schedule = lock(&self.schedule);
        if let Some(old) = schedule.take() {
            old.abort();
        }
        if every.is_zero() || pause.is_zero() {
            return;
        }
        let gate = self.gate.clone();
        *schedule = Some(self.runtime.spawn(async move {
            let mut rng = seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
            let mut next = Instant::now();
            // Runs until aborted (by the next `set_pauses` or the pod's
            // drop); each turn sleeps a random interval first.
            loop {
                let Some(at) = next.checked_add(exponential(&mut rng, every)) else {
                    // Beyond the clock's range: no further pause, ever.
                    return;
                };
                next = at;
                tokio::time::sleep_until(next).await;
                gate.pause_for(pause);
            }
        }));
    }
}

impl Gate {
    /// Starts a pause now, lasting `pause`; one already running that ends
    /// later is left as it is (pauses overlap, they do not queue).
    fn pause_for(&self, pause: Duration) {
        if pause.is_zero() {
            return;
        }
        let now = Instant::now();
        let end = now.checked_add(pause).unwrap_or_else(|| now + FAR_FUTURE);
        self.pauses.fetch_add(1, Ordering::Relaxed);
        // Only a later end is news: waiters never need to wake for an
        // earlier one (the gate only ever moves later).
        self.until.send_if_modified(|until| match until {
            Some(current) if *current >= end => false,
            _ => {
                *until = Some(end);
                true
            }
        });
    }
}

/// Returns once no pause is running (at once if none is), marking the
/// current value seen so that `changed` then reports only a newer pause.
async fn wait_open(until: &mut watch::Receiver<Option<Instant>>) {
    // Each turn sleeps to the end last read; a further turn happens only if
    // the pause was extended meanwhile, so turns are bounded by extensions.
    loop {
        let end = *until.borrow_and_update();
        match end {
            Some(end) if end > Instant::now() => tokio::time::sleep_until(end).await,
            _ => return,
        }
    }
}

/// An exponentially distributed interval of mean `mean`: the gap between
/// the events of a Poisson process, so that pauses come at random, with no
/// rhythm a client could lock onto.
fn exponential(rng: &mut fastrand::Rng, mean: Duration) -> Duration {
    // Inverse transform: `1 - u` lies in (0, 1], so the log is finite and
    // the result is at most about 37 means (u's 53 random bits).
    let u = rng.f64();
    let x = -(1.0 - u).ln();
    Duration::try_from_secs_f64(mean.as_secs_f64() * x).unwrap_or(Duration::MAX)
}

// ===== serving =====

async fn accept_loop(listener: TcpListener, conns: Arc<Conns>, handler: Handler) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "pod: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        conns.connections.fetch_add(1, Ordering::Relaxed);
        let draining = conns.draining.subscribe();
        let handler = handler.clone();
        let conn_state = conns.clone();
        let mut tasks = lock(&conns.tasks);
        // Reap finished connections so a long-lived pod does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            // TLS handshakes run here, not in the accept loop, so a slow
            // client delays only its own connection.
            let Some(stream) = conn_state.tls.accept(stream).await else {
                return;
            };
            if let Some(alpn) = stream.alpn_protocol() {
                *lock(&conn_state.last_alpn) = Some(alpn);
            }
            handler(stream, draining).await;
        });
    }
}

/// Serves one connection with `service`, HTTP/1.1 or HTTP/2 (prior
/// knowledge or ALPN) as the client speaks; once `draining` turns true, asks
/// it to close gracefully (HTTP/2 sends GOAWAY; HTTP/1.1 closes when idle, or
/// sends `Connection: close` on the response in flight) and drives it until
/// it has.
pub(crate) async fn serve_http<S, B>(
    stream: ServerStream,
    service: S,
    mut draining: watch::Receiver<bool>,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(Linger::new(stream)), service);
    let mut conn = std::pin::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        // `wait_for` sees a flag already set before this connection started.
        // An error means the pod is gone: its connections are aborted anyway.
        _ = draining.wait_for(|draining| *draining) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::trace!(error = %err, "pod connection ended with an error");
    }
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
    Fut: Future<Output = io::Result<P>>,
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

/// The methods every test pod has alike: starting one, or a set on one
/// port; its address and connection count; whether it runs, a crash and a
/// restart. The pod type has a `server: Server` field and an
/// `async fn start_with(SocketAddr, ServerTls) -> io::Result<Self>`; its
/// `start_tls` and `shutdown` say what is particular to its protocol.
macro_rules! pod_lifecycle {
    ($pod:ident) => {
        impl $pod {
            /// Starts one pod on each of `ips`, all on the same port, as the
            /// pods of a Kubernetes service are: the port is picked free on
            /// the first IP and the whole set is retried (a few times) if
            /// another IP has it taken.
            pub async fn start_all(ips: &[std::net::IpAddr]) -> std::io::Result<Vec<$pod>> {
                $crate::testing::server::start_on_one_port(ips, $pod::start, $pod::addr).await
            }

            /// Binds `addr` (port 0 picks a free port) and starts serving.
            pub async fn start(addr: std::net::SocketAddr) -> std::io::Result<$pod> {
                Self::start_with(addr, $crate::testing::tls::ServerTls::default()).await
            }

            /// [`start_all`](Self::start_all) with TLS: one pod per IP, one
            /// port, each serving with `config`.
            #[cfg(feature = "tls")]
            pub async fn start_all_tls(
                ips: &[std::net::IpAddr],
                config: std::sync::Arc<rustls::ServerConfig>,
            ) -> std::io::Result<Vec<$pod>> {
                let start = |addr| $pod::start_tls(addr, config.clone());
                $crate::testing::server::start_on_one_port(ips, start, $pod::addr).await
            }

            /// The address the pod listens on (with the real port if 0 was
            /// asked for).
            pub fn addr(&self) -> std::net::SocketAddr {
                self.server.addr()
            }

            /// Connections accepted so far.
            pub fn connections(&self) -> u64 {
                self.server.connections()
            }

            /// True between `start`/`restart` and `kill`.
            pub fn is_running(&self) -> bool {
                self.server.is_running()
            }

            /// Crashes the pod: closes the listener, so new connections are
            /// refused, and drops every open connection, failing the requests
            /// on them, as the kernel does when a process dies. Returns once
            /// all sockets are closed. Idempotent.
            pub async fn kill(&self) {
                self.server.kill().await;
            }

            /// Listens on the same address again after [`kill`](Self::kill)
            /// or [`shutdown`](Self::shutdown). Counters and controls keep
            /// their values. A no-op while running.
            pub async fn restart(&self) -> std::io::Result<()> {
                self.server.restart().await
            }

            /// Stop-the-world pauses, as a garbage collector makes: pauses
            /// start at random times (a Poisson process, the intervals
            /// between starts exponentially distributed with mean `every`)
            /// and each lasts `pause`. During a pause no request is
            /// answered: one arriving waits for the end, and one already
            /// being served stops (its [delay](Self::set_delay) resumes
            /// after the pause) and never sends its response before the
            /// end. A pause starting while one runs extends it if it ends
            /// later. Replaces the previous schedule; `every` or `pause`
            /// zero turns pauses off. Default: off.
            pub fn set_pauses(&self, every: std::time::Duration, pause: std::time::Duration) {
                self.server.variance().set_pauses(every, pause, None);
            }

            /// [`set_pauses`](Self::set_pauses) on a schedule fixed by
            /// `seed`: the same seed gives the same intervals between
            /// pauses, counted from this call. For comparisons in which
            /// every contender must meet the same pauses at the same
            /// moments of its run.
            pub fn set_pauses_seeded(
                &self,
                every: std::time::Duration,
                pause: std::time::Duration,
                seed: u64,
            ) {
                self.server.variance().set_pauses(every, pause, Some(seed));
            }

            /// Starts one pause now, lasting `pause`, with the effect
            /// described in [`set_pauses`](Self::set_pauses): for tests
            /// that need a pause at a known time. A running pause that ends
            /// later is left as it is. Returns at once.
            pub fn pause_for(&self, pause: std::time::Duration) {
                self.server.variance().pause_for(pause);
            }

            /// Pauses started so far, by [`set_pauses`](Self::set_pauses)'
            /// schedule or [`pause_for`](Self::pause_for).
            pub fn pauses(&self) -> u64 {
                self.server.variance().pauses()
            }

            /// At most `capacity` requests served at once, as on a
            /// CPU-starved pod: a request beyond it queues (first come,
            /// first served) until one being served has been answered.
            /// A request occupies its place from the start of its
            /// [delay](Self::set_delay) to its answer, pauses included.
            /// `None` lifts the limit; `Some(0)` serves nothing until the
            /// limit is raised. A change applies to queued requests at
            /// once, while those being served keep their place. Default:
            /// `None`.
            pub fn set_capacity(&self, capacity: Option<usize>) {
                self.server.variance().set_capacity(capacity);
            }
        }
    };
}
pub(crate) use pod_lifecycle;

/// A pod's connection that closes as a careful server does (a "lingering
/// close"): its shutdown sends FIN and then reads until the client's EOF, at
/// most [`LINGER`], so that the socket is never closed with unread bytes.
struct Linger<S> {
    io: S,
    /// Set once the write side is shut: when to stop waiting for the client.
    until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Linger<S> {
    fn new(io: S) -> Self {
        Self { io, until: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Linger<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let until = match &mut this.until {
            Some(until) => until,
            None => {
                ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                this.until.insert(Box::pin(tokio::time::sleep(LINGER)))
            }
        };
        let mut scratch = [0u8; 4096];
        loop {
            if until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                // More from the client: dropped; read on until its EOF.
                Ok(()) if !buf.filled().is_empty() => {}
                // EOF, or the client is gone: nothing unread is left.
                Ok(()) | Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
