//! One endpoint's shared state: its service, health, and load counters.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::log::WarnSlot;

use super::peak_ewma::PeakEwma;

/// Where an endpoint is in its life, as [`stats`](super::Balancer::stats) shows it.
///
/// ```text
///   Insert ──► Connecting ──ok──► Ready ◄──ok── Backoff ◄─┐
///                  │                │              │      │ connect fails
///                  └──── fails ─────┴─ fails ─────►└──────┘
///   Remove (from any state) ──► Draining ──► dropped when in-flight requests end
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Discovered; the first connection attempt is under way. Not picked.
    Connecting,
    /// Connected and picked by P2C.
    Ready,
    /// A connection attempt or a request's `ready()` failed; waiting to
    /// reconnect. Not picked, except in panic mode (every endpoint backing off).
    Backoff,
    /// Removed by discovery; in-flight requests finish, no new ones start.
    Draining,
}

/// A snapshot of one endpoint, from [`Balancer::stats`](super::Balancer::stats).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStats {
    /// The endpoint's address.
    pub address: SocketAddr,
    /// Its state.
    pub state: EndpointState,
    /// Requests dispatched to it and not yet complete.
    pub pending: usize,
    /// Its peak-EWMA round-trip-time estimate.
    pub rtt: Duration,
    /// Requests dispatched to it so far.
    pub requests: u64,
    /// Requests it failed so far: errors, failed `ready()` before a send,
    /// requests abandoned before their response (a client request timeout),
    /// and whatever the [`Completion`](super::Completion) records with
    /// [`PendingGuard::record_failure`](super::PendingGuard::record_failure)
    /// (the HTTP client: 5xx responses and bodies that broke off).
    pub failures: u64,
}

/// An endpoint, shared by the snapshot, the background task and in-flight requests.
///
/// The service is dropped (closing its connections) when the last of them
/// lets go: after discovery removed it and its in-flight requests ended.
///
/// A Ready endpoint costs this one allocation and a pointer in each of the
/// snapshot's two lists (with the `metrics` feature, also its series'
/// labels). Fields are kept to what the pick, the request path and the
/// background task read, each once (one address, one clock epoch), so that
/// memory per endpoint stays below that of tower's `Balance<PeakEwma>`
/// (`benches/peers.rs` scenario 6, `tests/memory.rs`).
pub(crate) struct Endpoint<S> {
    pub(crate) addr: SocketAddr,
    pub(crate) service: S,
    state: AtomicU8,
    pub(crate) load: Load,
    /// Where a request that marks the endpoint unhealthy tells the
    /// background task (a channel shared by every endpoint of the balancer,
    /// rather than something to wait on per endpoint).
    unhealthy: UnboundedSender<SocketAddr>,
}

/// The counters a [`PendingGuard`](super::PendingGuard) and the pick need,
/// free of the service type.
#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) pending: AtomicUsize,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Failed requests since the last request that did not fail.
    streak: AtomicU32,
    /// The run of failures that takes the endpoint out of picks; 0: never.
    accrual: u32,
    pub(crate) rtt: PeakEwma,
    /// Requests sent and still waiting for their response (its head).
    awaiting: AtomicUsize,
    /// Nanoseconds since the RTT estimate's epoch when `awaiting` last rose
    /// from 0 (one epoch per endpoint: `rtt`'s).
    busy_since_ns: AtomicU64,
    /// Nanoseconds since the epoch when the pod last answered (a response
    /// or an error; not a request the caller gave up on).
    answered_ns: AtomicU64,
    /// A request the pod never answered was given up (a caller's deadline)
    /// since its last answer: the pod has been silent since before its next
    /// request, which therefore does not restart `busy_since_ns`.
    owed: AtomicBool,
    /// Warnings about this endpoint's failures: one per `warn_interval`.
    warn_slot: WarnSlot,
    /// The endpoint's series (cargo feature `metrics`; nothing without it).
    pub(crate) metrics: crate::metrics::EndpointMetrics,
}

// ===== impl EndpointState =====

impl EndpointState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Ready,
            2 => Self::Backoff,
            _ => Self::Draining,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Ready => 1,
            Self::Backoff => 2,
            Self::Draining => 3,
        }
    }
}

// ===== impl Endpoint =====

