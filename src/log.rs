//! Log lines that repeat while a failure lasts: at warn at most once per interval, else at debug.
//!
//! A pod that keeps failing or a DNS server that stays down must not flood
//! the log, yet the first line of every episode must reach an operator who
//! logs at warn. [`WarnGate`] decides; [`warn_or_debug!`] logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one warning through per interval; lock-free, shared by reference.
#[derive(Debug)]
pub(crate) struct WarnGate {
    epoch: Instant,
    /// When the last warning passed, in nanoseconds since `epoch`, offset
    /// by one interval so that the first warning passes.
    last_ns: AtomicU64,
}

// ===== impl WarnGate =====

impl WarnGate {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    /// True at most once per `interval` (which a caller keeps the same for a
    /// gate): the caller logs at warn then, else at debug.
    pub(crate) fn allow(&self, now: Instant, interval: Duration) -> bool {
        let now_ns = nanos(now.saturating_duration_since(self.epoch) + interval);
        let last = self.last_ns.load(Ordering::Relaxed);
        now_ns.saturating_sub(last) >= nanos(interval)
            && self
                .last_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for WarnGate {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `tracing::warn!` when the gate lets it through, else `tracing::debug!`,
/// with the same fields and message:
/// `warn_or_debug!(gate.allow(now, interval), endpoint = %addr, "failed")`.
macro_rules! warn_or_debug {
    ($allowed:expr, $($event:tt)+) => {
        if $allowed {
            tracing::warn!($($event)+);
        } else {
            tracing::debug!($($event)+);
        }
    };
}
pub(crate) use warn_or_debug;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval() {
        let gate = WarnGate::new();
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        assert!(gate.allow(start, interval), "the first passes");
        assert!(!gate.allow(start + Duration::from_secs(4), interval));
        assert!(gate.allow(start + Duration::from_secs(5), interval));
        assert!(!gate.allow(start + Duration::from_secs(6), interval));
    }
}
