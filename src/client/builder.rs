//! [`Builder`]: every setting of a balanced client, once, for HTTP and gRPC alike.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower::layer::util::{Identity, Stack};

use super::balanced::Balanced;
use super::hedge::{self, HedgePolicy, Hedging};
use crate::balance::{self, Balancer, Completion};
use crate::discover::{Discovery, DnsDiscover, EmptyAnswer, RefreshPolicy};
use crate::endpoint::{Endpoint, Layered, MakeEndpoint};
use crate::error::BuildError;
use crate::http::{EndpointSettings, HttpEndpointBuilder, Protocol, TcpConnector};
use crate::resolve::{HickoryResolver, Resolve};
use crate::target::Target;

/// The HTTP preset of [`Builder`]: builds an [`http::Client`](crate::http::Client).
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

/// The gRPC preset of [`Builder`]: builds a [`grpc::Channel`](crate::grpc::Channel).
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc;

/// Configures a balanced client: discovery, the balancer and each pod's
/// connections. Every setting has one setter, named the same for HTTP and
/// gRPC, and a documented default.
///
/// `P` is the preset ([`Http`] or [`Grpc`]), `C` the connector that opens
/// pod connections and `L` the [`tower::Layer`] stack around each pod's
/// service ([`endpoint_layer`](Self::endpoint_layer)). Most code names it
/// through [`http::ClientBuilder`](crate::http::ClientBuilder) or
/// [`grpc::ChannelBuilder`](crate::grpc::ChannelBuilder).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use headless_lb::http::Client;
///
/// let client: Client<_, _> = Client::builder()
///     .connect_timeout(Duration::from_millis(500))
///     .endpoint_layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
///     .build::<http_body_util::Empty<bytes::Bytes>>("web.default.svc.cluster.local:8080")?;
/// # let _ = client; Ok(()) }
/// ```
pub struct Builder<P, C = TcpConnector, L = Identity> {
    pub(crate) settings: Settings,
    pub(crate) connector: C,
    pub(crate) layer: L,
    _preset: PhantomData<fn() -> P>,
}

/// Every setting of a client, each in one place.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) endpoint: EndpointSettings,
    pub(crate) balance: balance::Config,
    pub(crate) refresh: RefreshPolicy,
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) resolver: Option<Arc<dyn Resolve>>,
    /// HTTP: how long a request may take to its response head, overall.
    /// gRPC: the deadline of an RPC that carries no `grpc-timeout`.
    pub(crate) request_timeout: Option<Duration>,
    /// The name every pod's certificate is checked against, instead of the
    /// target's host (`tls_server_name`).
    pub(crate) server_name: Option<Arc<str>>,
    /// Hedging: off without a policy.
    pub(crate) hedge: Option<HedgePolicy>,
    /// gRPC: the methods hedged by default, as the user wrote them
    /// (checked at build).
    pub(crate) hedge_grpc_methods: Vec<String>,
}

/// The `tower::Service<SocketAddr>` that [`DnsDiscover`] calls: the user's
/// [`MakeEndpoint`] with the target's server name and protocol filled in.
struct MakeForDiscovery<Req, M> {
    make: M,
    server_name: Arc<str>,
    protocol: Protocol,
    _req: PhantomData<fn(Req)>,
}

// ===== impl Builder =====

impl<P> Builder<P> {
    pub(crate) fn with_protocol(protocol: Protocol) -> Self {
        Builder {
            settings: Settings {
                endpoint: EndpointSettings::new(protocol),
                balance: balance::Config::default(),
                refresh: RefreshPolicy::default(),
                nameservers: Vec::new(),
                resolver: None,
                request_timeout: None,
                server_name: None,
                hedge: None,
                hedge_grpc_methods: Vec::new(),
            },
            connector: TcpConnector::new(),
            layer: Identity::new(),
            _preset: PhantomData,
        }
    }
}

