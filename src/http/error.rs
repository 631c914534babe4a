//! Errors of one endpoint's HTTP service: failed connects.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A boxed error, as tower and hyper pass them around.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opening a connection to an endpoint failed.
///
/// Returned (boxed) by [`HttpEndpoint`](super::HttpEndpoint)'s `poll_ready`. The
/// request was never sent, so the balancer may try another endpoint. Cloneable,
/// because every caller waiting for the same connect attempt gets the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connect to {addr} failed: {kind}")]
pub struct ConnectError {
    addr: SocketAddr,
    kind: ConnectErrorKind,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What part of opening a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectErrorKind {
    Refused,
    Timeout,
    Io,
    Handshake,
}

impl fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refused => "connection refused",
            Self::Timeout => "connect timed out",
            Self::Io => "transport error",
            Self::Handshake => "HTTP handshake failed",
        })
    }
}

// ===== impl ConnectError =====

impl ConnectError {
    /// Classifies an error from the connector: refused if an `io::Error` with
    /// kind `ConnectionRefused` is anywhere in its source chain.
    pub(crate) fn transport(addr: SocketAddr, err: BoxError) -> Self {
        let mut refused = false;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            cur = e.source();
        }
        let kind = if refused {
            ConnectErrorKind::Refused
        } else {
            ConnectErrorKind::Io
        };
        Self {
            addr,
            kind,
            source: Some(Arc::from(err)),
        }
    }

    pub(crate) fn timeout(addr: SocketAddr) -> Self {
        Self {
            addr,
            kind: ConnectErrorKind::Timeout,
            source: None,
        }
    }

    pub(crate) fn handshake(addr: SocketAddr, err: hyper::Error) -> Self {
        Self {
            addr,
            kind: ConnectErrorKind::Handshake,
            source: Some(Arc::new(err)),
        }
    }

    /// The endpoint that could not be reached.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when the endpoint actively refused the connection (nothing listens).
    pub fn is_refused(&self) -> bool {
        self.kind == ConnectErrorKind::Refused
    }

    /// True when the connect timeout elapsed first.
    pub fn is_timeout(&self) -> bool {
        self.kind == ConnectErrorKind::Timeout
    }

    /// True when the transport connected but the HTTP handshake failed.
    pub fn is_handshake(&self) -> bool {
        self.kind == ConnectErrorKind::Handshake
    }
}
