//! When an HTTP/1.1 request that failed may go to another pod.
//!
//! A pooled keep-alive connection can be closed by the pod just as the next
//! request is written on it: the pod's idle timeout, or a graceful shutdown
//! (`Connection: close` on its last response, then close). The request then
//! fails with no response, and the client cannot tell whether the pod read it.
//! The rule, RFC 9110 §9.2.2 as Go's `net/http` applies it
//! (`Transport.roundTrip` / `shouldRetryRequest`):
//!
//! - never written (hyper hands the request back): another pod, any method.
//!   hyper-util's legacy client retries exactly these (`retry_canceled_requests`);
//! - written on a **reused** connection, failed **before any response byte**,
//!   method **idempotent** (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and **no
//!   body** to replay: another pod. Sending it twice has the effect of once;
//! - anything else (a POST, a request with a body, a fresh connection, a
//!   response begun): returned to the caller, never replayed. A request that
//!   fails on a fresh connection may be what made the pod fail.
//!
//! To replay, the endpoint must still hold the request after hyper took it:
//! it keeps a copy of the head, and sends [`SendBody::Empty`] in place of a
//! body that is already at its end, keeping the caller's body (untouched)
//! for the retry. [`FirstByte`] says whether any byte arrived since the
//! request was handed over.
//!
//! HTTP/2 has a stronger rule, because the server says what it did not
//! process (RFC 9113 §6.8, §8.7): a stream that h2 would not open after the
//! server's GOAWAY, a stream above the GOAWAY's last stream id, or one reset
//! with `REFUSED_STREAM` goes to another pod, any method. hyper reports these
//! without the request, so every HTTP/2 request keeps a copy of its head
//! ([`KeptHead`]) and sends its body through [`GiveBack`], which hands the
//! body back if it is dropped unread. A body that h2 began to read is not
//! replayed (it is gone); h2 reads none before the stream opens.
//!
//! hyper may report a refusal before it drops the body it never read: when h2
//! will not open the stream, hyper's dispatch (`proto/h2/client.rs`) answers
//! the caller with the error first and drops the body after. So
//! [`KeptHead::restore`] waits for the [`GiveBack`] to be dropped (at most
//! [`RELEASE_WAIT`]) before it decides whether the body came back; deciding
//! earlier would take a body never sent for one that was.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::{Extensions, HeaderMap, Method, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

/// The body an HTTP/1.1 connection sends: the caller's, or nothing in place
/// of a caller's body already at its end (kept for a replay).
pub(crate) enum SendBody<B> {
    /// The caller's body, sent as is.
    Body(B),
    /// No frames; stands in for a body whose `is_end_stream` was true, with
    /// that body's size hint.
    Empty(SizeHint),
}

/// The I/O of an HTTP/1.1 connection, noting the first byte read after a
/// request was handed over.
pub(crate) struct FirstByte<T> {
    io: T,
    quiet: Arc<AtomicBool>,
}

/// Reads of at most this many bytes while watching for the first byte, which
/// go through a buffer of this size on the stack (copying is the price of
/// counting bytes without `unsafe`); the reads after it go straight through.
const WATCH_READ: usize = 4096;

/// Whether a request with this method may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

// ===== impl SendBody =====

impl<B: Body + Unpin> Body for SendBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.get_mut() {
            SendBody::Body(body) => Pin::new(body).poll_frame(cx),
            SendBody::Empty(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SendBody::Body(body) => body.is_end_stream(),
            SendBody::Empty(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SendBody::Body(body) => body.size_hint(),
            SendBody::Empty(hint) => *hint,
        }
    }
}

// ===== impl FirstByte =====

impl<T> FirstByte<T> {
    /// Wraps `io`; `quiet` is set by the sender when it hands a request
    /// over, and cleared here when a byte arrives.
    pub(crate) fn new(io: T, quiet: Arc<AtomicBool>) -> Self {
        Self { io, quiet }
    }
}

