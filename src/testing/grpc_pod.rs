//! [`GrpcPod`]: a real grpc.health.v1 server (tonic) on a loopback address, with knobs for latency, status, stream ends and crashes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::ServiceExt;

use super::server::{Conns, Server, pod_lifecycle, serve_http};
use super::tls::ServerTls;
use crate::sync::lock;

/// A gRPC pod: a tonic `grpc.health.v1.Health` server that answers every
/// `Check` with `SERVING`, and every `Watch` with one `SERVING` message on a
/// stream that stays open until [`end_streams`](Self::end_streams) (or a kill).
///
/// Like [`Pod`](super::Pod), several listen on distinct loopback addresses
/// (127.0.0.11, …) and can be made slow ([`set_delay`](Self::set_delay),
/// [`set_pauses`](Self::set_pauses), [`set_capacity`](Self::set_capacity)) or
/// failing ([`set_status`](Self::set_status)), killed (a crash), shut down
/// gracefully ([`shutdown`](Self::shutdown), as on SIGTERM) and restarted. The
/// server speaks HTTP/2 with prior knowledge (h2c), as gRPC clients do.
/// Dropping a `GrpcPod` kills it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use headless_lb::testing::GrpcPod;
///
/// let pod = GrpcPod::start("127.0.0.11:0".parse().unwrap()).await?;
/// pod.set_delay(std::time::Duration::from_millis(50));
/// assert_eq!(pod.requests(), 0);
/// pod.kill().await; // connections are refused from here on
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GrpcPod {
    state: Arc<PodState>,
    server: Server,
}

#[derive(Debug)]
struct PodState {
    addr: SocketAddr,
    delay: Mutex<Duration>,
    /// `None` (-1): answer SERVING; otherwise fail every RPC with this code.
    status: AtomicI32,
    /// Bumped by `end_streams`, to end every open `Watch` stream with OK.
    stream_ends: watch::Sender<u64>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    open_streams: AtomicU64,
    /// The connections, and the kill signal RPCs wait on.
    conns: Arc<Conns>,
}

/// The `Health` implementation every connection of a pod shares.
#[derive(Debug, Clone)]
struct PodHealth(Arc<PodState>);

/// Lowers a counter when dropped.
struct Count(Arc<PodState>, fn(&PodState) -> &AtomicU64);

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

// ===== impl GrpcPod =====

pod_lifecycle!(GrpcPod);

impl GrpcPod {
    /// Like [`start`](Self::start), serving gRPC over TLS with `config`
    /// (features `testing` and `tls`; certificates from
    /// [`TestCa`](super::TestCa)).
    #[cfg(feature = "tls")]
    pub async fn start_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<GrpcPod> {
        Self::start_with(addr, ServerTls::new(config)).await
    }

    async fn start_with(addr: SocketAddr, tls: ServerTls) -> io::Result<GrpcPod> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let conns = Conns::new(tls);
        let state = Arc::new(PodState {
            addr,
            delay: Mutex::new(Duration::ZERO),
            status: AtomicI32::new(-1),
            stream_ends: watch::Sender::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            open_streams: AtomicU64::new(0),
            conns: conns.clone(),
        });
        let health = HealthServer::new(PodHealth(state.clone()));
        let handler = Arc::new(move |stream, draining| {
            let health = health.clone();
            let service =
                service_fn(move |req: http::Request<Incoming>| health.clone().oneshot(req));
            Box::pin(serve_http(stream, service, draining)) as _
        });
        let server = Server::start(listener, "grpc pod", conns, handler)?;
        Ok(GrpcPod { state, server })
    }

    /// Waits this long before answering each RPC (a `Watch`: before its
    /// first message). Default: none.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Fails every RPC with `code` (`Some(Code::Unavailable)`, …), or
    /// answers `SERVING` again (`None`). Default: `None`.
    pub fn set_status(&self, code: Option<Code>) {
        let v = code.map_or(-1, |c| c as i32);
        self.state.status.store(v, Ordering::Relaxed);
    }

    /// Ends every open `Watch` stream with status OK.
    pub fn end_streams(&self) {
        self.state.stream_ends.send_modify(|n| *n += 1);
    }

    /// RPCs answered so far (any status; a `Watch` counts once, when it starts).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// RPCs received and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// `Watch` streams open now.
    pub fn open_streams(&self) -> u64 {
        self.state.open_streams.load(Ordering::Relaxed)
    }

    /// Stops the pod as a well-behaved gRPC server does on SIGTERM (grpc-go's
    /// `GracefulStop`, tonic's `serve_with_shutdown`), and returns true if
    /// every connection finished within `grace`.
    ///
    /// Closes the listener at once (new connections are refused), sends
    /// HTTP/2 GOAWAY on every open connection (clients start no new RPC on
    /// it), and lets the RPCs in flight finish for at most `grace`; whatever
    /// is still open then (for example a `Watch` stream) is cut off as by
    /// [`kill`](Self::kill), and the result is false. Each connection closes
    /// as [`Pod::shutdown`](super::Pod::shutdown)'s do, reading what the
    /// client still sends until it closes too. Idempotent;
    /// [`restart`](Self::restart) serves again.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.server.shutdown(grace).await
    }
}

// ===== impl PodHealth =====

impl PodHealth {
    /// Waits out the delay; `Err` if the pod was killed meanwhile or is set
    /// to fail.
    async fn answer(&self) -> Result<(), Status> {
        let state = &self.0;
        let _in_flight = Count::new(state.clone(), |s| &s.in_flight);
        // Lets a test that runs a pod in another process (echo_server with
        // RUST_LOG=headless_lb=trace) see that an RPC is in flight.
        tracing::trace!(pod = %state.addr, "request received");
        let mut killed = state.conns.killed();
        let delay = *lock(&state.delay);
        // The delay is the RPC's work: it queues for a place under the
        // capacity limit and stops during pauses (`set_pauses`).
        tokio::select! {
            () = state.conns.variance().serve(delay) => {}
            _ = killed.changed() => return Err(Status::unavailable("pod killed")),
        }
        state.requests.fetch_add(1, Ordering::Relaxed);
        match state.status.load(Ordering::Relaxed) {
            -1 => Ok(()),
            code => Err(Status::new(
                Code::from_i32(code),
                format!("{} set to fail", state.addr),
            )),
        }
    }
}

#[tonic::async_trait]
impl Health for PodHealth {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.answer().await?;
        Ok(Response::new(serving()))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.answer().await?;
        let state = self.0.clone();
        let open = Count::new(state.clone(), |s| &s.open_streams);
        let mut ends = state.stream_ends.subscribe();
        let mut killed = state.conns.killed();
        let rest = futures::stream::once(async move {
            tokio::select! {
                _ = ends.changed() => {}
                _ = killed.changed() => {}
            }
            drop(open);
        })
        .filter_map(|()| std::future::ready(None));
        let stream = futures::stream::once(std::future::ready(Ok(serving()))).chain(rest);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

// ===== impl Count =====

impl Count {
    fn new(state: Arc<PodState>, counter: fn(&PodState) -> &AtomicU64) -> Self {
        counter(&state).fetch_add(1, Ordering::Relaxed);
        Self(state, counter)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}
