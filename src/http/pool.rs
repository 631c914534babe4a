//! The connections of one endpoint, shared by every clone of its service.
//!
//! ```text
//!             checkout ──► handed one? / idle? ──yes──► Ready(conn)   (HTTP/1: taken out; HTTP/2: cloned)
//!                            │no
//!                   live < max? ──yes──► spawn connect ──┐
//!                            │no                         │ success: give (below)
//!                  wait in line (waker) ◄────────────────┘ failure: record, wake all
//! ```
//!
//! HTTP/1 waiters queue in arrival order. A connection that comes free
//! (checked in, or newly connected) is handed to the longest waiter and
//! wakes only that one; it goes to the idle list only when nobody waits, so
//! a newcomer cannot take it past the line. Waking every waiter instead
//! would make each check-in wake all of them to race for one connection:
//! work that grows with the queue, and a tail latency for whoever keeps
//! losing. A waiter that goes away passes its connection on. HTTP/2 connections are shared, so their waiters are all woken.
//!
//! `live` counts connections being opened plus connections whose driver task
//! is running; a driver decrements it when its connection ends. Driver and
//! check-in tasks hold only a `Weak` to the pool, so dropping the last service
//! clone drops the idle senders, and hyper then closes each connection once
//! its in-flight requests are done.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use super::endpoint::{EndpointSettings, Http2Settings};
use super::error::ConnectError;
use super::replay::GiveBack;
use super::replay::{FirstByte, SendBody};
use super::rewrite::Addressing;
use super::{Connect, Protocol, RequestBody};
use crate::endpoint::Endpoint;

/// A sender for one connection.
pub(crate) enum Conn<B> {
    H1(H1Conn<B>),
    H2(http2::SendRequest<GiveBack<B>>),
}

/// An HTTP/1.1 connection's sender, with what the replay rule needs to know
/// (see `replay.rs`).
pub(crate) struct H1Conn<B> {
    pub(crate) tx: http1::SendRequest<SendBody<B>>,
    /// Set when a request is handed over; cleared by the first byte read
    /// after it ([`FirstByte`]).
    pub(crate) quiet: Arc<AtomicBool>,
    /// An exchange completed on this connection before: the pod may have
    /// closed it while it sat idle.
    pub(crate) reused: bool,
}

/// Everything the clones of one endpoint service share.
pub(crate) struct Pool<B, C> {
    /// The pod, its server name and the protocol spoken; what the connector gets.
    pub(crate) endpoint: Endpoint,
    pub(crate) connector: C,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) addressing: Addressing,
    http2: Http2Settings,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// HTTP/1: idle connections, most recently used last. HTTP/2: live connections.
    idle: Vec<Conn<B>>,
    live: usize,
    /// Failed connect attempts so far; a waiter that sees this grow fails too.
    failures: u64,
    last_error: Option<ConnectError>,
    /// Callers waiting for a connection, oldest (lowest id) first.
    waiters: BTreeMap<u64, Waker>,
    /// HTTP/1 connections handed to a waiter that has not taken it yet.
    handed: HashMap<u64, Conn<B>>,
    next_waiter: u64,
}

/// The outcome of one [`Pool::checkout`].
pub(crate) enum Checkout<B> {
    Ready(Conn<B>),
    Failed(ConnectError),
    Wait,
}

// ===== impl Conn =====

impl<B> Conn<B> {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Conn::H1(conn) => conn.tx.is_closed(),
            Conn::H2(tx) => tx.is_closed(),
        }
    }
}

// ===== impl Pool =====

