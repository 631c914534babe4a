//! [`Channel`]: the balanced gRPC channel, from a target string to a service tonic clients accept.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::body::{CompleteOnStreamEnd, ResponseBody};
use super::status;
use crate::balance::Balancer;
use crate::discover::{Discovery, EmptyAnswer, RefreshPolicy};
use crate::error::BuildError;
use crate::http::{ClientBuilder, Connect, HttpEndpoint, Protocol, TcpConnector};
use crate::resolve::Resolve;
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
/// a server is never retried by the channel; `grpc-timeout` (a deadline) is
/// the caller's, set per request.
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
pub struct Channel<C = TcpConnector> {
    balancer:
        Balancer<http::Request<RequestBody>, HttpEndpoint<RequestBody, C>, CompleteOnStreamEnd>,
    discovery: Discovery,
}

/// Configures a [`Channel`]. Every setting has a documented default.
pub struct ChannelBuilder<C = TcpConnector> {
    client: ClientBuilder<C>,
}

/// The future a [`Channel`] returns.
pub type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<ResponseBody>, tonic::Status>> + Send + 'static>,
>;

// ===== impl ChannelBuilder =====

impl Default for ChannelBuilder {
    fn default() -> Self {
        Self {
            client: ClientBuilder::default().protocol(Protocol::Http2),
        }
    }
}

impl<C> ChannelBuilder<C> {
    /// How long opening a connection to a pod may take \[1 s\].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.connect_timeout(timeout);
        self
    }

    /// PING a connection that received nothing for `interval` while an RPC
    /// is open, and close it (failing its RPCs with `UNAVAILABLE`) when the
    /// PING goes unanswered for `timeout` \[none, 20 s\].
    ///
    /// Finds a pod that vanished without closing its sockets (a node crash)
    /// while a stream waits on it. gRPC servers allow one PING per 5 minutes
    /// by default and close connections that ping more often; raise their
    /// limit (`permit_keepalive_time`, grpc-go's `EnforcementPolicy`) before
    /// pinging more often.
    pub fn keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.client = self.client.http2_keep_alive(interval, timeout);
        self
    }

    /// Keepalive PINGs also while no RPC is open \[false\].
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.client = self.client.http2_keep_alive_while_idle(enabled);
        self
    }

    /// How long an RPC waits for any pod before failing with `UNAVAILABLE`
    /// \[3 s\].
    pub fn failfast_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.failfast_timeout(timeout);
        self
    }

    /// The RTT assumed for the first pod, before any measurement \[30 ms\].
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.client = self.client.default_rtt(rtt);
        self
    }

    /// The peak-EWMA decay time \[10 s\].
    pub fn decay(mut self, decay: Duration) -> Self {
        self.client = self.client.decay(decay);
        self
    }

    /// Reconnect backoff of a failed pod: `base` doubling to `max` \[100 ms, 10 s\].
    pub fn endpoint_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.client = self.client.endpoint_backoff(base, max);
        self
    }

    /// Extra pods an RPC that was never sent may be tried on \[2\].
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.client = self.client.max_retries(retries);
        self
    }

    /// Failed RPCs in a row (errors, `UNAVAILABLE`, broken streams) that
    /// take a pod out of picks for a backoff \[5\]; 0 turns this off. See
    /// [`balance::Builder::failure_accrual`](crate::balance::Builder::failure_accrual).
    pub fn failure_accrual(mut self, failures: u32) -> Self {
        self.client = self.client.failure_accrual(failures);
        self
    }

    /// DNS refresh schedule and backoff [`RefreshPolicy::default`].
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.client = self.client.refresh_policy(policy);
        self
    }

    /// What NXDOMAIN or an empty answer does [`EmptyAnswer::KeepLastGood`].
    pub fn empty_answer(mut self, empty_answer: EmptyAnswer) -> Self {
        self.client = self.client.empty_answer(empty_answer);
        self
    }

    /// Ask this DNS server (UDP and TCP) instead of the ones in
    /// `/etc/resolv.conf`; repeatable \[system configuration\].
    pub fn nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.client = self.client.nameserver(nameserver);
        self
    }

    /// Resolve with this resolver instead of one built from the system
    /// configuration.
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.client = self.client.resolver(resolver);
        self
    }

    /// Opens pod connections with `connector` (TLS, socket options, metrics)
    /// [`TcpConnector`: plain TCP with `TCP_NODELAY`]; see
    /// [`ClientBuilder::connector`].
    pub fn connector<C2>(self, connector: C2) -> ChannelBuilder<C2> {
        ChannelBuilder {
            client: self.client.connector(connector),
        }
    }

    /// Starts discovery and the balancer for `target` (any [`Target`] form,
    /// `dns:///web.default.svc.cluster.local:50051` among them).
    ///
    /// Connections to the pods open in the background as soon as DNS
    /// answers, before the first RPC needs them.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self, target: &str) -> Result<Channel<C>, BuildError>
    where
        C: Connect,
    {
        self.build_target(target.parse()?)
    }

    /// Like [`build`](Self::build), for a parsed [`Target`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build_target(self, target: Target) -> Result<Channel<C>, BuildError>
    where
        C: Connect,
    {
        let (balancer, discovery) = self.client.build_balancer(target, CompleteOnStreamEnd)?;
        Ok(Channel {
            balancer,
            discovery,
        })
    }
}

impl<C> fmt::Debug for ChannelBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("client", &self.client)
            .finish()
    }
}

// ===== impl Channel =====

impl Channel {
    /// A [`ChannelBuilder`] with the default settings (HTTP/2 without TLS).
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder::default()
    }
}

impl<C> Channel<C> {
    /// Every pod's state and load (pending RPCs include open streams), and
    /// the discovery state.
    pub fn stats(&self) -> Stats {
        Stats {
            endpoints: self.balancer.stats(),
            discovery: self.discovery.stats(),
        }
    }

    /// The discovery feeding this channel: its current endpoint set and stats.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }
}

impl<C: Connect> tower::Service<http::Request<RequestBody>> for Channel<C> {
    type Response = http::Response<ResponseBody>;
    type Error = tonic::Status;
    type Future = ResponseFuture;

    /// Always ready: RPCs wait for a pod inside their future, at most
    /// `failfast_timeout`.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> ResponseFuture {
        let call = tower::Service::call(&mut self.balancer, request);
        Box::pin(async move { call.await.map_err(status::from_balance_error) })
    }
}

impl<C> Clone for Channel<C> {
    fn clone(&self) -> Self {
        Self {
            balancer: self.balancer.clone(),
            discovery: self.discovery.clone(),
        }
    }
}

impl<C> fmt::Debug for Channel<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.balancer.target_name())
            .finish_non_exhaustive()
    }
}
