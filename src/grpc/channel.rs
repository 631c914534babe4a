//! [`Channel`]: the balanced gRPC channel, from a target string to a service tonic clients accept.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use futures::{FutureExt, TryFutureExt};
use tower::layer::util::Identity;

use super::body::{CompleteOnStreamEnd, ResponseBody};
use super::replay::{self, Replay};
use super::{deadline, status};
use crate::balance::{Balancer, Route, Tried};
use crate::client::builder_start as start;
use crate::client::{Balanced, Builder, Grpc, Hedging, Idempotent, race};
use crate::discover::Discovery;
use crate::error::BuildError;
use crate::http::{Connect, HttpEndpoint, HttpService, Protocol, TcpConnector};
use crate::stats::Stats;
use crate::target::Target;

/// The request body tonic's generated clients send.
type RequestBody = tonic::body::Body;

/// A load-balanced gRPC channel to every pod behind a headless service.
///
/// Resolves the target with DNS (re-resolving per TTL), keeps one HTTP/2
/// connection (h2c) to every pod, and sends each RPC to the less loaded of
/// two random ready pods, where load is peak-EWMA latency × pending RPCs. An
/// RPC counts as pending until its response stream ends, so a pod busy with
/// long server streams looks busy. `:authority` is the service name.
///
/// A `tower::Service<http::Request<tonic::body::Body>>`, so tonic's generated
/// clients take it as they take tonic's own `Channel`. `Clone` is cheap;
/// clones share the connections and the balancer. Failures come as a
/// [`tonic::Status`]: `UNAVAILABLE` when no pod was available within
/// `failfast_timeout` (naming the target and the last DNS error), when no
/// connection could be made, or when one broke. An RPC that may have reached
/// a server is never retried by the channel. Deadlines are enforced on the
/// client, as tonic's own channel does: an RPC whose `grpc-timeout` (or the
/// channel's default [`timeout`](ChannelBuilder::timeout)) runs out before
/// its response head fails with `DEADLINE_EXCEEDED`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use headless_lb::grpc::Channel;
/// use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
///
/// let channel = Channel::builder().build("dns:///web.default.svc.cluster.local:50051")?;
/// let mut health = HealthClient::new(channel.clone());
/// let reply = health.check(HealthCheckRequest { service: String::new() }).await?;
/// println!("{:?} {:?}", reply.into_inner().status(), channel.stats().endpoints);
/// # Ok(()) }
/// ```
pub struct Channel<S = HttpEndpoint<RequestBody>> {
    inner: Balanced<http::Request<RequestBody>, S, CompleteOnStreamEnd>,
    default_timeout: Option<Duration>,
}

/// Configures a [`Channel`]: the crate's one [`Builder`] with the gRPC
/// preset (HTTP/2). Every setting has a documented default.
pub type ChannelBuilder<C = TcpConnector, L = Identity> = Builder<Grpc, C, L>;

/// The future a [`Channel`] returns.
pub type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<ResponseBody>, tonic::Status>> + Send + 'static>,
>;

// ===== impl ChannelBuilder =====

impl Default for Builder<Grpc> {
    fn default() -> Self {
        Builder::with_protocol(Protocol::Http2)
    }
}

