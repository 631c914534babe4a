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
//! `HttpEndpointBuilder` is the clients' default [`MakeEndpoint`](crate::MakeEndpoint):
//! it makes one `HttpEndpoint` per [`Endpoint`] and hands
//! the same `Endpoint` (pod address, service name, protocol) to the
//! connector, so that a TLS connector can check the service's certificate.
//!
//! Errors a balancer branches on: [`ConnectError`] from `poll_ready` and
//! [`NotSent`](crate::NotSent) from `call` mean the request may go to another endpoint: it
//! never left this process, or (HTTP/1.1) it is idempotent, has no body, and
//! its reused connection closed before any byte of a response (see
//! [`HttpEndpoint`]); every other error may have reached a server.

mod body;
mod client;
mod connect;
mod endpoint;
mod error;
mod pool;
mod replay;
mod rewrite;
mod socket;
mod tls;

#[cfg(feature = "tonic")]
pub(crate) use self::body::guard_response;
pub use self::body::{Body, CompleteOnBodyEnd, ServedBy};
pub use self::client::{
    Client, ClientBuilder, HttpService, ResponseFuture as ClientResponseFuture,
};
pub use self::connect::TcpConnector;
pub(crate) use self::endpoint::EndpointSettings;
#[cfg(feature = "tonic")]
pub(crate) use self::endpoint::RefusedUnprocessed;
pub use self::endpoint::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpEndpoint,
    HttpEndpointBuilder, Protocol, ResponseFuture,
};
pub(crate) use self::error::BoxError;
pub use self::error::ConnectError;
pub(crate) use self::error::is_peer_timeout;
pub use self::socket::{
    DEFAULT_TCP_KEEPALIVE, DEFAULT_TCP_USER_TIMEOUT, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_RETRIES,
};
pub use self::tls::PodStream;
#[cfg(feature = "tls")]
pub use self::tls::TlsHandshakeError;
#[cfg(feature = "tls")]
pub(crate) use self::tls::check_server_name;

use crate::endpoint::Endpoint;

/// A transport for endpoint connections: a cloneable
/// `tower::Service<Endpoint>` yielding a hyper I/O object.
///
/// The [`Endpoint`] names the pod's address, the service's name (for TLS:
/// the name to verify and send as SNI) and the protocol (for ALPN).
///
/// Implemented for every type that fits; [`TcpConnector`] is the default.
pub trait Connect:
    tower::Service<
        Endpoint,
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
            Endpoint,
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
