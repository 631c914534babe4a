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
    slot: WarnSlot,
}

/// A [`WarnGate`] without a clock of its own, for a struct that keeps one:
/// the caller passes the time since its epoch (an endpoint's, which has many
/// of them, saves the 16 bytes of a second `Instant`).
#[derive(Debug)]
pub(crate) struct WarnSlot {
    /// When the last warning passed, in nanoseconds since the owner's epoch,
    /// offset by one interval so that the first warning passes.
    last_ns: AtomicU64,
}

// ===== impl WarnGate =====

impl WarnGate {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slot: WarnSlot::new(),
        }
    }

    /// True at most once per `interval` (which a caller keeps the same for a
    /// gate): the caller logs at warn then, else at debug.
    pub(crate) fn allow(&self, now: Instant, interval: Duration) -> bool {
        self.slot
            .allow(nanos(now.saturating_duration_since(self.epoch)), interval)
    }
}

impl Default for WarnGate {
    fn default() -> Self {
        Self::new()
    }
}

// ===== impl WarnSlot =====

impl WarnSlot {
    pub(crate) fn new() -> Self {
        Self {
            last_ns: AtomicU64::new(0),
        }
    }

    /// [`WarnGate::allow`] at `now_ns`, nanoseconds since the owner's epoch.
    pub(crate) fn allow(&self, now_ns: u64, interval: Duration) -> bool {
        let interval = nanos(interval);
        let now_ns = now_ns.saturating_add(interval);
        let last = self.last_ns.load(Ordering::Relaxed);
        now_ns.saturating_sub(last) >= interval
            && self
                .last_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
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
