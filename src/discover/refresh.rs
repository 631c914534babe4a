//! The refresh loop: when to look up again, and which set to publish.
//!
//! One task per [`Discovery`] runs `resolve → publish → sleep` forever:
//!
//! ```text
//!            ┌──────── Ok(ttl) ────────► sleep clamp(ttl) ± jitter ───┐
//!  resolve ──┼─ NoRecords(neg ttl) ─────► sleep clamp(neg ttl) ± jitter ┼──► resolve
//!            └─ transient error ────────► sleep backoff(n) ± jitter ───┘
//!                                              ▲
//!                 Discovery::resolve_now ──────┘ cuts a sleep short (not a backoff),
//!                                                at most once per resolve_now_interval
//! ```
//!
//! The delays are pure functions of the outcome ([`RefreshPolicy::delay_after`]),
//! so the schedule is tested exactly with tokio's paused clock.
//!
//! Two rules bound how far the published set may lag behind the pods:
//!
//! - **Early re-resolution.** When a pod refuses connections, resets or sends
//!   GOAWAY, it has probably been deleted, and DNS may already say so while the
//!   refresh task still waits out a TTL of up to 30 s. [`Discovery::resolve_now`]
//!   (like gRPC's `ResolveNow`) asks for a lookup soon. Every caller's request
//!   coalesces into one, and a lookup it causes starts no sooner than
//!   [`RefreshPolicy::resolve_now_interval`] after the previous lookup of any
//!   kind, so a crowd of failing connections costs DNS at most one query per
//!   interval. The next regular lookup is scheduled from that lookup's answer,
//!   as after any other lookup.
//! - **Bounded staleness.** With [`EmptyAnswer::KeepLastGood`], a set that DNS
//!   says no longer exists (NXDOMAIN, empty answer) is kept only until
//!   [`RefreshPolicy::max_stale`] after the last good answer; then it is
//!   cleared. A DNS outage (timeout, SERVFAIL, network error) keeps the set
//!   however long it lasts (see the field's docs for why).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::ResolveError;
use crate::log::{WarnGate, warn_or_debug};
use crate::resolve::{Resolution, Resolve};
use crate::sync::lock;
use crate::target::Target;

use super::diff::SetDiff;

/// A published endpoint set.
pub(crate) type EndpointSet = Arc<BTreeSet<SocketAddr>>;

/// What to do when DNS says a name has no records (NXDOMAIN or an empty answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyAnswer {
    /// Keep the last good set: a DNS glitch never empties a working client. The default.
    #[default]
    KeepLastGood,
    /// Remove every endpoint, as Kubernetes means "no ready pods".
    Clear,
}

