//! The refresh schedule: when to look up again, and what set to publish.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// Relative jitter applied to every delay [0.1, i.e. ±10 %].
    pub jitter: f64,
    /// First retry delay after a transient error [1 s].
    pub backoff_base: Duration,
    /// Largest retry delay [30 s].
    pub backoff_max: Duration,
    /// What an NXDOMAIN or empty answer does to the set [`EmptyAnswer::KeepLastGood`].
    pub empty_answer: EmptyAnswer,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
            jitter: 0.1,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            empty_answer: EmptyAnswer::KeepLastGood,
        }
    }
}

/// A snapshot of the discovery state, for `stats()`.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStats {
    /// The target, as displayed.
    pub target: String,
    /// When the last lookup finished (successful or not).
    pub last_refresh: Option<std::time::SystemTime>,
    /// When the next lookup is due.
    pub next_refresh: Option<std::time::SystemTime>,
    /// The TTL of the last good answer.
    pub ttl: Option<Duration>,
    /// The error of the last lookup, if it failed.
    pub last_error: Option<crate::error::ResolveError>,
    /// Lookups that failed in a row.
    pub consecutive_failures: u32,
    /// Incremented every time the published set changes.
    pub generation: u64,
    /// The number of endpoints in the published set.
    pub endpoints: usize,
}

/// A running discovery: the published endpoint set and the state behind it.
///
/// Cloning is cheap; clones share one refresh task, which stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Discovery {}
