//! [`HttpEndpoint`]: the HTTP client service for one pod, and the builder that makes one per address.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper::body::Incoming;

use super::error::BoxError;
use super::pool::{Checkout, Conn, H1Conn, Pool};
use super::replay::{self, GiveBack, KeptHead, Restored, SendBody};
use super::rewrite::{Addressing, Restore};
use super::{Connect, RequestBody, TcpConnector};
use crate::endpoint::{Endpoint, MakeEndpoint};
use crate::not_sent::NotSent;

/// Default for [`HttpEndpointBuilder::connect_timeout`]: 1 s.
///
/// Inside a cluster a connect takes well under a millisecond; a pod that has
/// not answered a SYN within a second is down or overloaded, and the request
/// is better sent elsewhere (it was never sent, so that is safe).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default for [`HttpEndpointBuilder::max_connections`]: 16 HTTP/1.1
/// connections per endpoint.
///
/// HTTP/1.1 carries one request per connection at a time, so this caps the
/// requests in flight to one pod; further callers wait in `poll_ready`, which
/// the balancer sees as load.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The HTTP version spoken to every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 over a pool of connections, one request at a time on each.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, no upgrade dance), every request
    /// multiplexed over one connection.
    Http2,
}

/// Settings shared by every endpoint of a target, and the factory for
/// [`HttpEndpoint`]s: the default [`MakeEndpoint`] of the clients.
///
/// ```
/// use headless_lb::http::{HttpEndpointBuilder, Protocol};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoints = HttpEndpointBuilder::new(Protocol::Http2)
///     .authority("web.default.svc.cluster.local:8080".parse()?)
///     .connect_timeout(std::time::Duration::from_millis(500));
/// # let _ = endpoints;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpEndpointBuilder<C = TcpConnector> {
    authority: Option<Authority>,
    settings: EndpointSettings,
    connector: C,
}

/// How each pod's connections are opened and kept: the endpoint part of the
/// clients' settings, one field per setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointSettings {
    pub(crate) protocol: Protocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) http2: Http2Settings,
    /// The connector speaks TLS: HTTP/2 requests carry `:scheme https`.
    pub(crate) https: bool,
}

/// HTTP/2 connection settings: keepalive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http2Settings {
    pub(crate) keep_alive_interval: Option<Duration>,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) keep_alive_while_idle: bool,
}

/// Default for the HTTP/2 keepalive timeout (`http2_keep_alive`): 20 s,
/// hyper's own default.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP client service for one endpoint (one pod).
///
/// # Contract with the balancer
///
/// - `poll_ready` hands out a connection, **opening one** if none is idle
///   (HTTP/1.1: while fewer than `max_connections` are open; HTTP/2: the one
///   shared connection), and fails with a [`ConnectError`](super::ConnectError)
///   if connecting fails. Calling `ready()` on a fresh clone is therefore both
///   a warm-up and a health check.
/// - `call` sends the request on the connection `poll_ready` reserved. If the
///   connection closed before the request was written, the error is a
///   [`NotSent`] carrying the request back unchanged. HTTP/1.1 also hands
///   back an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE)
///   with no body whose *reused* connection closed before any byte of its
///   response (the pod closed an idle keep-alive connection as the request
///   was written): sending it again has the effect of sending it once (RFC
///   9110 §9.2.2; Go's `net/http` does the same). Any other error may have
///   reached the server and is returned: a POST, a request with a body, a
///   failure on a fresh connection or after a response byte.
/// - A connection the pod is closing takes no new request: one whose
///   response said `Connection: close`, or that received an HTTP/2 GOAWAY,
///   is dropped from the pool and replaced by a new one on demand.
/// - Clones share the connections; each clone holds at most one reservation,
///   released when it is used or dropped.
/// - HTTP/1.1: when every connection is busy, `poll_ready` returns `Pending`
///   and the clone waits in line. A connection that comes free is reserved
///   for the clone that has waited longest, and wakes only it, so callers
///   are served in arrival order. Poll a waiting clone again when woken, or
///   drop it: a connection reserved for it goes to the next in line then.
///
/// The request's URI may be a path or a full URI naming the service; see
/// [`HttpEndpointBuilder::authority`] for what the server sees.
pub struct HttpEndpoint<B, C = TcpConnector> {
    pool: Arc<Pool<B, C>>,
    slot: Slot<B>,
}