/// How often to re-resolve and how to back off. The defaults are the
/// discovery contract in ARCHITECTURE.md ("Behaviour contract").
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Lower clamp for the TTL-driven refresh interval, also used for TTL 0 [1 s].
    pub min_refresh: Duration,
    /// Upper clamp for the refresh interval [30 s].
    pub max_refresh: Duration,
    /// Relative jitter applied to every delay, so that many clients do not
    /// query in step [0.1, i.e. ±10 %]. Clamped to `0.0..=1.0`.
    pub jitter: f64,
    /// First retry delay after a transient error [1 s].
    pub backoff_base: Duration,
    /// Largest retry delay [30 s].
    pub backoff_max: Duration,
    /// A lookup that has not finished after this long counts as a timeout, so
    /// a stuck resolver can never stall discovery [10 s].
    pub lookup_timeout: Duration,
    /// What an NXDOMAIN or empty answer does to the set [`EmptyAnswer::KeepLastGood`].
    pub empty_answer: EmptyAnswer,
    /// The shortest time from the start of one lookup to the start of a
    /// lookup asked for by [`Discovery::resolve_now`] [1 s].
    ///
    /// However many callers ask, at most one extra lookup per interval
    /// reaches DNS: a request during the cool-down schedules one lookup at
    /// its end, and requests meanwhile join it. After a transient failure
    /// `resolve_now` does not cut the backoff short either: the backoff
    /// protects a failing DNS server, and the retry it schedules serves the
    /// request.
    pub resolve_now_interval: Duration,
    /// How long [`EmptyAnswer::KeepLastGood`] keeps a set after DNS last
    /// confirmed it with a good answer [5 minutes]; `None` keeps it for ever
    /// (the behaviour before this field existed).
    ///
    /// Once a set is older than this, an NXDOMAIN or empty answer clears it,
    /// so a service scaled to zero fails fast naming the target instead of
    /// sending requests to addresses Kubernetes may have given to other
    /// pods. While a set is kept against such answers, the next lookup is
    /// due no later than the moment it turns stale, so it is cleared on time.
    ///
    /// A DNS *outage* (timeout, SERVFAIL, REFUSED, network error) is not an
    /// answer either way: it keeps the set past `max_stale` for as long as it
    /// lasts (fail static). Clearing would turn a DNS outage into a full
    /// outage of a service whose pods may all be fine, while the pods that
    /// did go away are already avoided by connection health (refused
    /// connections back off); only an authoritative "no records" clears.
    ///
    /// Why 5 minutes: long enough to ride out a short window in which every
    /// pod is unready (a readiness flap, a rollout gone wrong and rolled
    /// back) and a mistaken DNS change, without the client losing its pods;
    /// short enough that the addresses of a deleted service are not used for
    /// long after the cluster may hand them to other pods.
    pub max_stale: Option<Duration>,
}

/// The outcome of one lookup, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A good answer with this (shortest) TTL.
    Answer {
        /// The answer's shortest TTL.
        ttl: Duration,
    },
    /// NXDOMAIN or an empty answer, with the SOA's negative TTL if any.
    NoRecords {
        /// The negative TTL from the SOA record.
        negative_ttl: Option<Duration>,
    },
    /// A transient failure; `failures` counts them in a row, starting at 1.
    Failed {
        /// Consecutive failures including this one.
        failures: u32,
    },
}

// ===== impl RefreshPolicy =====

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
            jitter: 0.1,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            lookup_timeout: Duration::from_secs(10),
            empty_answer: EmptyAnswer::KeepLastGood,
            resolve_now_interval: Duration::from_secs(1),
            max_stale: Some(Duration::from_secs(5 * 60)),
        }
    }
}

impl RefreshPolicy {
    /// The delay before the next lookup, before jitter.
    ///
    /// A TTL is clamped to `[min_refresh, max_refresh]` (TTL 0 gives
    /// `min_refresh`); a negative TTL likewise, `min_refresh` when the server
    /// gave none; transient failures back off exponentially from
    /// `backoff_base`, doubling up to `backoff_max`.
    pub(crate) fn base_delay(&self, outcome: Lookup) -> Duration {
        let clamp = |d: Duration| {
            d.max(self.min_refresh)
                .min(self.max_refresh.max(self.min_refresh))
        };
        match outcome {
            Lookup::Answer { ttl } => clamp(ttl),
            Lookup::NoRecords { negative_ttl } => clamp(negative_ttl.unwrap_or(self.min_refresh)),
            Lookup::Failed { failures } => {
                let doublings = failures.saturating_sub(1).min(31);
                self.backoff_base
                    .saturating_mul(1u32 << doublings)
                    .min(self.backoff_max.max(self.backoff_base))
            }
        }
    }

    /// The delay before the next lookup: [`base_delay`](Self::base_delay)
    /// scaled by `1 + jitter × (2r − 1)` for `r` in `[0, 1)`, i.e. ±`jitter`.
    pub(crate) fn delay_after(&self, outcome: Lookup, r: f64) -> Duration {
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let base = self.base_delay(outcome);
        // `try_from`: a huge configured delay must not overflow (and panic).
        Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + jitter * (2.0 * r - 1.0)))
            .unwrap_or(base)
    }
}

