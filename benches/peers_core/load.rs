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
