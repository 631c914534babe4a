//! The request path: pick, wait, send, retry what was never sent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tower::{BoxError, Service};

use super::builder::Config;
use super::completion::{Completion, PendingGuard};
use super::endpoint::{Endpoint, Load};
use super::handle::Balancer;
use super::snapshot::Shared;
use crate::error::BalanceError;
use crate::not_sent::NotSent;
use crate::sync::lock;

/// Which endpoints a request may go to.
pub(crate) enum Route<S> {
    /// Any endpoint P2C picks: every request that will not be hedged, until
    /// an attempt of it fails unsent; from then on it is
    /// [`Tracked`](Route::Tracked), so that its retries avoid the endpoints
    /// it tried (see [`dispatch`]).
    Any,
    /// Every endpoint the request is sent to is recorded in the [`Tried`],
    /// shared with its hedge if it may be hedged; a retry goes to the others
    /// first (see [`dispatch`]).
    Tracked(Arc<Tried>),
    /// A hedge: first to `first` (picked when the hedge was decided), then,
    /// if that was never sent, to endpoints outside [`Tried`] only. It never
    /// waits for an endpoint: a hedge that finds no other pod is dropped,
    /// and the request it copies goes on.
    Hedge {
        tried: Arc<Tried>,
        first: Option<Arc<Endpoint<S>>>,
    },
}

/// The pods the copies of one request went to, shared by the request and
/// its hedge so that neither is sent where the other already is.
///
/// A lock, not atomics: it is touched once per attempt of a hedged request
/// (a handful per request), never by requests without hedging.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    addrs: Mutex<Vec<SocketAddr>>,
    /// One copy's answer was taken: a copy still running lost the race.
    settled: AtomicBool,
}

// ===== impl Route =====

impl<S> Route<S> {
    /// The endpoint of the request's first attempt, recorded as tried;
    /// `None` when nothing is pickable now. A tracked request prefers the
    /// endpoints outside [`Tried`] (where its hedge is not), falling back to
    /// any, as an untracked request would.
    fn first(&mut self, shared: &Shared<S>, now: Instant) -> Option<Arc<Endpoint<S>>> {
        match self {
            Route::Any => shared.pick(now),
            Route::Tracked(tried) => {
                let endpoint = tried.pick(shared, now).or_else(|| shared.pick(now))?;
                tried.add(endpoint.addr);
                Some(endpoint)
            }
            Route::Hedge { tried, first } => {
                let endpoint = first.take().or_else(|| tried.pick(shared, now))?;
                tried.add(endpoint.addr);
                Some(endpoint)
            }
        }
    }

    /// An attempt on `addr` was never sent (or, for the gRPC channel's
    /// replay, refused unprocessed): from here on the request keeps track of
    /// the endpoints it tried. (A tracked request and a hedge recorded
    /// `addr` when they picked it.)
    pub(crate) fn not_sent_on(&mut self, addr: SocketAddr) {
        if let Route::Any = self {
            let tried = Tried::default();
            tried.add(addr);
            *self = Route::Tracked(Arc::new(tried));
        }
    }

    /// A retry's endpoint among those the request has not tried, recorded
    /// as tried; `None` when none is pickable now.
    fn untried(&mut self, shared: &Shared<S>, now: Instant) -> Option<Arc<Endpoint<S>>> {
        match self {
            // Not after `not_sent_on`; as `first` would, for completeness.
            Route::Any => shared.pick(now),
            Route::Tracked(tried) | Route::Hedge { tried, .. } => {
                let endpoint = tried.pick(shared, now)?;
                tried.add(endpoint.addr);
                Some(endpoint)
            }
        }
    }

    /// A retry's endpoint, whether the request tried it or not: P2C over
    /// whatever is pickable now. Never for a hedge, which goes to other
    /// pods only.
    fn again(&mut self, shared: &Shared<S>, now: Instant) -> Option<Arc<Endpoint<S>>> {
        match self {
            Route::Any => shared.pick(now),
            Route::Tracked(tried) => {
                let endpoint = shared.pick(now)?;
                tried.add(endpoint.addr);
                Some(endpoint)
            }
            Route::Hedge { .. } => None,
        }
    }

