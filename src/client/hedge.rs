//! Hedged requests: after a delay, a copy of a slow idempotent request goes to another pod, and the first answer wins.
//!
//! ```text
//!  request ──► pod A ─────────────── slow ─────────────────────────┐
//!     │                                                            ├─► first answer wins;
//!     └─ delay (fixed, or pN of recent answers) ─► budget? ─► pod B┘   the other is dropped
//!                                                   (≥ 1 token)        (h2: RST_STREAM; HTTP/1.1:
//!                                                                       its connection closes)
//! ```
//!
//! This is "The Tail at Scale"'s hedged request and gRFC A6's hedging
//! policy, with the pod for the copy chosen by the balancer's own P2C rule
//! among the pods the request has not gone to. The rules it keeps:
//!
//! - **Opt-in and idempotent only.** A request is hedged only if the client
//!   has a [`HedgePolicy`] and the request may be sent twice: HTTP GET, HEAD
//!   and OPTIONS by default, gRPC methods listed with
//!   [`hedge_grpc_methods`](crate::client::Builder::hedge_grpc_methods), and
//!   any request carrying [`Idempotent(true)`](Idempotent); never one
//!   carrying `Idempotent(false)`. Its body must be replayable: HTTP an
//!   empty body or a `Full<Bytes>`, `Empty<Bytes>` or `String` of at most
//!   [`MAX_HEDGE_BODY`] bytes; gRPC a request body recorded whole (at most
//!   64 KiB) by the time the hedge is due.
//! - **Never worse than no hedge.** An error of one copy is ignored
//!   while another still runs; only when every copy failed is an error
//!   returned, the original's. An answer or an error that comes before the
//!   delay is returned as it is.
//! - **One hedge, or a few.** By default a request gets one hedge; with
//!   [`HedgePolicy::max_hedges`] up to four, each a delay after the one
//!   before while no copy has answered, each to a pod no copy went to. No
//!   hedge goes out after the original failed.
//! - **Bounded extra load.** A token bucket: every request through the
//!   client adds `budget` tokens (up to `burst`), a hedge spends one. Over
//!   N requests at most `budget × N + burst` hedges are sent.
//! - **The loser is cancelled.** Its response future is dropped: HTTP/2
//!   resets the stream (`RST_STREAM CANCEL`), and an HTTP/1.1 connection
//!   whose request was dropped is closed by hyper rather than reused (the
//!   pool only takes back connections whose exchange finished). The pod's
//!   handler sees its request go away. In the balancer the cancelled copy
//!   counts as abandoned: a failure in the stats, its wait folded into the
//!   pod's RTT estimate, never a step toward failure accrual.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tower::BoxError;

use crate::balance::{Balancer, Completion, ResponseFuture, Route, Tried};
use crate::error::BalanceError;

/// The default share of requests that may be hedged \[0.1, 10 %\].
pub const DEFAULT_HEDGE_BUDGET: f64 = 0.1;
/// The default number of hedges the budget allows at once, before requests
/// refill it \[10\].
pub const DEFAULT_HEDGE_BURST: u32 = 10;
/// The default percentile of recent response times a
/// [`HedgePolicy::auto`] hedge waits for \[0.95\].
pub const DEFAULT_HEDGE_PERCENTILE: f64 = 0.95;
/// The default shortest delay of a [`HedgePolicy::auto`] hedge \[1 ms\].
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(1);
/// The default number of hedges a request may get \[1\].
pub const DEFAULT_MAX_HEDGES: u32 = 1;
/// The most hedges a request may get \[4\]: gRFC A6's limit of five
/// attempts in all.
pub const MAX_HEDGES_LIMIT: u32 = 4;
/// The largest HTTP request body that is copied for a hedge \[64 KiB\].
pub const MAX_HEDGE_BODY: usize = 64 * 1024;

/// How many answers within the last two windows a percentile delay needs
/// before any hedge is sent: below this a percentile says little, and a
/// hedge sent on no evidence is load for nothing.
const MIN_SAMPLES: u64 = 20;
/// The length of one window of response times; the percentile is over the
/// current and the previous window, so it follows a change within two.
const WINDOW: Duration = Duration::from_secs(10);
/// Fixed-point tokens: one token is this many units, so that budgets down
/// to one millionth of a request stay exact in integer arithmetic.
const TOKEN: u64 = 1_000_000;

/// When and how much a balanced client hedges: sends a copy of a slow
/// idempotent request to a second pod and takes the first answer.
///
/// Off unless set with [`Builder::hedge`](crate::client::Builder::hedge).
/// Turn it on for idempotent reads whose tail latency matters, where pods
/// stall at times (GC pauses, noisy neighbours, a slow disk): a request
/// stuck on a stalled pod is answered by another. It costs up to `budget`
/// more requests to the pods (10 % by default), and the work a cancelled
/// copy did before its cancel arrived.
///
/// ```
/// use std::time::Duration;
/// use headless_lb::HedgePolicy;
///
/// // After the p95 of recent answers (at least 1 ms), at most 10 % more requests.
/// let auto = HedgePolicy::auto();
/// // After 20 ms, at most 5 % more requests, at most 5 at once.
/// let fixed = HedgePolicy::after(Duration::from_millis(20)).budget(0.05).burst(5);
/// # let _ = (auto, fixed);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HedgePolicy {
    delay: HedgeDelay,
    budget: f64,
    burst: u32,
    max_hedges: u32,
}