impl<C, L> Builder<Grpc, C, L> {
    /// The deadline of every RPC that does not carry one \[none, as in
    /// tonic\]. An RPC's own `grpc-timeout` (tonic's
    /// `Request::set_timeout`) wins when it is shorter. The channel sends
    /// the deadline as `grpc-timeout`, so the pod can give up too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = Some(timeout);
        self
    }

    /// The gRPC methods a [`hedge`](Builder::hedge) policy applies to, as
    /// full paths `/package.Service/Method`, or `/package.Service/*` for all
    /// of a service's methods \[none\]. Replaces the list set before.
    ///
    /// List only methods that may run twice with the effect of once (reads,
    /// idempotent writes): a hedged RPC may reach two pods. A single RPC can
    /// also be marked with an [`Idempotent`] extension, which overrides the
    /// list either way. `build` fails with
    /// [`BuildError::Hedge`] for a name that is not such a path.
    ///
    /// ```
    /// use std::time::Duration;
    /// use headless_lb::{HedgePolicy, grpc::Channel};
    ///
    /// let builder = Channel::builder()
    ///     .hedge(HedgePolicy::after(Duration::from_millis(20)))
    ///     .hedge_grpc_methods(["/shop.Catalog/GetItem", "/grpc.health.v1.Health/*"]);
    /// # let _ = builder;
    /// ```
    pub fn hedge_grpc_methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.settings.hedge_grpc_methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Starts discovery and the balancer for `target` (any [`Target`] form,
    /// `dns:///web.default.svc.cluster.local:50051` among them).
    ///
    /// Connections to the pods open in the background as soon as DNS
    /// answers, before the first RPC needs them.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self, target: &str) -> Result<Channel<L::Service>, BuildError>
    where
        C: Connect,
        L: tower::Layer<HttpEndpoint<RequestBody, C>> + Clone + Send + Sync + 'static,
        L::Service: HttpService<RequestBody>,
    {
        self.build_target(target.parse()?)
    }

    /// Like [`build`](Self::build), for a parsed [`Target`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build_target(self, target: Target) -> Result<Channel<L::Service>, BuildError>
    where
        C: Connect,
        L: tower::Layer<HttpEndpoint<RequestBody, C>> + Clone + Send + Sync + 'static,
        L::Service: HttpService<RequestBody>,
    {
        let (settings, make) = self.http_maker(&target)?;
        let default_timeout = settings.request_timeout;
        let inner = start(settings, target, make, CompleteOnStreamEnd)?;
        Ok(Channel {
            inner,
            default_timeout,
        })
    }
}

// ===== impl Channel =====

impl Channel {
    /// A [`ChannelBuilder`] with the default settings (HTTP/2 without TLS).
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder::default()
    }
}

impl<S> Channel<S> {
    /// Every pod's state and load (pending RPCs include open streams), and
    /// the discovery state.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The discovery feeding this channel: its current endpoint set and stats.
    pub fn discovery(&self) -> &Discovery {
        self.inner.discovery()
    }
}

impl<S: HttpService<RequestBody>> tower::Service<http::Request<RequestBody>> for Channel<S> {
    type Response = http::Response<ResponseBody>;
    type Error = tonic::Status;
    type Future = ResponseFuture;

    /// Always ready: RPCs wait for a pod inside their future, at most
    /// `failfast_timeout`.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    /// Sends the RPC to one pod; with a deadline (`grpc-timeout`, or the
    /// channel's [`timeout`](ChannelBuilder::timeout)), fails with
    /// `DEADLINE_EXCEEDED` when no response head arrived in time. The pod is
    /// not marked as failed for it: the abandoned RPC only raises its RTT
    /// estimate to the time it waited, as any slow answer would.
    ///
    /// An RPC that a pod refused unprocessed (a graceful shutdown's GOAWAY
    /// crossed it) goes to another pod, with its recorded body, once.
    ///
    /// With a [`hedge`](Builder::hedge) policy, an RPC of a method listed in
    /// [`hedge_grpc_methods`](Builder::hedge_grpc_methods) (or marked
    /// [`Idempotent(true)`](Idempotent)) that has no answer after the hedge
    /// delay is also sent to a second pod, and the first answer is returned.
    fn call(&mut self, mut request: http::Request<RequestBody>) -> ResponseFuture {
        let deadline = deadline::effective(&mut request, self.default_timeout);
        let hedging = self.inner.hedging.as_ref().and_then(|hedging| {
            hedging.deposit();
            hedgeable(hedging, &request).then(|| hedging.clone())
        });
        let (replay, request) = Replay::record(request, hedging.is_some());
        let balancer = self.inner.balancer.clone();
        let target = self.inner.target_name();
        match hedging {
            None => finish(send(balancer, request, replay, None), deadline, target),
            Some(hedging) => {
                // The hedge is the recorded RPC again: sent only if the
                // body was recorded whole by the time the delay is up.
                let replay = Arc::new(replay);
                let tried = Arc::new(Tried::default());
                let primary = send(
                    balancer.clone(),
                    request,
                    replay.clone(),
                    Some(tried.clone()),
                );
                let call = race(hedging, balancer, tried, primary, move || replay.again());
                finish(call, deadline, target)
            }
        }
    }
}