    /// True when the snapshot lists an endpoint the request has not tried,
    /// pickable now or not (connecting, backing off).
    fn lists_untried(&self, shared: &Shared<S>) -> bool {
        match self {
            Route::Any => shared.lists_other(&[]),
            Route::Tracked(tried) | Route::Hedge { tried, .. } => tried.lists_others(shared),
        }
    }

    /// A hedge does not wait for endpoints: its request is still running.
    fn may_wait(&self) -> bool {
        !matches!(self, Route::Hedge { .. })
    }

    /// The pods of a hedged request's copies, if it may be hedged.
    fn tried(&self) -> Option<&Tried> {
        match self {
            Route::Any => None,
            Route::Tracked(tried) | Route::Hedge { tried, .. } => Some(tried),
        }
    }
}

// ===== impl Tried =====

impl Tried {
    /// Records that a copy of the request went to `addr`.
    pub(crate) fn add(&self, addr: SocketAddr) {
        let mut tried = lock(&self.addrs);
        if !tried.contains(&addr) {
            tried.push(addr);
        }
    }

    /// P2C among the endpoints no copy of the request went to.
    pub(crate) fn pick<S>(&self, shared: &Shared<S>, now: Instant) -> Option<Arc<Endpoint<S>>> {
        shared.pick_avoiding(&lock(&self.addrs), now)
    }

    /// The request has its answer from one copy; the other, dropped next,
    /// lost the race.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    /// True once [`settle`](Self::settle) was called.
    fn settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// True when the snapshot lists an endpoint no copy of the request went
    /// to, in any state.
    fn lists_others<S>(&self, shared: &Shared<S>) -> bool {
        shared.lists_other(&lock(&self.addrs))
    }
}

