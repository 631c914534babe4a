//! [`Body`]: a response body that keeps its request pending on its endpoint until it ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::{Completion, GuardedBody, PendingGuard};

/// The body of a response from a balanced client.
///
/// Wraps hyper's [`Incoming`] and holds the request's [`PendingGuard`] until
/// the body reports its end, fails, or is dropped: an endpoint busy streaming
/// long bodies (or gRPC server streams) counts as busy in the balancer's load,
/// not only until the response headers arrived.
#[derive(Debug)]
pub struct Body(GuardedBody<Incoming>);

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
        self.0.is_pending()
    }

    /// The hyper body inside, releasing the pending count now.
    pub fn into_inner(self) -> Incoming {
        self.0.into_inner()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // HTTP trailers say nothing about the request's success.
        self.0.poll_frame(cx, |_| false)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

// ===== impl CompleteOnBodyEnd =====

impl Completion<http::Response<Incoming>> for CompleteOnBodyEnd {
    type Output = http::Response<Body>;

    /// A 5xx is returned to the caller as it is, and counted in the stats.
    fn complete(&self, response: http::Response<Incoming>, guard: PendingGuard) -> Self::Output {
        let failed = response.status().is_server_error();
        guard_response(response, guard, failed, true).map(Body)
    }
}

/// The shared half of the clients' completions: records the pod that
/// served `response` ([`ServedBy`]), counts a `failed` answer in its stats,
/// and moves the pending guard into the body when the body is still load
/// (`held`), else releases it now.
pub(crate) fn guard_response(
    mut response: http::Response<Incoming>,
    guard: PendingGuard,
    failed: bool,
    held: bool,
) -> http::Response<GuardedBody<Incoming>> {
    response.extensions_mut().insert(ServedBy(guard.endpoint()));
    if failed {
        guard.record_failure();
    }
    let guard = held.then_some(guard);
    response.map(|inner| GuardedBody::new(inner, guard))
}