#[cfg(feature = "tls")]
impl<P, L> Builder<P, TcpConnector, L> {
    /// TLS to every pod with `config` (cargo feature `tls`).
    ///
    /// Each pod's certificate is verified against the service's name, the
    /// target's host (`web.default.svc.cluster.local`, not the pod's IP;
    /// see [`tls_server_name`](Self::tls_server_name)), which SNI also
    /// carries. ALPN offers `h2` for HTTP/2 and gRPC, `http/1.1` for
    /// HTTP/1.1 (replacing `config.alpn_protocols`); requests carry
    /// `:scheme https`. A client certificate in `config` (mTLS) goes to every
    /// pod. A failed handshake is a failed connect of that pod: it backs off
    /// and the request goes to another pod, with a
    /// [`ConnectError`](crate::http::ConnectError) that names the pod and
    /// the server name.
    ///
    /// With a [`connector`](Self::connector) of your own, do TLS there with
    /// [`Endpoint::server_name`] and set [`https`](Self::https).
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.connector = self.connector.tls(config);
        self.settings.endpoint.https = true;
        self
    }
}

impl<P, L> Builder<P, TcpConnector, L> {
    // ----- the default connector's sockets -----

    /// `TCP_USER_TIMEOUT` on every pod connection: how long written data or
    /// a keepalive probe may go unacknowledged by the pod before the
    /// connection closes and its requests fail \[10 s\]; `None` leaves the
    /// system's (about 15 minutes). Linux only.
    ///
    /// With [`tcp_keepalive`](Self::tcp_keepalive) this bounds how long a
    /// request waits on a pod whose packets are dropped (a deleted pod's
    /// black-holed IP, a crashed node): it fails about this long after the
    /// pod last answered, and the pod is taken out of picks and reconnected
    /// in the background. A slow or frozen pod's kernel still acknowledges,
    /// so this never cuts a slow request short. Applies to the default
    /// [`TcpConnector`]; a connector of your own sets its own (wrap a
    /// configured `TcpConnector` to keep these).
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connector = self.connector.tcp_user_timeout(timeout);
        self
    }

    /// TCP keepalive on every pod connection: a probe after `idle` without
    /// receiving anything, then one a second \[5 s\]; `None` turns it off.
    ///
    /// The probes are what make [`tcp_user_timeout`](Self::tcp_user_timeout)
    /// catch a pod that vanished while a request waits for its response with
    /// nothing left to acknowledge. The pod's kernel answers them, so unlike
    /// HTTP/2 PINGs ([`http2_keep_alive`](Self::http2_keep_alive)) no
    /// server policy (gRPC's `too_many_pings`) limits them, and they work
    /// for HTTP/1.1 too.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.connector = self.connector.tcp_keepalive(idle);
        self
    }
}

impl<P, C, L> Builder<P, C, L> {
    // ----- pod connections -----