/// Serves one request through `balancer`.
///
/// ```text
///  pick ──none──► wait for a new snapshot (until the deadline) ──► NoEndpoints
///   │                                                 (never tried anywhere)
///   ▼
///  ready() ──err──┐
///   │             ├─► mark unhealthy ──► retry (never sent: safe anywhere):
///   ▼             │     1. an endpoint this request has not tried, pickable
///  call() ─NotSent┘        now: as many as there are, until the deadline;
///   │                   2. else wait for the next snapshot (at most until
///   │                      the deadline), then 1., or an endpoint it tried
///   │                      (at most max_retries of these in all);
///   │                   nothing left ──► Endpoint { not_sent: true } (the last)
///   │ ──other err──► Endpoint { not_sent: false } (never retried)
///   ▼
///  observe RTT, hand the response and the pending guard to the Completion
/// ```
///
/// The deadline is `failfast_timeout` after the request's first wait for an
/// endpoint or its first attempt that failed unsent, whichever came first:
/// one budget for all its waits and retries. A retry on an endpoint the
/// request already tried waits for a new snapshot (the background task's
/// next reconnect or a discovery change), so that none loops on a dead pod;
/// a request goes back to one only when it has no other, e.g. a service of
/// one pod whose connection closed.
///
/// A plain `fn` returning an `async move` block, not an `async fn`: an
/// `async fn` stores its arguments twice in its future (as arguments and as
/// the locals they are moved into), and every request's future is moved
/// and boxed whole. For the same reason the rare waits (for an endpoint,
/// for a retry's endpoint) are boxed where they happen, instead of taking
/// room in every request's future.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice (see above)"
)]
pub(crate) fn dispatch<Req, S, C>(
    balancer: Balancer<Req, S, C>,
    mut request: Req,
    mut route: Route<S>,
) -> impl Future<Output = Result<C::Output, BalanceError>> + Send + 'static
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    C: Completion<S::Response>,
    C::Output: Send + 'static,
{
    async move {
        let config = &balancer.inner.config;
        let mut deadline = None;
        // The error of the last attempt, which was never sent; `None` on the first.
        let mut unsent: Option<BalanceError> = None;
        // Retries on endpoints the request had already tried (≤ max_retries).
        let mut repeats = 0;
        loop {
            // When the endpoint was picked, if it was picked without waiting:
            // the request's send time too when the endpoint is ready at once
            // (one clock read for both; they are nanoseconds apart).
            let mut picked_at = None;
            let endpoint = match unsent.take() {
                None => {
                    let now = Instant::now();
                    match route.first(&balancer.inner.shared, now) {
                        Some(endpoint) => {
                            picked_at = Some(now);
                            endpoint
                        }
                        // Picked after a wait: its send time is read after it.
                        None if route.may_wait() => {
                            Box::pin(wait_for_endpoint(&balancer, &mut deadline, &mut route))
                                .await?
                        }
                        None => return Err(no_other_endpoint(&balancer)),
                    }
                }
                Some(error) => {
                    let retry = retry_endpoint(&balancer, &mut route, &mut deadline, &mut repeats);
                    match Box::pin(retry).await {
                        Some(endpoint) => {
                            config.metrics.retry();
                            tracing::debug!(endpoint = %endpoint.addr, after = %error, repeats, "retrying a request that was never sent");
                            endpoint
                        }
                        None => return Err(error),
                    }
                }
            };
            let addr = endpoint.addr;
            crate::metrics::record_endpoint(addr);
            // Pending from the pick on, so that concurrent picks see this one.
            let guard = PendingGuard::new(endpoint.clone());
            let mut service = endpoint.service.clone();

            let mut at_once = true;
            let ready = std::future::poll_fn(|cx| {
                let ready = service.poll_ready(cx);
                at_once &= ready.is_ready();
                ready
            });
            if let Err(error) = ready.await {
                let error = error.into();
                unsent_failure(&balancer, &endpoint, &guard, &error);
                route.not_sent_on(addr);
                unsent = Some(endpoint_error(&endpoint, true, error));
                continue;
            }

            endpoint.load.requests.fetch_add(1, Ordering::Relaxed);
            let sent_at = match picked_at {
                Some(picked_at) if at_once => picked_at,
                _ => Instant::now(),
            };
            let waiting = Waiting::start(&endpoint.load, sent_at, route.tried());
            let abandoned = Abandoned {
                guard: &guard,
                sent_at,
                race: route.tried(),
            };
            let result = service.call(request).await;
            // One clock read ends the wait and times the round trip.
            let now = Instant::now();
            std::mem::forget(abandoned);
            let now_ns = endpoint.load.since_epoch(now);
            waiting.end(now_ns);
            match result {
                Ok(response) => {
                    let rtt = now.saturating_duration_since(sent_at);
                    endpoint.load.rtt.observe_at(rtt, now_ns);
                    endpoint.load.metrics.rtt(rtt);
                    return Ok(balancer.completion.complete(response, guard));
                }
                Err(error) => {
                    let error = error.into();
                    let Some(not_sent) = NotSent::<Req>::find(&*error) else {
                        guard.record_failure();
                        if is_broken_connection(&*error) {
                            endpoint_failed(config, addr);
                        }
                        if crate::http::is_peer_timeout(&*error) {
                            // The connection timed out under the request: the pod's
                            // kernel stopped acknowledging (a black-holed IP, a lost
                            // node). Every request on it fails the same way, so stop
                            // picking it now and let the background task reconnect
                            // (each attempt ends at `connect_timeout` with no request
                            // waiting on it), instead of waiting for failure accrual
                            // or sending the next request into a new connect.
                            endpoint.mark_unhealthy();
                        }
                        warn_failure(&balancer, &endpoint, &error, "request failed");
                        return Err(endpoint_error(&endpoint, false, error));
                    };
                    let returned = not_sent.take_request();
                    unsent_failure(&balancer, &endpoint, &guard, &error);
                    let error = endpoint_error(&endpoint, true, error);
                    // A `NotSent` without the request cannot be retried.
                    let Some(again) = returned else {
                        return Err(error);
                    };
                    request = again;
                    route.not_sent_on(addr);
                    unsent = Some(error);
                }
            }
        }
    }
}