/// Boxes `call`, mapping its error to a status, and fails it with
/// `DEADLINE_EXCEEDED` at `deadline` if there is one.
///
/// Combinators, not `async` blocks: a block stores the future it awaits
/// twice (captured, and moved into its await), and every RPC's future is
/// moved into its box whole. Each caller boxes its own future, so an RPC
/// that is not hedged does not carry room for a hedge race.
fn finish<F>(call: F, deadline: Option<Duration>, target: &str) -> ResponseFuture
where
    F: Future<Output = Result<http::Response<ResponseBody>, crate::BalanceError>> + Send + 'static,
{
    let Some(after) = deadline else {
        return Box::pin(call.map_err(status::from_balance_error));
    };
    let target = target.to_owned();
    Box::pin(
        tokio::time::timeout(after, call).map(move |result| match result {
            Ok(result) => result.map_err(status::from_balance_error),
            Err(_elapsed) => Err(tonic::Status::deadline_exceeded(format!(
                "deadline of {after:?} exceeded before {target} answered"
            ))),
        }),
    )
}

/// True when `request` may be hedged: marked [`Idempotent`], or unmarked
/// and of a method the channel hedges.
fn hedgeable(hedging: &Hedging, request: &http::Request<RequestBody>) -> bool {
    match request.extensions().get::<Idempotent>() {
        Some(Idempotent(marked)) => *marked,
        None => hedging.hedges_grpc_method(request.uri().path()),
    }
}

/// Sends the RPC through `balancer` (recording its pods in `tried` when it
/// may be hedged); an RPC that a pod refused unprocessed (a graceful
/// shutdown's GOAWAY crossed it) goes to another pod, with its recorded
/// body, once. The pod that refused it is avoided while another is
/// pickable: it is likely still refusing.
///
/// The retry is chained with `then`, not written as an `async fn`, so that
/// the RPC's future holds the first attempt or the retry, never both, and
/// its arguments once (see [`finish`]).
fn send<S: HttpService<RequestBody>, R: Borrow<Replay> + Send + 'static>(
    balancer: Balancer<http::Request<RequestBody>, S, CompleteOnStreamEnd>,
    request: http::Request<RequestBody>,
    replay: R,
    tried: Option<Arc<Tried>>,
) -> impl Future<Output = Result<http::Response<ResponseBody>, crate::BalanceError>> + Send + 'static
{
    let route = |tried: &Option<Arc<Tried>>| tried.clone().map_or(Route::Any, Route::Tracked);
    let first = balancer.dispatch_routed(request, route(&tried));
    first.then(move |first| match first {
        Err(err) if replay::refused_unprocessed(&err) => match replay.borrow().again_after(&err) {
            Some(again) => {
                tracing::debug!(%err, "RPC refused unprocessed; sending it to another pod");
                let mut route = route(&tried);
                if let crate::BalanceError::Endpoint { endpoint, .. } = &err {
                    route.not_sent_on(*endpoint);
                }
                // Boxed: the retry is rare, and its room would be copied
                // with every RPC's answer.
                Either::Left(Box::pin(balancer.dispatch_routed(again, route)))
            }
            None => Either::Right(std::future::ready(Err(err))),
        },
        other => Either::Right(std::future::ready(other)),
    })
}

impl<S> Clone for Channel<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            default_timeout: self.default_timeout,
        }
    }
}

impl<S> fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.inner.target_name())
            .field("timeout", &self.default_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC's future is moved whole into its box, and copied on the way
    /// there: it must stay small. It was 6 928 bytes while `send` (an
    /// `async fn`) stored its arguments and the first attempt next to the
    /// retry, and an RPC that is not hedged carried room for a hedge race.
    #[tokio::test]
    async fn the_boxed_rpc_future_stays_small() {
        let channel = Channel::builder()
            .build("127.0.0.1:9")
            .expect("an IP literal target");
        let request = http::Request::post("/grpc.health.v1.Health/Check")
            .body(RequestBody::empty())
            .expect("a valid request");
        let (replay, request) = Replay::record(request, false);
        let balancer = channel.inner.balancer.clone();
        let call = send(balancer, request, replay, None).map_err(status::from_balance_error);
        let size = std::mem::size_of_val(&call);
        assert!(size <= 1280, "the boxed future is {size} bytes");
    }
}
