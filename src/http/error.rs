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
///
/// A failed TLS handshake ([`is_tls`](Self::is_tls)) names the server name
/// the pod's certificate was checked against, and why it failed:
/// `connect to 10.0.0.7:8443 failed: TLS handshake for server name
/// "web.default.svc.cluster.local" failed: invalid peer certificate: ...`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connect to {addr} failed: {}", describe(*.kind, .source.as_deref()))]
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
    /// The TLS handshake failed; the source says for which name and why.
    Tls,
}

/// The kind, and for TLS the source's message: the name checked and why it
/// failed belong in the one line a log shows.
fn describe(
    kind: ConnectErrorKind,
    source: Option<&(dyn std::error::Error + Send + Sync)>,
) -> String {
    match (kind, source) {
        (ConnectErrorKind::Tls, Some(source)) => source.to_string(),
        _ => kind.to_string(),
    }
}

impl fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refused => "connection refused",
            Self::Timeout => "connect timed out",
            Self::Io => "transport error",
            Self::Handshake => "HTTP handshake failed",
            Self::Tls => "TLS handshake failed",
        })
    }
}

// ===== impl ConnectError =====

impl ConnectError {
    /// Classifies an error from the connector: TLS if a
    /// `TlsHandshakeError` is in its source chain (or wrapped in an
    /// `io::Error` there), else refused if an `io::Error` with kind
    /// `ConnectionRefused` is.
    pub(crate) fn transport(addr: SocketAddr, err: BoxError) -> Self {
        let mut refused = false;
        let mut tls = false;
        for e in crate::error::chain(&*err) {
            tls |= is_tls_handshake_error(e);
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                // `io::Error::source` skips the error it wraps: look at it here.
                tls |= io
                    .get_ref()
                    .is_some_and(|inner| is_tls_handshake_error(inner));
            }
        }
        let kind = if tls {
            ConnectErrorKind::Tls
        } else if refused {
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

    /// True when TCP connected but the TLS handshake failed: a certificate
    /// not valid for the server name or not trusted, a pod without TLS, a
    /// client certificate missing. The message names the pod's address and
    /// the server name checked.
    pub fn is_tls(&self) -> bool {
        self.kind == ConnectErrorKind::Tls
    }
}

#[cfg(feature = "tls")]
fn is_tls_handshake_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<super::TlsHandshakeError>()
}

#[cfg(not(feature = "tls"))]
fn is_tls_handshake_error(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// Whether `error` says a pod stopped answering at the transport level: an
/// `io::Error` of kind `TimedOut` (the kernel's `ETIMEDOUT` from
/// `TCP_USER_TIMEOUT` or keepalive) or a hyper timeout (an HTTP/2 keepalive
/// PING left unanswered) anywhere in its source chain.
///
/// Timeouts of the caller's own (a request timeout, a timeout layer) are not
/// this: they say a request was slow, not that the pod is unreachable.
pub(crate) fn is_peer_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::chain(error).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
    })
}
