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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use http::Method;
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
        let mut scratch = [0u8; WATCH_READ];
        let len = buf.remaining().min(WATCH_READ);
        let mut read = ReadBuf::new(&mut scratch[..len]);
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