    /// How long opening a connection to a pod may take, TLS handshake
    /// included \[1 s\]. A pod that does not connect in time backs off and
    /// the request goes to another pod (it was never sent).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.endpoint.connect_timeout = timeout;
        self
    }

    /// HTTP/1.1 connections per pod at most \[16\]; ignored for HTTP/2,
    /// which multiplexes over one.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.settings.endpoint.max_connections = max.max(1);
        self
    }

    /// HTTP/2: PING a connection that received nothing for `interval`, and
    /// close it (failing its requests and streams) if the PING goes
    /// unanswered for `timeout` \[none, 20 s\].
    ///
    /// Off by default: [`tcp_keepalive`](Builder::tcp_keepalive) and
    /// [`tcp_user_timeout`](Builder::tcp_user_timeout) already end requests
    /// on a pod that vanished, for every protocol. PINGs are for what TCP
    /// keepalive cannot see, such as a proxy between client and pod that
    /// keeps the TCP connection up. gRPC servers allow one PING per 5
    /// minutes by default (grpc-go's `EnforcementPolicy.MinTime`) and answer
    /// more with `GOAWAY too_many_pings`, failing the connection's RPCs;
    /// raise their limit (`permit_keepalive_time`) before pinging more often.
    pub fn http2_keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.settings.endpoint.http2.keep_alive_interval = interval;
        self.settings.endpoint.http2.keep_alive_timeout = timeout;
        self
    }

    /// HTTP/2: keepalive PINGs also while no request is open \[false\].
    pub fn http2_keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.settings.endpoint.http2.keep_alive_while_idle = enabled;
        self
    }

    /// Opens pod connections with `connector`, a `tower::Service<`[`Endpoint`]`>`
    /// yielding a hyper I/O object: TLS of your own, a proxy, socket options
    /// [`TcpConnector`: plain TCP with `TCP_NODELAY`, keepalive and a user
    /// timeout]. The [`Endpoint`] names
    /// the pod's address, the service's name and the protocol, so a TLS
    /// connector can verify the service's certificate and offer ALPN.
    pub fn connector<C2>(self, connector: C2) -> Builder<P, C2, L> {
        Builder {
            settings: self.settings,
            connector,
            layer: self.layer,
            _preset: PhantomData,
        }
    }

    /// Wraps every pod's service in `layer`: a per-pod timeout
    /// (`tower::timeout::TimeoutLayer`), concurrency limit, metrics,
    /// anything that is a [`tower::Layer`] \[none\].
    ///
    /// Layers added first are outermost, as in `tower::ServiceBuilder`. The
    /// balancer sits above them: it measures load around the layered
    /// service, sees an error from its `poll_ready` as a failed connect (the
    /// pod backs off), and still retries a request whose error carries a
    /// [`NotSent`](crate::NotSent) anywhere in its source chain.
    pub fn endpoint_layer<L2>(self, layer: L2) -> Builder<P, C, Stack<L2, L>> {
        Builder {
            settings: self.settings,
            connector: self.connector,
            layer: Stack::new(layer, self.layer),
            _preset: PhantomData,
        }
    }

    /// The name every pod's TLS certificate is checked against and SNI
    /// carries, when it is not the target's host \[the target's host, e.g.
    /// `web.default.svc.cluster.local`\]: for a certificate issued for
    /// another name, or a target given as an IP address. Connectors get it
    /// as [`Endpoint::server_name`]. With TLS on, `build` fails with
    /// [`BuildError::ServerName`] unless it is a DNS name or an IP address.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.settings.server_name = Some(Arc::from(name.trim_end_matches('.')));
        self
    }

    /// Requests carry `:scheme https` (HTTP/2 and gRPC) \[false;
    /// [`tls`](Builder::tls) turns it on\]: for a TLS
    /// [`connector`](Self::connector) of your own.
    pub fn https(mut self, https: bool) -> Self {
        self.settings.endpoint.https = https;
        self
    }

    // ----- the balancer -----

    /// How long a request waits for any pod before failing with
    /// `NoEndpoints` (gRPC: `UNAVAILABLE`) naming the target \[3 s\]; also
    /// how long a request that was never sent goes on retrying (see
    /// [`max_retries`](Self::max_retries)).
    pub fn failfast_timeout(mut self, timeout: Duration) -> Self {
        self.settings.balance.failfast_timeout = timeout;
        self
    }

    /// The RTT assumed for the first pod, before any measurement \[30 ms\];
    /// see [`balance::Builder::default_rtt`].
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.settings.balance.default_rtt = rtt;
        self
    }

    /// The peak-EWMA decay time \[10 s\]; see [`balance::Builder::decay`].
    pub fn decay(mut self, decay: Duration) -> Self {
        self.settings.balance.decay = decay;
        self
    }

    /// Reconnect backoff of a failed pod: `base` doubling to `max` \[100 ms, 10 s\].
    pub fn endpoint_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.balance.backoff_base = base;
        self.settings.balance.backoff_max = max;
        self
    }

    /// Retries of a request that was never sent (a refused connect) on a
    /// pod it already tried \[2\]. Such a request first goes on to every pod
    /// it has not tried, within `failfast_timeout`, then fails "not sent";
    /// see [`balance::Builder::max_retries`].
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.settings.balance.max_retries = retries;
        self
    }

    /// Failed requests in a row (errors, HTTP 5xx or gRPC `UNAVAILABLE`,
    /// broken bodies) that take a pod out of picks for a backoff \[5\]; 0
    /// turns this off. See [`balance::Builder::failure_accrual`].
    pub fn failure_accrual(mut self, failures: u32) -> Self {
        self.settings.balance.failure_accrual = failures;
        self
    }

    /// Balances over at most `size` of the service's pods, chosen
    /// deterministically from this client's identity \[off\]; 0 turns it
    /// off. See [`balance::Builder::subset_size`] for when to turn it on and
    /// [`Subset`](crate::balance::Subset) for the rule.
    pub fn subset_size(mut self, size: usize) -> Self {
        self.settings.balance.subset_size = size;
        self
    }

    /// This client's identity for [`subset_size`](Self::subset_size) \[the
    /// hostname\]; see [`balance::Builder::subset_identity`].
    pub fn subset_identity(mut self, identity: crate::balance::ClientIdentity) -> Self {
        self.settings.balance.subset_identity = Some(identity);
        self
    }

    /// The most pods connected to without a subset \[half the open-file
    /// limit, at least 64\]; see [`balance::Builder::max_connected`].
    pub fn max_connected(mut self, max: usize) -> Self {
        self.settings.balance.max_connected = max.max(1);
        self
    }

    /// How many new pods are connected to at once \[64\]; see
    /// [`balance::Builder::connect_concurrency`].
    pub fn connect_concurrency(mut self, concurrency: usize) -> Self {
        self.settings.balance.connect_concurrency = concurrency.max(1);
        self
    }

    // ----- discovery -----

    /// DNS refresh schedule and backoff [`RefreshPolicy::default`].
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.settings.refresh = policy;
        self
    }

    /// What NXDOMAIN or an empty answer does [`EmptyAnswer::KeepLastGood`];
    /// the same field as in [`refresh_policy`](Self::refresh_policy).
    pub fn empty_answer(mut self, empty_answer: EmptyAnswer) -> Self {
        self.settings.refresh.empty_answer = empty_answer;
        self
    }

    /// Ask this DNS server (UDP and TCP) instead of the ones in
    /// `/etc/resolv.conf`; repeatable \[system configuration\].
    pub fn nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.settings.nameservers.push(nameserver);
        self
    }

    /// Resolve with this resolver instead of a [`HickoryResolver`] built from
    /// the system configuration (e.g. one with a custom
    /// [`HickoryResolverBuilder`](crate::resolve::HickoryResolverBuilder)).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.settings.resolver = Some(resolver);
        self
    }

    // ----- hedging -----

    /// Hedges slow idempotent requests with `policy`: when a request has no
    /// answer after the policy's delay, a copy goes to another pod (chosen
    /// by the same P2C rule among the pods the request has not gone to),
    /// the first answer is returned and the other copy is cancelled
    /// \[off\].
    ///
    /// Only requests that may be sent twice are hedged: HTTP GET, HEAD and
    /// OPTIONS, gRPC methods listed with
    /// [`hedge_grpc_methods`](Builder::hedge_grpc_methods), and any request
    /// marked [`Idempotent(true)`](super::Idempotent); and only with a body
    /// that can be copied (HTTP: empty, or a `Full<Bytes>` or `String` of at
    /// most [`MAX_HEDGE_BODY`](super::MAX_HEDGE_BODY) bytes; gRPC: at most
    /// 64 KiB). The policy's budget caps the extra requests. A hedge never
    /// turns a success into a failure: an error of one copy is ignored
    /// while the other runs. Counts in [`Stats::hedging`](crate::Stats::hedging)
    /// and, with cargo feature `metrics`, `headless_lb_hedges_total`,
    /// `headless_lb_hedges_won_total` and `headless_lb_hedges_refused_total`.
    ///
    /// `build` fails with [`BuildError::Hedge`] for a budget outside 0..=1
    /// or a percentile outside (0, 1]. Applies to the HTTP client and the
    /// gRPC channel, not to [`build_with`](Self::build_with)'s service.
    pub fn hedge(mut self, policy: HedgePolicy) -> Self {
        self.settings.hedge = Some(policy);
        self
    }

    // ----- building -----

    /// Starts discovery and a balancer for `target` over per-pod services
    /// that `make` builds, wrapped in this builder's
    /// [`endpoint_layer`](Self::endpoint_layer)s, with `completion` deciding
    /// when a request stops counting as load on its pod.
    ///
    /// The open core under the HTTP client and the gRPC channel: use it for
    /// a per-pod service of your own. The connection settings and the
    /// connector are `HttpEndpointBuilder`'s and do not apply to another maker.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build_with<Req, M, K>(
        self,
        target: &str,
        make: M,
        completion: K,
    ) -> Result<Balanced<Req, L::Service, K>, BuildError>
    where
        Req: Send + 'static,
        M: MakeEndpoint<Req>,
        L: tower::Layer<M::Service> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<Req> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<Req>>::Error: Into<tower::BoxError>,
        <L::Service as tower::Service<Req>>::Future: Send,
        K: Completion<<L::Service as tower::Service<Req>>::Response>,
    {
        let target: Target = target.parse()?;
        let make = Layered::new(make, self.layer);
        start(self.settings, target, make, completion)
    }

    /// The default maker: an [`HttpEndpointBuilder`] with this builder's
    /// connection settings and connector, for `target`, wrapped in the
    /// layers.
    pub(crate) fn http_maker(
        self,
        target: &Target,
    ) -> Result<(Settings, Layered<HttpEndpointBuilder<C>, L>), BuildError> {
        let authority = target
            .authority()
            .parse()
            .map_err(|_| BuildError::Authority {
                target: target.to_string(),
            })?;
        let endpoints = HttpEndpointBuilder::from_settings(self.settings.endpoint, self.connector)
            .authority(authority);
        Ok((self.settings, Layered::new(endpoints, self.layer)))
    }
}

