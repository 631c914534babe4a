//! [`TcpConnector`]: the default transport, a TCP connection with `TCP_NODELAY`, keepalive and a user timeout, and TLS over it with the `tls` feature.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use super::socket::SocketOptions;
use super::tls::{PodStream, TlsSetting};
use crate::endpoint::Endpoint;

/// Opens a TCP connection to an endpoint, with `TCP_NODELAY`, TCP keepalive
/// and `TCP_USER_TIMEOUT` set.
///
/// The default connector of [`HttpEndpointBuilder`](super::HttpEndpointBuilder).
/// Any `tower::Service<Endpoint>` whose response implements hyper's
/// [`Read`](hyper::rt::Read) and [`Write`](hyper::rt::Write) can take its place
/// (TLS, a Unix socket, a fault-injecting wrapper); the connect timeout is
/// applied around whichever connector is used.
///
/// Nagle's algorithm is off because requests are small and latency-bound: with
/// it on, a request written in two segments waits for the peer's delayed ACK.
///
/// With the `tls` feature, `TcpConnector::tls` adds TLS with the pod's
/// [`Endpoint::server_name`] as the verified name and SNI, and ALPN for its
/// [`Endpoint::protocol`].
///
/// Keepalive and the user timeout end a connection to a pod that stopped
/// answering at the TCP level (a black-holed IP, a crashed node) in about
/// [`tcp_user_timeout`](Self::tcp_user_timeout), failing its requests, where
/// TCP alone would wait about 15 minutes or for ever; see
/// [`tcp_keepalive`](Self::tcp_keepalive).
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    /// TLS over the TCP connection, or none (the default).
    pub(super) tls: TlsSetting,
    /// Set by the methods in `socket.rs`.
    pub(super) socket: SocketOptions,
}

// ===== impl TcpConnector =====

impl TcpConnector {
    /// A connector that sets `TCP_NODELAY`, keepalive after
    /// [`DEFAULT_TCP_KEEPALIVE`](super::DEFAULT_TCP_KEEPALIVE) and a user
    /// timeout of [`DEFAULT_TCP_USER_TIMEOUT`](super::DEFAULT_TCP_USER_TIMEOUT).
    pub fn new() -> Self {
        Self::default()
    }
}

impl tower::Service<Endpoint> for TcpConnector {
    type Response = PodStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PodStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        let tls = self.tls.clone();
        let socket = self.socket;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            socket.apply(&stream)?;
            tls.wrap(stream, &endpoint).await
        })
    }
}
