//! Balancer costs: the pick at 10…10 000 endpoints, and handle throughput at
//! 1, 2 and 8 concurrent callers, each against tower's `Buffer<Balance<…>>`
//! over the same immediate endpoints.
//!
//! `cargo bench --bench balance` (add `-- --quick` for a rough run).

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::stream::{self, StreamExt};
use headless_lb::balance::{Balancer, EndpointState};
use tokio::runtime::Runtime;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{Service, ServiceExt};

type Immediate = tower::util::BoxCloneSyncService<u32, u32, Infallible>;
type Ours = Balancer<u32, Immediate>;
type Theirs =
    Buffer<u32, <Balance<ServiceList<Vec<PeakEwma<Immediate>>>, u32> as Service<u32>>::Future>;

fn immediate() -> Immediate {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|r: u32| async move {
        Ok::<_, Infallible>(r)
    }))
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

/// Our balancer over `n` endpoints, once they are all Ready.
fn ours(rt: &Runtime, n: usize) -> Ours {
    rt.block_on(async {
        let changes = (0..n).map(|i| Ok::<_, Infallible>(Change::Insert(addr(i), immediate())));
        let discover = stream::iter(changes.collect::<Vec<_>>()).chain(stream::pending());
        let lb: Ours = Balancer::builder().build(discover);
        while lb.stats().len() < n || lb.stats().iter().any(|s| s.state != EndpointState::Ready) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lb
    })
}

/// tower's P2C behind a Buffer over `n` endpoints with peak-EWMA load.
fn theirs(rt: &Runtime, n: usize) -> Theirs {
    rt.block_on(async {
        let services = (0..n)
            .map(|_| {
                PeakEwma::new(
                    immediate(),
                    Duration::from_millis(30),
                    10e9,
                    CompleteOnResponse::default(),
                )
            })
            .collect::<Vec<_>>();
        Buffer::new(Balance::new(ServiceList::new(services)), 1024)
    })
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

criterion_group!(benches, pick, throughput);
criterion_main!(benches);