impl<T: Read + Unpin> Read for FirstByte<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.quiet.load(Ordering::Acquire) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Uninitialized, not zeroed: zeroing 4 KiB on every watched read
        // cost more than the read's copy.
        let mut scratch = [const { MaybeUninit::<u8>::uninit() }; WATCH_READ];
        let len = buf.remaining().min(WATCH_READ);
        let mut read = ReadBuf::uninit(&mut scratch[..len]);
        match Pin::new(&mut this.io).poll_read(cx, read.unfilled()) {
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                if filled.has_remaining() {
                    this.quiet.store(false, Ordering::Release);
                }
                buf.put_slice(filled);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: Write + Unpin> Write for FirstByte<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The longest [`KeptHead::restore`] waits for hyper to drop a refused
/// request's body. hyper drops it right after it reports the error, or when
/// the reset stream's body pipe next runs; the bound only keeps a body held
/// elsewhere (a per-pod layer that kept it) from holding up the error.
pub(crate) const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// The head of a request, copied before it was sent.
pub(crate) struct KeptHead<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    slot: Arc<Slot<B>>,
}

/// Where a [`GiveBack`] leaves its body when it is dropped, and the signal
/// that it was.
struct Slot<B> {
    returned: Mutex<Returned<B>>,
    released: tokio::sync::Notify,
}

/// What became of a [`GiveBack`]'s body.
enum Returned<B> {
    /// The `GiveBack` is alive: hyper may still send the body.
    Out,
    /// Dropped before anyone polled it: the body, unread.
    Unread(B),
    /// Dropped after it was polled (sent, at least in part), or restored.
    Gone,
}

/// What [`KeptHead::restore`] rebuilt.
pub(crate) enum Restored<B> {
    /// The whole request: its body came back unread.
    Whole(http::Request<B>),
    /// The head alone: the body was read (sent, at least in part).
    Head(http::Request<()>),
}

/// A request body that goes back to its [`KeptHead`] head if it is dropped
/// before anyone polled it.
pub(crate) struct GiveBack<B> {
    body: Option<B>,
    polled: bool,
    slot: Arc<Slot<B>>,
}

// ===== impl KeptHead =====

impl<B> KeptHead<B> {
    /// Copies `request`'s head and wraps its body, returning the request to
    /// send.
    ///
    /// The extensions move into the kept head instead of being copied: on
    /// HTTP/2 hyper reads one request extension, its `Protocol` (extended
    /// CONNECT), and h2 clears the rest before it opens the stream, so what
    /// goes to hyper is only ever dropped. A request that carries a
    /// `Protocol` keeps a copy and sends the original. (A copy of tonic's
    /// extensions is three allocations per RPC.)
    pub(crate) fn take(request: http::Request<B>) -> (KeptHead<B>, http::Request<GiveBack<B>>) {
        let (mut parts, body) = request.into_parts();
        let extensions = if parts.extensions.get::<hyper::ext::Protocol>().is_some()
            || parts.extensions.get::<h2::ext::Protocol>().is_some()
        {
            parts.extensions.clone()
        } else {
            std::mem::take(&mut parts.extensions)
        };
        let slot = Arc::new(Slot {
            returned: Mutex::new(Returned::Out),
            released: tokio::sync::Notify::new(),
        });
        let saved = KeptHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions,
            slot: slot.clone(),
        };
        let body = GiveBack {
            body: Some(body),
            polled: false,
            slot,
        };
        (saved, http::Request::from_parts(parts, body))
    }

    /// The request as the caller made it, if its body came back unread;
    /// else its head alone, for a caller that kept the body. Waits first
    /// for the [`GiveBack`] to be dropped, at most [`RELEASE_WAIT`] (see the
    /// module doc); a body still held after that counts as read.
    pub(crate) async fn restore(self) -> Restored<B> {
        if !self.released() {
            let released = async {
                loop {
                    let dropped = self.slot.released.notified();
                    if self.released() {
                        return;
                    }
                    dropped.await;
                }
            };
            // On the deadline the body counts as read: below.
            let _ = tokio::time::timeout(RELEASE_WAIT, released).await;
        }
        let returned =
            std::mem::replace(&mut *crate::sync::lock(&self.slot.returned), Returned::Gone);
        match returned {
            Returned::Unread(body) => Restored::Whole(self.with_body(body)),
            Returned::Out | Returned::Gone => Restored::Head(self.with_body(())),
        }
    }

    /// The [`GiveBack`] was dropped.
    fn released(&self) -> bool {
        !matches!(*crate::sync::lock(&self.slot.returned), Returned::Out)
    }

    fn with_body<T>(self, body: T) -> http::Request<T> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}

/// True when `error` says the server will not have processed the request:
/// h2 refused to open the stream after a GOAWAY from the server, the stream
/// was above the GOAWAY's last stream id, or the server reset it with
/// `REFUSED_STREAM`.
pub(crate) fn refused_unprocessed(error: &hyper::Error) -> bool {
    crate::error::chain(error)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        })
}

