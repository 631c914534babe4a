//! The refresh loop: when to look up again, and which set to publish.
//!
//! One task per [`Discovery`] runs `resolve → publish → sleep` forever:
//!
//! ```text
//!            ┌──────── Ok(ttl) ────────► sleep clamp(ttl) ± jitter ───┐
//!  resolve ──┼─ NoRecords(neg ttl) ─────► sleep clamp(neg ttl) ± jitter ┼──► resolve
//!            └─ transient error ────────► sleep backoff(n) ± jitter ───┘
//! ```
//!
//! The delays are pure functions of the outcome ([`RefreshPolicy::delay_after`]),
//! so the schedule is tested exactly with tokio's paused clock.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ResolveError;
use crate::resolve::{Resolution, Resolve};
use crate::target::Target;

use super::diff::SetDiff;

/// A published endpoint set.
pub type EndpointSet = Arc<BTreeSet<SocketAddr>>;

/// What to do when DNS says a name has no records (NXDOMAIN or an empty answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyAnswer {
    /// Keep the last good set: a DNS glitch never empties a working client. The default.
    #[default]
    KeepLastGood,
    /// Remove every endpoint, as Kubernetes means "no ready pods".
    Clear,
}

/// How often to re-resolve and how to back off. Defaults follow DESIGN.md.
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
}

/// The outcome of one lookup, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
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
    pub fn base_delay(&self, outcome: Outcome) -> Duration {
        let clamp = |d: Duration| {
            d.max(self.min_refresh)
                .min(self.max_refresh.max(self.min_refresh))
        };
        match outcome {
            Outcome::Answer { ttl } => clamp(ttl),
            Outcome::NoRecords { negative_ttl } => clamp(negative_ttl.unwrap_or(self.min_refresh)),
            Outcome::Failed { failures } => {
                let doublings = failures.saturating_sub(1).min(31);
                self.backoff_base
                    .saturating_mul(1u32 << doublings)
                    .min(self.backoff_max.max(self.backoff_base))
            }
        }
    }

    /// The delay before the next lookup: [`base_delay`](Self::base_delay)
    /// scaled by `1 + jitter × (2r − 1)` for `r` in `[0, 1)`, i.e. ±`jitter`.
    pub fn delay_after(&self, outcome: Outcome, r: f64) -> Duration {
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
        self.base_delay(outcome)
            .mul_f64(1.0 + jitter * (2.0 * r - 1.0))
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
    /// The error of the last lookup, if it failed.
    pub last_error: Option<ResolveError>,
    /// Lookups that failed (transient error or no records) in a row.
    pub consecutive_failures: u32,
    /// Total lookups made.
    pub lookups: u64,
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
        let stats = Arc::new(Mutex::new(DiscoveryStats {
            target: target.to_string(),
            last_refresh: None,
            next_refresh: None,
            ttl: None,
            last_error: None,
            consecutive_failures: 0,
            lookups: 0,
            generation: 0,
            endpoints: 0,
        }));
        let refresh = Refresh {
            target: target.clone(),
            resolver,
            policy,
            sets: tx,
            stats: stats.clone(),
            had_answer: false,
            last_warn: None,
        };
        let task = tokio::spawn(refresh.run()).abort_handle();
        Discovery {
            shared: Arc::new(Shared {
                target,
                stats,
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
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(stats: &Mutex<DiscoveryStats>) -> std::sync::MutexGuard<'_, DiscoveryStats> {
    // The state is plain data: a panic elsewhere cannot leave it inconsistent.
    stats.lock().unwrap_or_else(|e| e.into_inner())
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
    had_answer: bool,
    last_warn: Option<Instant>,
}

impl Refresh {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let result = match tokio::time::timeout(
                self.policy.lookup_timeout,
                self.resolver.resolve(&self.target),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(ResolveError::Timeout {
                    name: self.target.to_string(),
                }),
            };
            let outcome = match &result {
                Ok(Resolution { ttl, .. }) => Outcome::Answer { ttl: *ttl },
                Err(e) if e.is_no_records() => Outcome::NoRecords {
                    negative_ttl: e.negative_ttl(),
                },
                Err(_) => Outcome::Failed {
                    failures: failures + 1,
                },
            };
            failures = match outcome {
                Outcome::Answer { .. } => 0,
                _ => failures + 1,
            };
            let delay = self.policy.delay_after(outcome, fastrand::f64());
            let now = Instant::now();
            let (ttl, error) = match result {
                Ok(resolution) => {
                    self.had_answer = true;
                    self.publish(resolution.endpoints);
                    (Some(resolution.ttl), None)
                }
                Err(e) => {
                    if e.is_no_records()
                        && (self.policy.empty_answer == EmptyAnswer::Clear || !self.had_answer)
                    {
                        self.publish(BTreeSet::new());
                    }
                    self.report(&e, failures, now);
                    (None, Some(e))
                }
            };
            {
                let mut stats = lock(&self.stats);
                stats.last_refresh = Some(now);
                stats.next_refresh = Some(now + delay);
                if ttl.is_some() {
                    stats.ttl = ttl;
                }
                stats.last_error = error;
                stats.consecutive_failures = failures;
                stats.lookups += 1;
                stats.endpoints = self.sets.borrow().len();
            }
            tracing::trace!(target = %self.target, ?delay, "next DNS refresh scheduled");
            tokio::time::sleep(delay).await;
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
    fn report(&mut self, error: &ResolveError, failures: u32, now: Instant) {
        let quiet = self
            .last_warn
            .is_some_and(|at| now.duration_since(at) < WARN_INTERVAL);
        if quiet {
            tracing::debug!(target = %self.target, %error, failures, "DNS lookup failed");
        } else {
            self.last_warn = Some(now);
            tracing::warn!(
                target = %self.target,
                %error,
                failures,
                endpoints = self.sets.borrow().len(),
                "DNS lookup failed; keeping the last good endpoint set"
            );
        }
    }
}
