//! [`Client`]: the balanced hyper client, from a target string to a `tower::Service`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use super::body::{Body, CompleteOnBodyEnd};
use super::endpoint::{HttpEndpoint, HttpEndpointBuilder, Protocol};
use super::{Connect, RequestBody, TcpConnector};
use crate::balance::{self, Balancer};
use crate::discover::{Discovery, DnsDiscover, EmptyAnswer, RefreshPolicy};
use crate::error::{BuildError, RequestError};
use crate::resolve::{HickoryResolver, Resolve};
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
pub struct Client<B = Full<Bytes>, C = TcpConnector> {
    balancer: Balancer<http::Request<B>, HttpEndpoint<B, C>, CompleteOnBodyEnd>,
    discovery: Discovery,
    request_timeout: Option<Duration>,
}

/// Configures a [`Client`]. Every setting has a documented default.
pub struct ClientBuilder<C = TcpConnector> {
    endpoint: HttpEndpointBuilder<C>,
    balancer: balance::Builder,
    policy: RefreshPolicy,
    resolver: Option<Arc<dyn Resolve>>,
    nameservers: Vec<SocketAddr>,
    request_timeout: Option<Duration>,
}

/// The balancer a client (or the gRPC channel) sends through.
pub(crate) type HttpBalancer<B, C, K> = Balancer<http::Request<B>, HttpEndpoint<B, C>, K>;

/// The future a [`Client`] returns.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, RequestError>> + Send + 'static>>;

// ===== impl ClientBuilder =====

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            endpoint: HttpEndpointBuilder::new(Protocol::Http1),
            balancer: Balancer::builder(),
            policy: RefreshPolicy::default(),
            resolver: None,
            nameservers: Vec::new(),
            request_timeout: None,
        }
    }
}