impl<B, C> Pool<B, C> {
    pub(crate) fn new(
        endpoint: Endpoint,
        settings: EndpointSettings,
        connector: C,
        addressing: Addressing,
    ) -> Self {
        Self {
            max_connections: match endpoint.protocol() {
                Protocol::Http1 => settings.max_connections.max(1),
                Protocol::Http2 => 1,
            },
            endpoint,
            connector,
            connect_timeout: settings.connect_timeout,
            addressing,
            http2: settings.http2,
            state: Mutex::new(State {
                idle: Vec::new(),
                live: 0,
                failures: 0,
                last_error: None,
                waiters: BTreeMap::new(),
                handed: HashMap::new(),
                next_waiter: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        crate::sync::lock(&self.state)
    }

    /// Connections open or being opened.
    pub(crate) fn live(&self) -> usize {
        self.lock().live
    }

    /// HTTP/1 connections waiting for a request (HTTP/2: open connections).
    pub(crate) fn idle(&self) -> usize {
        let mut st = self.lock();
        st.idle.retain(|c| !c.is_closed());
        st.idle.len()
    }

    /// The number of failed connects so far, the baseline for a new waiter.
    pub(crate) fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// Returns a usable connection, an error if a connect failed since the
    /// caller started waiting (`failures_seen`), or registers `waker` under
    /// `waiter` and asks for a new connection if the cap allows.
    pub(crate) fn checkout(
        self: &Arc<Self>,
        waiter: &mut Option<u64>,
        failures_seen: u64,
        waker: &Waker,
    ) -> Checkout<B>
    where
        B: RequestBody,
        C: Connect,
    {
        let mut st = self.lock();
        // A handed connection that closed on the way is dropped here; its
        // driver gives the slot back (`closed`).
        if let Some(conn) = waiter.and_then(|id| st.handed.remove(&id))
            && !conn.is_closed()
        {
            *waiter = None;
            return Checkout::Ready(conn);
        }
        st.idle.retain(|c| !c.is_closed());
        let found = match self.endpoint.protocol() {
            Protocol::Http1 => st.idle.pop(),
            Protocol::Http2 => st.idle.first().map(|c| match c {
                Conn::H2(tx) => Conn::H2(tx.clone()),
                Conn::H1(_) => unreachable!("HTTP/2 pool holds an HTTP/1 connection"),
            }),
        };
        if let Some(conn) = found {
            if let Some(id) = waiter.take() {
                st.waiters.remove(&id);
            }
            return Checkout::Ready(conn);
        }
        // `connect` records an error with every failure, so a new failure
        // always has one to report.
        if let (true, Some(err)) = (st.failures > failures_seen, &st.last_error) {
            let err = err.clone();
            if let Some(id) = waiter.take() {
                st.waiters.remove(&id);
            }
            return Checkout::Failed(err);
        }
        if st.live < self.max_connections {
            st.live += 1;
            tokio::spawn(connect(self.clone()));
        }
        let id = *waiter.get_or_insert_with(|| {
            st.next_waiter += 1;
            st.next_waiter
        });
        st.waiters.insert(id, waker.clone());
        Checkout::Wait
    }

    /// Forgets a waiter that went away, passing on a connection handed to it.
    pub(crate) fn cancel_wait(&self, id: u64) {
        let mut st = self.lock();
        st.waiters.remove(&id);
        if let Some(conn) = st.handed.remove(&id) {
            give(st, conn);
        }
    }

    /// Returns an unused or finished HTTP/1 connection: to the longest
    /// waiter, or to the idle list.
    pub(crate) fn checkin(&self, conn: Conn<B>) {
        if matches!(conn, Conn::H2(_)) || conn.is_closed() {
            return;
        }
        give(self.lock(), conn);
    }

    /// Drops every idle connection (HTTP/2: the shared one); their drivers
    /// give their slots back as hyper closes them.
    fn forget_idle(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        drop(idle);
    }

    fn connected(&self, result: Result<Conn<B>, ConnectError>) {
        let mut st = self.lock();
        match result {
            Ok(conn) => give(st, conn),
            Err(err) => {
                st.live -= 1;
                st.failures += 1;
                st.last_error = Some(err);
                // Every waiter fails with it (`checkout`).
                wake_all(st);
            }
        }
    }

    /// A connection ended and gave its slot back: open another for the
    /// waiters, if any (HTTP/2 waiters all get the new connection).
    fn closed(self: &Arc<Self>)
    where
        B: RequestBody,
        C: Connect,
    {
        let mut st = self.lock();
        st.live -= 1;
        if !st.waiters.is_empty() && st.live < self.max_connections {
            st.live += 1;
            tokio::spawn(connect(self.clone()));
        }
    }
}

/// Hands an HTTP/1 connection to the longest waiter, or puts it in the idle
/// list; an HTTP/2 connection is shared, so every waiter is woken to use it.
fn give<B>(mut st: MutexGuard<'_, State<B>>, conn: Conn<B>) {
    if matches!(conn, Conn::H2(_)) {
        st.idle.push(conn);
        return wake_all(st);
    }
    match st.waiters.pop_first() {
        Some((id, waker)) => {
            st.handed.insert(id, conn);
            drop(st);
            waker.wake();
        }
        None => st.idle.push(conn),
    }
}

fn wake_all<B>(mut st: MutexGuard<'_, State<B>>) {
    let wakers: Vec<Waker> = std::mem::take(&mut st.waiters).into_values().collect();
    drop(st);
    for w in wakers {
        w.wake();
    }
}

/// Opens one connection and publishes the outcome to the pool.
async fn connect<B, C>(pool: Arc<Pool<B, C>>)
where
    B: RequestBody,
    C: Connect,
{
    let result = open(&pool).await;
    match &result {
        Ok(_) => {
            tracing::debug!(endpoint = %pool.endpoint.addr(), protocol = ?pool.endpoint.protocol(), "connected")
        }
        Err(err) => {
            tracing::debug!(endpoint = %pool.endpoint.addr(), error = %err, "connect failed")
        }
    }
    pool.connected(result);
}

async fn open<B, C>(pool: &Arc<Pool<B, C>>) -> Result<Conn<B>, ConnectError>
where
    B: RequestBody,
    C: Connect,
{
    let addr = pool.endpoint.addr();
    let io = match tokio::time::timeout(
        pool.connect_timeout,
        pool.connector.clone().oneshot(pool.endpoint.clone()),
    )
    .await
    {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => return Err(ConnectError::transport(addr, err.into())),
        Err(_elapsed) => return Err(ConnectError::timeout(addr)),
    };
    let weak = Arc::downgrade(pool);
    match pool.endpoint.protocol() {
        Protocol::Http1 => {
            let quiet = Arc::new(AtomicBool::new(false));
            let (tx, conn) = http1::Builder::new()
                .handshake(FirstByte::new(io, quiet.clone()))
                .await
                .map_err(|e| ConnectError::handshake(addr, e))?;
            // From here on the driver owns the `live` slot: report success even
            // if the connection dies at once; checkout skips closed senders.
            tokio::spawn(drive(weak, addr, conn));
            Ok(Conn::H1(H1Conn {
                tx,
                quiet,
                reused: false,
            }))
        }
        Protocol::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            // hyper needs a timer for keepalive pings (it panics without one).
            builder.timer(TokioTimer::new());
            builder
                .keep_alive_interval(pool.http2.keep_alive_interval)
                .keep_alive_timeout(pool.http2.keep_alive_timeout)
                .keep_alive_while_idle(pool.http2.keep_alive_while_idle);
            let (tx, conn) = builder
                .handshake(io)
                .await
                .map_err(|e| ConnectError::handshake(addr, e))?;
            tokio::spawn(drive(weak, addr, conn));
            Ok(Conn::H2(tx))
        }
    }
}

/// Runs one connection to its end, then gives its slot back.
async fn drive<B, C, F>(pool: Weak<Pool<B, C>>, addr: SocketAddr, conn: F)
where
    B: RequestBody,
    C: Connect,
    F: std::future::Future<Output = hyper::Result<()>>,
{
    let unreachable = match conn.await {
        Ok(()) => {
            tracing::debug!(endpoint = %addr, "connection closed");
            false
        }
        Err(err) => {
            tracing::debug!(endpoint = %addr, error = %err, "connection failed");
            super::is_peer_timeout(&err)
        }
    };
    if let Some(pool) = pool.upgrade() {
        if unreachable {
            // The pod's kernel stopped acknowledging (TCP user timeout or
            // keepalive): its other idle connections are as dead, but would
            // each take up to the user timeout to find out, and one handed
            // to a request in the meantime would hold it that long. Drop
            // them, so that the next checkout connects afresh (and fails at
            // `connect_timeout` while the pod stays unreachable).
            pool.forget_idle();
        }
        pool.closed();
    }
}
