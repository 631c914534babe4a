//! Peak-EWMA round-trip-time estimate of one endpoint, readable without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A peak-sensitive, exponentially weighted moving average of response times.
///
/// This is [Finagle]'s `PeakEwma` (also tower's and linkerd2-proxy's): an RTT
/// above the estimate replaces it at once, so a slowing endpoint is avoided
/// immediately; an RTT below it moves the estimate down with weight
/// `1 - exp(-elapsed / decay)`, so a recovering endpoint is trusted gradually.
/// Reading the estimate decays it towards zero over the time since the last
/// observation (Finagle's `get` does the same), so that an endpoint nobody
/// picks because of an old peak is eventually probed again.
///
/// Cost: a read is two relaxed atomic loads and an `exp`; no lock. Writes
/// (one per response) serialise on a per-endpoint mutex so that concurrent
/// responses do not lose updates. A reader may see a new estimate with the
/// previous timestamp, which makes its load look slightly lower for one pick:
/// harmless for a load heuristic, and the price of lock-free picks.
///
/// [Finagle]: https://github.com/twitter/finagle/blob/develop/finagle-core/src/main/scala/com/twitter/finagle/loadbalancer/PeakEwma.scala
#[derive(Debug)]
pub(crate) struct PeakEwma {
    epoch: Instant,
    decay_ns: f64,
    /// `f64` bits of the estimate in nanoseconds, as of `stamp_ns`.
    rtt_ns: AtomicU64,
    /// Nanoseconds since `epoch` of the last observation.
    stamp_ns: AtomicU64,
    update: Mutex<()>,
}

// ===== impl PeakEwma =====

impl PeakEwma {
    /// Starts from `initial`, decaying over `decay`.
    pub(crate) fn new(initial: Duration, decay: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            decay_ns: nanos(decay).max(1.0),
            rtt_ns: AtomicU64::new(nanos(initial).to_bits()),
            stamp_ns: AtomicU64::new(0),
            update: Mutex::new(()),
        }
    }

    /// The estimate at `now`, in nanoseconds.
    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let elapsed = self.since_epoch(now).saturating_sub(stamp) as f64;
        rtt * (-elapsed / self.decay_ns).exp()
    }

    /// Folds one observed round-trip time into the estimate.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        let _serialise = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let prior = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let now_ns = self.since_epoch(now);
        let rtt = nanos(rtt);
        let next = if rtt > prior {
            rtt
        } else {
            let elapsed = now_ns.saturating_sub(stamp) as f64;
            let weight = (-elapsed / self.decay_ns).exp();
            prior * weight + rtt * (1.0 - weight)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now_ns, Ordering::Relaxed);
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years.
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// A duration in nanoseconds, as `f64`.
pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_peak_replaces_the_estimate_at_once() {
        let ewma = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(ewma.estimate_ns(Instant::now()), 100.0 * MS);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_lower_rtt_moves_the_estimate_by_the_elapsed_weight() {
        let ewma = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        ewma.observe(Duration::from_millis(10), Instant::now());
        let w = (-1.0f64).exp();
        let want = 100.0 * MS * w + 10.0 * MS * (1.0 - w);
        assert!((ewma.estimate_ns(Instant::now()) - want).abs() < 1.0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_estimate_decays_towards_zero() {
        let ewma = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let got = ewma.estimate_ns(Instant::now());
        assert!((got - 100.0 * MS * (-1.0f64).exp()).abs() < 1.0, "{got}");
    }
}