/// How long a request waits for its answer before it is hedged.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HedgeDelay {
    /// Always this long.
    Fixed(Duration),
    /// The `percentile` of the client's recent response times of hedgeable
    /// requests, at least `min`.
    Percentile { percentile: f64, min: Duration },
}

/// A [`HedgePolicy`] or hedging setting that cannot work, reported by
/// `build` as [`BuildError::Hedge`](crate::BuildError::Hedge).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HedgePolicyError {
    /// The budget is not a fraction of requests between 0 and 1.
    #[error("hedge budget {0} is not a share of requests in 0..=1")]
    Budget(f64),
    /// The percentile is not a fraction above 0 and at most 1.
    #[error("hedge percentile {0} is not in (0, 1] (0.95 is the p95)")]
    Percentile(f64),
    /// A gRPC method to hedge is not a path `/package.Service/Method` (or
    /// `/package.Service/*` for all of a service's methods).
    #[error("gRPC method {0:?} to hedge is not /package.Service/Method or /package.Service/*")]
    GrpcMethod(String),
    /// The most hedges per request is not in `1..=`[`MAX_HEDGES_LIMIT`].
    #[error("max hedges per request {0} is not in 1..=4 (gRFC A6 allows 5 attempts in all)")]
    MaxHedges(u32),
}

/// Marks a request as safe (`true`) or unsafe (`false`) to send twice, as
/// an `http::Request` extension; it overrides the client's rule for the
/// request's method.
///
/// Without it, HTTP GET, HEAD and OPTIONS requests and the gRPC methods
/// listed with [`hedge_grpc_methods`](crate::client::Builder::hedge_grpc_methods)
/// may be hedged. Only a client with a [`HedgePolicy`] hedges at all.
///
/// ```
/// use headless_lb::Idempotent;
///
/// // A PUT that sets a value may be sent twice: hedge it.
/// let mut put = http::Request::put("/config/a").body(String::from("42")).unwrap();
/// put.extensions_mut().insert(Idempotent(true));
/// // A GET with a side effect must not be: never hedge it.
/// let mut get = http::Request::get("/next-ticket").body(String::new()).unwrap();
/// get.extensions_mut().insert(Idempotent(false));
/// # let _ = (put, get);
/// ```
///
/// For gRPC, set it on `tonic::Request::extensions_mut()`; tonic passes it
/// on to the HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Idempotent(pub bool);

/// What hedging did so far, in [`Stats::hedging`](crate::Stats::hedging).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Copies sent to another pod.
    pub sent: u64,
    /// Hedges whose answer was the one returned: it came first, or the
    /// original request failed.
    pub won: u64,
    /// Hedges that were due (the delay passed, another pod was pickable)
    /// but that the budget refused.
    pub refused: u64,
    /// The delay a request waits now before it is hedged; `None` while a
    /// percentile delay has too few answers to go on (no hedge is sent
    /// then).
    pub delay: Option<Duration>,
}

/// One client's hedging: the policy, its budget, the recent response times
/// and the counts. Shared by every clone of the client.
pub(crate) struct Hedging {
    delay: HedgeDelay,
    max_hedges: u32,
    budget: TokenBucket,
    latencies: Latencies,
    /// gRPC methods hedged by default: full paths and `/pkg.Svc/` prefixes.
    grpc_methods: Vec<Box<str>>,
    sent: AtomicU64,
    won: AtomicU64,
    refused: AtomicU64,
}

/// The budget: a token bucket in fixed point ([`TOKEN`] units a token).
#[derive(Debug)]
struct TokenBucket {
    tokens: AtomicU64,
    per_request: u64,
    cap: u64,
}

/// Recent response times in two alternating windows of log-linear buckets.
///
/// Recording is a few relaxed atomic adds, and no lock, so that hedged
/// requests do not contend. When a window's turn comes round again its
/// first writer clears it; a sample another request records during the
/// clearing may be lost, which an estimate of a distribution's shape can
/// afford.
struct Latencies {
    epoch: Instant,
    windows: [Window; 2],
}

struct Window {
    /// Which window (since `epoch`, in [`WINDOW`]s) the counts belong to.
    index: AtomicU64,
    total: AtomicU64,
    counts: Box<[AtomicU64]>,
}

// ===== impl HedgePolicy =====

impl HedgePolicy {
    /// Hedges a request that has no answer after `delay`, with the default
    /// budget (10 % of requests, bursts of 10).
    ///
    /// A fixed delay suits a service whose normal latency is known and
    /// steady: set it a little above the normal p95 to p99. `Duration::ZERO`
    /// sends every hedgeable request twice at once, as far as the budget
    /// allows.
    pub fn after(delay: Duration) -> Self {
        Self {
            delay: HedgeDelay::Fixed(delay),
            budget: DEFAULT_HEDGE_BUDGET,
            burst: DEFAULT_HEDGE_BURST,
            max_hedges: DEFAULT_MAX_HEDGES,
        }
    }