/// This clone's place in line.
enum Slot<B> {
    Idle,
    Waiting { id: Option<u64>, failures_seen: u64 },
    Ready(Conn<B>),
}

/// The future `HttpEndpoint::call` returns.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, BoxError>> + Send>>;

// ===== impl EndpointSettings =====

impl EndpointSettings {
    pub(crate) fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http2: Http2Settings {
                keep_alive_interval: None,
                keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
                keep_alive_while_idle: false,
            },
            https: false,
        }
    }
}

// ===== impl HttpEndpointBuilder =====

impl HttpEndpointBuilder {
    /// Settings with the defaults: no configured authority, connect timeout
    /// [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_MAX_CONNECTIONS`], plain TCP.
    pub fn new(protocol: Protocol) -> Self {
        Self::from_settings(EndpointSettings::new(protocol), TcpConnector::new())
    }
}

impl<C> HttpEndpointBuilder<C> {
    pub(crate) fn from_settings(settings: EndpointSettings, connector: C) -> Self {
        Self {
            authority: None,
            settings,
            connector,
        }
    }

    /// The authority every request carries (`Host` for HTTP/1.1, `:authority`
    /// for HTTP/2), usually the service name and port:
    /// `web.default.svc.cluster.local:8080`. Default: none.
    ///
    /// Without one, a request's own URI authority is used, then its `Host`
    /// header, then the pod's address (`10.0.0.7:8080`, `[fd00::7]:8080`).
    pub fn authority(mut self, authority: Authority) -> Self {
        self.authority = Some(authority);
        self
    }

    /// How long opening a connection (the connector's work, TLS handshake
    /// included) may take. Default: [`DEFAULT_CONNECT_TIMEOUT`] (1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// The most HTTP/1.1 connections open to one endpoint; at least 1.
    /// Ignored for HTTP/2, which uses one. Default:
    /// [`DEFAULT_MAX_CONNECTIONS`] (16).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.settings.max_connections = max.max(1);
        self
    }

    /// HTTP/2: send a PING on a connection that has received nothing for
    /// `interval`, and close it (failing its requests and streams) if the
    /// PING is not answered within `timeout`. Detects a pod that vanished
    /// without closing its sockets (a node crash, a dropped route) where TCP
    /// would wait for minutes. Ignored for HTTP/1.1. Default: none (no
    /// pings), [`DEFAULT_KEEP_ALIVE_TIMEOUT`].
    ///
    /// Servers police pings: gRPC servers by default allow one every 5
    /// minutes and answer more frequent ones with `GOAWAY
    /// ENHANCE_YOUR_CALM`, so match the interval to the server's policy.
    pub fn http2_keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.settings.http2.keep_alive_interval = interval;
        self.settings.http2.keep_alive_timeout = timeout;
        self
    }

    /// HTTP/2: also ping connections with no request or stream open.
    /// Default: false (pings only while a response or stream is pending).
    pub fn http2_keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.settings.http2.keep_alive_while_idle = enabled;
        self
    }

    /// Opens connections with `connector` instead of plain TCP (TLS, a Unix
    /// socket, fault injection). The connect timeout still applies.
    pub fn connector<C2>(self, connector: C2) -> HttpEndpointBuilder<C2> {
        HttpEndpointBuilder {
            authority: self.authority,
            settings: self.settings,
            connector,
        }
    }

    /// Requests carry `:scheme https` (HTTP/2, gRPC): set it with a TLS
    /// connector of your own; [`tls`](HttpEndpointBuilder::tls) sets it.
    /// Default: false (`:scheme` from the request URI, else `http`).
    pub fn https(mut self, https: bool) -> Self {
        self.settings.https = https;
        self
    }

    /// The protocol endpoints speak.
    pub fn protocol(&self) -> Protocol {
        self.settings.protocol
    }

    /// Switches the protocol, keeping every other setting.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.settings.protocol = protocol;
        self
    }

    /// The service for the endpoint at `addr`, with the configured authority's
    /// host (or the address) as its server name. Cheap: no connection is
    /// opened until the first `poll_ready`.
    pub fn make<B>(&self, addr: SocketAddr) -> HttpEndpoint<B, C>
    where
        C: Clone,
    {
        let server_name = match &self.authority {
            Some(authority) => authority.host().trim_end_matches('.').to_owned(),
            None => addr.ip().to_string(),
        };
        self.make_for(&Endpoint::new(addr, server_name, self.settings.protocol))
    }

    /// The service for `endpoint`, speaking this builder's protocol.
    pub fn make_for<B>(&self, endpoint: &Endpoint) -> HttpEndpoint<B, C>
    where
        C: Clone,
    {
        let endpoint = endpoint.clone().with_protocol(self.settings.protocol);
        let addressing = Addressing::new(self.authority.clone(), endpoint.addr())
            .with_https(self.settings.https);
        HttpEndpoint {
            pool: Arc::new(Pool::new(
                endpoint,
                self.settings,
                self.connector.clone(),
                addressing,
            )),
            slot: Slot::Idle,
        }
    }
}

