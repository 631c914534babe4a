//! Peak-EWMA round-trip-time estimate of one endpoint, readable without a lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

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
/// Two departures from Finagle, both about evidence outweighing guesses:
///
/// - The starting value is a prior, not a measurement: the first observed
///   RTT replaces it, and until then [`PeakEwma::measured_ns`] says there
///   is none, so that P2C can compare an unmeasured endpoint by its pending
///   requests alone. Otherwise a busy endpoint keeps the prior (30 ms by
///   default) for most of the decay period whatever it measures, because
///   the weight of an observation depends only on the time since the last
///   one: at 1 000 responses a second each moves the estimate by 0.01 %.
/// - For the same reason a lower RTT moves the estimate by at least
///   [`MIN_WEIGHT`] of the gap, as much as it would at one response per
///   `decay / 10`. A busy endpoint forgets a one-off peak after a few dozen
///   fast responses instead of holding it for seconds, while a steadily
///   slow endpoint keeps a high estimate, since each slow response is a new
///   peak.
///
/// And one addition, about an endpoint nobody picks: a probe. Once an
/// estimate has gone [`probe_interval`](PeakEwma::probe_due) without an
/// observation and the endpoint has no request in flight, P2C compares it
/// by pending requests alone, as if unmeasured, so one request goes to it,
/// and that request's RTT replaces the estimate instead of being averaged
/// in. A pod that hung for two seconds and recovered thus gets its share
/// back about `decay / 10` later, instead of after its 2 s peak decays
/// below its peers' 1 ms (about 50 s at the default 10 s decay); a pod that
/// is still slow answers the probe slowly and keeps its high estimate. The
/// interval starts at `decay / 10` and doubles with every probe, up to
/// `4 × decay`, until the endpoint wins a pick on its estimate again; so a
/// pod that stays slow, or hung, costs a probe at 1, 3, 7, 15 … s and then
/// one per 40 s, a vanishing share at any request rate. Some estimates tell
/// of a moment more than of the pod's speed: one raised by the pod's
/// silence (a request given up unanswered, a caller's deadline: see
/// [`observe_silence`](PeakEwma::observe_silence)), and a spike, an answer
/// [`SPIKE`] times the estimate or more (the requests a GC pause held). For
/// those the probe interval is the estimate itself (at least 1 ms): a pod
/// that paused for 80 ms is asked again about 80 ms after its last answer,
/// not a second later, and rejoins soon after a short stall ends; one that
/// stays silent is asked at intervals that grow with its silence, and one
/// that stays slow answers the probe slowly, which is no spike any more,
/// and is back on the `decay / 10` schedule.
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
    /// Set by the first observation.
    measured: AtomicBool,
    /// The next observation replaces the estimate: it answers a probe.
    probing: AtomicBool,
    /// The estimate tells of a moment more than of the pod's speed: the
    /// pod's silence (a request given up unanswered), or a spike (an answer
    /// [`SPIKE`] times the estimate or more: a pause, a stall). The probe
    /// interval is then the estimate itself, if that is shorter.
    momentary: AtomicBool,
    /// Nanoseconds since `epoch` when the last probe was sent.
    probed_ns: AtomicU64,
    /// How many times the probe interval doubled since the endpoint last
    /// competed: the interval is `decay / 10` × 2^this, at most `4 × decay`.
    /// A count rather than the interval itself: one byte where eight would
    /// not fit in the padding (an estimate per endpoint, see `Endpoint`).
    probe_doublings: AtomicU8,
    update: Mutex<()>,
}

/// The least weight a lower RTT gets against the estimate, whatever the time
/// since the previous observation (see [`PeakEwma`]).
pub(crate) const MIN_WEIGHT: f64 = 0.1;

/// An answer at least this many times the estimate is a spike, which tells
/// of a moment (a pause, a stall) more than of the pod's speed: the pod is
/// probed again after as long as the spike (see [`PeakEwma`]).
const SPIKE: f64 = 4.0;

/// The shortest probe interval of a momentary estimate.
const MIN_MOMENTARY_PROBE: Duration = Duration::from_millis(1);

