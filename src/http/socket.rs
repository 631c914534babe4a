//! [`SocketOptions`]: what [`TcpConnector`](super::TcpConnector) sets on every
//! pod connection so that a pod whose packets vanish ends its requests.
//!
//! A pod deleted in Kubernetes can leave its IP black-holed: packets to it
//! are dropped, no RST comes back, and without these options a request in
//! flight on it waits for TCP to give up on its own, about 15 minutes
//! (`tcp_retries2`) when data is unacknowledged, and for ever when the
//! request was written and acknowledged and the client only waits to read.
//!
//! ```text
//!  request written, not ACKed ──► retransmits ──► TCP_USER_TIMEOUT (10 s) ──► ETIMEDOUT
//!  request ACKed, reading     ──► idle 5 s ──► keepalive probe every 1 s ──► unanswered for
//!                                                                            TCP_USER_TIMEOUT ──► ETIMEDOUT
//! ```
//!
//! Both are the peer's *kernel* answering, never its application, so a pod
//! that is slow, frozen (SIGSTOP, GC) or busy on a long request keeps its
//! connections; only a pod that is unreachable loses them. Keepalive probes
//! are invisible to the pod's HTTP server, so no server ping policy (gRPC's
//! `too_many_pings`) applies to them, and they cover HTTP/1.1, where there is
//! no PING.

use std::io;
use std::time::Duration;

use super::TcpConnector;

/// Default for the TCP user timeout: 10 s.
///
/// How long data written to a pod may stay unacknowledged (and, with
/// keepalive, how long a silent connection may stay unanswered) before the
/// kernel closes the connection with `ETIMEDOUT`. Long enough to ride out a
/// few seconds of packet loss (a node's network restarting: TCP retransmits
/// at about 0.2, 0.6, 1.4, 3 and 6 s), short enough that a request on a
/// black-holed pod fails in about 10 s instead of 15 minutes.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for the TCP keepalive idle time: 5 s, then a probe every
/// [`TCP_KEEPALIVE_INTERVAL`].
///
/// Half the user timeout, so that a connection that went silent has a probe
/// out (the user timeout only counts while a probe or data is
/// unacknowledged) well before the user timeout comes due.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(5);

/// Time between keepalive probes once the idle time has passed: 1 s, so
/// that the connection closes within a second of the user timeout.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Keepalive probes sent before the kernel gives up when no user timeout is
/// set (with one, the user timeout decides): 5, so idle + 5 s.
pub const TCP_KEEPALIVE_RETRIES: u32 = 5;

/// The socket options of a pod connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketOptions {
    /// `TCP_USER_TIMEOUT`; `None` leaves the system's (about 15 minutes).
    pub(crate) user_timeout: Option<Duration>,
    /// `SO_KEEPALIVE` with this idle time; `None` leaves keepalive off.
    pub(crate) keepalive: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
            keepalive: Some(DEFAULT_TCP_KEEPALIVE),
        }
    }
}

impl SocketOptions {
    /// Sets `TCP_NODELAY` and these options on `stream`.
    ///
    /// `TCP_USER_TIMEOUT` exists on Linux (and Android, Fuchsia) only; on
    /// other systems keepalive alone ends a silent connection, after its
    /// idle time plus [`TCP_KEEPALIVE_RETRIES`] probes.
    pub(crate) fn apply(&self, stream: &tokio::net::TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let socket = socket2::SockRef::from(stream);
        if let Some(idle) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(TCP_KEEPALIVE_INTERVAL)
                .with_retries(TCP_KEEPALIVE_RETRIES);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        socket.set_tcp_user_timeout(self.user_timeout)?;
        Ok(())
    }
}

// ===== impl TcpConnector (socket options) =====

impl TcpConnector {
    /// `TCP_USER_TIMEOUT`: how long written data, or a keepalive probe, may
    /// stay unacknowledged by the pod's kernel before the connection closes
    /// and its requests fail \[10 s\]; `None` leaves the system's default
    /// (about 15 minutes of retransmissions). Linux only; ignored elsewhere.
    ///
    /// Only a pod that is unreachable trips it: a slow or frozen process's
    /// kernel still acknowledges.
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.socket.user_timeout = timeout;
        self
    }

    /// TCP keepalive: probe a connection after it received nothing for
    /// `idle`, then every second \[5 s\]; `None` turns keepalive off.
    ///
    /// Keepalive is what makes the user timeout count while a request waits
    /// for its response with nothing unacknowledged (an HTTP/1.1 request
    /// written and acknowledged): the unanswered probe does. With both on, a
    /// connection to a pod that vanished closes about `tcp_user_timeout`
    /// after the pod last answered (one keepalive interval more at most).
    /// The pod's kernel answers the probes, so servers that police HTTP/2
    /// PINGs never see them.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.socket.keepalive = idle;
        self
    }
}
