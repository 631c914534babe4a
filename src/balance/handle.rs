//! [`Balancer`]: the cloneable handle requests go through.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tower::BoxError;
use tower::discover::Discover;

use super::builder::{Builder, Config};
use super::completion::{CompleteOnResponse, Completion};
use super::dispatch::{Route, Tried, dispatch};
use super::endpoint::{Endpoint, EndpointStats};
use super::snapshot::Shared;
use super::task;
use crate::error::BalanceError;

/// A power-of-two-choices balancer over the endpoints a [`Discover`] yields.
///
/// A cheap, cloneable handle: clones share one endpoint set and one
/// background task. Each request picks the less loaded of two random
/// available endpoints, where load is peak-EWMA RTT × (pending + 1), from a
/// shared snapshot, without a global lock or a hop through a channel, so
/// throughput grows with cores. The pick costs the same at 10 or 10 000
/// endpoints.
///
/// `poll_ready` is always ready; all waiting happens in the response future:
/// for an available endpoint (at most `failfast_timeout`, then
/// [`BalanceError::NoEndpoints`]), for the endpoint service's own `ready()`,
/// and for the response. A request that was never sent (its endpoint's
/// `ready()` failed, or `call()` returned [`NotSent`](crate::NotSent)) is tried
/// on every endpoint it has not tried yet, then on at most `max_retries` it
/// tried, all within `failfast_timeout` (see [`Builder::max_retries`]); any
/// other error is returned as [`BalanceError::Endpoint`] and never retried.
///
/// Built with [`Balancer::builder`]; see [`Builder`] for the settings.
pub struct Balancer<Req, S, C = CompleteOnResponse> {
    /// One reference count for all that the handles share: a clone (every
    /// request's future holds one) costs one atomic increment, not one per
    /// part.
    pub(crate) inner: Arc<Inner<S>>,
    pub(crate) completion: C,
    _req: PhantomData<fn(Req)>,
}

/// What every clone of a [`Balancer`] shares.
pub(crate) struct Inner<S> {
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) config: Config,
    /// Dropped with the last clone: ends the background task.
    _stop: oneshot::Sender<()>,
}

/// The future [`Balancer::call`](tower::Service::call) returns.
pub type ResponseFuture<T> =
    Pin<Box<dyn Future<Output = Result<T, BalanceError>> + Send + 'static>>;

// ===== impl Balancer =====

impl Balancer<(), ()> {
    /// A [`Builder`] with the default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<Req, S, C> Balancer<Req, S, C> {
    /// Per-endpoint stats, sorted by address: listed endpoints and those
    /// still draining after discovery removed them.
    ///
    /// Cost: one entry per endpoint; reads atomics, takes no lock that
    /// requests take.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.inner.shared.stats()
    }

    /// The target name given to the builder.
    pub fn target_name(&self) -> &str {
        &self.inner.config.target
    }
}

impl<Req, S, C> Balancer<Req, S, C>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    C: Completion<S::Response>,
{
    /// Spawns the background task over `discover` and returns the first handle.
    pub(crate) fn spawn<D>(mut config: Config, discover: D, completion: C) -> Self
    where
        D: Discover<Key = SocketAddr, Service = S> + Send + 'static,
        D::Error: Into<BoxError>,
    {
        config.metrics = crate::metrics::BalancerMetrics::new(&config.target);
        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(task::run::<D, Req, S>(
            shared.clone(),
            config.clone(),
            discover,
            stopped,
        ));
        Self {
            inner: Arc::new(Inner {
                shared,
                config,
                _stop: stop,
            }),
            completion,
            _req: PhantomData,
        }
    }
}

impl<Req, S, C> Balancer<Req, S, C>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    C: Completion<S::Response>,
    C::Output: Send + 'static,
{
    /// Sends `request` to an endpoint `route` allows, in a `request` span of its own.
    pub(crate) fn call_routed(&self, request: Req, route: Route<S>) -> ResponseFuture<C::Output> {
        Box::pin(self.dispatch_routed(request, route))
    }

    /// [`call_routed`](Self::call_routed), unboxed: for a caller that boxes
    /// its own future around it, so that a request costs one allocation for
    /// both.
    pub(crate) fn dispatch_routed(
        &self,
        request: Req,
        route: Route<S>,
    ) -> impl Future<Output = Result<C::Output, BalanceError>> + Send + 'static + use<Req, S, C>
    {
        let span = crate::metrics::request_span(&self.inner.config.target);
        tracing::Instrument::instrument(dispatch(self.clone(), request, route), span)
    }

    /// Sends `request` to `endpoint` (a hedge picked with [`pick_avoiding`](Self::pick_avoiding)),
    /// retrying a never-sent attempt only on endpoints outside `tried`.
    pub(crate) fn call_hedge(
        &self,
        request: Req,
        tried: Arc<Tried>,
        endpoint: Arc<Endpoint<S>>,
    ) -> ResponseFuture<C::Output> {
        tried.add(endpoint.addr);
        let route = Route::Hedge {
            tried,
            first: Some(endpoint),
        };
        self.call_routed(request, route)
    }
}

impl<Req, S, C> Balancer<Req, S, C> {
    /// P2C among the endpoints outside `tried`: where a hedge would go now.
    pub(crate) fn pick_avoiding(&self, tried: &Tried) -> Option<Arc<Endpoint<S>>> {
        tried.pick(&self.inner.shared, tokio::time::Instant::now())
    }
}

impl<Req, S, C> tower::Service<Req> for Balancer<Req, S, C>
where
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
    C: Completion<S::Response>,
    C::Output: Send + 'static,
{
    type Response = C::Output;
    type Error = BalanceError;
    type Future = ResponseFuture<C::Output>;

    /// Always ready: requests wait for an endpoint in their response future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.call_routed(request, Route::Any)
    }
}

impl<Req, S, C: Clone> Clone for Balancer<Req, S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            completion: self.completion.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, S, C> fmt::Debug for Balancer<Req, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("target", &self.inner.config.target)
            .field("endpoints", &self.inner.shared.stats().len())
            .finish_non_exhaustive()
    }
}