impl<S> Endpoint<S> {
    /// A Connecting endpoint; `unhealthy` is where [`mark_unhealthy`](Self::mark_unhealthy)
    /// sends its address.
    pub(crate) fn new(
        addr: SocketAddr,
        service: S,
        initial_rtt: Duration,
        decay: Duration,
        failure_accrual: u32,
        metrics: crate::metrics::EndpointMetrics,
        unhealthy: UnboundedSender<SocketAddr>,
    ) -> Self {
        Self {
            addr,
            service,
            state: AtomicU8::new(EndpointState::Connecting.as_u8()),
            load: Load {
                pending: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                streak: AtomicU32::new(0),
                accrual: failure_accrual,
                rtt: PeakEwma::new(initial_rtt, decay),
                awaiting: AtomicUsize::new(0),
                busy_since_ns: AtomicU64::new(0),
                answered_ns: AtomicU64::new(0),
                owed: AtomicBool::new(false),
                warn_slot: WarnSlot::new(),
                metrics,
            },
            unhealthy,
        }
    }

    pub(crate) fn state(&self) -> EndpointState {
        EndpointState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state (background task only) and logs a change.
    pub(crate) fn set_state(&self, state: EndpointState) {
        let prior = EndpointState::from_u8(self.state.swap(state.as_u8(), Ordering::AcqRel));
        if prior != state {
            self.load.metrics.state(state);
            tracing::debug!(endpoint = %self.addr, state = ?state, prior = ?prior, "endpoint state changed");
        }
    }

    /// Called from the request path when the endpoint's `ready()` failed or a
    /// request came back not sent: stop picking it and have the background
    /// task reconnect it. Only a Ready endpoint moves: one that is connecting
    /// or backing off already has the task's attention.
    pub(crate) fn mark_unhealthy(&self) {
        let moved = self
            .state
            .compare_exchange(
                EndpointState::Ready.as_u8(),
                EndpointState::Backoff.as_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if moved {
            self.load.metrics.state(EndpointState::Backoff);
            tracing::debug!(endpoint = %self.addr, state = ?EndpointState::Backoff, "endpoint state changed by a failed request");
            // Fails only once the background task has ended (the balancer
            // was dropped): then nobody reconnects endpoints any more.
            let _ = self.unhealthy.send(self.addr);
        }
    }

    /// P2C's choice between two endpoints: the one with the lower RTT
    /// estimate × (pending + 1); ties go to `a`. Returns it with both costs.
    ///
    /// An endpoint with no response yet is taken to be as fast as the one it
    /// is compared with, so that pending requests alone decide: a new or
    /// never-picked pod gets its share until its first response says what it
    /// is worth. (Its prior, the peers' median or `default_rtt`, is a guess
    /// that goes stale: against peers measured at 1 ms, a 30 ms prior would
    /// keep a healthy pod unpicked until it decayed, for half a minute.)
    /// The RTT compared is never less than the wait of the endpoint's oldest
    /// unanswered request ([`Load::waited_ns`]): a pod that stopped
    /// answering looks slower by the moment, where its estimate alone would
    /// decay towards zero while it holds requests.
    /// An idle endpoint due a probe (see [`PeakEwma`]) is compared the same
    /// way; if chosen, its probe starts. An endpoint chosen on its measured
    /// estimate against a measured one competes again, which resets its
    /// probe interval.
    ///
    /// One nanosecond is added to the estimates so that pending requests
    /// still count when the measured RTT is zero (a paused clock, an
    /// in-process service).
    pub(crate) fn choose<'a>(a: &'a Self, b: &'a Self, now: Instant) -> (&'a Self, f64, f64) {
        let (pending_a, pending_b) = (
            a.load.pending.load(Ordering::Relaxed),
            b.load.pending.load(Ordering::Relaxed),
        );
        // Each endpoint's clock, read once for the whole comparison.
        let (now_a, now_b) = (a.load.since_epoch(now), b.load.since_epoch(now));
        let measured = |e: &Self, pending: usize, now_ns: u64| {
            if e.load.rtt.probe_due_at(pending, now_ns) {
                None
            } else {
                e.load.rtt.measured_at(now_ns)
            }
        };
        let (rtt_a, rtt_b, both_measured) =
            match (measured(a, pending_a, now_a), measured(b, pending_b, now_b)) {
                (Some(ra), Some(rb)) => (ra, rb, true),
                (Some(r), None) | (None, Some(r)) => (r, r, false),
                (None, None) => (
                    a.load.rtt.estimate_at(now_a),
                    b.load.rtt.estimate_at(now_b),
                    false,
                ),
            };
        // A request already waiting longer than the estimate will take at
        // least that long: a stalled endpoint looks slower by the moment.
        let (rtt_a, rtt_b) = (
            rtt_a.max(a.load.waited_at(now_a)),
            rtt_b.max(b.load.waited_at(now_b)),
        );
        let cost = |rtt: f64, pending: usize| (rtt + 1.0) * (pending as f64 + 1.0);
        let (cost_a, cost_b) = (cost(rtt_a, pending_a), cost(rtt_b, pending_b));
        let (chosen, pending, now_ns) = if cost_a <= cost_b {
            (a, pending_a, now_a)
        } else {
            (b, pending_b, now_b)
        };
        if both_measured {
            chosen.load.rtt.competitive();
        } else if chosen.load.rtt.probe_due_at(pending, now_ns) {
            chosen.load.rtt.start_probe(now);
        }
        (chosen, cost_a, cost_b)
    }

    pub(crate) fn stats(&self, now: Instant) -> EndpointStats {
        EndpointStats {
            address: self.addr,
            state: self.state(),
            pending: self.load.pending.load(Ordering::Relaxed),
            rtt: Duration::from_secs_f64(self.load.rtt.estimate_ns(now).max(0.0) / 1e9),
            requests: self.load.requests.load(Ordering::Relaxed),
            failures: self.load.failures.load(Ordering::Relaxed),
        }
    }
}

impl<S> fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("state", &self.state())
            .field("load", &self.load)
            .finish_non_exhaustive()
    }
}

