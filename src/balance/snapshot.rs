//! The endpoint set as the request path sees it: an immutable snapshot behind an `ArcSwap`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointState, EndpointStats};
use super::pick::p2c;
use crate::sync::lock;

/// One published view of the endpoints. Built by the background task after
/// every change; read by requests without a lock.
#[derive(Debug)]
pub(crate) struct Snapshot<S> {
    /// Endpoints that were Ready at publication, by address. A boxed slice:
    /// no spare capacity, one pointer per endpoint.
    ready: Box<[Arc<Endpoint<S>>]>,
    /// Every endpoint this client uses, by address: the background task's
    /// own list, shared rather than copied.
    all: Arc<[Arc<Endpoint<S>>]>,
    /// Endpoints that discovery removed and that may still serve requests.
    /// Weak, so that the snapshot does not keep their services alive.
    draining: Vec<Weak<Endpoint<S>>>,
    /// Every listed endpoint is backing off: pick among all of them (panic mode).
    panic: bool,
}

/// What the handle and the background task share.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    snapshot: ArcSwap<Snapshot<S>>,
    /// Notified (all waiters) after every publication.
    changed: Notify,
    /// The last error the `Discover` stream yielded.
    discover_error: Mutex<Option<String>>,
}

// ===== impl Snapshot =====

impl<S> Snapshot<S> {
    /// Builds a snapshot from the listed endpoints (sorted by address) and the
    /// draining ones.
    pub(crate) fn new(all: Arc<[Arc<Endpoint<S>>]>, draining: Vec<Weak<Endpoint<S>>>) -> Self {
        let ready: Box<[_]> = all
            .iter()
            .filter(|e| e.state() == EndpointState::Ready)
            .cloned()
            .collect();
        let panic = !all.is_empty() && all.iter().all(|e| e.state() == EndpointState::Backoff);
        Self {
            ready,
            all,
            draining,
            panic,
        }
    }

    /// Every listed endpoint is backing off.
    pub(crate) fn is_panic(&self) -> bool {
        self.panic
    }

    fn empty() -> Self {
        Self::new(Arc::new([]), Vec::new())
    }

    /// P2C over the ready endpoints; in panic mode over all backing-off ones.
    fn pick(&self, now: Instant) -> Option<Arc<Endpoint<S>>> {
        self.pick_if(|_| true, now)
    }

    /// [`pick`](Self::pick) among the endpoints whose address `allowed`
    /// accepts: a hedge must go to a pod its request has not been sent to.
    fn pick_if(
        &self,
        allowed: impl Fn(SocketAddr) -> bool,
        now: Instant,
    ) -> Option<Arc<Endpoint<S>>> {
        let ready = |e: &Endpoint<S>| e.state() == EndpointState::Ready && allowed(e.addr);
        if let Some(e) = p2c(&self.ready, ready, now) {
            return Some(e.clone());
        }
        if self.panic {
            let picked = p2c(
                &self.all,
                |e| {
                    matches!(e.state(), EndpointState::Ready | EndpointState::Backoff)
                        && allowed(e.addr)
                },
                now,
            );
            if let Some(e) = picked {
                tracing::debug!(endpoint = %e.addr, "every endpoint is backing off: panic-mode pick");
                return Some(e.clone());
            }
        }
        None
    }
}

// ===== impl Shared =====

impl<S> Shared<S> {
    pub(crate) fn new() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            changed: Notify::new(),
            discover_error: Mutex::new(None),
        }
    }

    /// Picks an endpoint from the current snapshot, if any is pickable.
    pub(crate) fn pick(&self, now: Instant) -> Option<Arc<Endpoint<S>>> {
        self.snapshot.load().pick(now)
    }

    /// Picks an endpoint whose address is not in `avoid`, if any is pickable.
    pub(crate) fn pick_avoiding(
        &self,
        avoid: &[SocketAddr],
        now: Instant,
    ) -> Option<Arc<Endpoint<S>>> {
        self.snapshot
            .load()
            .pick_if(|addr| !avoid.contains(&addr), now)
    }

    /// True when the snapshot lists an endpoint whose address is not in
    /// `avoid`, in any state (connecting, ready, backing off).
    pub(crate) fn lists_other(&self, avoid: &[SocketAddr]) -> bool {
        self.snapshot
            .load()
            .all
            .iter()
            .any(|e| !avoid.contains(&e.addr))
    }

    /// Replaces the snapshot and wakes every request waiting for an endpoint.
    pub(crate) fn publish(&self, snapshot: Snapshot<S>) {
        self.snapshot.store(Arc::new(snapshot));
        self.changed.notify_waiters();
    }

    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Per-endpoint stats, listed and draining, sorted by address.
    pub(crate) fn stats(&self) -> Vec<EndpointStats> {
        let snapshot = self.snapshot.load_full();
        let now = Instant::now();
        let mut stats: Vec<_> = snapshot
            .all
            .iter()
            .map(|e| e.stats(now))
            .chain(
                snapshot
                    .draining
                    .iter()
                    .filter_map(Weak::upgrade)
                    .map(|e| e.stats(now)),
            )
            .collect();
        stats.sort_by_key(|s: &EndpointStats| -> SocketAddr { s.address });
        stats
    }

    /// The listed endpoints' RTT estimates at `now`, Ready ones only when there are any.
    pub(crate) fn peer_estimates(&self, now: Instant) -> Vec<f64> {
        let snapshot = self.snapshot.load();
        let peers: &[_] = if snapshot.ready.is_empty() {
            &snapshot.all
        } else {
            &snapshot.ready
        };
        peers.iter().map(|e| e.load.rtt.estimate_ns(now)).collect()
    }

    pub(crate) fn set_discover_error(&self, error: String) {
        *lock(&self.discover_error) = Some(error);
    }

    pub(crate) fn discover_error(&self) -> Option<String> {
        lock(&self.discover_error).clone()
    }
}