/// What [`PeakEwma::fold`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// A round-trip time.
    Answer,
    /// A lower bound of one.
    Bound,
    /// A lower bound that is the pod's silence.
    Silence,
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
            measured: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            momentary: AtomicBool::new(false),
            probed_ns: AtomicU64::new(0),
            probe_doublings: AtomicU8::new(0),
            update: Mutex::new(()),
        }
    }

    fn base_probe_ns(&self) -> u64 {
        (self.decay_ns / 10.0) as u64
    }

    fn max_probe_ns(&self) -> u64 {
        (self.decay_ns * 4.0) as u64
    }

    /// The current probe interval in nanoseconds: `decay / 10` doubled per
    /// probe, at most `4 × decay`; for a momentary estimate (a silence, a
    /// spike), the estimate itself (at least [`MIN_MOMENTARY_PROBE`]) if
    /// shorter: a silence grows from one probe given up to the next, and a
    /// spike answered again is no longer one, so neither needs more
    /// backing off.
    fn probe_interval_ns(&self) -> u64 {
        let doublings = self.probe_doublings.load(Ordering::Relaxed);
        let interval = self
            .base_probe_ns()
            .saturating_mul(1 << doublings.min(63))
            .min(self.max_probe_ns());
        if self.momentary.load(Ordering::Relaxed) {
            let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed)) as u64;
            interval.min(rtt.max(MIN_MOMENTARY_PROBE.as_nanos() as u64))
        } else {
            interval
        }
    }

    /// True when the endpoint, idle (`pending == 0`), is due a probe: it was
    /// measured, nothing was observed for the probe interval, and the last
    /// probe is at least that long ago.
    #[cfg(test)]
    pub(crate) fn probe_due(&self, pending: usize, now: Instant) -> bool {
        self.probe_due_at(pending, self.since_epoch(now))
    }

    /// [`probe_due`](Self::probe_due) at `now_ns` ([`since_epoch`](Self::since_epoch)).
    pub(crate) fn probe_due_at(&self, pending: usize, now_ns: u64) -> bool {
        if pending != 0 || !self.measured.load(Ordering::Relaxed) {
            return false;
        }
        let interval = self.probe_interval_ns();
        let quiet_since = self
            .stamp_ns
            .load(Ordering::Relaxed)
            .max(self.probed_ns.load(Ordering::Relaxed));
        now_ns.saturating_sub(quiet_since) >= interval
    }

    /// The pick chose this endpoint as a probe: its next observation
    /// replaces the estimate, and the next probe waits twice as long.
    pub(crate) fn start_probe(&self, now: Instant) {
        self.probing.store(true, Ordering::Relaxed);
        self.probed_ns
            .store(self.since_epoch(now), Ordering::Relaxed);
        // Doubling stops at the longest interval (or at 2^63, should
        // `decay / 10` round to zero), so the count never wraps.
        let doublings = self.probe_doublings.load(Ordering::Relaxed);
        if doublings < 63 && self.probe_interval_ns() < self.max_probe_ns() {
            self.probe_doublings.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The endpoint won a pick on its measured estimate: it competes again,
    /// so its probe interval is back to the shortest.
    pub(crate) fn competitive(&self) {
        if self.probe_doublings.load(Ordering::Relaxed) != 0 {
            self.probe_doublings.store(0, Ordering::Relaxed);
        }
    }

    /// The estimate at `now`, in nanoseconds.
    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        self.estimate_at(self.since_epoch(now))
    }

    /// [`estimate_ns`](Self::estimate_ns) at `now_ns` ([`since_epoch`](Self::since_epoch)).
    pub(crate) fn estimate_at(&self, now_ns: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(stamp) as f64;
        rtt * decay(elapsed / self.decay_ns)
    }

    /// The estimate at `now` if at least one RTT was observed; `None` while
    /// the estimate is still the prior.
    #[cfg(test)]
    pub(crate) fn measured_ns(&self, now: Instant) -> Option<f64> {
        self.measured_at(self.since_epoch(now))
    }

    /// The estimate at `now_ns` ([`since_epoch`](Self::since_epoch)) if at
    /// least one RTT was observed; `None` while the estimate is still the
    /// prior.
    pub(crate) fn measured_at(&self, now_ns: u64) -> Option<f64> {
        self.measured
            .load(Ordering::Relaxed)
            .then(|| self.estimate_at(now_ns))
    }

    /// Folds one observed round-trip time into the estimate.
    #[cfg(test)]
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        self.observe_at(rtt, self.since_epoch(now));
    }

    /// [`observe`](Self::observe) at `now_ns` ([`since_epoch`](Self::since_epoch)).
    pub(crate) fn observe_at(&self, rtt: Duration, now_ns: u64) {
        self.fold(rtt, now_ns, Fold::Answer);
    }

    /// Folds in a lower bound of a round-trip time (a hedged copy that lost
    /// its race): it can raise the estimate, as a peak, but never lower it,
    /// and a bound below the estimate is no measurement.
    pub(crate) fn observe_at_least(&self, bound: Duration, now: Instant) {
        self.fold(bound, self.since_epoch(now), Fold::Bound);
    }

    /// Folds in how long the pod has been silent, as
    /// [`observe_at_least`](Self::observe_at_least) does a bound (a request
    /// given up unanswered); an estimate it raises is probed after as long
    /// as itself.
    pub(crate) fn observe_silence(&self, silence: Duration, now: Instant) {
        self.fold(silence, self.since_epoch(now), Fold::Silence);
    }

    /// Forgets every observation: the estimate is `prior` again, unmeasured.
    pub(crate) fn reset(&self, prior: Duration, now: Instant) {
        let _serialise = lock(&self.update);
        self.rtt_ns.store(nanos(prior).to_bits(), Ordering::Relaxed);
        self.stamp_ns
            .store(self.since_epoch(now), Ordering::Relaxed);
        self.measured.store(false, Ordering::Relaxed);
        self.probing.store(false, Ordering::Relaxed);
        self.momentary.store(false, Ordering::Relaxed);
        self.probe_doublings.store(0, Ordering::Relaxed);
    }

    fn fold(&self, rtt: Duration, now_ns: u64, kind: Fold) {
        let lower_bound = kind != Fold::Answer;
        let _serialise = lock(&self.update);
        let prior = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let rtt = nanos(rtt);
        // A probe's answer (or its abandonment) ends the probe.
        // (Loaded first: a swap is a locked write on every response.)
        let probe = self.probing.load(Ordering::Relaxed)
            && self.probing.swap(false, Ordering::Relaxed)
            && !lower_bound;
        let measured = self.measured.load(Ordering::Relaxed);
        let first = !measured || probe;
        let kept = decay(now_ns.saturating_sub(stamp) as f64 / self.decay_ns);
        let next = if lower_bound && rtt <= prior * kept {
            return;
        } else if first || rtt > prior || lower_bound {
            rtt
        } else {
            let keep = kept.min(1.0 - MIN_WEIGHT);
            prior * keep + rtt * (1.0 - keep)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now_ns, Ordering::Relaxed);
        if first {
            self.measured.store(true, Ordering::Relaxed);
        }
        // A spike is measured against a measured estimate only (the prior
        // is a guess). Only a probe's answer says the moment is over (or
        // not); other answers leave the estimate's kind as it was, since
        // the requests a pause held come back together, in any order.
        let spike = measured && rtt >= prior * kept * SPIKE;
        let momentary = match kind {
            Fold::Silence => Some(true),
            Fold::Bound => Some(false),
            Fold::Answer if probe || spike => Some(spike),
            Fold::Answer => None,
        };
        if let Some(momentary) = momentary
            && self.momentary.load(Ordering::Relaxed) != momentary
        {
            self.momentary.store(momentary, Ordering::Relaxed);
        }
    }

    /// Nanoseconds from the estimate's creation to `now`: the endpoint's
    /// clock, which its other timestamps share (see `Load`). Read once per
    /// step of a request and passed to the `*_at` methods: the conversion
    /// costs more than the arithmetic it feeds.
    pub(crate) fn since_epoch(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years.
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// A duration in nanoseconds, as `f64`.
/// `e^-x` for `x ≥ 0`: the weight an estimate keeps after `x` decay times.
///
/// Between two requests to a pod `x` is tiny (microseconds over a 10 s
/// decay: 1e-7), and there the first three terms of the series are exact
/// to within `x³/6` (below 2e-10 for `x < 1e-3`) and cost a fraction of
/// `exp`, which is called twice per pick and once per response.
pub(crate) fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x * (1.0 - 0.5 * x)
    } else {
        (-x).exp()
    }
}

pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[test]
    fn decay_is_e_to_the_minus_x() {
        for x in [0.0, 1e-9, 1e-6, 5e-4, 9.99e-4, 1e-3, 0.1, 1.0, 30.0, 1e6] {
            let (got, want) = (decay(x), (-x).exp());
            assert!((got - want).abs() <= want * 1e-9, "x {x}: {got} != {want}");
        }
        assert_eq!(decay(0.0), 1.0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_peak_replaces_the_estimate_at_once() {
        let ewma = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(ewma.estimate_ns(Instant::now()), 100.0 * MS);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_first_observation_replaces_the_prior() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        assert_eq!(ewma.measured_ns(Instant::now()), None);
        assert_eq!(ewma.estimate_ns(Instant::now()), 30.0 * MS);
        ewma.observe(Duration::from_millis(3), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(3.0 * MS));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_lower_rtt_moves_the_estimate_by_the_elapsed_weight() {
        let ewma = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(100), Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        ewma.observe(Duration::from_millis(10), Instant::now());
        let w = (-1.0f64).exp();
        let want = 100.0 * MS * w + 10.0 * MS * (1.0 - w);
        assert!((ewma.estimate_ns(Instant::now()) - want).abs() < 1.0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn back_to_back_fast_responses_wear_a_peak_down() {
        let ewma = PeakEwma::new(Duration::from_millis(3), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(3), Instant::now());
        ewma.observe(Duration::from_millis(30), Instant::now());
        // No time passes: the time weight alone would keep the 30 ms peak.
        for _ in 0..30 {
            ewma.observe(Duration::from_millis(3), Instant::now());
        }
        let want = 3.0 * MS + 27.0 * MS * (1.0 - MIN_WEIGHT).powi(30);
        let got = ewma.estimate_ns(Instant::now());
        assert!((got - want).abs() < 1.0, "{got} != {want}");
        assert!(got < 4.2 * MS, "{got}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_steadily_slow_endpoint_keeps_its_estimate() {
        let ewma = PeakEwma::new(Duration::from_millis(3), Duration::from_secs(10));
        for _ in 0..30 {
            ewma.observe(Duration::from_millis(50), Instant::now());
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        let got = ewma.estimate_ns(Instant::now());
        assert!(got > 49.0 * MS, "{got}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_lower_bound_only_ever_raises_the_estimate() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe_at_least(Duration::from_micros(50), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), None, "no measurement");
        ewma.observe(Duration::from_millis(5), Instant::now());
        ewma.observe_at_least(Duration::from_millis(1), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(5.0 * MS));
        ewma.observe_at_least(Duration::from_millis(80), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(80.0 * MS));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_reset_forgets_the_observations() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_secs(5), Instant::now());
        ewma.reset(Duration::from_millis(2), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), None);
        assert_eq!(ewma.estimate_ns(Instant::now()), 2.0 * MS);
        ewma.observe(Duration::from_millis(3), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(3.0 * MS));
    }

    /// Advances the paused clock to just before `after` from now, where no
    /// probe is due yet, then to `after`, where one is.
    async fn assert_probe_due_after(ewma: &PeakEwma, after: Duration, why: &str) {
        tokio::time::advance(after - Duration::from_nanos(1)).await;
        assert!(!ewma.probe_due(0, Instant::now()), "too soon: {why}");
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(ewma.probe_due(0, Instant::now()), "{why}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_measured_endpoint_is_due_a_probe_after_a_tenth_of_the_decay() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        assert!(!ewma.probe_due(0, Instant::now()), "unmeasured: no probe");
        ewma.observe(Duration::from_secs(2), Instant::now());
        assert_probe_due_after(&ewma, Duration::from_secs(1), "a tenth of the decay").await;
        assert!(
            !ewma.probe_due(1, Instant::now()),
            "not with a request in flight"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_estimate_raised_by_silence_is_due_a_probe_after_itself() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(2), Instant::now());
        ewma.observe_silence(Duration::from_millis(80), Instant::now());
        assert_probe_due_after(
            &ewma,
            Duration::from_millis(80),
            "80 ms after an 80 ms bound",
        )
        .await;
        // Given up again, later: the interval is the new, longer bound,
        // whatever the probes so far.
        ewma.start_probe(Instant::now());
        ewma.observe_silence(Duration::from_millis(300), Instant::now());
        assert_probe_due_after(&ewma, Duration::from_millis(300), "the new bound").await;
        // A slow answer to a probe is a measurement: back on the `decay /
        // 10` schedule (4 s after two probes).
        ewma.start_probe(Instant::now());
        ewma.observe(Duration::from_millis(500), Instant::now());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(
            !ewma.probe_due(0, Instant::now()),
            "an answer: not before 1 s"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_spike_is_probed_after_itself_and_a_steady_slowness_after_a_tenth_of_the_decay() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(2), Instant::now());
        // The requests an 80 ms pause held, answered together.
        ewma.observe(Duration::from_millis(80), Instant::now());
        ewma.observe(Duration::from_millis(60), Instant::now());
        let estimate = ewma.estimate_ns(Instant::now());
        assert_probe_due_after(
            &ewma,
            Duration::from_nanos(estimate as u64),
            "about 80 ms after the spike",
        )
        .await;
        // The probe finds the pod slow still: 40 ms is no spike against
        // 78 ms, and the next probe is on the slow schedule.
        ewma.start_probe(Instant::now());
        ewma.observe(Duration::from_millis(40), Instant::now());
        assert_probe_due_after(&ewma, Duration::from_secs(2), "2 s after one probe").await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_steadily_slow_pod_is_no_spike() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        for _ in 0..3 {
            ewma.observe(Duration::from_millis(42), Instant::now());
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!ewma.probe_due(0, Instant::now()), "not before 1 s");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_probes_answer_replaces_the_estimate() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_secs(2), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        ewma.start_probe(Instant::now());
        ewma.observe(Duration::from_millis(1), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(MS));
        // Only the probe's answer: the next one is averaged in again.
        ewma.observe(Duration::from_micros(500), Instant::now());
        let got = ewma.estimate_ns(Instant::now());
        assert!(got > 0.5 * MS && got < MS, "{got}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_abandoned_probe_raises_the_estimate_and_ends_the_probe() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(200), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        ewma.start_probe(Instant::now());
        ewma.observe_at_least(Duration::from_millis(500), Instant::now());
        assert_eq!(ewma.measured_ns(Instant::now()), Some(500.0 * MS));
        ewma.observe(Duration::from_millis(1), Instant::now());
        let got = ewma.estimate_ns(Instant::now());
        assert!(got > 400.0 * MS, "averaged, not replaced: {got}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn probes_back_off_up_to_four_decays_until_the_endpoint_competes() {
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        ewma.observe(Duration::from_secs(1), Instant::now());
        let mut gaps = Vec::new();
        let mut last = Instant::now();
        for _ in 0..8 {
            while !ewma.probe_due(0, Instant::now()) {
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            gaps.push((Instant::now() - last).as_secs());
            last = Instant::now();
            ewma.start_probe(Instant::now());
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 40, 40]);
        ewma.competitive();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ewma.probe_due(0, Instant::now()), "back to 1 s");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_estimate_decays_towards_zero() {
        let ewma = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let got = ewma.estimate_ns(Instant::now());
        assert!((got - 100.0 * MS * (-1.0f64).exp()).abs() < 1.0, "{got}");
    }
}
