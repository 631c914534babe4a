//! [`Client`]: the balanced hyper client, from a target string to a `tower::Service`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, TryFutureExt};
use http_body_util::Full;

use hyper::body::Incoming;
use tower::layer::util::Identity;

use super::body::{Body, CompleteOnBodyEnd};
use super::endpoint::{HttpEndpoint, Protocol};
use super::{BoxError, Connect, RequestBody, TcpConnector};
use crate::balance::Route;
use crate::client::builder_start as start;
use crate::client::{Balanced, Builder, Http, Idempotent, copy_body, send_hedged};
use crate::discover::Discovery;
use crate::error::{BuildError, RequestError};
use crate::stats::Stats;
use crate::target::Target;

/// A load-balanced HTTP client for every pod behind a headless service.
///
/// Resolves the target with DNS (re-resolving per TTL), keeps connections to
/// every pod, and sends each request to the less loaded of two random ready
/// pods (peak-EWMA latency × pending requests). Requests may carry a path
/// (`/api/x`) or a full URI whose authority is the service; the pod's address
/// is used for the connection and `Host` / `:authority` is set to the
/// service's name.
///
/// `Clone` is cheap; clones share the connections and the balancer. It is a
/// `tower::Service<http::Request<B>>` that is always ready, so it composes
/// with tower layers (timeout, retry, concurrency limit).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use headless_lb::http::Client;
///
/// let client: Client = Client::builder().build("web.default.svc.cluster.local:8080")?;
/// let response = client.get("/healthz").await?;
/// println!("{} from {:?}", response.status(), client.stats().endpoints);
/// # Ok(()) }
/// ```
pub struct Client<B = Full<Bytes>, S = HttpEndpoint<B>> {
    inner: Balanced<http::Request<B>, S, CompleteOnBodyEnd>,
    request_timeout: Option<Duration>,
}

/// Configures a [`Client`]: the crate's one [`Builder`] with the HTTP
/// preset. Every setting has a documented default.
pub type ClientBuilder<C = TcpConnector, L = Identity> = Builder<Http, C, L>;

/// The per-pod service a [`Client`] balances over: an [`HttpEndpoint`], or
/// one wrapped in `endpoint_layer`s, or a service of your own that answers
/// with hyper's response.
///
/// Implemented for every type that fits.
pub trait HttpService<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<Incoming>,
        Error: Into<BoxError>,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<B, T> HttpService<B> for T where
    T: tower::Service<
            http::Request<B>,
            Response = http::Response<Incoming>,
            Error: Into<BoxError>,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The future a [`Client`] returns.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, RequestError>> + Send + 'static>>;

// ===== impl ClientBuilder =====

impl Default for Builder<Http> {
    fn default() -> Self {
        Builder::with_protocol(Protocol::Http1)
    }
}

impl<C, L> Builder<Http, C, L> {
    /// HTTP/1.1 with a connection pool per pod, or HTTP/2 with prior knowledge
    /// (h2c; with TLS, `h2` by ALPN) multiplexed over one connection per pod
    /// [`Protocol::Http1`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.settings.endpoint.protocol = protocol;
        self
    }

    /// How long a request may wait for its response head, from the call,
    /// including the wait for a pod and retries of requests that were never
    /// sent \[none\]. For a limit per pod, add
    /// `endpoint_layer(tower::timeout::TimeoutLayer::new(d))`.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Starts discovery and the balancer for `target` (any [`Target`] form).
    ///
    /// Connections to the pods are opened in the background as soon as DNS
    /// answers, before the first request needs them.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build<B>(self, target: &str) -> Result<Client<B, L::Service>, BuildError>
    where
        B: RequestBody,
        C: Connect,
        L: tower::Layer<HttpEndpoint<B, C>> + Clone + Send + Sync + 'static,
        L::Service: HttpService<B>,
    {
        self.build_target(target.parse()?)
    }

    /// Like [`build`](Self::build), for a parsed [`Target`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build_target<B>(self, target: Target) -> Result<Client<B, L::Service>, BuildError>
    where
        B: RequestBody,
        C: Connect,
        L: tower::Layer<HttpEndpoint<B, C>> + Clone + Send + Sync + 'static,
        L::Service: HttpService<B>,
    {
        let (settings, make) = self.http_maker(&target)?;
        let request_timeout = settings.request_timeout;
        let inner = start(settings, target, make, CompleteOnBodyEnd)?;
        Ok(Client {
            inner,
            request_timeout,
        })
    }
}