// ===== impl GiveBack =====

impl<B: Body + Unpin> Body for GiveBack<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for GiveBack<B> {
    fn drop(&mut self) {
        // A read body is dropped before the release is signalled, so that
        // whatever it owns (the gRPC channel's recorder) has let go of the
        // rest of the caller's body by the time the head is restored.
        let returned = match self.body.take() {
            Some(body) if !self.polled => Returned::Unread(body),
            read => {
                drop(read);
                Returned::Gone
            }
        };
        *crate::sync::lock(&self.slot.returned) = returned;
        self.slot.released.notify_one();
    }
}

#[cfg(test)]
mod h2_tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    fn request() -> http::Request<Full<Bytes>> {
        let mut request = http::Request::post("http://web.default.svc.cluster.local/x")
            .header("x-id", "7")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        request.extensions_mut().insert(42u32);
        request
    }

    #[tokio::test]
    async fn an_unread_body_comes_back_with_the_whole_head() {
        let (saved, sent) = KeptHead::take(request());
        drop(sent);
        let Restored::Whole(back) = saved.restore().await else {
            panic!("the body was never read");
        };
        assert_eq!(back.method(), Method::POST);
        assert_eq!(back.uri(), "http://web.default.svc.cluster.local/x");
        assert_eq!(back.headers()["x-id"], "7");
        assert_eq!(back.extensions().get::<u32>(), Some(&42));
        let body = back.into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "payload");
    }

    /// h2 drops every request extension but the extended-CONNECT protocol,
    /// so the extensions move to the kept head instead of being copied.
    #[tokio::test]
    async fn the_extensions_move_to_the_kept_head_unless_hyper_reads_one() {
        let (saved, sent) = KeptHead::take(request());
        assert!(sent.extensions().is_empty(), "moved, not copied");
        drop(sent);
        let Restored::Whole(back) = saved.restore().await else {
            panic!("the body was never read");
        };
        assert_eq!(back.extensions().get::<u32>(), Some(&42));

        let mut connect = request();
        *connect.method_mut() = Method::CONNECT;
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let (saved, sent) = KeptHead::take(connect);
        let protocol = |e: &http::Extensions| {
            e.get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned())
        };
        assert_eq!(protocol(sent.extensions()).as_deref(), Some("websocket"));
        assert_eq!(sent.extensions().get::<u32>(), Some(&42));
        drop(sent);
        let Restored::Whole(back) = saved.restore().await else {
            panic!("the body was never read");
        };
        assert_eq!(protocol(back.extensions()).as_deref(), Some("websocket"));
    }

    #[tokio::test]
    async fn a_body_that_was_read_does_not_come_back() {
        let (saved, sent) = KeptHead::take(request());
        let mut body = sent.into_body();
        assert!(body.frame().await.is_some());
        drop(body);
        assert!(matches!(saved.restore().await, Restored::Head(_)));
    }

    /// hyper answers "refused" before it drops the body it never sent; the
    /// restore waits for the drop instead of taking the body for read.
    #[tokio::test(start_paused = true)]
    async fn a_restore_begun_before_hyper_drops_the_unread_body_waits_for_it() {
        let (saved, sent) = KeptHead::take(request());
        let restoring = tokio::spawn(saved.restore());
        tokio::time::sleep(RELEASE_WAIT / 2).await;
        assert!(!restoring.is_finished(), "the body is still out");
        drop(sent);
        let Ok(Restored::Whole(back)) = restoring.await else {
            panic!("the body was never read");
        };
        let body = back.into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "payload");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_held_past_the_wait_counts_as_read() {
        let (saved, sent) = KeptHead::take(request());
        let started = tokio::time::Instant::now();
        assert!(matches!(saved.restore().await, Restored::Head(_)));
        assert_eq!(started.elapsed(), RELEASE_WAIT);
        // Dropped late, the body goes nowhere (and nothing panics).
        drop(sent);
    }

    #[test]
    fn the_wrapper_reports_what_the_body_does() {
        let (_saved, sent) = KeptHead::take(request());
        assert!(!sent.body().is_end_stream());
        assert_eq!(sent.body().size_hint().exact(), Some(7));
        let empty = http::Request::new(Full::new(Bytes::new()));
        let (_saved, sent) = KeptHead::take(empty);
        assert!(sent.body().is_end_stream());
    }
}
