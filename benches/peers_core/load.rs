//! The workload: N workers, each sending one request after another through
//! its own fork of a contender, until a deadline or a stop signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::contenders::Sender;

/// Each request fails after this long (counted as an error).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it finished, from the start of the run.
    pub done_at: Duration,
    pub latency: Duration,
    pub ok: bool,
}

/// Runs `concurrency` workers for at most `duration` (or until `stop` is set).
/// Call inside the client's runtime.
pub async fn drive(
    sender: Box<dyn Sender>,
    concurrency: usize,
    duration: Duration,
    stop: Option<Arc<AtomicBool>>,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let stop = stop.unwrap_or_default();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut sender = sender.fork();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok = tokio::time::timeout(REQUEST_TIMEOUT, sender.send())
                        .await
                        .unwrap_or(false);
                    let done = Instant::now();
                    samples.push(Sample {
                        done_at: done - start,
                        latency: done - sent,
                        ok,
                    });
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        if let Ok(samples) = worker.await {
            all.extend(samples);
        }
    }
    Run {
        elapsed: start.elapsed(),
        samples: all,
        start,
    }
}

/// What [`drive`] measured.
pub struct Run {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
    /// When the workers started.
    pub start: Instant,
}

impl Run {
    pub fn summary(&self) -> Summary {
        Summary::of(&self.samples, self.elapsed)
    }
}

/// CPU time the client's threads (named `client`, see
/// [`super::cluster::client_runtime`]: its workers and its blocking pool) have
/// used so far, in ns, from `/proc/self/task/*/schedstat`; `None` where that
/// is not available. A difference of two readings around a run is the
/// client's own CPU for it, with the pods' and the DNS server's left out.
pub fn client_cpu_ns() -> Option<u64> {
    let mut total = 0;
    let mut seen = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with("client") {
            continue;
        }
        if let Some(ns) = schedstat_ns(&path.join("schedstat")) {
            total += ns;
            seen = true;
        }
    }
    seen.then_some(total)
}

/// The CPU time, in ns, that a `/proc/…/schedstat` file reports (its
/// first field).
pub fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Throughput and latency of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples: &[Sample], elapsed: Duration) -> Summary {
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        Summary {
            requests: samples.len() as u64,
            errors: samples.iter().filter(|s| !s.ok).count() as u64,
            rps: round(samples.len() as f64 / elapsed.as_secs_f64(), 1),
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
            p999_ms: percentile_ms(&latencies, 0.999),
            max_ms: latencies.last().map_or(0.0, |d| ms(*d)),
        }
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    ms(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 3)
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

// ===== open loop =====

/// Latencies are recorded in microseconds, from 1 µs to this many.
const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// Sends requests at a fixed `rate` (requests/s) for `duration`, as wrk2
/// does: request `i` is due at `start + i / rate` whether or not earlier
/// ones have finished, and its latency counts from that intended start, so
/// that the time a request waited behind a stall is measured instead of
/// omitted (no coordinated omission). At most `bound` are in flight: a
/// request due while that many are is not sent and counts as an overload
/// error. Call inside the client's runtime.
///
/// The schedule runs on a blocking thread with the OS's timer rather than
/// tokio's, whose 1 ms ticks would start every request up to a millisecond
/// late (as in `examples/loadgen.rs`).
pub async fn open_loop(
    sender: Box<dyn Sender>,
    rate: f64,
    duration: Duration,
    bound: usize,
) -> OpenRun {
    let runtime = tokio::runtime::Handle::current();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(bound));
    let start = Instant::now();
    let schedule = tokio::task::spawn_blocking(move || {
        let mut sender = sender;
        let mut run = OpenRun::new(rate, start);
        let mut requests = tokio::task::JoinSet::new();
        for i in 0u64.. {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due.saturating_duration_since(start) >= duration {
                break;
            }
            let early = due.saturating_duration_since(Instant::now());
            if !early.is_zero() {
                std::thread::sleep(early);
            }
            run.intended += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                run.overload += 1;
                continue;
            };
            let send = sender.send();
            requests.spawn_on(
                async move {
                    let ok = tokio::time::timeout(REQUEST_TIMEOUT, send)
                        .await
                        .unwrap_or(false);
                    let latency = due.elapsed();
                    drop(permit);
                    (latency, ok)
                },
                &runtime,
            );
            // Reap finished requests so that the set stays small.
            while let Some(done) = requests.try_join_next() {
                run.record(done);
            }
        }
        (run, requests)
    });
    let (mut run, mut requests) = schedule.await.expect("the schedule panicked");
    while let Some(done) = requests.join_next().await {
        run.record(done);
    }
    run.elapsed = start.elapsed();
    run
}

/// What [`open_loop`] measured.
pub struct OpenRun {
    pub rate: f64,
    pub start: Instant,
    pub elapsed: Duration,
    /// Requests due by the schedule.
    pub intended: u64,
    /// Requests not sent because `bound` were in flight.
    pub overload: u64,
    /// Sent requests that failed (error, non-OK, timeout).
    pub failed: u64,
    /// Latency from the intended start of every sent request, in µs.
    pub histogram: hdrhistogram::Histogram<u64>,
}

impl OpenRun {
    fn new(rate: f64, start: Instant) -> OpenRun {
        OpenRun {
            rate,
            start,
            elapsed: Duration::ZERO,
            intended: 0,
            overload: 0,
            failed: 0,
            histogram: hdrhistogram::Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                .expect("valid histogram bounds"),
        }
    }

    fn record(&mut self, done: Result<(Duration, bool), tokio::task::JoinError>) {
        match done {
            Ok((latency, ok)) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.histogram.saturating_record(us.max(1));
                if !ok {
                    self.failed += 1;
                }
            }
            Err(_) => self.failed += 1,
        }
    }

    pub fn summary(&self) -> OpenSummary {
        let h = &self.histogram;
        let at = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                round(h.value_at_quantile(q) as f64 / 1e3, 3)
            }
        };
        // Latency by percentile, x in "nines" (0 = p0, 1 = p90, 2 = p99, …)
        // up to the resolution the number of samples allows.
        let mut by_percentile = Vec::new();
        if !h.is_empty() {
            let top = (h.len() as f64).log10().floor().max(1.0);
            let steps = (top * 20.0) as u32;
            for k in 0..=steps {
                let nines = f64::from(k) / 20.0;
                by_percentile.push((round(nines, 2), at(1.0 - 10f64.powf(-nines))));
            }
            by_percentile.push((round(top + 0.5, 2), round(h.max() as f64 / 1e3, 3)));
        }
        OpenSummary {
            rate: round(self.rate, 1),
            intended: self.intended,
            sent: h.len(),
            errors: self.failed + self.overload,
            overload: self.overload,
            rps: round(h.len() as f64 / self.elapsed.as_secs_f64().max(1e-9), 1),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: round(h.max() as f64 / 1e3, 3),
            by_percentile,
        }
    }
}

/// An open-loop run's figures (HdrHistogram, 3 significant digits).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpenSummary {
    /// Requests/s asked for.
    pub rate: f64,
    pub intended: u64,
    pub sent: u64,
    /// Failed requests and overloaded ones.
    pub errors: u64,
    pub overload: u64,
    /// Requests answered (or failed) per second of the run.
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `(nines, ms)`: latency at percentile `1 − 10^−nines`; the last point is the max.
    pub by_percentile: Vec<(f64, f64)>,
}