#[cfg(feature = "tls")]
impl HttpEndpointBuilder<TcpConnector> {
    /// TLS to every pod with `config` (cargo feature `tls`): see
    /// [`TcpConnector::tls`]. Requests carry `:scheme https`. The server
    /// name is the [`Endpoint`]'s: with [`make`](Self::make), the
    /// configured authority's host, else the pod's IP.
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.connector = self.connector.tls(config);
        self.settings.https = true;
        self
    }
}

impl<B, C> MakeEndpoint<http::Request<B>> for HttpEndpointBuilder<C>
where
    B: RequestBody,
    C: Connect,
{
    type Service = HttpEndpoint<B, C>;

    fn make_endpoint(&self, endpoint: &Endpoint) -> HttpEndpoint<B, C> {
        self.make_for(endpoint)
    }
}

impl<C> fmt::Debug for HttpEndpointBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpointBuilder")
            .field("authority", &self.authority)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// ===== impl HttpEndpoint =====

impl<B, C> HttpEndpoint<B, C> {
    /// The endpoint this service sends to.
    pub fn addr(&self) -> SocketAddr {
        self.pool.endpoint.addr()
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.pool.endpoint.protocol()
    }

    /// Connections open or being opened, across all clones.
    pub fn connections(&self) -> usize {
        self.pool.live()
    }

    /// HTTP/1.1 connections open and waiting for a request (HTTP/2: open
    /// connections), across all clones.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }
}

impl<B, C> tower::Service<http::Request<B>> for HttpEndpoint<B, C>
where
    B: RequestBody,
    C: Connect,
{
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Slot::Ready(conn) = &self.slot {
            if !conn.is_closed() {
                return Poll::Ready(Ok(()));
            }
            self.slot = Slot::Idle;
        }
        let (mut id, failures_seen) = match std::mem::replace(&mut self.slot, Slot::Idle) {
            Slot::Waiting { id, failures_seen } => (id, failures_seen),
            _ => (None, self.pool.failures()),
        };
        match self.pool.checkout(&mut id, failures_seen, cx.waker()) {
            Checkout::Ready(conn) => {
                self.slot = Slot::Ready(conn);
                Poll::Ready(Ok(()))
            }
            Checkout::Failed(err) => Poll::Ready(Err(err.into())),
            Checkout::Wait => {
                self.slot = Slot::Waiting { id, failures_seen };
                Poll::Pending
            }
        }
    }

    fn call(&mut self, mut req: http::Request<B>) -> ResponseFuture {
        let addr = self.pool.endpoint.addr();
        let conn = match std::mem::replace(&mut self.slot, Slot::Idle) {
            Slot::Ready(conn) => conn,
            other => {
                self.slot = other;
                let err =
                    NotSent::new(req, format!("{addr}: call() before poll_ready() was Ready"));
                return Box::pin(std::future::ready(Err(err.into())));
            }
        };
        let restore = match self
            .pool
            .addressing
            .apply(self.pool.endpoint.protocol(), &mut req)
        {
            Ok(restore) => restore,
            Err(err) => {
                self.pool.checkin(conn);
                return Box::pin(std::future::ready(Err(err.into())));
            }
        };
        match conn {
            Conn::H1(conn) => send_h1(&self.pool, conn, req, restore),
            Conn::H2(tx) => send_h2(tx, req, restore),
        }
    }
}

