//! [`NotSent`]: the error an endpoint service returns for a request it never wrote.

use std::error::Error;
use std::fmt;
use std::sync::Mutex;

use tower::BoxError;

use crate::sync::lock;

/// An endpoint service's error saying "this request never left the client",
/// with the request given back so the balancer can send it elsewhere.
///
/// Endpoint services return it (converted into their error type, e.g. a
/// `BoxError`) when the connection failed before the request was written:
/// connect refused or timed out, or the connection closed while the request
/// was queued; and for an idempotent HTTP/1.1 request with no body whose
/// reused connection closed before any byte of its response, which may be
/// sent twice without effect (RFC 9110 §9.2.2; see
/// [`HttpEndpoint`](crate::http::HttpEndpoint)). The balancer then marks the
/// endpoint for reconnection and retries the request on every endpoint it has
/// not tried yet, then on at most `max_retries` that it tried, within
/// `failfast_timeout` (see
/// [`Builder::max_retries`](crate::balance::Builder::max_retries)). Any other
/// error from `call()` is returned to the
/// caller as is: a request whose replay could have an effect is never
/// retried by the library.
///
/// The balancer finds a `NotSent` anywhere in the error's
/// [`source`](Error::source) chain, so wrapping layers (timeouts, error
/// mapping) keep it visible. The request sits behind a mutex so that the error
/// is `Sync` for any `Send` request type and so that it can be taken out
/// through a shared reference from inside such a chain.
pub struct NotSent<Req> {
    request: Mutex<Option<Req>>,
    source: BoxError,
}

// ===== impl NotSent =====

impl<Req> NotSent<Req> {
    /// `request` was not sent because of `source`.
    pub fn new(request: Req, source: impl Into<BoxError>) -> Self {
        Self {
            request: Mutex::new(Some(request)),
            source: source.into(),
        }
    }

    /// A request was not sent, but cannot be given back: the balancer marks
    /// the endpoint for reconnection, but cannot retry.
    pub fn without_request(source: impl Into<BoxError>) -> Self {
        Self {
            request: Mutex::new(None),
            source: source.into(),
        }
    }

    /// Takes the request back, if it is still here.
    pub fn take_request(&self) -> Option<Req> {
        lock(&self.request).take()
    }

    /// Why the request was not sent.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<Req: Send + 'static> NotSent<Req> {
    /// Finds a `NotSent<Req>` in `error` or its source chain.
    pub fn find<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Self> {
        crate::error::chain(error).find_map(|e| e.downcast_ref::<Self>())
    }
}

impl<Req> fmt::Debug for NotSent<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_request = lock(&self.request).is_some();
        f.debug_struct("NotSent")
            .field("has_request", &has_request)
            .field("source", &self.source)
            .finish()
    }
}

impl<Req> fmt::Display for NotSent<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not sent: {}", self.source)
    }
}

impl<Req> Error for NotSent<Req> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