    /// Hedges a request that has waited longer than the p95 of the client's
    /// recent answers to hedgeable requests, and at least 1 ms, with the
    /// default budget: `percentile(0.95, 1 ms)`.
    pub fn auto() -> Self {
        Self::percentile(DEFAULT_HEDGE_PERCENTILE, DEFAULT_HEDGE_MIN_DELAY)
    }

    /// Hedges a request that has waited longer than `percentile` (0.95 for
    /// the p95) of the client's recent answers to hedgeable requests, and
    /// at least `min_delay`, with the default budget.
    ///
    /// The response times are those of the last 10 to 20 seconds, as the
    /// caller saw them (a hedged request's time is its first answer's). No
    /// request is hedged before 20 answers are in that range: a percentile
    /// of fewer says little. `min_delay` keeps a very fast service from
    /// being hedged on noise.
    pub fn percentile(percentile: f64, min_delay: Duration) -> Self {
        Self {
            delay: HedgeDelay::Percentile {
                percentile,
                min: min_delay,
            },
            budget: DEFAULT_HEDGE_BUDGET,
            burst: DEFAULT_HEDGE_BURST,
            max_hedges: DEFAULT_MAX_HEDGES,
        }
    }

    /// The most hedges as a share of the requests the client sends, hedged
    /// or not, between 0 and 1 \[0.1\]: each request adds `budget` tokens
    /// to a bucket, each hedge takes one. 0 turns hedging off.
    pub fn budget(mut self, budget: f64) -> Self {
        self.budget = budget;
        self
    }

    /// How many tokens the budget holds at most, and holds when the client
    /// starts: the most hedges in a burst \[10, at least 1\].
    ///
    /// A pod that stalls holds every request in flight on it, and each
    /// needs a hedge at about the same moment: a burst below the requests
    /// in flight on one pod leaves the rest to wait out the stall. The
    /// long-run share stays `budget` whatever the burst.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The most hedges one request gets \[1, from 1 to 4\]: while no copy
    /// has answered, another goes out each delay after the last, to a pod
    /// none of the earlier copies went to, as long as the budget has a
    /// token.
    ///
    /// A second hedge is for the request whose first hedge landed on a pod
    /// that stalls too: where pods pause independently, two overlap often
    /// enough to set the p99.9. Each hedge beyond the first is sent only
    /// when the copies before it are all late, so it costs little of the
    /// budget. A value outside 1..=4 is an error at `build`.
    pub fn max_hedges(mut self, max_hedges: u32) -> Self {
        self.max_hedges = max_hedges;
        self
    }

    /// Checks the values; `build` calls it.
    pub(crate) fn validate(&self) -> Result<(), HedgePolicyError> {
        if !(0.0..=1.0).contains(&self.budget) {
            return Err(HedgePolicyError::Budget(self.budget));
        }
        if let HedgeDelay::Percentile { percentile, .. } = self.delay
            && !(percentile > 0.0 && percentile <= 1.0)
        {
            return Err(HedgePolicyError::Percentile(percentile));
        }
        if !(1..=MAX_HEDGES_LIMIT).contains(&self.max_hedges) {
            return Err(HedgePolicyError::MaxHedges(self.max_hedges));
        }
        Ok(())
    }
}

/// Checks a gRPC method path to hedge: `/package.Service/Method`, or
/// `/package.Service/*` for every method of the service. Returns what the
/// request path is matched against: the path, or the `/package.Service/`
/// prefix.
pub(crate) fn grpc_method(name: &str) -> Result<Box<str>, HedgePolicyError> {
    let invalid = || HedgePolicyError::GrpcMethod(name.to_owned());
    let rest = name.strip_prefix('/').ok_or_else(invalid)?;
    let (service, method) = rest.split_once('/').ok_or_else(invalid)?;
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if !word(service) {
        return Err(invalid());
    }
    match method {
        "*" => Ok(format!("/{service}/").into()),
        method if word(method) && !method.contains('.') => Ok(name.into()),
        _ => Err(invalid()),
    }
}

// ===== impl Hedging =====

impl Hedging {
    /// The state for a validated `policy`, hedging `grpc_methods` (already
    /// checked by [`grpc_method`]) by default.
    pub(crate) fn new(policy: &HedgePolicy, grpc_methods: Vec<Box<str>>) -> Self {
        let cap = u64::from(policy.burst.max(1)) * TOKEN;
        Self {
            delay: policy.delay,
            max_hedges: policy.max_hedges,
            budget: TokenBucket {
                tokens: AtomicU64::new(cap),
                // A validated budget is in 0..=1: the product fits.
                per_request: (policy.budget * TOKEN as f64).round() as u64,
                cap,
            },
            latencies: Latencies::new(Instant::now()),
            grpc_methods,
            sent: AtomicU64::new(0),
            won: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts one request toward the budget. Every request through the
    /// client calls this, hedgeable or not.
    #[inline]
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    /// True when the gRPC method at `path` is hedged by default.
    #[cfg(any(feature = "tonic", test))]
    pub(crate) fn hedges_grpc_method(&self, path: &str) -> bool {
        self.grpc_methods.iter().any(|m| {
            if m.ends_with('/') {
                path.starts_with(&**m)
            } else {
                **m == *path
            }
        })
    }

    /// What hedging did so far.
    pub(crate) fn stats(&self) -> HedgeStats {
        HedgeStats {
            sent: self.sent.load(Ordering::Relaxed),
            won: self.won.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            delay: self.delay(Instant::now()),
        }
    }

    /// How long a request starting at `now` waits before it is hedged;
    /// `None`: it is not hedged.
    fn delay(&self, now: Instant) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::Percentile { percentile, min } => self
                .latencies
                .percentile(percentile, now)
                .map(|p| p.max(min)),
        }
    }