/// Sends `req` on an HTTP/2 connection; the response, or a [`NotSent`]
/// carrying the request back when it was never written or the server
/// refused it unprocessed (the rule in `replay.rs`), or the error.
fn send_h2<B: RequestBody>(
    mut tx: hyper::client::conn::http2::SendRequest<GiveBack<B>>,
    req: http::Request<B>,
    restore: Restore,
) -> ResponseFuture {
    let (kept, req) = KeptHead::take(req);
    let response = tx.try_send_request(req);
    Box::pin(async move {
        let mut err = match response.await {
            Ok(response) => return Ok(response),
            Err(err) => err,
        };
        let handed_back = err.take_message();
        let error = err.into_error();
        let refused = replay::refused_unprocessed(&error);
        // Never written (hyper gave it back, its body unread), or refused
        // unprocessed by the server: the caller's request, rebuilt; or, when
        // h2 had read its body, the head alone.
        let back = match handed_back {
            Some(req) => {
                drop(req);
                Some(kept.restore().await)
            }
            None if refused => Some(kept.restore().await),
            None => None,
        };
        match back {
            Some(Restored::Whole(mut req)) => {
                restore.undo(&mut req);
                let cause: BoxError = if refused {
                    RefusedUnprocessed::new(error, None).into()
                } else {
                    error.into()
                };
                Err(NotSent::new(req, cause).into())
            }
            // Refused unprocessed, but its body was read: the caller (the
            // gRPC channel records bodies) may still send it again, with
            // this head.
            Some(Restored::Head(mut head)) if refused => {
                restore.undo(&mut head);
                Err(RefusedUnprocessed::new(error, Some(head)).into())
            }
            _ => Err(error.into()),
        }
    })
}

/// The pod refused an HTTP/2 stream unprocessed (GOAWAY, `REFUSED_STREAM`;
/// RFC 9113 §6.8, §8.7), so the request may go to another pod. Wrapped in a
/// [`NotSent`] when the endpoint could rebuild the request; on its own, with
/// the request's head, when the body had been read, for a caller that kept
/// the body (the gRPC channel), so that the caller need not copy the head
/// of every request too.
#[derive(Debug, thiserror::Error)]
#[error(
    "the pod refused the HTTP/2 stream unprocessed (GOAWAY or REFUSED_STREAM), \
     so it may go to another pod: {source}"
)]
pub(crate) struct RefusedUnprocessed {
    #[source]
    source: hyper::Error,
    /// The request's head as the caller made it; taken once. Behind a lock
    /// because errors are read through shared references.
    head: Mutex<Option<http::Request<()>>>,
}

impl RefusedUnprocessed {
    fn new(source: hyper::Error, head: Option<http::Request<()>>) -> Self {
        Self {
            source,
            head: Mutex::new(head),
        }
    }

    /// The refused request's head, if the endpoint kept it and nobody took it yet.
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    pub(crate) fn take_head(&self) -> Option<http::Request<()>> {
        crate::sync::lock(&self.head).take()
    }
}