/// Counts a request as waiting for its response on its endpoint (see
/// [`Load::waited_ns`]): until [`end`](Self::end) (the response or an error
/// arrived), or until dropped with the request future. Dropped, the request
/// is unanswered (the caller gave up on it), unless it lost a hedge race:
/// see [`Abandoned`].
struct Waiting<'a> {
    load: &'a Load,
    race: Option<&'a Tried>,
}

impl<'a> Waiting<'a> {
    fn start(load: &'a Load, now: Instant, race: Option<&'a Tried>) -> Self {
        load.wait_started(now);
        Self { load, race }
    }

    /// The answer (or an error) arrived at `now_ns` (the endpoint's
    /// [`Load::since_epoch`]).
    fn end(self, now_ns: u64) {
        self.load.wait_answered_at(now_ns);
        std::mem::forget(self);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.race.is_some_and(Tried::settled) {
            self.load.wait_cancelled(Instant::now());
        } else {
            self.load.wait_abandoned();
        }
    }
}

/// Armed while a request is in flight on an endpoint: if the request future
/// is dropped there, the request counts as a failure of the endpoint (never
/// a step towards failure accrual), and a lower bound of its round trip is
/// folded into the RTT estimate: it can raise the estimate, never lower it.
/// Without this a hung endpoint looks healthy and fast as soon as its
/// timed-out requests stop counting as pending.
///
/// - The caller gave up (a client request timeout, a gRPC deadline): the
///   bound is the pod's silence ([`Load::silence_ns`]), at least the
///   request's own wait. The pod answered nothing since the requests given
///   up before this one, so it is that slow now; it is probed again after
///   about as long (see `PeakEwma::observe_silence`).
/// - A hedged copy lost the race (the other copy answered first): the bound
///   is the copy's own wait, a peak like any other. That says only that
///   another pod was faster this once: with a delay near the p95, one
///   request in twenty loses a race on a healthy pod, and reading each as
///   silence would make healthy pods look stalled. Hedging itself covers
///   a stalled pod.
struct Abandoned<'a> {
    guard: &'a PendingGuard,
    sent_at: Instant,
    race: Option<&'a Tried>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        self.guard.record_abandoned();
        let load = self.guard.load();
        let own = now.saturating_duration_since(self.sent_at);
        // Dropped before the `Waiting`, so this request still counts in
        // the silence.
        if self.race.is_some_and(Tried::settled) {
            load.rtt.observe_at_least(own, now);
        } else {
            let silence = std::time::Duration::from_nanos(load.silence_ns(now));
            load.rtt.observe_silence(silence.max(own), now);
        }
        tracing::debug!(endpoint = %self.guard.endpoint(), "request abandoned before its response");
    }
}

/// Waits until a pick succeeds; the deadline is set on the first wait of a
/// request, so that all its waits together last at most `failfast_timeout`.
async fn wait_for_endpoint<Req, S, C>(
    balancer: &Balancer<Req, S, C>,
    deadline: &mut Option<Instant>,
    route: &mut Route<S>,
) -> Result<Arc<Endpoint<S>>, BalanceError> {
    let timeout = balancer.inner.config.failfast_timeout;
    let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
    loop {
        // Register before looking, so that a snapshot published in between wakes us.
        let mut changed = pin!(balancer.inner.shared.changed().notified());
        changed.as_mut().enable();
        if let Some(endpoint) = route.first(&balancer.inner.shared, Instant::now()) {
            return Ok(endpoint);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let config = &balancer.inner.config;
            let last_error = config
                .last_error_source
                .as_ref()
                .and_then(|source| source())
                .or_else(|| balancer.inner.shared.discover_error());
            config.metrics.failfast();
            tracing::debug!(target_name = %config.target, waited = ?timeout, "no endpoint available");
            return Err(BalanceError::NoEndpoints {
                target: config.target.clone(),
                last_error,
                waited: timeout,
            });
        }
    }
}

