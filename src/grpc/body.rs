//! [`ResponseBody`]: a gRPC response body that keeps its RPC pending until the stream ends, and reports `UNAVAILABLE` to the endpoint's stats.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::status;
use crate::balance::{Completion, GuardedBody, PendingGuard};
use crate::http::guard_response;

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
#[derive(Debug)]
pub struct ResponseBody(GuardedBody<Incoming>);

/// The [`Completion`] that moves an RPC's pending guard into its
/// [`ResponseBody`], after counting a failure when the response head already
/// says `UNAVAILABLE` (a trailers-only response, or HTTP 502/503/504), and
/// records the pod that served the RPC as a [`ServedBy`](crate::http::ServedBy) response extension
/// (tonic's generated clients pass it on in `tonic::Response::extensions()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompleteOnStreamEnd;

// ===== impl ResponseBody =====

impl ResponseBody {
    /// True while the RPC still counts as pending on its endpoint.
    pub fn is_pending(&self) -> bool {
        self.0.is_pending()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let endpoint = self.0.endpoint();
        let frame = ready!(self.0.poll_frame(cx, is_unavailable));
        Poll::Ready(frame.map(|frame| frame.map_err(|e| status::from_stream_error(e, endpoint))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

// ===== impl CompleteOnStreamEnd =====

impl Completion<http::Response<Incoming>> for CompleteOnStreamEnd {
    type Output = http::Response<ResponseBody>;

    fn complete(&self, response: http::Response<Incoming>, guard: PendingGuard) -> Self::Output {
        // tonic maps these HTTP statuses to UNAVAILABLE (a proxy or a server
        // that is shutting down); a trailers-only response carries the gRPC
        // status in its headers.
        let unavailable = matches!(
            response.status(),
            http::StatusCode::BAD_GATEWAY
                | http::StatusCode::SERVICE_UNAVAILABLE
                | http::StatusCode::GATEWAY_TIMEOUT
        ) || is_unavailable(response.headers());
        // An unavailable answer is counted already: the stream that follows
        // is not load.
        guard_response(response, guard, unavailable, !unavailable).map(ResponseBody)
    }
}

/// True when `headers` (response headers or trailers) carry `grpc-status: 14`.
fn is_unavailable(headers: &HeaderMap) -> bool {
    headers
        .get(tonic::Status::GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"14")
}
