//! [`Body`]: a response body that keeps its request pending on its endpoint until it ends.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::{Completion, PendingGuard};

/// The body of a response from a balanced client.
///
/// Wraps hyper's [`Incoming`] and holds the request's [`PendingGuard`] until
/// the body reports its end, fails, or is dropped: an endpoint busy streaming
/// long bodies (or gRPC server streams) counts as busy in the balancer's load,
/// not only until the response headers arrived.
pub struct Body {
    inner: Incoming,
    guard: Option<PendingGuard>,
}

/// A response extension naming the pod that served the response.
///
/// ```no_run
/// # async fn run(client: headless_lb::http::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use headless_lb::http::ServedBy;
///
/// let response = client.get("/").await?;
/// if let Some(ServedBy(pod)) = response.extensions().get::<ServedBy>() {
///     println!("answered by {pod}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServedBy(pub SocketAddr);

/// The [`Completion`] that moves the pending guard into the response [`Body`]
/// and records [`ServedBy`].
///
/// It also counts, in the endpoint's
/// [`failures`](crate::balance::EndpointStats::failures), responses with a
/// 5xx status and bodies that fail before their end.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompleteOnBodyEnd;

// ===== impl Body =====

impl Body {
    /// True while the request still counts as pending on its endpoint.
    pub fn is_pending(&self) -> bool {
        self.guard.is_some()
    }

    /// The hyper body inside, releasing the pending count now.
    pub fn into_inner(self) -> Incoming {
        self.inner
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(Err(_)), Some(guard)) = (&frame, &self.guard) {
            // The response broke off (reset, connection lost): the request failed.
            guard.record_failure();
        }
        if frame.as_ref().is_none_or(|f| f.is_err()) || self.inner.is_end_stream() {
            self.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("pending", &self.is_pending())
            .finish()
    }
}

// ===== impl CompleteOnBodyEnd =====

impl Completion<http::Response<Incoming>> for CompleteOnBodyEnd {
    type Output = http::Response<Body>;

    fn complete(
        &self,
        mut response: http::Response<Incoming>,
        guard: PendingGuard,
    ) -> Self::Output {
        response.extensions_mut().insert(ServedBy(guard.endpoint()));
        // A 5xx is returned to the caller as it is, and counted in the stats.
        if response.status().is_server_error() {
            guard.record_failure();
        }
        response.map(|inner| {
            // An empty body is over already: release the count at once.
            let guard = (!http_body::Body::is_end_stream(&inner)).then_some(guard);
            Body { inner, guard }
        })
    }
}