/// Where a request whose last attempt was never sent goes next; `None`:
/// nowhere, it fails with that attempt's error.
///
/// 1. An endpoint the request has not tried, pickable now, as long as the
///    deadline (see [`dispatch`]; set here if no wait set it) has not passed.
/// 2. A hedge goes nowhere else: its request is still running.
/// 3. Otherwise, while the snapshot lists an endpoint the request has not
///    tried (one still connecting, or backing off while others are Ready)
///    or a retry on an endpoint it tried is left (`max_retries`), wait for
///    the next snapshot, at most until the deadline, and look again: an
///    untried endpoint first, else (retries left) any pickable one,
///    counted in `repeats`.
async fn retry_endpoint<Req, S, C>(
    balancer: &Balancer<Req, S, C>,
    route: &mut Route<S>,
    deadline: &mut Option<Instant>,
    repeats: &mut usize,
) -> Option<Arc<Endpoint<S>>> {
    let shared = &*balancer.inner.shared;
    let now = Instant::now();
    let deadline = *deadline.get_or_insert(now + balancer.inner.config.failfast_timeout);
    if now >= deadline {
        return None;
    }
    if let Some(endpoint) = route.untried(shared, now) {
        return Some(endpoint);
    }
    if !route.may_wait() {
        return None;
    }
    loop {
        let may_repeat = *repeats < balancer.inner.config.max_retries;
        if !may_repeat && !route.lists_untried(shared) {
            return None;
        }
        // Register before looking, so that a snapshot published in between wakes us.
        let mut changed = pin!(shared.changed().notified());
        changed.as_mut().enable();
        if let Some(endpoint) = route.untried(shared, Instant::now()) {
            return Some(endpoint);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
        let now = Instant::now();
        if let Some(endpoint) = route.untried(shared, now) {
            return Some(endpoint);
        }
        if may_repeat && let Some(endpoint) = route.again(shared, now) {
            *repeats += 1;
            return Some(endpoint);
        }
    }
}

/// A hedge found no pod its request was not already sent to. Never seen by
/// a caller: the request the hedge copies is still running, and its own
/// answer (or error) is returned.
fn no_other_endpoint<Req, S, C>(balancer: &Balancer<Req, S, C>) -> BalanceError {
    BalanceError::NoEndpoints {
        target: balancer.inner.config.target.clone(),
        last_error: Some("no other endpoint for a hedged request".to_owned()),
        waited: std::time::Duration::ZERO,
    }
}

/// The request never reached the endpoint: count it, stop picking the
/// endpoint, and let the background task reconnect it.
fn unsent_failure<Req, S, C>(
    balancer: &Balancer<Req, S, C>,
    endpoint: &Endpoint<S>,
    guard: &PendingGuard,
    error: &BoxError,
) {
    guard.record_not_sent();
    endpoint.mark_unhealthy();
    endpoint_failed(&balancer.inner.config, endpoint.addr);
    warn_failure(
        balancer,
        endpoint,
        error,
        "request not sent; endpoint will reconnect",
    );
}

/// Tells the owner of the balancer (discovery, through the clients) that
/// `addr` failed in a way that suggests it is gone.
fn endpoint_failed(config: &Config, addr: std::net::SocketAddr) {
    if let Some(hook) = &config.on_endpoint_failure {
        hook(addr);
    }
}

/// True when `error` says the connection broke (reset, closed, I/O error)
/// rather than that the request was refused by a live server.
fn is_broken_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::chain(error).any(|e| {
        e.is::<std::io::Error>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_closed() || h.is_incomplete_message() || h.is_canceled())
    })
}

fn warn_failure<Req, S, C>(
    balancer: &Balancer<Req, S, C>,
    endpoint: &Endpoint<S>,
    error: &BoxError,
    message: &str,
) {
    crate::log::warn_or_debug!(
        endpoint
            .load
            .warn_allowed(Instant::now(), balancer.inner.config.warn_interval),
        endpoint = %endpoint.addr,
        %error,
        "{message}"
    );
}

fn endpoint_error<S>(endpoint: &Endpoint<S>, not_sent: bool, source: BoxError) -> BalanceError {
    BalanceError::Endpoint {
        endpoint: endpoint.addr,
        not_sent,
        source,
    }
}
