//! Heap bytes per endpoint of a [`Balancer`], as `benches/peers.rs`
//! (scenario 6) measures them: the live heap with 10 000 endpoints that
//! answer at once minus that with 1 000, both after one request, over the
//! 9 000 endpoints between. A wrapping global allocator counts the bytes; it
//! is this test binary's own, and the binary holds this one test, so nothing
//! else allocates while it measures.
//!
//! The bound is tower's `Buffer<Balance<PeakEwma>>` over the same endpoints,
//! measured the same way (about 280 B). With the `metrics` feature, each pod's
//! series handles come on top: ten handles and the key of its RTT histogram,
//! registered whether or not a recorder is installed, since the facade does
//! not say (see `EndpointMetrics` in `src/metrics.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tower::ServiceExt;

#[path = "../benches/peers_core/immediate.rs"]
#[allow(dead_code)]
mod immediate;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter is a
// plain atomic and allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What a pod's metric series add per endpoint with the `metrics` feature
/// and no recorder: four outcome counters, two gauges and four state gauges
/// (16 B each), the RTT histogram's key (56 B) with its two labels (96 B),
/// and the pod's label value (32 B). 344 B when this was written.
const METRICS_PER_ENDPOINT: f64 = 350.0;

/// Live bytes held by a balancer over `n` endpoints after one request.
fn held(rt: &tokio::runtime::Runtime, n: usize, tower: bool) -> isize {
    rt.block_on(async {
        let before = LIVE.load(Ordering::Relaxed);
        let after = if tower {
            let lb = immediate::theirs(n);
            lb.clone().oneshot(1).await.unwrap();
            LIVE.load(Ordering::Relaxed)
        } else {
            let lb = immediate::ours(n).await;
            lb.clone().oneshot(1).await.unwrap();
            LIVE.load(Ordering::Relaxed)
        };
        // Let the balancers' background tasks see the drop and end.
        tokio::time::sleep(Duration::from_millis(20)).await;
        after - before
    })
}

/// At most tower's bytes per endpoint; with the `metrics` feature, at most
/// that plus the pod's series handles.
#[test]
fn an_endpoint_costs_no_more_heap_than_in_towers_balance() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (small, big) = (1_000, 10_000);
    let per_endpoint = |tower| {
        // Once first, so that one-time allocations (tracing callsites, the
        // runtime's timer) fall outside both measurements.
        held(&rt, 10, tower);
        let (s, b) = (held(&rt, small, tower), held(&rt, big, tower));
        (b - s) as f64 / (big - small) as f64
    };
    let ours = per_endpoint(false);
    let tower = per_endpoint(true);
    eprintln!(
        "heap per endpoint: ours {ours:.1} B, tower's Buffer<Balance<PeakEwma>> {tower:.1} B"
    );
    let bound = if cfg!(feature = "metrics") {
        tower + METRICS_PER_ENDPOINT
    } else {
        tower
    };
    assert!(
        ours <= bound,
        "{ours:.1} B per endpoint, more than {bound:.1} B (tower's {tower:.1} B)"
    );
}
