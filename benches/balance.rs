//! Balancer costs: the pick at 10…10 000 endpoints, and handle throughput at
//! 1, 2 and 8 concurrent callers, each against tower's `Buffer<Balance<…>>`
//! over the same immediate endpoints.
//!
//! `cargo bench --bench balance` (add `-- --quick` for a rough run). The
//! peer comparison (`benches/peers.rs`, scenario 6) reads these results.
//!
//! `pick_observed` (last, since it installs a global subscriber) measures
//! the same pick at 10 endpoints with what observes it: nothing, a global
//! `tracing` subscriber at INFO (the request span is debug: filtered out),
//! a scoped subscriber at DEBUG (the span is recorded) and, with
//! `--features metrics`, a `metrics-exporter-prometheus` recorder.

#[path = "peers_core/immediate.rs"]
mod immediate;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use immediate::{Ours, Theirs};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// Our balancer over `n` endpoints, once they are all Ready.
fn ours(rt: &Runtime, n: usize) -> Ours {
    rt.block_on(immediate::ours(n))
}

/// tower's P2C behind a Buffer over `n` endpoints with peak-EWMA load.
fn theirs(rt: &Runtime, n: usize) -> Theirs {
    rt.block_on(async { immediate::theirs(n) })
}

fn pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pick");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in [10, 100, 1_000, 10_000] {
        group.throughput(Throughput::Elements(1));
        let lb = ours(&rt, n);
        group.bench_with_input(BenchmarkId::new("headless_lb", n), &n, |b, _| {
            b.to_async(&rt).iter(|| lb.clone().oneshot(black_box(1)))
        });
        let buffer = theirs(&rt, n);
        group.bench_with_input(BenchmarkId::new("tower_buffer_balance", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| buffer.clone().oneshot(black_box(1)))
        });
    }
    group.finish();
}

/// Runs `iters` requests through clones of `svc` from `callers` tasks; the wall time.
async fn run<S>(svc: &S, callers: usize, iters: u64) -> Duration
where
    S: Service<u32> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let per_caller = iters.div_ceil(callers as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..per_caller {
                    svc.clone().oneshot(i as u32).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("throughput");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let lb = ours(&rt, 10);
    let buffer = theirs(&rt, 10);
    for callers in [1, 2, 8] {
        group.bench_with_input(
            BenchmarkId::new("headless_lb", callers),
            &callers,
            |b, &k| {
                b.to_async(&rt).iter_custom(|iters| {
                    let lb = lb.clone();
                    async move { run(&lb, k, iters).await }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tower_buffer_balance", callers),
            &callers,
            |b, &k| {
                b.to_async(&rt).iter_custom(|iters| {
                    let buffer = buffer.clone();
                    async move { run(&buffer, k, iters).await }
                })
            },
        );
    }
    group.finish();
}

/// The pick at 10 endpoints, bare and observed.
fn observed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pick_observed");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let n = 10;
    let lb = ours(&rt, n);
    group.bench_function("none", |b| {
        b.to_async(&rt).iter(|| lb.clone().oneshot(black_box(1)))
    });

    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            // Built under the recorder: the endpoints register their series there.
            let lb = ours(&rt, n);
            group.bench_function("prometheus_recorder", |b| {
                b.to_async(&rt).iter(|| lb.clone().oneshot(black_box(1)))
            });
        });
    }

    let debug = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(debug, || {
        group.bench_function("subscriber_debug_scoped", |b| {
            b.to_async(&rt).iter(|| lb.clone().oneshot(black_box(1)))
        });
    });

    let info = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    if tracing::subscriber::set_global_default(info).is_ok() {
        group.bench_function("subscriber_info_global", |b| {
            b.to_async(&rt).iter(|| lb.clone().oneshot(black_box(1)))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, throughput, observed);
criterion_main!(benches);
