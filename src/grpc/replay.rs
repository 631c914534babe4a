//! Sending an RPC again that a pod refused unprocessed after its stream had started sending.
//!
//! A pod that shuts down gracefully sends GOAWAY; RFC 9113 §6.8 guarantees
//! that streams above the GOAWAY's last stream id were not processed. The
//! HTTP endpoint hands such a request back whenever its body is untouched
//! (`http/replay.rs`), but h2 starts reading a gRPC request's body as soon as
//! the stream opens, so the body is gone by the time the refusal arrives.
//! The channel therefore records what the body sends (the frames' `Bytes`,
//! shared, not copied), up to [`MAX_RECORDED`] bytes, and when the refusal
//! comes and the whole body was recorded, sends the RPC once more with the
//! recorded bytes and the head the endpoint handed back with the refusal
//! (the endpoint keeps a copy of every HTTP/2 request's head anyway).
//!
//! ```text
//!  Channel::call
//!        body ──► Recorder ──► h2                    refused unprocessed,
//!                    │  (frames shared)              body complete and small
//!                    └─ Recording { frames, complete } ──┬──► head + recorded body ──► balancer
//!  endpoint: RefusedUnprocessed { head } ───────────────┘
//! ```
//!
//! An RPC that may be hedged also copies its head here, since its hedge is
//! sent while the first copy is still running.

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

/// What an RPC's body sent, shared with the [`Recorder`]; and, for an RPC
/// that may be hedged, a copy of its head.
///
/// Only a hedge needs the head copied up front: it is sent while the first
/// copy is still running. A refusal hands the head back with its error
/// ([`RefusedUnprocessed::take_head`](crate::http::RefusedUnprocessed::take_head)),
/// so the RPCs that are not hedged (nearly all) copy no head here.
pub(crate) struct Replay {
    head: Option<Head>,
    recording: Arc<Mutex<Recording>>,
}

/// A request's head, copied.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

#[derive(Default)]
struct Recording {
    /// The data frames as sent: `Bytes` share the sender's buffers, so
    /// recording copies no bytes. The first apart, so that a unary RPC's
    /// single frame allocates nothing.
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    /// Bytes in `frames`.
    len: usize,
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
    /// Wraps `request`'s body in a [`Recorder`]; with `keep_head`, also
    /// copies its head (for a hedge, see [`again`](Self::again)).
    pub(crate) fn record(
        request: http::Request<tonic::body::Body>,
        keep_head: bool,
    ) -> (Replay, http::Request<tonic::body::Body>) {
        let (parts, body) = request.into_parts();
        let recording = Arc::new(Mutex::new(Recording::default()));
        let head = keep_head.then(|| Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        });
        let replay = Replay {
            head,
            recording: recording.clone(),
        };
        let body = tonic::body::Body::new(Recorder {
            inner: body,
            recording,
        });
        (replay, http::Request::from_parts(parts, body))
    }

    /// The RPC again, with the head copied by [`record`](Self::record) and
    /// the body it sent, if the body was recorded whole.
    pub(crate) fn again(&self) -> Option<http::Request<tonic::body::Body>> {
        let head = self.head.as_ref()?;
        let mut request = http::Request::new(());
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        *request.extensions_mut() = head.extensions.clone();
        self.again_with(request)
    }

    /// The RPC again after `error` (a refusal, see
    /// [`refused_unprocessed`]): the head the endpoint handed back, or the
    /// one copied by [`record`](Self::record), with the recorded body.
    pub(crate) fn again_after(
        &self,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<http::Request<tonic::body::Body>> {
        let handed_back = crate::error::chain(error)
            .find_map(|e| e.downcast_ref::<crate::http::RefusedUnprocessed>())
            .and_then(|refused| refused.take_head());
        match handed_back {
            Some(head) => self.again_with(head),
            None => self.again(),
        }
    }

    /// `head` with the body the RPC sent, if the body was recorded whole.
    fn again_with(&self, head: http::Request<()>) -> Option<http::Request<tonic::body::Body>> {
        let data = {
            let recording = crate::sync::lock(&self.recording);
            if !recording.complete || recording.spoiled {
                return None;
            }
            match (&recording.first, recording.rest.as_slice()) {
                (None, _) => Bytes::new(),
                (Some(one), []) => one.clone(),
                (Some(first), rest) => {
                    let mut all = BytesMut::with_capacity(recording.len);
                    for frame in std::iter::once(first).chain(rest) {
                        all.extend_from_slice(frame);
                    }
                    all.freeze()
                }
            }
        };
        let body = tonic::body::Body::new(http_body_util::Full::new(data));
        Some(head.map(|()| body))
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
                    Some(data) if recording.len + data.len() <= MAX_RECORDED => {
                        recording.len += data.len();
                        match recording.first {
                            None => recording.first = Some(data.clone()),
                            Some(_) => recording.rest.push(data.clone()),
                        }
                    }
                    _ => {
                        recording.spoiled = true;
                        recording.first = None;
                        recording.rest = Vec::new();
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
        let (replay, sent) = Replay::record(rpc(b"\0\0\0\0\x02hi"), true);
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
    async fn a_body_of_several_frames_is_replayed_whole_after_a_refusal() {
        let frames = [&b"\0\0\0\0"[..], b"\x03", b"abc"]
            .map(|f| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(f))));
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut request = http::Request::post("/x.Y/Z")
            .body(tonic::body::Body::new(body))
            .unwrap();
        request.extensions_mut().insert(7u8);
        // Without hedging no head is copied: it comes back with the refusal.
        let (replay, sent) = Replay::record(request, false);
        let head = http::Request::post("/x.Y/Z").body(()).unwrap();
        let sent = sent.into_body().collect().await.unwrap().to_bytes();
        assert!(replay.again().is_none(), "no head was kept");
        let again = replay.again_with(head).expect("the body ended");
        assert_eq!(again.uri(), "/x.Y/Z");
        let replayed = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&replayed[..], b"\0\0\0\0\x03abc");
        assert_eq!(replayed, sent);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayed() {
        static BIG: [u8; MAX_RECORDED + 1] = [0; MAX_RECORDED + 1];
        let (replay, sent) = Replay::record(rpc(&BIG), true);
        sent.into_body().collect().await.unwrap();
        assert!(replay.again().is_none());
    }
}