impl<C> ClientBuilder<C> {
    /// HTTP/1.1 with a connection pool per pod, or HTTP/2 with prior knowledge
    /// (h2c) multiplexed over one connection per pod [`Protocol::Http1`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.endpoint = self.endpoint.with_protocol(protocol);
        self
    }

    /// How long opening a connection to a pod may take \[1 s\].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.connect_timeout(timeout);
        self
    }

    /// HTTP/2: PING a connection that received nothing for `interval`, and
    /// close it if the PING goes unanswered for `timeout` \[none, 20 s\]; see
    /// [`HttpEndpointBuilder::http2_keep_alive_interval`].
    pub fn http2_keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.endpoint = self
            .endpoint
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(timeout);
        self
    }

    /// HTTP/2: keepalive PINGs also while no request is open \[false\].
    pub fn http2_keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.endpoint = self.endpoint.http2_keep_alive_while_idle(enabled);
        self
    }

    /// HTTP/1.1 connections per pod at most \[16\]; ignored for HTTP/2.
    pub fn max_connections_per_endpoint(mut self, max: usize) -> Self {
        self.endpoint = self.endpoint.max_connections(max);
        self
    }

    /// How long a request may wait for its response head, from the call,
    /// including the wait for an endpoint \[none\].
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a request waits for any endpoint before failing with
    /// `NoEndpoints` \[3 s\].
    pub fn failfast_timeout(mut self, timeout: Duration) -> Self {
        self.balancer = self.balancer.failfast_timeout(timeout);
        self
    }

    /// The RTT assumed for the first endpoint, before any measurement \[30 ms\].
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.balancer = self.balancer.default_rtt(rtt);
        self
    }

    /// The peak-EWMA decay time \[10 s\].
    pub fn decay(mut self, decay: Duration) -> Self {
        self.balancer = self.balancer.decay(decay);
        self
    }

    /// Reconnect backoff of a failed endpoint: `base` doubling to `max` \[100 ms, 10 s\].
    pub fn endpoint_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.balancer = self.balancer.backoff_base(base).backoff_max(max);
        self
    }

    /// Extra endpoints a request that was never sent may be tried on \[2\].
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.balancer = self.balancer.max_retries(retries);
        self
    }

    /// Failed requests in a row (errors, 5xx, broken bodies) that
    /// take a pod out of picks for a backoff \[5\]; 0 turns this off. See
    /// [`balance::Builder::failure_accrual`](crate::balance::Builder::failure_accrual).
    pub fn failure_accrual(mut self, failures: u32) -> Self {
        self.balancer = self.balancer.failure_accrual(failures);
        self
    }

    /// DNS refresh schedule and backoff [`RefreshPolicy::default`].
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// What NXDOMAIN or an empty answer does [`EmptyAnswer::KeepLastGood`].
    pub fn empty_answer(mut self, empty_answer: EmptyAnswer) -> Self {
        self.policy.empty_answer = empty_answer;
        self
    }

    /// Ask this DNS server (UDP and TCP) instead of the ones in
    /// `/etc/resolv.conf`; repeatable \[system configuration\].
    pub fn nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.nameservers.push(nameserver);
        self
    }

    /// Resolve with this resolver instead of a [`HickoryResolver`] built from
    /// the system configuration (e.g. one with a custom
    /// [`HickoryResolverBuilder`](crate::resolve::HickoryResolverBuilder)).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Opens pod connections with `connector`, a `tower::Service<SocketAddr>`
    /// yielding a hyper I/O object: TLS, a proxy, socket options, metrics
    /// [`TcpConnector`: plain TCP with `TCP_NODELAY`].
    pub fn connector<C2>(self, connector: C2) -> ClientBuilder<C2> {
        ClientBuilder {
            endpoint: self.endpoint.connector(connector),
            balancer: self.balancer,
            policy: self.policy,
            resolver: self.resolver,
            nameservers: self.nameservers,
            request_timeout: self.request_timeout,
        }
    }

    /// Starts discovery and the balancer for `target` (any [`Target`] form).
    ///
    /// Connections to the pods are opened in the background as soon as DNS
    /// answers, before the first request needs them.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build<B>(self, target: &str) -> Result<Client<B, C>, BuildError>
    where
        B: RequestBody,
        C: Connect,
    {
        self.build_target(target.parse()?)
    }

    /// Like [`build`](Self::build), for a parsed [`Target`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build_target<B>(self, target: Target) -> Result<Client<B, C>, BuildError>
    where
        B: RequestBody,
        C: Connect,
    {
        let request_timeout = self.request_timeout;
        let (balancer, discovery) = self.build_balancer(target, CompleteOnBodyEnd)?;
        Ok(Client {
            balancer,
            discovery,
            request_timeout,
        })
    }

    /// Discovery and a balancer over [`HttpEndpoint`]s for `target`, with
    /// `completion` deciding when a request stops counting as pending. The
    /// client's own request timeout is not applied; the gRPC channel builds
    /// on this with its own response body.
    pub(crate) fn build_balancer<B, K>(
        self,
        target: Target,
        completion: K,
    ) -> Result<(HttpBalancer<B, C, K>, Discovery), BuildError>
    where
        B: RequestBody,
        C: Connect,
        K: balance::Completion<http::Response<hyper::body::Incoming>>,
    {
        let resolver = match self.resolver {
            Some(resolver) => resolver,
            None => {
                let mut builder = HickoryResolver::builder();
                for ns in self.nameservers {
                    builder = builder.nameserver(ns);
                }
                Arc::new(builder.build()?)
            }
        };
        let authority = target
            .authority()
            .parse()
            .map_err(|_| BuildError::Authority {
                target: target.to_string(),
            })?;
        let discovery = Discovery::spawn_with_policy(target.clone(), resolver, self.policy);
        let make = self.endpoint.authority(authority).into_make_service::<B>();
        let errors = discovery.clone();
        let balancer = self
            .balancer
            .target_name(target.to_string())
            .last_error_source(move || errors.stats().last_error.map(|e| e.to_string()))
            .build_with_completion(DnsDiscover::new(discovery.clone(), make), completion);
        Ok((balancer, discovery))
    }
}

impl<C> fmt::Debug for ClientBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("balancer", &self.balancer)
            .field("policy", &self.policy)
            .field("nameservers", &self.nameservers)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

// ===== impl Client =====

impl Client {
    /// A [`ClientBuilder`] with the default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

impl<B, C> Client<B, C> {
    /// Every endpoint's state and load, and the discovery state.
    pub fn stats(&self) -> Stats {
        Stats {
            endpoints: self.balancer.stats(),
            discovery: self.discovery.stats(),
        }
    }

    /// The discovery feeding this client: its current endpoint set and stats.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }
}

impl<B, C> Client<B, C>
where
    B: RequestBody,
    C: Connect,
{
    /// Sends `request` to one pod and returns its response.
    pub fn request(&self, request: http::Request<B>) -> ResponseFuture {
        let mut balancer = self.balancer.clone();
        let call = tower::Service::call(&mut balancer, request);
        let Some(after) = self.request_timeout else {
            return Box::pin(async move { Ok(call.await?) });
        };
        let target = self.balancer.target_name().to_owned();
        Box::pin(async move {
            match tokio::time::timeout(after, call).await {
                Ok(result) => Ok(result?),
                Err(_) => Err(RequestError::Timeout { target, after }),
            }
        })
    }
}

impl<B, C> Client<B, C>
where
    B: RequestBody + Default,
    C: Connect,
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

impl<B, C> tower::Service<http::Request<B>> for Client<B, C>
where
    B: RequestBody,
    C: Connect,
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

impl<B, C> Clone for Client<B, C> {
    fn clone(&self) -> Self {
        Self {
            balancer: self.balancer.clone(),
            discovery: self.discovery.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

impl<B, C> fmt::Debug for Client<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.balancer.target_name())
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}