    /// Records the time a hedgeable request took to its answer, for a
    /// percentile delay. Errors are left out: a pod failing fast says
    /// nothing about how long an answer takes.
    fn observe<T, E>(&self, started: Instant, result: &Result<T, E>) {
        if result.is_ok() && matches!(self.delay, HedgeDelay::Percentile { .. }) {
            let now = Instant::now();
            self.latencies
                .record(now.saturating_duration_since(started), now);
        }
    }
}

impl fmt::Debug for Hedging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedging")
            .field("delay", &self.delay)
            .field("budget", &self.budget)
            .field("grpc_methods", &self.grpc_methods)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Sends `request` (whose copies go to the pods `tried` records) through
/// `primary`, and while no answer came, a copy made by `copy` to another
/// pod each hedge delay, up to the policy's `max_hedges`; returns the first
/// answer, or the original's error when every copy failed. Runs in the
/// caller's task: the copies that lose are dropped with this future.
pub(crate) async fn race<Req, S, K, P>(
    hedging: Arc<Hedging>,
    balancer: Balancer<Req, S, K>,
    tried: Arc<Tried>,
    primary: P,
    mut copy: impl FnMut() -> Option<Req>,
) -> Result<K::Output, BalanceError>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    K: Completion<S::Response>,
    K::Output: Send + 'static,
    P: Future<Output = Result<K::Output, BalanceError>>,
{
    let started = Instant::now();
    let mut primary = pin!(primary);
    let Some(delay) = hedging.delay(started) else {
        let result = primary.await;
        hedging.observe(started, &result);
        return result;
    };
    // An answer or an error before the delay is the request's own:
    // hedging is for slow answers, not a retry of failed ones.
    if let Ok(result) = tokio::time::timeout(delay, primary.as_mut()).await {
        hedging.observe(started, &result);
        return result;
    }
    let won = || {
        hedging.won.fetch_add(1, Ordering::Relaxed);
        balancer.inner.config.metrics.hedge_won();
    };
    let mut hedges = FuturesUnordered::new();
    // The original's error, kept while a hedge may still answer.
    let mut failed: Option<BalanceError> = None;
    // The next hedge is due when this fires; disarmed when no more may go
    // (the most were sent, one could not be, or the original failed).
    let next = tokio::time::sleep(Duration::ZERO);
    let mut next = pin!(next);
    let mut armed = true;
    let mut sent = 0;
    // The original first when several are ready at once: no reason to
    // prefer a copy. A copy's error is ignored while another may answer.
    let result = loop {
        tokio::select! {
            biased;
            first = primary.as_mut(), if failed.is_none() => match first {
                Ok(response) => break Ok(response),
                Err(error) if hedges.is_empty() => break Err(error),
                Err(error) => {
                    failed = Some(error);
                    armed = false;
                }
            },
            Some(second) = hedges.next(), if !hedges.is_empty() => match second {
                Ok(response) => {
                    won();
                    break Ok(response);
                }
                Err(error) => {
                    tracing::debug!(%error, "hedge failed; waiting for the other copies");
                    if hedges.is_empty()
                        && let Some(error) = failed.take()
                    {
                        break Err(error);
                    }
                }
            },
            () = next.as_mut(), if armed => {
                match launch(&hedging, &balancer, &tried, &mut copy) {
                    Some(hedge) => {
                        hedges.push(hedge);
                        sent += 1;
                        armed = sent < hedging.max_hedges;
                        next.as_mut().reset(Instant::now() + delay);
                    }
                    None => armed = false,
                }
            }
        }
    };
    if result.is_ok() {
        // The copies still running, dropped with this future, lost the
        // race: that is no stall of their pods (see `balance::dispatch`).
        tried.settle();
    }
    hedging.observe(started, &result);
    result
}

/// Sends the hedge when another pod is pickable, a copy can be made and the
/// budget has a token; counts a refusal by the budget.
fn launch<Req, S, K>(
    hedging: &Hedging,
    balancer: &Balancer<Req, S, K>,
    tried: &Arc<Tried>,
    copy: impl FnOnce() -> Option<Req>,
) -> Option<ResponseFuture<K::Output>>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    K: Completion<S::Response>,
    K::Output: Send + 'static,
{
    // A single pod, or every other pod down: a hedge cannot help, and costs
    // nothing from the budget.
    let endpoint = balancer.pick_avoiding(tried)?;
    if !hedging.budget.withdraw() {
        hedging.refused.fetch_add(1, Ordering::Relaxed);
        balancer.inner.config.metrics.hedge_refused();
        tracing::debug!("hedge due but the hedge budget is spent");
        return None;
    }
    let Some(request) = copy() else {
        hedging.budget.refund();
        return None;
    };
    hedging.sent.fetch_add(1, Ordering::Relaxed);
    balancer.inner.config.metrics.hedge_sent();
    tracing::debug!(endpoint = %endpoint.addr, "no answer within the hedge delay; hedging the request");
    Some(balancer.call_hedge(request, tried.clone(), endpoint))
}