/// Sends `req` on an HTTP/1.1 connection; the response, or a [`NotSent`]
/// carrying the request back when it may go to another pod (the rule in
/// `replay.rs`: never written; or idempotent, no body, reused connection, no
/// response byte), or the error.
fn send_h1<B, C>(
    pool: &Arc<Pool<B, C>>,
    conn: H1Conn<B>,
    req: http::Request<B>,
    restore: Restore,
) -> ResponseFuture
where
    B: RequestBody,
    C: Connect,
{
    let H1Conn {
        mut tx,
        quiet,
        reused,
    } = conn;
    // A replayable request keeps its head and its (finished) body here;
    // hyper gets a copy of the head and an empty body in its place.
    let (req, kept) = if reused && replay::idempotent(req.method()) && req.body().is_end_stream() {
        let (parts, body) = req.into_parts();
        let empty = SendBody::Empty(body.size_hint());
        (
            http::Request::from_parts(parts.clone(), empty),
            Some((parts, body)),
        )
    } else {
        (req.map(SendBody::Body), None)
    };
    quiet.store(true, Ordering::Release);
    let response = tx.try_send_request(req);
    let pool = Arc::downgrade(pool);
    Box::pin(async move {
        let mut err = match response.await {
            Ok(response) => {
                // Back to the idle list once the exchange is over (response
                // body read or dropped). Not before the response head: until
                // hyper's dispatcher has taken the request, `ready()` can
                // report a stale "ready" (see `Receiver::poll_recv` in hyper's
                // dispatch.rs), and a second request would queue behind this one.
                tokio::spawn(async move {
                    if tx.ready().await.is_ok()
                        && let Some(pool) = pool.upgrade()
                    {
                        pool.checkin(Conn::H1(H1Conn {
                            tx,
                            quiet,
                            reused: true,
                        }));
                    }
                });
                return Ok(response);
            }
            // `tx` is dropped: hyper closes a connection whose exchange
            // failed or was cancelled.
            Err(err) => err,
        };
        let unsent = err.take_message().map(http::Request::into_parts);
        let error = err.into_error();
        let (parts, body, cause): (_, _, BoxError) = match (unsent, kept) {
            // Never written: hyper gave it back.
            (Some((parts, SendBody::Body(body))), _) => (parts, body, error.into()),
            (Some((parts, SendBody::Empty(_))), Some((_, body))) => (parts, body, error.into()),
            // Written, replayable, and not a byte of response came back.
            (None, Some((parts, body))) if quiet.load(Ordering::Acquire) => {
                (parts, body, ClosedBeforeResponse(error).into())
            }
            _ => return Err(error.into()),
        };
        let mut req = http::Request::from_parts(parts, body);
        restore.undo(&mut req);
        Err(NotSent::new(req, cause).into())
    })
}

/// Why an idempotent HTTP/1.1 request is sent again: its reused connection
/// closed before any byte of its response. Wrapped in a [`NotSent`].
#[derive(Debug, thiserror::Error)]
#[error(
    "reused HTTP/1.1 connection closed before any response byte; \
     the request is idempotent with no body, so it may be sent again: {0}"
)]
struct ClosedBeforeResponse(#[source] hyper::Error);

impl<B, C> Clone for HttpEndpoint<B, C> {
    /// A clone shares the connections but not this clone's reservation.
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            slot: Slot::Idle,
        }
    }
}

impl<B, C> Drop for HttpEndpoint<B, C> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.slot, Slot::Idle) {
            Slot::Idle => {}
            Slot::Waiting { id, .. } => {
                if let Some(id) = id {
                    self.pool.cancel_wait(id);
                }
            }
            Slot::Ready(conn) => self.pool.checkin(conn),
        }
    }
}

impl<B, C> fmt::Debug for HttpEndpoint<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("addr", &self.pool.endpoint.addr())
            .field("protocol", &self.pool.endpoint.protocol())
            .field("ready", &matches!(self.slot, Slot::Ready(_)))
            .finish_non_exhaustive()
    }
}
