//! The hyper side: one HTTP client service per endpoint, ready for the balancer.
//!
//! ```text
//!  DnsDiscover ──Change::Insert(addr)──► HttpEndpointBuilder::make(addr) ──► HttpEndpoint
//!                                                                             │ poll_ready: take or open a connection
//!                                                                             │ call: rewrite URI/Host, send
//!                                                                             ▼
//!                                                 Connect (TcpConnector) ──► hyper http1 pool / one http2 connection
//! ```
//!
//! Errors a balancer branches on: [`ConnectError`] from `poll_ready` and
//! [`NotSent`] from `call` mean the request never left this process and may go
//! to another endpoint; every other error may have reached a server.

mod body;
mod client;
mod connect;
mod endpoint;
mod error;
mod pool;
mod rewrite;

use std::net::SocketAddr;

pub use self::body::{Body, CompleteOnBodyEnd, ServedBy};
pub use self::client::{Client, ClientBuilder, ResponseFuture as ClientResponseFuture};
pub use self::connect::TcpConnector;
pub use self::endpoint::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpEndpoint,
    HttpEndpointBuilder, MakeHttpEndpoint, Protocol, ResponseFuture,
};
pub use self::error::{BoxError, ConnectError, RequestTimeout};
/// The "never written" error, shared with the balancer; an endpoint returns
/// it with the `http::Request` inside.
pub use crate::balance::NotSent;

/// A transport for endpoint connections: a cloneable
/// `tower::Service<SocketAddr>` yielding a hyper I/O object.
///
/// Implemented for every type that fits; [`TcpConnector`] is the default.
pub trait Connect:
    tower::Service<
        SocketAddr,
        Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        Error: Into<BoxError>,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Connect for T where
    T: tower::Service<
            SocketAddr,
            Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
            Error: Into<BoxError>,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A request body an endpoint can send: any [`http_body::Body`] that is
/// `Send + Unpin + 'static` (hyper's HTTP/2 client needs `Unpin`; box or pin
/// a body that is not).
///
/// Implemented for every type that fits.
pub trait RequestBody:
    http_body::Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<T> RequestBody for T where
    T: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static
{
}
