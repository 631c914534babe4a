//! When a request stops counting as pending: the [`PendingGuard`] and the [`Completion`] hook.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::endpoint::{Endpoint, Load};
use crate::metrics::RequestOutcome;

/// Counts one request as pending on its endpoint until dropped.
///
/// The balancer creates one when it dispatches a request (the pending count
/// rises, so concurrent picks see it at once) and hands it, with the response,
/// to the [`Completion`]. Dropping it lowers the count, so a cancelled request
/// future leaves no phantom load behind. The guard also keeps the endpoint,
/// and with it the endpoint's service, alive: an endpoint that discovery
/// removed closes its connections only after its last guarded stream ends.
///
/// A guard dropped without [`record_failure`](Self::record_failure) counts
/// its request as a success, which ends the endpoint's run of failures (see
/// [`Builder::failure_accrual`](super::Builder::failure_accrual)).
pub struct PendingGuard {
    endpoint: Arc<dyn AsLoad>,
    /// How the request ended ([`RequestOutcome`] as `u8`); the first failure recorded wins.
    outcome: AtomicU8,
}

/// Decides when a dispatched request stops counting as pending.
///
/// The RTT is measured from dispatch to the response (the endpoint service's
/// future resolving); the pending count is held for as long as the
/// [`PendingGuard`] lives. [`CompleteOnResponse`], the default, drops it with
/// the response. For a streaming response (a gRPC server stream, a large HTTP
/// body), implement this trait to move the guard into the response body and
/// drop it when the stream ends, so that an endpoint busy with long streams
/// looks busy:
///
/// ```
/// use headless_lb::balance::{Completion, PendingGuard};
///
/// /// A body that keeps its request pending until it is finished.
/// struct Tracked<B> {
///     body: B,
///     // Take and drop this when the body reports its end of stream.
///     guard: Option<PendingGuard>,
/// }
///
/// #[derive(Clone)]
/// struct CompleteOnBodyEnd;
///
/// impl<B> Completion<http::Response<B>> for CompleteOnBodyEnd {
///     type Output = http::Response<Tracked<B>>;
///
///     fn complete(&self, rsp: http::Response<B>, guard: PendingGuard) -> Self::Output {
///         rsp.map(|body| Tracked { body, guard: Some(guard) })
///     }
/// }
/// ```
///
/// This is tower's `TrackCompletion`, with the balancer's guard in place of
/// `PeakEwma`'s handle.
pub trait Completion<Rsp>: Clone + Send + Sync + 'static {
    /// What the balancer's response future yields.
    type Output;

    /// Attaches `guard` to `response`, or drops it.
    fn complete(&self, response: Rsp, guard: PendingGuard) -> Self::Output;
}

/// The default [`Completion`]: a request stops being pending when its response arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompleteOnResponse;

/// The parts of an endpoint a guard touches, without its service type.
pub(crate) trait AsLoad: Send + Sync + 'static {
    fn addr(&self) -> SocketAddr;
    fn load(&self) -> &Load;
    /// Takes the endpoint out of picks until the background task reconnects it.
    fn mark_unhealthy(&self);
}

// ===== impl PendingGuard =====

impl PendingGuard {
    /// Raises `endpoint`'s pending count until the guard is dropped.
    pub(crate) fn new<S: Send + Sync + 'static>(endpoint: Arc<Endpoint<S>>) -> Self {
        endpoint.load.pending.fetch_add(1, Ordering::Relaxed);
        Self {
            endpoint,
            outcome: AtomicU8::new(RequestOutcome::Ok as u8),
        }
    }

    pub(crate) fn load(&self) -> &Load {
        self.endpoint.load()
    }

    /// The address of the endpoint the request went to.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    /// Counts the request as failed by its endpoint, in
    /// [`EndpointStats::failures`](super::EndpointStats::failures).
    ///
    /// For failures the balancer cannot see from the response future alone:
    /// a response stream that breaks midway, or an application-level "not
    /// available" in a status the [`Completion`] inspects (gRPC's
    /// `UNAVAILABLE`, which may arrive in trailers). A request counts once,
    /// however often this is called. After
    /// [`failure_accrual`](super::Builder::failure_accrual) failed requests
    /// in a row, the endpoint is taken out of picks for a backoff.
    pub fn record_failure(&self) {
        self.fail(RequestOutcome::Failed);
    }

    /// Counts the request as failed because it was never sent (its
    /// endpoint's connection failed), like [`record_failure`](Self::record_failure).
    pub(crate) fn record_not_sent(&self) {
        self.fail(RequestOutcome::NotSent);
    }

    fn fail(&self, outcome: RequestOutcome) {
        if self.first_failure(outcome) && self.load().record_failure() {
            self.endpoint.mark_unhealthy();
        }
    }

    /// Records `outcome` unless a failure was recorded already; true if it was the first.
    fn first_failure(&self, outcome: RequestOutcome) -> bool {
        self.outcome
            .compare_exchange(
                RequestOutcome::Ok as u8,
                outcome as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Counts the request as failed in the stats, but neither extends nor
    /// ends the endpoint's run of failures: the caller gave up on it, which
    /// says as much about the caller's deadline (or a hedged request that
    /// won elsewhere) as about the endpoint.
    pub(crate) fn record_abandoned(&self) {
        if self.first_failure(RequestOutcome::TimedOut) {
            self.load().failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let load = self.endpoint.load();
        load.pending.fetch_sub(1, Ordering::Relaxed);
        let outcome = RequestOutcome::from_u8(*self.outcome.get_mut());
        if outcome == RequestOutcome::Ok {
            load.record_success();
        }
        load.metrics.request_done(outcome);
    }
}

impl fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingGuard")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

// ===== impl CompleteOnResponse =====

impl<Rsp> Completion<Rsp> for CompleteOnResponse {
    type Output = Rsp;

    fn complete(&self, response: Rsp, _guard: PendingGuard) -> Rsp {
        response
    }
}

// ===== impl Endpoint =====

impl<S: Send + Sync + 'static> AsLoad for Endpoint<S> {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn load(&self) -> &Load {
        &self.load
    }

    fn mark_unhealthy(&self) {
        Endpoint::mark_unhealthy(self);
    }
}