// ===== impl Load =====

impl Load {
    pub(crate) fn since_epoch(&self, now: Instant) -> u64 {
        self.rtt.since_epoch(now)
    }

    /// A request was sent and waits for its response; pair with
    /// [`wait_answered`](Self::wait_answered) or
    /// [`wait_abandoned`](Self::wait_abandoned).
    pub(crate) fn wait_started(&self, now: Instant) {
        // A pod that owes an answer has been silent since before this send.
        if self.awaiting.load(Ordering::Relaxed) == 0 && !self.owed.load(Ordering::Relaxed) {
            self.busy_since_ns
                .store(self.since_epoch(now), Ordering::Relaxed);
        }
        // Release: a reader that sees this request also sees `busy_since_ns`.
        self.awaiting.fetch_add(1, Ordering::Release);
    }

    /// A request's wait ended with an answer from the pod: its response, or
    /// an error.
    #[cfg(test)]
    pub(crate) fn wait_answered(&self, now: Instant) {
        self.wait_answered_at(self.since_epoch(now));
    }

    /// [`wait_answered`](Self::wait_answered) at `now_ns` ([`since_epoch`](Self::since_epoch)).
    pub(crate) fn wait_answered_at(&self, now_ns: u64) {
        // Loaded first: a store on every response would be a write to a
        // line the picks read.
        if self.owed.load(Ordering::Relaxed) {
            self.owed.store(false, Ordering::Relaxed);
        }
        self.wait_cancelled_at(now_ns);
    }

    /// A hedged copy's wait ended because the other copy answered first:
    /// like an answer for the pod's silence (a race lost says only that
    /// another pod was faster this once), and it settles nothing owed.
    pub(crate) fn wait_cancelled(&self, now: Instant) {
        self.wait_cancelled_at(self.since_epoch(now));
    }

    fn wait_cancelled_at(&self, now_ns: u64) {
        self.answered_ns.store(now_ns, Ordering::Relaxed);
        self.awaiting.fetch_sub(1, Ordering::Release);
    }

    /// A request's wait ended without an answer: the caller gave up on it
    /// (its deadline). The pod said nothing, so its silence goes on from
    /// where it was, not from its next request.
    pub(crate) fn wait_abandoned(&self) {
        if !self.owed.load(Ordering::Relaxed) {
            self.owed.store(true, Ordering::Relaxed);
        }
        self.awaiting.fetch_sub(1, Ordering::Release);
    }