// ===== impl Client =====

impl Client {
    /// A [`ClientBuilder`] with the default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

impl<B, S> Client<B, S> {
    /// Every endpoint's state and load, and the discovery state.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The discovery feeding this client: its current endpoint set and stats.
    pub fn discovery(&self) -> &Discovery {
        self.inner.discovery()
    }
}

impl<B, S> Client<B, S>
where
    B: RequestBody,
    S: HttpService<B>,
{
    /// Sends `request` to one pod and returns its response; with a
    /// [`HedgePolicy`](crate::HedgePolicy), a slow idempotent request also
    /// to a second pod, returning the first answer.
    pub fn request(&self, request: http::Request<B>) -> ResponseFuture {
        let balancer = &self.inner.balancer;
        match &self.inner.hedging {
            Some(hedging) => {
                hedging.deposit();
                match hedge_copy(&request) {
                    Some(copy) => self.finish(send_hedged(
                        hedging.clone(),
                        balancer,
                        request,
                        copy,
                        hedge_copy,
                    )),
                    None => self.finish(balancer.dispatch_routed(request, Route::Any)),
                }
            }
            None => self.finish(balancer.dispatch_routed(request, Route::Any)),
        }
    }

    /// `call` with the request timeout, boxed once.
    fn finish<F>(&self, call: F) -> ResponseFuture
    where
        F: Future<Output = Result<http::Response<Body>, crate::BalanceError>> + Send + 'static,
    {
        // Combinators, not `async` blocks: a block stores the future it
        // awaits twice (captured, and moved into its await), and the whole
        // of it is moved into the box.
        let Some(after) = self.request_timeout else {
            return Box::pin(call.map_err(RequestError::from));
        };
        let target = self.inner.target_name().to_owned();
        Box::pin(
            tokio::time::timeout(after, call).map(move |result| match result {
                Ok(result) => Ok(result?),
                Err(_) => Err(RequestError::Timeout { target, after }),
            }),
        )
    }
}

/// A copy of `request` for a hedge, if it may be sent twice: marked
/// [`Idempotent(true)`](Idempotent), or unmarked with a method that only
/// reads (GET, HEAD, OPTIONS; PUT and DELETE are idempotent but change
/// state, so a user says so), and with a body that can be copied.
fn hedge_copy<B: RequestBody>(request: &http::Request<B>) -> Option<http::Request<B>> {
    let hedgeable = match request.extensions().get::<Idempotent>() {
        Some(Idempotent(marked)) => *marked,
        None => matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ),
    };
    if !hedgeable {
        return None;
    }
    let mut copy = http::Request::new(copy_body(request.body())?);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

impl<B, S> Client<B, S>
where
    B: RequestBody + Default,
    S: HttpService<B>,
{
    /// Sends a GET for `uri` (a path such as `/healthz`, or a full URI whose
    /// authority is the service) with an empty body.
    pub fn get(&self, uri: &str) -> ResponseFuture {
        match http::Request::get(uri).body(B::default()) {
            Ok(request) => self.request(request),
            Err(e) => {
                let err = RequestError::InvalidRequest {
                    message: e.to_string(),
                };
                Box::pin(std::future::ready(Err(err)))
            }
        }
    }
}

impl<B, S> tower::Service<http::Request<B>> for Client<B, S>
where
    B: RequestBody,
    S: HttpService<B>,
{
    type Response = http::Response<Body>;
    type Error = RequestError;
    type Future = ResponseFuture;

    /// Always ready: requests wait for an endpoint inside their future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), RequestError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> ResponseFuture {
        self.request(request)
    }
}

impl<B, S> Clone for Client<B, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

impl<B, S> fmt::Debug for Client<B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.target_name())
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future is moved whole into its box, and copied on
    /// the way there: it must stay small. It was 2 552 bytes while
    /// `dispatch` (an `async fn`) stored its arguments twice and `finish`
    /// (an `async` block) stored the call twice.
    #[tokio::test]
    async fn the_boxed_request_future_stays_small() {
        let client: Client = Client::builder()
            .build("127.0.0.1:9")
            .expect("an IP literal target");
        let request = http::Request::get("/")
            .body(Full::default())
            .expect("a valid request");
        let call = client
            .inner
            .balancer
            .dispatch_routed(request, Route::Any)
            .map_err(RequestError::from);
        let size = std::mem::size_of_val(&call);
        assert!(size <= 1024, "the boxed future is {size} bytes");
    }
}
