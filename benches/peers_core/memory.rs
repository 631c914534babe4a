//! Memory per endpoint at 10 000 endpoints, counted by a wrapping global
//! allocator that the bench binary installs (`#[global_allocator]`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};

use tower::ServiceExt;

use super::immediate;

/// The system allocator, counting live bytes.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Allocations made by this thread (no destructor, so it never goes away
    /// while the thread runs; it allocates nothing).
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = THREAD_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// plain atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        count_one();
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap allocations so far in the whole process (every thread), or None
/// when [`Counting`] is not the global allocator.
pub fn allocations() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| ALLOCATIONS.load(Ordering::Relaxed))
}

/// Heap allocations the calling thread made so far (0 when [`Counting`] is
/// not the global allocator).
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}

/// Live heap bytes, or None when [`Counting`] is not the global allocator.
fn live() -> Option<isize> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| LIVE.load(Ordering::Relaxed))
}

/// Bytes per endpoint of ours and of tower's `Buffer<Balance>`: the live heap
/// with `big` endpoints minus that with `small`, over the difference, both
/// after one request went through (so tower's lazily filled ready cache is full).
pub fn per_endpoint(small: usize, big: usize) -> Option<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let measure = |n: usize, ours: bool| -> Option<isize> {
        rt.block_on(async {
            let before = live()?;
            let after = if ours {
                let lb = immediate::ours(n).await;
                lb.clone().oneshot(1).await.ok()?;
                let after = live()?;
                drop(lb);
                after
            } else {
                let buffer = immediate::theirs(n);
                buffer.clone().oneshot(1).await.ok()?;
                let after = live()?;
                drop(buffer);
                after
            };
            // Let the balancers' background tasks see the drop and end.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Some(after - before)
        })
    };
    let ours = (measure(big, true)? - measure(small, true)?) as f64 / (big - small) as f64;
    let theirs = (measure(big, false)? - measure(small, false)?) as f64 / (big - small) as f64;
    Some((ours, theirs))
}
