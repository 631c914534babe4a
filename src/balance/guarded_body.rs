//! [`GuardedBody`]: the core of every response body that keeps its request pending on its endpoint until the body ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::PendingGuard;

/// A response body holding its request's [`PendingGuard`] until the body
/// ends, fails or is dropped, so that an endpoint busy streaming (long
/// bodies, gRPC server streams) counts as busy in the balancer's load, not
/// only until the response head arrived.
///
/// A body that fails before its end counts as a failure of the endpoint (the
/// response broke off: reset, connection lost); the wrapper decides whether
/// trailers say the request failed too (gRPC's `UNAVAILABLE`).
pub(crate) struct GuardedBody<B> {
    inner: B,
    guard: Option<PendingGuard>,
}

/// What `http_body::Body::poll_frame` returns for `B`.
type PollFrame<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

// ===== impl GuardedBody =====

impl<B: Body + Unpin> GuardedBody<B> {
    /// Wraps `inner`; a body that is over already releases the guard at once.
    pub(crate) fn new(inner: B, guard: Option<PendingGuard>) -> Self {
        let guard = guard.filter(|_| !inner.is_end_stream());
        Self { inner, guard }
    }

    /// True while the request still counts as pending on its endpoint.
    pub(crate) fn is_pending(&self) -> bool {
        self.guard.is_some()
    }

    /// The endpoint the request went to, while it is pending (for gRPC's
    /// error messages).
    #[cfg(feature = "tonic")]
    pub(crate) fn endpoint(&self) -> Option<std::net::SocketAddr> {
        self.guard.as_ref().map(PendingGuard::endpoint)
    }

    /// The body inside, releasing the pending count now.
    pub(crate) fn into_inner(self) -> B {
        self.inner
    }

    /// Polls the body, ending the request's accounting at its end: as a
    /// failure when the body fails or `failed_trailers` says its trailers
    /// report one.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        failed_trailers: impl FnOnce(&HeaderMap) -> bool,
    ) -> PollFrame<B> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.finish(false),
            Some(Err(_)) => self.finish(true),
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish(failed_trailers(trailers));
                } else if self.inner.is_end_stream() {
                    self.finish(false);
                }
            }
        }
        Poll::Ready(frame)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    /// Ends the request's accounting: a failure is recorded first if `failed`.
    fn finish(&mut self, failed: bool) {
        if let Some(guard) = self.guard.take()
            && failed
        {
            guard.record_failure();
        }
    }
}

impl<B> fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBody")
            .field("pending", &self.guard.is_some())
            .finish()
    }
}
