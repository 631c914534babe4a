//! [`Balanced`]: discovery and a balancer over per-pod services, as one `tower::Service`.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;

use super::hedge::Hedging;
use crate::balance::{Balancer, Completion, ResponseFuture};
use crate::discover::Discovery;
use crate::error::BalanceError;
use crate::stats::Stats;

/// Every pod of a target behind one `tower::Service<Req>`: the DNS discovery
/// and the P2C balancer over the per-pod services `S`, with `K` deciding when
/// a request stops counting as load.
///
/// Built by [`Builder::build_with`](super::Builder::build_with); the HTTP
/// client and the gRPC channel wrap one. Always ready: requests wait for a
/// pod inside their future, at most `failfast_timeout`. Clones share the
/// pods' services and the balancer.
///
/// It does not hedge: a [`HedgePolicy`](super::HedgePolicy) applies to the
/// HTTP client and the gRPC channel, which know how to copy their requests;
/// an arbitrary `Req` may not be copyable.
pub struct Balanced<Req, S, K> {
    pub(crate) balancer: Balancer<Req, S, K>,
    pub(crate) discovery: Discovery,
    /// The client's hedging, when it has a policy.
    pub(crate) hedging: Option<Arc<Hedging>>,
}

// ===== impl Balanced =====

impl<Req, S, K> Balanced<Req, S, K> {
    /// Every pod's state and load, and the discovery state.
    pub fn stats(&self) -> Stats {
        Stats {
            endpoints: self.balancer.stats(),
            discovery: self.discovery.stats(),
            hedging: self.hedging.as_ref().map(|h| h.stats()),
        }
    }

    /// The discovery feeding the balancer: its current endpoint set and stats.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The target, as errors and logs name it.
    pub fn target_name(&self) -> &str {
        self.balancer.target_name()
    }
}

impl<Req, S, K> tower::Service<Req> for Balanced<Req, S, K>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    K: Completion<S::Response>,
    K::Output: Send + 'static,
{
    type Response = K::Output;
    type Error = BalanceError;
    type Future = ResponseFuture<K::Output>;

    /// Always ready: requests wait for a pod in their response future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        tower::Service::call(&mut self.balancer, request)
    }
}

impl<Req, S, K: Clone> Clone for Balanced<Req, S, K> {
    fn clone(&self) -> Self {
        Self {
            balancer: self.balancer.clone(),
            discovery: self.discovery.clone(),
            hedging: self.hedging.clone(),
        }
    }
}

impl<Req, S, K> fmt::Debug for Balanced<Req, S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("target", &self.balancer.target_name())
            .finish_non_exhaustive()
    }
}