/// Discovery and a balancer for `target` over the services `make` builds.
pub(crate) fn start<Req, M, K>(
    settings: Settings,
    target: Target,
    make: M,
    completion: K,
) -> Result<Balanced<Req, M::Service, K>, BuildError>
where
    Req: Send + 'static,
    M: MakeEndpoint<Req>,
    <M::Service as tower::Service<Req>>::Error: Into<tower::BoxError>,
    <M::Service as tower::Service<Req>>::Future: Send,
    K: Completion<<M::Service as tower::Service<Req>>::Response>,
{
    // Checked first: a build that fails starts nothing.
    let hedging = hedging(settings.hedge.as_ref(), &settings.hedge_grpc_methods)?;
    let resolver = match settings.resolver {
        Some(resolver) => resolver,
        None => {
            let mut builder = HickoryResolver::builder();
            for ns in settings.nameservers {
                builder = builder.nameserver(ns);
            }
            Arc::new(builder.build()?)
        }
    };
    let server_name = settings
        .server_name
        .unwrap_or_else(|| Arc::from(server_name(&target)));
    // With TLS on, a name no certificate can be checked against would fail
    // every connect: refuse it here, with the name.
    #[cfg(feature = "tls")]
    if settings.endpoint.https {
        crate::http::check_server_name(&server_name)?;
    }
    let discovery = Discovery::spawn_with_policy(target.clone(), resolver, settings.refresh);
    let make = MakeForDiscovery {
        make,
        server_name,
        protocol: settings.endpoint.protocol,
        _req: PhantomData,
    };
    let errors = discovery.clone();
    let mut config = settings.balance;
    config.target = target.to_string();
    config.last_error_source = Some(Arc::new(move || {
        errors.stats().last_error.map(|e| e.to_string())
    }));
    // A pod that refuses connections or breaks them may be gone from DNS
    // already: look again early (rate-limited by discovery) rather than at
    // the end of the TTL.
    let hint = discovery.clone();
    config.on_endpoint_failure = Some(Arc::new(move |_| hint.resolve_now()));
    let balancer = Balancer::spawn(
        config,
        DnsDiscover::new(discovery.clone(), make),
        completion,
    );
    Ok(Balanced {
        balancer,
        discovery,
        hedging,
    })
}

