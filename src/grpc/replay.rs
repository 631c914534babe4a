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
//! A refusal can also come while the body is still being sent (a client
//! stream, or a unary RPC between its message and its end). hyper then
//! drops the body unfinished; the [`Recorder`] leaves the caller's body,
//! unread from where it stopped, in the recording, and the RPC goes again
//! with the recorded frames followed by the rest of the caller's body. The
//! endpoint hands the head back only once hyper has dropped the body
//! (`http/replay.rs`), so the rest is in place by then.
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
    /// The caller's body from where it stopped, left by a [`Recorder`]
    /// dropped before the body ended (and before it spoiled).
    unread: Option<tonic::body::Body>,
}

/// The request body sent in place of the caller's: the same frames, copied
/// into the [`Replay`] as they go.
pub(crate) struct Recorder {
    inner: tonic::body::Body,
    recording: Arc<Mutex<Recording>>,
}

/// A replayed body that was refused unfinished: the frames sent before the
/// refusal, as one, then the rest of the caller's body.
struct Resumed {
    sent: Option<Bytes>,
    rest: tonic::body::Body,
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
    /// the body it sent, if the body was recorded whole. (A hedge: the first
    /// copy may still be sending, so an unfinished body is not taken.)
    pub(crate) fn again(&self) -> Option<http::Request<tonic::body::Body>> {
        let head = self.head.as_ref()?.to_request();
        self.again_with(head, false)
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
            Some(head) => self.again_with(head, true),
            None => {
                let head = self.head.as_ref()?.to_request();
                self.again_with(head, true)
            }
        }
    }

    /// `head` with the body the RPC sent, if the body was recorded whole;
    /// with `resume`, also when the recorder was dropped unfinished: the
    /// recorded frames and then the rest of the caller's body.
    fn again_with(
        &self,
        head: http::Request<()>,
        resume: bool,
    ) -> Option<http::Request<tonic::body::Body>> {
        let (data, rest) = {
            let mut recording = crate::sync::lock(&self.recording);
            if recording.spoiled {
                return None;
            }
            let rest = match recording.complete {
                true => None,
                false if resume => Some(recording.unread.take()?),
                false => return None,
            };
            let data = match (&recording.first, recording.rest.as_slice()) {
                (None, _) => Bytes::new(),
                (Some(one), []) => one.clone(),
                (Some(first), rest) => {
                    let mut all = BytesMut::with_capacity(recording.len);
                    for frame in std::iter::once(first).chain(rest) {
                        all.extend_from_slice(frame);
                    }
                    all.freeze()
                }
            };
            (data, rest)
        };
        let body = match rest {
            None => tonic::body::Body::new(http_body_util::Full::new(data)),
            Some(rest) => tonic::body::Body::new(Resumed {
                sent: (!data.is_empty()).then_some(data),
                rest,
            }),
        };
        Some(head.map(|()| body))
    }
}

// ===== impl Head =====

impl Head {
    fn to_request(&self) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
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

impl Drop for Recorder {
    fn drop(&mut self) {
        let mut recording = crate::sync::lock(&self.recording);
        if !recording.complete && !recording.spoiled {
            recording.unread = Some(std::mem::replace(
                &mut self.inner,
                tonic::body::Body::empty(),
            ));
        }
    }
}

// ===== impl Resumed =====

impl Body for Resumed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        match this.sent.take() {
            Some(sent) => Poll::Ready(Some(Ok(Frame::data(sent)))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let sent = self.sent.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + sent);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + sent);
        }
        hint
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
        let again = replay.again_with(head, true).expect("the body ended");
        assert_eq!(again.uri(), "/x.Y/Z");
        let replayed = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&replayed[..], b"\0\0\0\0\x03abc");
        assert_eq!(replayed, sent);
    }

    /// Refused between the body's frames: hyper drops the body unfinished;
    /// the replay sends what was sent and then the rest of the caller's.
    #[tokio::test]
    async fn a_body_refused_unfinished_is_replayed_with_its_rest() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, tonic::Status>>();
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x03ab"))))
            .unwrap();
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(rx));
        let (replay, sent) =
            Replay::record(http::Request::post("/x.Y/Z").body(body).unwrap(), true);
        let mut sent = sent.into_body();
        let first = sent.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"\0\0\0\0\x03ab");
        assert!(replay.again().is_none(), "a hedge needs the whole body");
        drop(sent);
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"c"))))
            .unwrap();
        drop(tx);
        let head = http::Request::post("/x.Y/Z").body(()).unwrap();
        let again = replay.again_with(head, true).expect("the rest was left");
        let replayed = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&replayed[..], b"\0\0\0\0\x03abc");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayed() {
        static BIG: [u8; MAX_RECORDED + 1] = [0; MAX_RECORDED + 1];
        let (replay, sent) = Replay::record(rpc(&BIG), true);
        sent.into_body().collect().await.unwrap();
        assert!(replay.again().is_none());
    }
}