/// A snapshot of the discovery state, for `stats()`.
#[derive(Debug, Clone)]
pub struct DiscoveryStats {
    /// The target, as displayed.
    pub target: String,
    /// When the last lookup finished, successful or not.
    pub last_refresh: Option<Instant>,
    /// When the next lookup is due.
    pub next_refresh: Option<Instant>,
    /// The TTL of the last good answer.
    pub ttl: Option<Duration>,
    /// When DNS last confirmed the set with a good answer; the set's age for
    /// [`RefreshPolicy::max_stale`] counts from here.
    pub last_confirmed: Option<Instant>,
    /// The error of the last lookup, if it failed.
    pub last_error: Option<ResolveError>,
    /// Lookups that failed (transient error or no records) in a row.
    pub consecutive_failures: u32,
    /// Total lookups made.
    pub lookups: u64,
    /// Lookups, among `lookups`, that [`Discovery::resolve_now`] brought forward.
    pub early_lookups: u64,
    /// Incremented every time the published set changes.
    pub generation: u64,
    /// The number of endpoints in the published set.
    pub endpoints: usize,
}

/// A running discovery: the published endpoint set and the state behind it.
///
/// Created with [`Discovery::spawn`], which starts the refresh task on the
/// current tokio runtime. Cloning is cheap; clones share the task, which stops
/// when the last clone is dropped (receivers from [`watch`](Self::watch) then
/// see the channel close).
#[derive(Debug, Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
    sets: watch::Receiver<EndpointSet>,
}

#[derive(Debug)]
struct Shared {
    target: Target,
    stats: Arc<Mutex<DiscoveryStats>>,
    /// Woken by `resolve_now`; holds at most one permit, so requests coalesce.
    wake: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

// ===== impl Discovery =====

impl Discovery {
    /// Starts discovering `target` with `resolver` and the default [`RefreshPolicy`].
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(target: Target, resolver: Arc<dyn Resolve>) -> Discovery {
        Self::spawn_with_policy(target, resolver, RefreshPolicy::default())
    }

    /// Starts discovering `target` with `resolver` and `policy`.
    ///
    /// The first lookup starts at once; until it succeeds the set is empty.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn_with_policy(
        target: Target,
        resolver: Arc<dyn Resolve>,
        policy: RefreshPolicy,
    ) -> Discovery {
        let (tx, rx) = watch::channel(EndpointSet::default());
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(Mutex::new(DiscoveryStats {
            target: target.to_string(),
            last_refresh: None,
            next_refresh: None,
            ttl: None,
            last_confirmed: None,
            last_error: None,
            consecutive_failures: 0,
            lookups: 0,
            early_lookups: 0,
            generation: 0,
            endpoints: 0,
        }));
        let refresh = Refresh {
            target: target.clone(),
            resolver,
            policy,
            sets: tx,
            stats: stats.clone(),
            wake: wake.clone(),
            had_answer: false,
            last_confirmed: None,
            warn_gate: WarnGate::new(),
        };
        let task = tokio::spawn(refresh.run()).abort_handle();
        Discovery {
            shared: Arc::new(Shared {
                target,
                stats,
                wake,
                task,
            }),
            sets: rx,
        }
    }

    /// The target being discovered.
    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The current endpoint set (empty until the first good answer).
    pub fn endpoints(&self) -> EndpointSet {
        self.sets.borrow().clone()
    }

    /// A receiver that sees every published set; for users outside tower.
    ///
    /// A new set is published only when it differs from the previous one.
    pub fn watch(&self) -> watch::Receiver<EndpointSet> {
        self.sets.clone()
    }

    /// A snapshot of the discovery state.
    pub fn stats(&self) -> DiscoveryStats {
        lock(&self.shared.stats).clone()
    }