/// Sends `request` through `balancer` hedged, with `copy` (and `copy_of`
/// it, for hedges beyond the first) as the hedges' requests: the common
/// case, where the original is one dispatch.
pub(crate) fn send<Req, S, K>(
    hedging: Arc<Hedging>,
    balancer: &Balancer<Req, S, K>,
    request: Req,
    copy: Req,
    copy_of: fn(&Req) -> Option<Req>,
) -> ResponseFuture<K::Output>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    K: Completion<S::Response>,
    K::Output: Send + 'static,
{
    let tried = Arc::new(Tried::default());
    let primary = balancer.call_routed(request, Route::Tracked(tried.clone()));
    // The last hedge the policy allows takes `copy` itself; any before it
    // a copy of `copy`.
    let mut left = hedging.max_hedges;
    let mut copy = Some(copy);
    Box::pin(race(hedging, balancer.clone(), tried, primary, move || {
        left = left.saturating_sub(1);
        if left == 0 {
            copy.take()
        } else {
            copy.as_ref().and_then(copy_of)
        }
    }))
}

/// A copy of `body` for a hedge, when it is a body type whose contents can
/// be copied (`Full<Bytes>`, `Empty<Bytes>`, `String`) and holds at most
/// [`MAX_HEDGE_BODY`] bytes.
///
/// By type, at run time: the client's body type is the caller's, and
/// requiring `Clone` of every body would shut out streaming bodies from
/// the client altogether rather than from hedging only.
pub(crate) fn copy_body<B: http_body::Body + 'static>(body: &B) -> Option<B> {
    use bytes::Bytes;
    use http_body_util::{Empty, Full};

    if body
        .size_hint()
        .exact()
        .is_none_or(|n| n > MAX_HEDGE_BODY as u64)
    {
        return None;
    }
    let any = body as &dyn Any;
    if let Some(full) = any.downcast_ref::<Full<Bytes>>() {
        return cast(full.clone());
    }
    if let Some(empty) = any.downcast_ref::<Empty<Bytes>>() {
        return cast(*empty);
    }
    if let Some(string) = any.downcast_ref::<String>() {
        return cast(string.clone());
    }
    None
}

/// `value` as a `B`, when it is one.
fn cast<T: 'static, B: 'static>(value: T) -> Option<B> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

// ===== impl TokenBucket =====

impl TokenBucket {
    fn deposit(&self) {
        if self.per_request == 0 {
            return;
        }
        // Full: nothing to add, and no write to contend on.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < self.cap).then(|| (t + self.per_request).min(self.cap))
            });
    }

    /// Takes one token, if there is one.
    fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok()
    }

    /// Gives back a token taken for a hedge that was not sent.
    fn refund(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + TOKEN).min(self.cap))
            });
    }
}

// ===== impl Latencies =====

/// Sub-buckets per power of two: a bucket spans at most 1/8 of its values,
/// so a percentile read as its bucket's upper bound is at most 12.5 % late.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Microseconds at and above `2^MAX_EXP` (about 19 hours) share the last bucket.
const MAX_EXP: u32 = 36;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 1) as usize) * SUB as usize;

