//! [`ResponseBody`]: a gRPC response body that keeps its RPC pending until the stream ends, and reports `UNAVAILABLE` to the endpoint's stats.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::status;
use crate::balance::{Completion, PendingGuard};
use crate::http::ServedBy;

/// The body of a response from a [`Channel`](super::Channel): the message
/// stream of one RPC.
///
/// Holds the RPC's [`PendingGuard`] until the stream ends (trailers, an
/// error, or the body being dropped), so an endpoint serving long server
/// streams counts as busy in the balancer's load, not just until the
/// response headers arrived.
///
/// The endpoint's failure count in [`stats`](super::Channel::stats) rises
/// once per RPC when the stream breaks (the connection fails midway) or the
/// server ends it with `grpc-status: 14` (`UNAVAILABLE`), in the headers of a
/// trailers-only response or in the trailers. Errors come as a
/// [`tonic::Status`], which tonic's `Streaming` passes through unchanged: a
/// broken connection is `UNAVAILABLE`, as the gRPC spec asks.
pub struct ResponseBody {
    inner: Incoming,
    guard: Option<PendingGuard>,
}

/// The [`Completion`] that moves an RPC's pending guard into its
/// [`ResponseBody`], after counting a failure when the response head already
/// says `UNAVAILABLE` (a trailers-only response, or HTTP 502/503/504), and
/// records the pod that served the RPC as a [`ServedBy`] response extension
/// (tonic's generated clients pass it on in `tonic::Response::extensions()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompleteOnStreamEnd;

// ===== impl ResponseBody =====

impl ResponseBody {
    /// True while the RPC still counts as pending on its endpoint.
    pub fn is_pending(&self) -> bool {
        self.guard.is_some()
    }

    /// Ends the RPC's accounting: a failure is recorded first if `failed`.
    fn finish(&mut self, failed: bool) {
        if let Some(guard) = self.guard.take()
            && failed
        {
            guard.record_failure();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let endpoint = self.guard.as_ref().map(PendingGuard::endpoint);
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => {
                self.finish(false);
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                self.finish(true);
                Poll::Ready(Some(Err(status::from_stream_error(err, endpoint))))
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish(is_unavailable(trailers));
                } else if self.inner.is_end_stream() {
                    self.finish(false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pending", &self.is_pending())
            .finish()
    }
}

// ===== impl CompleteOnStreamEnd =====

impl Completion<http::Response<Incoming>> for CompleteOnStreamEnd {
    type Output = http::Response<ResponseBody>;

    fn complete(
        &self,
        mut response: http::Response<Incoming>,
        guard: PendingGuard,
    ) -> Self::Output {
        response.extensions_mut().insert(ServedBy(guard.endpoint()));
        // tonic maps these HTTP statuses to UNAVAILABLE (a proxy or a server
        // that is shutting down); a trailers-only response carries the gRPC
        // status in its headers.
        let unavailable = matches!(
            response.status(),
            http::StatusCode::BAD_GATEWAY
                | http::StatusCode::SERVICE_UNAVAILABLE
                | http::StatusCode::GATEWAY_TIMEOUT
        ) || is_unavailable(response.headers());
        if unavailable {
            guard.record_failure();
        }
        response.map(|inner| {
            // An empty body is over already: release the count at once.
            let guard = (!unavailable && !http_body::Body::is_end_stream(&inner)).then_some(guard);
            ResponseBody { inner, guard }
        })
    }
}

/// True when `headers` (response headers or trailers) carry `grpc-status: 14`.
fn is_unavailable(headers: &HeaderMap) -> bool {
    headers
        .get(tonic::Status::GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"14")
}
