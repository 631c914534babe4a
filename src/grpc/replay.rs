//! Sending an RPC again that a pod refused unprocessed after its stream had started sending.
//!
//! A pod that shuts down gracefully sends GOAWAY; RFC 9113 §6.8 guarantees
//! that streams above the GOAWAY's last stream id were not processed. The
//! HTTP endpoint hands such a request back whenever its body is untouched
//! (`http/replay.rs`), but h2 starts reading a gRPC request's body as soon as
//! the stream opens, so the body is gone by the time the refusal arrives.
//! The channel therefore records what the body sends, up to
//! [`MAX_RECORDED`] bytes, and when the refusal comes and the whole body was
//! recorded, sends the RPC once more with the recorded bytes.
//!
//! ```text
//!  Channel::call ── head copy ──────────────────────────┐
//!        body ──► Recorder ──► h2 (frames copied)       │ refused unprocessed,
//!                    │                                   │ body complete and small
//!                    └─ Recording { frames, complete } ──┴──► same head + recorded body ──► balancer
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Extensions, HeaderMap, Method, Uri, Version};
use http_body::{Body, Frame, SizeHint};

/// The most request-body bytes recorded for a replay; a larger body (a
/// client stream, a big message) is not replayed. gRPC unary requests are
/// far smaller; the cap bounds the memory a refusal can cost.
pub(crate) const MAX_RECORDED: usize = 64 * 1024;

/// The head of an RPC and what its body sent, shared with the [`Recorder`].
pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    recording: Arc<Mutex<Recording>>,
}

#[derive(Default)]
struct Recording {
    data: BytesMut,
    /// The body ended (without trailers: gRPC request bodies have none).
    complete: bool,
    /// More than [`MAX_RECORDED`] bytes, trailers, or an error: no replay.
    spoiled: bool,
}

/// The request body sent in place of the caller's: the same frames, copied
/// into the [`Replay`] as they go.
pub(crate) struct Recorder {
    inner: tonic::body::Body,
    recording: Arc<Mutex<Recording>>,
}

// ===== impl Replay =====

impl Replay {
    /// Copies `request`'s head and wraps its body in a [`Recorder`].
    pub(crate) fn record(
        request: http::Request<tonic::body::Body>,
    ) -> (Replay, http::Request<tonic::body::Body>) {
        let (parts, body) = request.into_parts();
        let recording = Arc::new(Mutex::new(Recording::default()));
        let replay = Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            recording: recording.clone(),
        };
        let body = tonic::body::Body::new(Recorder {
            inner: body,
            recording,
        });
        (replay, http::Request::from_parts(parts, body))
    }

    /// The RPC again, with the body it sent, if the body was recorded whole.
    pub(crate) fn again(&self) -> Option<http::Request<tonic::body::Body>> {
        let data = {
            let recording = crate::sync::lock(&self.recording);
            if !recording.complete || recording.spoiled {
                return None;
            }
            recording.data.clone().freeze()
        };
        let mut request =
            http::Request::new(tonic::body::Body::new(http_body_util::Full::new(data)));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        Some(request)
    }
}

// ===== impl Recorder =====

impl Body for Recorder {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let mut recording = crate::sync::lock(&this.recording);
            match frame {
                Some(Ok(frame)) => match frame.data_ref() {
                    Some(data) if recording.data.len() + data.len() <= MAX_RECORDED => {
                        recording.data.extend_from_slice(data);
                    }
                    _ => {
                        recording.spoiled = true;
                        recording.data = BytesMut::new();
                    }
                },
                Some(Err(_)) => recording.spoiled = true,
                None => recording.complete = true,
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// True when the error says the pod refused the RPC's stream unprocessed.
pub(crate) fn refused_unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::chain(error).any(|e| e.is::<crate::http::RefusedUnprocessed>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn rpc(body: &'static [u8]) -> http::Request<tonic::body::Body> {
        let mut request = http::Request::post("/grpc.health.v1.Health/Check")
            .header("grpc-timeout", "100m")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from_static(body),
            )))
            .unwrap();
        request.extensions_mut().insert(7u8);
        request
    }

    #[tokio::test]
    async fn a_body_sent_whole_is_replayed_with_the_same_head() {
        let (replay, sent) = Replay::record(rpc(b"\0\0\0\0\x02hi"));
        assert!(replay.again().is_none(), "nothing sent yet");
        let sent = sent.into_body().collect().await.unwrap().to_bytes();
        let again = replay.again().expect("the body ended");
        assert_eq!(again.method(), Method::POST);
        assert_eq!(again.uri(), "/grpc.health.v1.Health/Check");
        assert_eq!(again.headers()["grpc-timeout"], "100m");
        assert_eq!(again.extensions().get::<u8>(), Some(&7));
        let replayed = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(replayed, sent);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayed() {
        static BIG: [u8; MAX_RECORDED + 1] = [0; MAX_RECORDED + 1];
        let (replay, sent) = Replay::record(rpc(&BIG));
        sent.into_body().collect().await.unwrap();
        assert!(replay.again().is_none());
    }
}
