//! Cost of diffing endpoint sets per refresh (1 000 and 10 000 endpoints, 10 % churn),
//! against the obvious two `BTreeSet::difference` walks as the in-run baseline.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use headless_lb::discover::SetDiff;

fn pods(range: std::ops::Range<u32>) -> BTreeSet<SocketAddr> {
    range
        .map(|i| SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 8080)))
        .collect()
}

fn diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_set_diff");
    group.sample_size(30);
    group.measurement_time(std::time::Duration::from_secs(2));
    group.warm_up_time(std::time::Duration::from_millis(500));
    for n in [1_000u32, 10_000] {
        // 10 % churn: the first tenth goes, a new tenth arrives.
        let old = pods(0..n);
        let new = pods(n / 10..n + n / 10);
        group.bench_with_input(BenchmarkId::new("SetDiff::between", n), &n, |b, _| {
            b.iter(|| SetDiff::between(black_box(&old), black_box(&new)))
        });
        group.bench_with_input(
            BenchmarkId::new("btreeset_difference_baseline", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let removed: Vec<_> = black_box(&old)
                        .difference(black_box(&new))
                        .copied()
                        .collect();
                    let inserted: Vec<_> = new.difference(&old).copied().collect();
                    (removed, inserted)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, diff);
criterion_main!(benches);