/// The hedging state for `policy`, after checking it and the gRPC methods;
/// `None` without a policy.
fn hedging(
    policy: Option<&HedgePolicy>,
    grpc_methods: &[String],
) -> Result<Option<Arc<Hedging>>, BuildError> {
    let methods = grpc_methods
        .iter()
        .map(|m| hedge::grpc_method(m))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(policy) = policy else {
        return Ok(None);
    };
    policy.validate()?;
    Ok(Some(Arc::new(Hedging::new(policy, methods))))
}

/// The name every pod of `target` presents: the host without `_service._proto.`
/// labels (SRV), port or trailing dot.
fn server_name(target: &Target) -> String {
    let authority = target.authority();
    let host = match authority.parse::<http::uri::Authority>() {
        Ok(a) => a.host().to_owned(),
        Err(_) => authority,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_owned()
}

impl<P, C, L: fmt::Debug> fmt::Debug for Builder<P, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("preset", &std::any::type_name::<P>())
            .field("endpoint", &self.settings.endpoint)
            .field("balance", &self.settings.balance)
            .field("refresh", &self.settings.refresh)
            .field("nameservers", &self.settings.nameservers)
            .field("request_timeout", &self.settings.request_timeout)
            .field("hedge", &self.settings.hedge)
            .field("hedge_grpc_methods", &self.settings.hedge_grpc_methods)
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

// ===== impl MakeForDiscovery =====

impl<Req, M> tower::Service<SocketAddr> for MakeForDiscovery<Req, M>
where
    M: MakeEndpoint<Req>,
{
    type Response = M::Service;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<M::Service, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        let endpoint = Endpoint::new(addr, self.server_name.clone(), self.protocol);
        std::future::ready(Ok(self.make.make_endpoint(&endpoint)))
    }
}
