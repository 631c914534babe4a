//! Per-phase measurements: every response's pod, start, end and outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 2xx, and the body named this pod (index into the demo's pods).
    Ok(usize),
    /// Anything else: the pod the client blamed, if it named one, and why.
    Failed { pod: Option<usize>, message: String },
}

/// One request, as a worker saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

/// The requests of one phase: every request that *started* while this log
/// was the current one, however late it ended.
#[derive(Debug)]
pub struct PhaseLog {
    pub created: Instant,
    in_flight: AtomicUsize,
    samples: Mutex<Vec<Sample>>,
}

/// Where workers record; the demo swaps in a fresh log between phases.
#[derive(Debug, Clone)]
pub struct Recorder {
    current: Arc<Mutex<Arc<PhaseLog>>>,
}

/// A request that counts as in flight on its log until dropped.
pub struct Ticket {
    log: Arc<PhaseLog>,
    start: Instant,
}

/// What one pod did in one phase.
#[derive(Debug, Default, Clone)]
pub struct PodSummary {
    pub ok: u64,
    pub errors: u64,
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    pub first_ok: Option<Instant>,
}

/// A phase's samples, grouped by pod.
#[derive(Debug, Default)]
pub struct Summary {
    pub samples: Vec<Sample>,
    pub per_pod: BTreeMap<usize, PodSummary>,
    /// Failures the client did not attribute to a pod.
    pub unattributed_errors: u64,
    pub total: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

// ===== impl PhaseLog =====

impl PhaseLog {
    fn new() -> Self {
        Self {
            created: Instant::now(),
            in_flight: AtomicUsize::new(0),
            samples: Mutex::new(Vec::new()),
        }
    }
}

// ===== impl Recorder =====

impl Recorder {
    pub fn new() -> Self {
        Self {
            current: Arc::new(Mutex::new(Arc::new(PhaseLog::new()))),
        }
    }

    /// Marks the start of a request in the current phase.
    pub fn begin(&self) -> Ticket {
        let log = lock(&self.current).clone();
        log.in_flight.fetch_add(1, Ordering::AcqRel);
        Ticket {
            log,
            start: Instant::now(),
        }
    }

    /// Starts a new phase and returns the requests of the one that ended,
    /// once the ones still in flight have finished (at most `wait`).
    pub async fn rotate(&self, wait: Duration) -> Summary {
        let done = std::mem::replace(&mut *lock(&self.current), Arc::new(PhaseLog::new()));
        let until = Instant::now() + wait;
        while done.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let samples = std::mem::take(&mut *lock(&done.samples));
        Summary::new(samples, done.created.elapsed())
    }
}

// ===== impl Ticket =====

impl Ticket {
    pub fn finish(self, outcome: Outcome) {
        let sample = Sample {
            start: self.start,
            end: Instant::now(),
            outcome,
        };
        lock(&self.log.samples).push(sample);
        // `Drop` decrements the in-flight count after the sample is stored.
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.log.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

// ===== impl Summary =====

impl Summary {
    fn new(samples: Vec<Sample>, elapsed: Duration) -> Self {
        let mut per_pod: BTreeMap<usize, PodSummary> = BTreeMap::new();
        let mut unattributed_errors = 0;
        let mut errors = 0;
        for s in &samples {
            match &s.outcome {
                Outcome::Ok(pod) => {
                    let p = per_pod.entry(*pod).or_default();
                    p.ok += 1;
                    p.latencies.push(s.end.saturating_duration_since(s.start));
                    p.first_ok = Some(p.first_ok.map_or(s.end, |t| t.min(s.end)));
                }
                Outcome::Failed { pod, .. } => {
                    errors += 1;
                    match pod {
                        Some(pod) => per_pod.entry(*pod).or_default().errors += 1,
                        None => unattributed_errors += 1,
                    }
                }
            }
        }
        for p in per_pod.values_mut() {
            p.latencies.sort_unstable();
        }
        Self {
            total: samples.len() as u64,
            samples,
            per_pod,
            unattributed_errors,
            errors,
            elapsed,
        }
    }

    pub fn pod(&self, pod: usize) -> PodSummary {
        self.per_pod.get(&pod).cloned().unwrap_or_default()
    }

    /// The share of all requests of the phase that went to `pod`, in percent.
    pub fn share(&self, pod: usize) -> f64 {
        let p = self.pod(pod);
        percent(p.ok + p.errors, self.total)
    }

    /// Distinct failures (pod, message), most frequent first, with their counts.
    pub fn failure_messages(&self) -> Vec<(Option<usize>, String, u64)> {
        let mut counts: BTreeMap<(Option<usize>, &str), u64> = BTreeMap::new();
        for s in &self.samples {
            if let Outcome::Failed { pod, message } = &s.outcome {
                *counts.entry((*pod, message)).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts
            .into_iter()
            .map(|((p, m), n)| (p, m.to_owned(), n))
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.2));
        v
    }
}

impl PodSummary {
    /// Nearest-rank percentile of the successful requests' latencies.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }
}

pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The pod index of `addr`, if it is one of the demo's pods.
pub fn pod_index(pods: &[SocketAddr], addr: SocketAddr) -> Option<usize> {
    pods.iter().position(|p| *p == addr)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
