//! [`TcpConnector`]: the default transport, a plain TCP connection with `TCP_NODELAY`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;

/// Opens a TCP connection to an endpoint, with `TCP_NODELAY` set.
///
/// The default connector of [`HttpEndpointBuilder`](super::HttpEndpointBuilder).
/// Any `tower::Service<Endpoint>` whose response implements hyper's
/// [`Read`](hyper::rt::Read) and [`Write`](hyper::rt::Write) can take its place
/// (TLS, a Unix socket, a fault-injecting wrapper); the connect timeout is
/// applied around whichever connector is used.
///
/// Nagle's algorithm is off because requests are small and latency-bound: with
/// it on, a request written in two segments waits for the peer's delayed ACK.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector {
    _priv: (),
}

// ===== impl TcpConnector =====

impl TcpConnector {
    /// A connector that sets `TCP_NODELAY`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl tower::Service<Endpoint> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