    /// Asks for a lookup soon instead of at the end of the TTL, as gRPC's
    /// `ResolveNow` does: for when a pod refuses connections, resets them or
    /// sends GOAWAY, which usually means it is gone and DNS may know.
    ///
    /// Never blocks and needs no runtime, so it can be called from any
    /// thread, as often as failures happen. Requests coalesce: the lookup
    /// they cause starts no sooner than
    /// [`RefreshPolicy::resolve_now_interval`] after the previous one, and
    /// during a transient-failure backoff they wait for the backoff's retry.
    /// The set it finds is published as usual, through [`watch`](Self::watch).
    pub fn resolve_now(&self) {
        // One stored permit at most: a thousand calls wake the task once.
        self.shared.wake.notify_one();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `at + delay`, or about a year later where that would overflow: a policy
/// with absurd durations sleeps long instead of panicking.
fn later(at: Instant, delay: Duration) -> Instant {
    at.checked_add(delay)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

// ===== impl Refresh =====

/// How long warnings about a failing lookup stay quiet after one was logged.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

struct Refresh {
    target: Target,
    resolver: Arc<dyn Resolve>,
    policy: RefreshPolicy,
    sets: watch::Sender<EndpointSet>,
    stats: Arc<Mutex<DiscoveryStats>>,
    wake: Arc<Notify>,
    had_answer: bool,
    /// When the last good answer arrived, for `max_stale`.
    last_confirmed: Option<Instant>,
    warn_gate: WarnGate,
}

impl Refresh {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let span = crate::metrics::dns_span(&self.target);
            let result = match tracing::Instrument::instrument(
                tokio::time::timeout(
                    self.policy.lookup_timeout,
                    self.resolver.resolve(&self.target),
                ),
                span.clone(),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(ResolveError::Timeout {
                    name: self.target.to_string(),
                }),
            };
            crate::metrics::dns_lookup(&span, &self.target, &result, started.elapsed());
            // Not held across the wait below (an `Entered` guard is not `Send`).
            let in_span = span.enter();
            let outcome = match &result {
                Ok(Resolution { ttl, .. }) => Lookup::Answer { ttl: *ttl },
                Err(e) if e.is_no_records() => Lookup::NoRecords {
                    negative_ttl: e.negative_ttl(),
                },
                Err(_) => Lookup::Failed {
                    failures: failures + 1,
                },
            };
            failures = match outcome {
                Lookup::Answer { .. } => 0,
                _ => failures + 1,
            };
            let mut delay = self.policy.delay_after(outcome, fastrand::f64());
            let now = Instant::now();
            let (ttl, error) = match result {
                Ok(resolution) => {
                    self.had_answer = true;
                    self.last_confirmed = Some(now);
                    self.publish(resolution.endpoints);
                    (Some(resolution.ttl), None)
                }
                Err(e) => {
                    // Look again no later than when a kept set turns
                    // stale, so that it is cleared on time.
                    if e.is_no_records()
                        && let Some(fresh_for) = self.no_records(now)
                    {
                        delay = delay.min(fresh_for);
                    }
                    self.report(&e, failures, now);
                    (None, Some(e))
                }
            };
            let due = later(now, delay);
            {
                let mut stats = lock(&self.stats);
                stats.last_refresh = Some(now);
                stats.next_refresh = Some(due);
                if ttl.is_some() {
                    stats.ttl = ttl;
                }
                stats.last_confirmed = self.last_confirmed;
                stats.last_error = error;
                stats.consecutive_failures = failures;
                stats.lookups += 1;
                stats.endpoints = self.sets.borrow().len();
                crate::metrics::dns_endpoints(&self.target, stats.endpoints);
            }
            tracing::trace!(target = %self.target, ?delay, "next DNS refresh scheduled");
            drop(in_span);
            let backing_off = matches!(outcome, Lookup::Failed { .. });
            self.wait(due, started, backing_off).await;
        }
    }

    /// An NXDOMAIN or empty answer: clears the set when the policy says so,
    /// when there never was a good answer, or when the kept set is older than
    /// `max_stale`. Returns how long a kept set stays fresh, if it is kept
    /// with a bound.
    fn no_records(&mut self, now: Instant) -> Option<Duration> {
        if self.policy.empty_answer == EmptyAnswer::Clear || !self.had_answer {
            self.publish(BTreeSet::new());
            return None;
        }
        let max_stale = self.policy.max_stale?;
        // `had_answer` implies a confirmation time; `now` if ever it had none.
        let age = now.saturating_duration_since(self.last_confirmed.unwrap_or(now));
        if age < max_stale {
            return Some(max_stale - age);
        }
        if !self.sets.borrow().is_empty() {
            tracing::warn!(
                target = %self.target,
                ?age,
                ?max_stale,
                "DNS has no records for the target and last confirmed its endpoints longer \
                 than max_stale ago; clearing the endpoint set"
            );
        }
        self.publish(BTreeSet::new());
        None
    }

    /// Sleeps until `due`, or less when [`Discovery::resolve_now`] asks: then
    /// until `resolve_now_interval` after `last_start` (the start of the lookup
    /// just made), unless that is later than `due`. During a backoff
    /// (`backing_off`) requests are absorbed by the scheduled retry.
    async fn wait(&self, due: Instant, last_start: Instant, backing_off: bool) {
        let mut deadline = due;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = self.wake.notified() => {
                    if backing_off {
                        continue;
                    }
                    let earliest = later(last_start, self.policy.resolve_now_interval)
                        .max(Instant::now());
                    if earliest < deadline {
                        deadline = earliest;
                        lock(&self.stats).next_refresh = Some(deadline);
                        tracing::trace!(target = %self.target, ?deadline, "early DNS refresh requested");
                    }
                }
            }
        }
        if deadline < due {
            lock(&self.stats).early_lookups += 1;
        }
    }

    /// Publishes `new` if it differs from the current set.
    fn publish(&mut self, new: BTreeSet<SocketAddr>) {
        let diff = SetDiff::between(&self.sets.borrow(), &new);
        if diff.is_empty() {
            return;
        }
        for addr in &diff.inserted {
            tracing::debug!(target = %self.target, endpoint = %addr, "endpoint added");
        }
        for addr in &diff.removed {
            tracing::debug!(target = %self.target, endpoint = %addr, "endpoint removed");
        }
        // `send_replace` publishes even when every receiver is gone for now:
        // a later `watch()` must still see the current set.
        self.sets.send_replace(Arc::new(new));
        lock(&self.stats).generation += 1;
    }

    /// Logs a failed lookup: at warn at most once per [`WARN_INTERVAL`], else at debug.
    fn report(&self, error: &ResolveError, failures: u32, now: Instant) {
        warn_or_debug!(
            self.warn_gate.allow(now, WARN_INTERVAL),
            target = %self.target,
            %error,
            failures,
            endpoints = self.sets.borrow().len(),
            "DNS lookup failed; keeping the last good endpoint set"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Lookup, RefreshPolicy};

    #[test]
    fn jitter_stays_within_ten_percent_both_ways() {
        let p = RefreshPolicy::default();
        let ttl = Lookup::Answer {
            ttl: Duration::from_secs(10),
        };
        assert_eq!(p.delay_after(ttl, 0.0), Duration::from_secs(9));
        assert_eq!(p.delay_after(ttl, 0.5), Duration::from_secs(10));
        for i in 0..1000 {
            let d = p.delay_after(ttl, i as f64 / 1000.0);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
        // Bad inputs neither panic nor escape the bounds.
        let weird = RefreshPolicy {
            jitter: f64::NAN,
            ..p.clone()
        };
        assert_eq!(
            weird.delay_after(ttl, f64::INFINITY),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_thirty() {
        let p = RefreshPolicy::default();
        let delays: Vec<u64> = (1..=8)
            .map(|failures| p.base_delay(Lookup::Failed { failures }).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            p.base_delay(Lookup::Failed { failures: u32::MAX }),
            Duration::from_secs(30)
        );
    }
}