/// The bucket of a time in microseconds: exact below [`SUB`], then
/// [`SUB`] buckets per power of two.
fn bucket(micros: u64) -> usize {
    let micros = micros.min((1 << MAX_EXP) - 1);
    if micros < SUB {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    let sub = (micros >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The smallest time in microseconds above every time in bucket `index`.
fn bucket_end(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index + 1;
    }
    let exp = (index / SUB) as u32 + SUB_BITS - 1;
    let sub = index % SUB;
    (SUB + sub + 1) << (exp - SUB_BITS)
}

impl Latencies {
    fn new(epoch: Instant) -> Self {
        let window = |index| Window {
            index: AtomicU64::new(index),
            total: AtomicU64::new(0),
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        };
        // Window 0 is the current one; `u64::MAX` marks the other as empty.
        Self {
            epoch,
            windows: [window(0), window(u64::MAX)],
        }
    }

    fn window_index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / WINDOW.as_nanos()) as u64
    }

    fn record(&self, took: Duration, now: Instant) {
        let index = self.window_index(now);
        let window = &self.windows[(index % 2) as usize];
        let held = window.index.load(Ordering::Acquire);
        if held != index
            && window
                .index
                .compare_exchange(held, index, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This window's turn came round again: its counts are from two
            // windows ago. Whoever moved it on clears it.
            window.total.store(0, Ordering::Relaxed);
            for count in window.counts.iter() {
                count.store(0, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        window.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        window.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The `p` percentile of the times recorded in the current and the
    /// previous window (a bucket's upper bound); `None` with fewer than
    /// [`MIN_SAMPLES`] of them.
    fn percentile(&self, p: f64, now: Instant) -> Option<Duration> {
        let index = self.window_index(now);
        let live: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| {
                let held = w.index.load(Ordering::Acquire);
                held == index || held.checked_add(1) == Some(index)
            })
            .collect();
        let total: u64 = live.iter().map(|w| w.total.load(Ordering::Relaxed)).sum();
        if total < MIN_SAMPLES {
            return None;
        }
        // The nearest rank: the smallest time at or above `p` of the samples.
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += live
                .iter()
                .map(|w| w.counts[i].load(Ordering::Relaxed))
                .sum::<u64>();
            if seen >= rank {
                return Some(Duration::from_micros(bucket_end(i)));
            }
        }
        // The counts moved under us (a window was cleared): the largest.
        Some(Duration::from_micros(bucket_end(BUCKETS - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket_of(policy: &HedgePolicy) -> TokenBucket {
        Hedging::new(policy, Vec::new()).budget
    }

    #[test]
    fn the_bucket_starts_full_and_refills_by_the_budget() {
        let bucket = bucket_of(&HedgePolicy::after(Duration::ZERO).budget(0.1).burst(2));
        assert!(bucket.withdraw());
        assert!(bucket.withdraw());
        assert!(!bucket.withdraw(), "the burst is spent");
        for _ in 0..9 {
            bucket.deposit();
        }
        assert!(!bucket.withdraw(), "nine requests make 0.9 tokens");
        bucket.deposit();
        assert!(bucket.withdraw(), "ten requests make one token");
        assert!(!bucket.withdraw());
    }

    #[test]
    fn the_bucket_holds_at_most_the_burst() {
        let bucket = bucket_of(&HedgePolicy::after(Duration::ZERO).budget(1.0).burst(3));
        for _ in 0..1000 {
            bucket.deposit();
        }
        let taken = (0..10).filter(|_| bucket.withdraw()).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn hedges_stay_within_budget_times_requests_plus_burst() {
        let bucket = bucket_of(&HedgePolicy::after(Duration::ZERO).budget(0.05).burst(4));
        let mut hedges = 0;
        for _ in 0..10_000 {
            bucket.deposit();
            if bucket.withdraw() {
                hedges += 1;
            }
        }
        assert!(hedges <= 500 + 4, "{hedges}");
        assert!(hedges >= 500, "the budget is spent in full: {hedges}");
    }

    #[test]
    fn a_zero_budget_allows_the_burst_only() {
        let bucket = bucket_of(&HedgePolicy::after(Duration::ZERO).budget(0.0).burst(1));
        assert!(bucket.withdraw());
        for _ in 0..1000 {
            bucket.deposit();
        }
        assert!(!bucket.withdraw());
    }

    #[test]
    fn a_refund_gives_the_token_back() {
        let bucket = bucket_of(&HedgePolicy::after(Duration::ZERO).budget(0.0).burst(1));
        assert!(bucket.withdraw());
        bucket.refund();
        assert!(bucket.withdraw());
    }

    #[test]
    fn invalid_values_are_typed_errors() {
        let fixed = HedgePolicy::after(Duration::from_millis(5));
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                fixed.clone().budget(bad).validate(),
                Err(HedgePolicyError::Budget(_))
            ));
        }
        for bad in [0.0, 1.01, -1.0, f64::NAN] {
            assert!(matches!(
                HedgePolicy::percentile(bad, Duration::ZERO).validate(),
                Err(HedgePolicyError::Percentile(_))
            ));
        }
        assert_eq!(fixed.clone().budget(0.0).validate(), Ok(()));
        assert_eq!(fixed.budget(1.0).validate(), Ok(()));
        assert_eq!(HedgePolicy::auto().validate(), Ok(()));
        assert_eq!(
            HedgePolicy::percentile(1.0, Duration::ZERO).validate(),
            Ok(())
        );
    }

    #[test]
    fn grpc_methods_are_paths_or_whole_services() {
        assert_eq!(
            grpc_method("/grpc.health.v1.Health/Check").unwrap(),
            "/grpc.health.v1.Health/Check".into()
        );
        assert_eq!(
            grpc_method("/grpc.health.v1.Health/*").unwrap(),
            "/grpc.health.v1.Health/".into()
        );
        for bad in [
            "",
            "/",
            "grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health",
            "/grpc.health.v1.Health/",
            "//Check",
            "/a/b/c",
            "/a b/c",
            "/a/*x",
        ] {
            assert_eq!(
                grpc_method(bad),
                Err(HedgePolicyError::GrpcMethod(bad.to_owned())),
                "{bad:?}"
            );
        }
        let hedging = Hedging::new(
            &HedgePolicy::auto(),
            vec![
                grpc_method("/a.B/C").unwrap(),
                grpc_method("/x.Y/*").unwrap(),
            ],
        );
        assert!(hedging.hedges_grpc_method("/a.B/C"));
        assert!(!hedging.hedges_grpc_method("/a.B/D"));
        assert!(!hedging.hedges_grpc_method("/a.B/CC"));
        assert!(hedging.hedges_grpc_method("/x.Y/Anything"));
        assert!(!hedging.hedges_grpc_method("/x.YZ/Anything"));
    }

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        let mut last = 0;
        for micros in (0..5000).chain([1 << 20, (1 << 20) + 1, u64::MAX]) {
            let b = bucket(micros);
            assert!(b < BUCKETS, "{micros}");
            assert!(b >= last || micros >= 1 << 20, "{micros}");
            last = last.max(b);
            let end = bucket_end(b);
            let clamped = micros.min((1 << MAX_EXP) - 1);
            assert!(end > clamped, "{micros}: end {end}");
            // The bucket is narrow: its end is within 1/8 of its values.
            assert!(end - 1 <= clamped + clamped / 8, "{micros}: end {end}");
        }
    }

    // ----- the race, over scripted pods on a paused clock -----

    /// What the `k`-th copy sent (to any pod) does: answer or fail after a
    /// time, or hang.
    #[derive(Clone, Copy)]
    enum Step {
        Answer(Duration),
        Fail(Duration),
        Hang,
    }

    /// A pod whose answers follow a script shared by every pod, by the order
    /// in which copies reach them; copies beyond the script hang. Its answer
    /// is the copy's number.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<[Step]>,
        calls: Arc<AtomicU64>,
    }

    impl tower::Service<u32> for Scripted {
        type Response = u64;
        type Error = BoxError;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: u32) -> Self::Future {
            let k = self.calls.fetch_add(1, Ordering::SeqCst);
            let step = self.script.get(k as usize).copied().unwrap_or(Step::Hang);
            Box::pin(async move {
                match step {
                    Step::Answer(after) => {
                        tokio::time::sleep(after).await;
                        Ok(k)
                    }
                    Step::Fail(after) => {
                        tokio::time::sleep(after).await;
                        Err(format!("copy {k} failed").into())
                    }
                    Step::Hang => futures::future::pending().await,
                }
            })
        }
    }

    const DELAY: Duration = Duration::from_millis(10);

    /// Four scripted pods behind a balancer, and a hedging with a fixed
    /// [`DELAY`] and `max_hedges`; the race of one request.
    async fn race_of(
        script: &[Step],
        max_hedges: u32,
    ) -> (
        Arc<Hedging>,
        impl Future<Output = Result<u64, BalanceError>>,
    ) {
        let pods = Scripted {
            script: script.into(),
            calls: Arc::new(AtomicU64::new(0)),
        };
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for i in 1..=4u8 {
            let addr = std::net::SocketAddr::from(([10, 0, 0, i], 80));
            tx.unbounded_send(Ok::<_, std::convert::Infallible>(
                tower::discover::Change::Insert(addr, pods.clone()),
            ))
            .unwrap();
        }
        let balancer: Balancer<u32, Scripted> = crate::balance::Builder::new().build(rx);
        // Let the background task take the pods in, without moving the clock.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(balancer.stats().len(), 4);
        let policy = HedgePolicy::after(DELAY).budget(1.0).max_hedges(max_hedges);
        let hedging = Arc::new(Hedging::new(&policy, Vec::new()));
        let tried = Arc::new(Tried::default());
        let primary = balancer.call_routed(7, Route::Tracked(tried.clone()));
        let race = race(hedging.clone(), balancer, tried, primary, || Some(7));
        // Keep the discovery stream open for as long as the race runs.
        let race = async move {
            let _tx = tx;
            race.await
        };
        (hedging, race)
    }

    #[tokio::test(start_paused = true)]
    async fn each_hedge_goes_out_a_delay_after_the_last_up_to_the_most() {
        use Step::*;
        let script = [Hang, Hang, Hang, Answer(Duration::from_millis(1))];
        let (hedging, race) = race_of(&script, 3).await;
        let started = Instant::now();
        let answer = tokio::time::timeout(100 * DELAY, race)
            .await
            .expect("the third hedge answers");
        assert_eq!(answer.unwrap(), 3, "the third hedge's answer");
        assert_eq!(started.elapsed(), 3 * DELAY + Duration::from_millis(1));
        let stats = hedging.stats();
        assert_eq!((stats.sent, stats.won, stats.refused), (3, 1, 0));

        // One hedge fewer allowed: the answering copy is never sent.
        let (hedging, race) = race_of(&script, 2).await;
        assert!(
            tokio::time::timeout(100 * DELAY, race).await.is_err(),
            "every copy sent hangs"
        );
        assert_eq!(hedging.stats().sent, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_goes_out_after_the_original_failed() {
        use Step::*;
        // The original fails between the first hedge and the second; the
        // first hedge answers later.
        let script = [Fail(DELAY * 3 / 2), Answer(DELAY * 3)];
        let (hedging, race) = race_of(&script, 4).await;
        let started = Instant::now();
        assert_eq!(race.await.unwrap(), 1, "the hedge's answer");
        assert_eq!(started.elapsed(), 4 * DELAY);
        let stats = hedging.stats();
        assert_eq!((stats.sent, stats.won), (1, 1), "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hedge_is_ignored_and_every_copy_failed_is_the_originals_error() {
        use Step::*;
        // The first hedge fails at once; the second answers.
        let script = [Hang, Fail(Duration::ZERO), Answer(Duration::from_millis(1))];
        let (hedging, race) = race_of(&script, 2).await;
        let answer = tokio::time::timeout(100 * DELAY, race)
            .await
            .expect("the second hedge answers");
        assert_eq!(answer.unwrap(), 2);
        assert_eq!(hedging.stats().sent, 2);

        // All three fail, the original last: its error is returned.
        let script = [
            Fail(DELAY * 5),
            Fail(Duration::ZERO),
            Fail(Duration::from_millis(1)),
        ];
        let (hedging, race) = race_of(&script, 2).await;
        let started = Instant::now();
        let error = race.await.unwrap_err();
        assert!(error.to_string().contains("copy 0 failed"), "{error}");
        assert_eq!(started.elapsed(), 5 * DELAY);
        assert_eq!(hedging.stats().won, 0);

        // The original fails first, then the only hedge: the original's error.
        let script = [Fail(DELAY * 2), Fail(DELAY * 2)];
        let (_, race) = race_of(&script, 1).await;
        let error = race.await.unwrap_err();
        assert!(error.to_string().contains("copy 0 failed"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_needs_evidence_then_follows_the_answers() {
        let policy = HedgePolicy::percentile(0.95, Duration::from_millis(2));
        let hedging = Hedging::new(&policy, Vec::new());
        let now = Instant::now();
        assert_eq!(hedging.delay(now), None, "no answers yet");
        for _ in 0..(MIN_SAMPLES - 1) {
            hedging.latencies.record(Duration::from_millis(10), now);
        }
        assert_eq!(hedging.delay(now), None, "too few answers");
        // 95 answers at 10 ms, 5 at 100 ms: the p95 is 10 ms.
        for _ in 0..(95 - (MIN_SAMPLES - 1)) {
            hedging.latencies.record(Duration::from_millis(10), now);
        }
        for _ in 0..5 {
            hedging.latencies.record(Duration::from_millis(100), now);
        }
        let p95 = hedging.delay(now).unwrap();
        assert!(
            p95 > Duration::from_millis(10) && p95 <= Duration::from_micros(11_250),
            "{p95:?}"
        );
        // Ten more slow answers: the p95 moves into the slow ones.
        for _ in 0..10 {
            hedging.latencies.record(Duration::from_millis(100), now);
        }
        let p95 = hedging.delay(now).unwrap();
        assert!(
            p95 > Duration::from_millis(100) && p95 <= Duration::from_micros(112_500),
            "{p95:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_has_a_floor() {
        let policy = HedgePolicy::percentile(0.5, Duration::from_millis(5));
        let hedging = Hedging::new(&policy, Vec::new());
        let now = Instant::now();
        for _ in 0..100 {
            hedging.latencies.record(Duration::from_micros(300), now);
        }
        assert_eq!(hedging.delay(now), Some(Duration::from_millis(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn old_answers_age_out_after_two_windows() {
        let hedging = Hedging::new(&HedgePolicy::auto(), Vec::new());
        let start = Instant::now();
        for _ in 0..100 {
            hedging.latencies.record(Duration::from_millis(50), start);
        }
        tokio::time::advance(WINDOW).await;
        let now = Instant::now();
        // Still in the previous window: it counts.
        let p95 = hedging.delay(now).unwrap();
        assert!(p95 > Duration::from_millis(50), "{p95:?}");
        for _ in 0..100 {
            hedging.latencies.record(Duration::from_millis(5), now);
        }
        // Both windows: half at 50 ms, so the p95 is still there.
        assert!(hedging.delay(now).unwrap() > Duration::from_millis(50));
        tokio::time::advance(WINDOW).await;
        let now = Instant::now();
        for _ in 0..100 {
            hedging.latencies.record(Duration::from_millis(5), now);
        }
        // The 50 ms answers were two windows ago: gone.
        let p95 = hedging.delay(now).unwrap();
        assert!(
            p95 > Duration::from_millis(5) && p95 <= Duration::from_micros(5_625),
            "{p95:?}"
        );
        // A long quiet spell: nothing recent, no evidence, no hedge.
        tokio::time::advance(WINDOW * 3).await;
        assert_eq!(hedging.delay(Instant::now()), None);
    }

    #[test]
    fn bodies_are_copied_by_type_and_size() {
        use bytes::Bytes;
        use http_body_util::{BodyExt, Empty, Full};

        let full = Full::new(Bytes::from_static(b"abc"));
        let copy = copy_body(&full).expect("a small Full is copied");
        let data = futures::executor::block_on(copy.collect())
            .unwrap()
            .to_bytes();
        assert_eq!(data, "abc");
        assert!(copy_body(&Empty::<Bytes>::new()).is_some());
        assert_eq!(copy_body(&String::from("x")).as_deref(), Some("x"));
        let big = Full::new(Bytes::from(vec![0u8; MAX_HEDGE_BODY + 1]));
        assert!(copy_body(&big).is_none(), "over the bound");
        let boxed = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        assert!(copy_body(&boxed).is_none(), "a body that cannot be copied");
    }
}
