//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poison.
///
/// Every mutex in this crate guards state that is consistent between any
/// two statements (counters, maps, options, a cached value), so a panic
/// elsewhere while it was held cannot have left it half-changed; refusing
/// the lock would turn one panic into a failure of every later caller.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