    /// While a request waits for its response, the pod's silence
    /// ([`silence_ns`](Self::silence_ns)); 0 if none waits.
    ///
    /// At least the wait of the oldest request still waiting: since the
    /// later of "requests started waiting" and "the pod last answered", the
    /// pod answered nothing and at least one request was waiting, so that
    /// request is still waiting and has waited at least this long (longer,
    /// after requests given up, which count as unanswered). Cost: three
    /// atomic loads, no per-request bookkeeping beyond two counters.
    #[cfg(test)]
    pub(crate) fn waited_ns(&self, now: Instant) -> f64 {
        self.waited_at(self.since_epoch(now))
    }

    /// [`waited_ns`](Self::waited_ns) at `now_ns` ([`since_epoch`](Self::since_epoch)).
    pub(crate) fn waited_at(&self, now_ns: u64) -> f64 {
        if self.awaiting.load(Ordering::Acquire) == 0 {
            return 0.0;
        }
        self.silence_at(now_ns) as f64
    }

    /// How long, in nanoseconds, the pod has been silent while it owed an
    /// answer: since the later of its last answer and the first send after
    /// it. A request given up is no answer: were it one, a stalled pod would
    /// look fresh each time a caller's deadline passes, and P2C would keep
    /// feeding it for as long as it stalls. Meaningful
    /// while a request waits (see [`waited_ns`](Self::waited_ns)), or for
    /// one being given up.
    pub(crate) fn silence_ns(&self, now: Instant) -> u64 {
        self.silence_at(self.since_epoch(now))
    }

    fn silence_at(&self, now_ns: u64) -> u64 {
        let since = self
            .busy_since_ns
            .load(Ordering::Relaxed)
            .max(self.answered_ns.load(Ordering::Relaxed));
        now_ns.saturating_sub(since)
    }

    /// Counts one failed request; true when it completes a run of
    /// `failure_accrual` failures in a row (or extends one).
    pub(crate) fn record_failure(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let streak = self
            .streak
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        self.accrual != 0 && streak >= self.accrual
    }

    /// A request completed without a failure: the run of failures is over.
    pub(crate) fn record_success(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// How far the current run of failures is past `failure_accrual`:
    /// 0 below it, 1 at it, and so on (for the backoff delay).
    pub(crate) fn failures_past_accrual(&self) -> u32 {
        if self.accrual == 0 {
            return 0;
        }
        let streak = self.streak.load(Ordering::Relaxed);
        streak.saturating_sub(self.accrual - 1)
    }

    /// True at most once per `interval` per endpoint: warnings about one
    /// failing endpoint must not flood the log.
    pub(crate) fn warn_allowed(&self, now: Instant, interval: Duration) -> bool {
        self.warn_slot.allow(self.since_epoch(now), interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn load() -> Load {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Endpoint::new(
            SocketAddr::from(([10, 0, 0, 1], 80)),
            (),
            30 * MS,
            10_000 * MS,
            0,
            crate::metrics::EndpointMetrics::new(
                &crate::metrics::BalancerMetrics::new("test"),
                SocketAddr::from(([10, 0, 0, 1], 80)),
            ),
            tx,
        )
        .load
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_given_up_leaves_the_pod_silent_since_before_it() {
        let load = load();
        load.wait_started(Instant::now());
        tokio::time::advance(30 * MS).await;
        load.wait_abandoned();
        assert_eq!(load.waited_ns(Instant::now()), 0.0, "nothing waits");
        tokio::time::advance(10 * MS).await;
        // The next request finds the pod silent for 40 ms already.
        load.wait_started(Instant::now());
        assert_eq!(load.waited_ns(Instant::now()), (40 * MS).as_nanos() as f64);
        // Until it answers: then only what waits since.
        tokio::time::advance(5 * MS).await;
        load.wait_started(Instant::now());
        load.wait_answered(Instant::now());
        tokio::time::advance(MS).await;
        assert_eq!(load.waited_ns(Instant::now()), MS.as_nanos() as f64);
        load.wait_answered(Instant::now());
        tokio::time::advance(10 * MS).await;
        load.wait_started(Instant::now());
        assert_eq!(load.waited_ns(Instant::now()), 0.0, "a fresh start");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_copy_that_lost_a_hedge_race_ends_the_silence_like_an_answer() {
        let load = load();
        load.wait_started(Instant::now());
        tokio::time::advance(30 * MS).await;
        load.wait_cancelled(Instant::now());
        tokio::time::advance(10 * MS).await;
        load.wait_started(Instant::now());
        assert_eq!(load.waited_ns(Instant::now()), 0.0);
    }
}
