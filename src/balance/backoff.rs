//! Reconnect delays: exponential, capped, jittered.

use std::time::Duration;

/// Relative jitter of a reconnect delay: ±10 %, as for DNS refreshes, so that
/// clients that lost a pod together do not reconnect in step.
const JITTER: f64 = 0.1;

/// The delay before reconnect attempt number `failures` (1 after the first
/// failure): `base × 2^(failures-1)`, at most `max`, jittered by ±10 % with
/// `unit` (uniform in `0..1`) and never above `max`.
pub(crate) fn delay(failures: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let raw = base.checked_mul(1 << doublings).unwrap_or(max).min(max);
    raw.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn doubles_from_base_to_max() {
        assert_eq!(delay(1, BASE, MAX, 0.5), BASE);
        assert_eq!(delay(2, BASE, MAX, 0.5), BASE * 2);
        assert_eq!(delay(4, BASE, MAX, 0.5), BASE * 8);
        assert_eq!(delay(8, BASE, MAX, 0.5), MAX);
        assert_eq!(delay(u32::MAX, BASE, MAX, 0.5), MAX);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_under_max() {
        assert_eq!(delay(1, BASE, MAX, 0.0), Duration::from_millis(90));
        assert_eq!(delay(1, BASE, MAX, 1.0), Duration::from_millis(110));
        assert_eq!(delay(30, BASE, MAX, 1.0), MAX);
    }
}
