//! Every client under comparison, behind one interface: send one request,
//! say whether it succeeded.
//!
//! HTTP: our balanced `http::Client` (P2C), round-robin and random baselines
//! over the same per-pod endpoints (HTTP/1.1; ours and round-robin over h2c
//! too, in scenario 1 only), a plain hyper-util client to one pod, and
//! the tower stack a user would write today (`Buffer<Balance<PeakEwma<…>>>`
//! over one hyper-util client per pod, fed by our `DnsDiscover`).
//!
//! gRPC: our `grpc::Channel`, tonic's `Channel::balance_channel` fed by our
//! `DnsDiscover`, and ginepro's `LoadBalancedChannel` (tonic 0.13, its own DNS
//! probe every 10 s by default) looking names up at the same DNS server.
//! Outside [`Kind::ALL`], for the open-loop scenarios: the tower stack over
//! one tonic channel per pod, and our channel with a hedge policy
//! ([`build_hedged`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use headless_lb::http::{HttpEndpoint, HttpEndpointBuilder, Protocol as HttpVersion};
use headless_lb::resolve::HickoryResolver;
use headless_lb::{Discovery, DnsDiscover, Target};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceExt};

use super::cluster::Protocol;

/// How long a contender may take to learn its first endpoints.
const FIRST_ENDPOINTS: Duration = Duration::from_secs(5);

type ReqBody = Full<Bytes>;
type PlainClient = hyper_util::client::legacy::Client<HttpConnector, ReqBody>;
type TowerStack = tower::util::BoxCloneService<
    http::Request<ReqBody>,
    http::Response<hyper::body::Incoming>,
    tower::BoxError,
>;
type GrpcTowerStack = tower::util::BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tower::BoxError,
>;

/// The clients under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `headless_lb::http::Client`: P2C over peak-EWMA load.
    HttpOurs,
    /// Round-robin over per-pod `HttpEndpoint`s that follow DNS.
    HttpRoundRobin,
    /// `headless_lb::http::Client` over h2c (HTTP/2 with prior knowledge).
    H2cOurs,
    /// Round-robin over per-pod h2c `HttpEndpoint`s that follow DNS.
    H2cRoundRobin,
    /// A random pod, over the same endpoints.
    HttpRandom,
    /// One plain hyper-util client to the first pod: the no-balancer limit.
    HttpDirect,
    /// `Buffer<Balance<PeakEwma<hyper-util client per pod>>>` fed by `DnsDiscover`.
    HttpTower,
    /// `headless_lb::grpc::Channel`.
    GrpcOurs,
    /// tonic 0.14 `Channel::balance_channel`, fed by `DnsDiscover`.
    GrpcTonic,
    /// ginepro's `LoadBalancedChannel`.
    GrpcGinepro,
    /// `Buffer<Balance<PeakEwma<tonic Channel per pod>>>` fed by `DnsDiscover`
    /// (not in [`Kind::ALL`]: the open-loop scenarios only).
    GrpcTower,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::HttpOurs,
        Kind::HttpRoundRobin,
        Kind::H2cOurs,
        Kind::H2cRoundRobin,
        Kind::HttpRandom,
        Kind::HttpDirect,
        Kind::HttpTower,
        Kind::GrpcOurs,
        Kind::GrpcTonic,
        Kind::GrpcGinepro,
    ];

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::HttpOurs => "headless-lb p2c",
            Kind::HttpRoundRobin => "round-robin",
            Kind::H2cOurs => "headless-lb p2c, h2c",
            Kind::H2cRoundRobin => "round-robin, h2c",
            Kind::HttpRandom => "random",
            Kind::HttpDirect => "hyper-util, 1 pod",
            Kind::HttpTower => "tower Buffer<Balance<PeakEwma>>",
            Kind::GrpcOurs => "headless-lb Channel",
            Kind::GrpcTonic => "tonic balance_channel",
            Kind::GrpcGinepro => "ginepro",
            Kind::GrpcTower => "tower Buffer<Balance<PeakEwma>>",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Kind::HttpOurs
            | Kind::HttpRoundRobin
            | Kind::H2cOurs
            | Kind::H2cRoundRobin
            | Kind::HttpRandom
            | Kind::HttpDirect
            | Kind::HttpTower => Protocol::Http,
            Kind::GrpcOurs | Kind::GrpcTonic | Kind::GrpcGinepro | Kind::GrpcTower => {
                Protocol::Grpc
            }
        }
    }

    /// The short name `--kinds` takes.
    pub fn key(self) -> &'static str {
        match self {
            Kind::HttpOurs => "http-ours",
            Kind::HttpRoundRobin => "round-robin",
            Kind::H2cOurs => "h2c-ours",
            Kind::H2cRoundRobin => "h2c-round-robin",
            Kind::HttpRandom => "random",
            Kind::HttpDirect => "direct",
            Kind::HttpTower => "http-tower",
            Kind::GrpcOurs => "grpc-ours",
            Kind::GrpcTonic => "tonic",
            Kind::GrpcGinepro => "ginepro",
            Kind::GrpcTower => "grpc-tower",
        }
    }

    /// What goes over the wire, as tables name it: `http` (HTTP/1.1),
    /// `h2c` or `grpc`. The pods (`protocol`) serve HTTP/1.1 and h2c alike.
    pub fn wire(self) -> &'static str {
        match self {
            Kind::H2cOurs | Kind::H2cRoundRobin => "h2c",
            _ => match self.protocol() {
                Protocol::Http => "http",
                Protocol::Grpc => "grpc",
            },
        }
    }

    /// The HTTP version an HTTP contender of ours or round-robin speaks.
    fn http_version(self) -> HttpVersion {
        match self {
            Kind::H2cOurs | Kind::H2cRoundRobin => HttpVersion::Http2,
            _ => HttpVersion::Http1,
        }
    }

    /// The contender the others of its wire protocol are compared with.
    pub fn is_ours(self) -> bool {
        matches!(self, Kind::HttpOurs | Kind::H2cOurs | Kind::GrpcOurs)
    }

    /// True for the h2c pair, which only scenario 1 (healthy pods) runs:
    /// the fault scenarios measure the balancer, the same over either HTTP.
    pub fn healthy_only(self) -> bool {
        matches!(self, Kind::H2cOurs | Kind::H2cRoundRobin)
    }

    /// False for the one-pod client, which balances nothing.
    pub fn balances(self) -> bool {
        self != Kind::HttpDirect
    }
}

/// Sends one request on a clone of what it holds; `fork` gives each worker its own.
pub trait Sender: Send {
    /// One request, whole response read; true if it succeeded (2xx / OK).
    fn send(&mut self) -> BoxFuture<'static, bool>;
    fn fork(&self) -> Box<dyn Sender>;
}

struct CloneSender<T> {
    inner: T,
    send: fn(T) -> BoxFuture<'static, bool>,
}

impl<T: Clone + Send + 'static> Sender for CloneSender<T> {
    fn send(&mut self) -> BoxFuture<'static, bool> {
        (self.send)(self.inner.clone())
    }

    fn fork(&self) -> Box<dyn Sender> {
        Box::new(CloneSender {
            inner: self.inner.clone(),
            send: self.send,
        })
    }
}

fn sender<T: Clone + Send + 'static>(
    inner: T,
    send: fn(T) -> BoxFuture<'static, bool>,
) -> Box<dyn Sender> {
    Box::new(CloneSender { inner, send })
}

/// A built contender; dropping it stops the tasks it started.
pub struct Contender {
    pub kind: Kind,
    /// The name in tables: the kind's, or with its hedge policy.
    pub label: String,
    pub sender: Box<dyn Sender>,
    /// Our channel when it hedges, for its hedge counts.
    pub hedged: Option<headless_lb::grpc::Channel>,
    tasks: Vec<JoinHandle<()>>,
}

impl Contender {
    /// Hedges sent and hedges the budget refused so far; None for a
    /// contender that does not hedge.
    pub fn hedge_counts(&self) -> Option<(u64, u64)> {
        let channel = self.hedged.as_ref()?;
        Some(
            channel
                .stats()
                .hedging
                .map_or((0, 0), |h| (h.sent, h.refused)),
        )
    }
}

/// The gRPC method every contender calls; the hedged channel lists it.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Our `grpc::Channel` with `policy`, hedging [`HEALTH_CHECK`], named
/// `label` in tables. Call inside the client's runtime.
pub async fn build_hedged(
    target: &str,
    nameserver: SocketAddr,
    policy: headless_lb::HedgePolicy,
    label: String,
) -> Result<Contender, String> {
    let channel = headless_lb::grpc::Channel::builder()
        .nameserver(nameserver)
        .hedge(policy)
        .hedge_grpc_methods([HEALTH_CHECK])
        .build(target)
        .map_err(|e| e.to_string())?;
    first_endpoints(channel.discovery()).await?;
    Ok(Contender {
        kind: Kind::GrpcOurs,
        label,
        sender: sender(channel.clone(), |channel| Box::pin(check(channel))),
        hedged: Some(channel),
        tasks: Vec::new(),
    })
}

impl Drop for Contender {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Builds `kind` for `target` (`NAME:PORT`) looking names up at `nameserver`,
/// and waits until it knows its first endpoints. Call inside the client's runtime.
pub async fn build(kind: Kind, target: &str, nameserver: SocketAddr) -> Result<Contender, String> {
    let parsed: Target = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let mut tasks = Vec::new();
    let sender = match kind {
        Kind::HttpOurs | Kind::H2cOurs => {
            let client: headless_lb::http::Client = headless_lb::http::Client::builder()
                .nameserver(nameserver)
                .protocol(kind.http_version())
                .build(target)
                .map_err(|e| e.to_string())?;
            first_endpoints(client.discovery()).await?;
            sender(client, |client| {
                Box::pin(async move {
                    match client.get("/").await {
                        Ok(rsp) => read_http(rsp).await,
                        Err(_) => false,
                    }
                })
            })
        }
        Kind::HttpRoundRobin | Kind::H2cRoundRobin | Kind::HttpRandom => {
            let discovery = discovery(&parsed, nameserver)?;
            first_endpoints(&discovery).await?;
            let authority = parsed.authority().parse().map_err(|e| format!("{e}"))?;
            let builder = HttpEndpointBuilder::new(kind.http_version()).authority(authority);
            let endpoints = Arc::new(ArcSwap::from_pointee(Vec::new()));
            let published = endpoints.clone();
            tasks.push(tokio::spawn(super::follow::follow(
                discovery,
                move |addr| builder.make::<ReqBody>(addr),
                move |current| published.store(Arc::new(current.values().cloned().collect())),
            )));
            while endpoints.load().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let baseline = Arc::new(Baseline {
                random: kind == Kind::HttpRandom,
                next: AtomicUsize::new(0),
                endpoints,
            });
            sender(baseline, |b| Box::pin(async move { b.send().await }))
        }
        Kind::HttpDirect => {
            let discovery = discovery(&parsed, nameserver)?;
            let first = first_endpoints(&discovery).await?;
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: PlainClient =
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
            let uri: http::Uri = format!("http://{first}/")
                .parse()
                .map_err(|e| format!("{e}"))?;
            sender((client, uri), |(client, uri)| {
                Box::pin(async move {
                    match client.get(uri).await {
                        Ok(rsp) => read_http(rsp).await,
                        Err(_) => false,
                    }
                })
            })
        }
        Kind::HttpTower => {
            let discovery = discovery(&parsed, nameserver)?;
            first_endpoints(&discovery).await?;
            let discover = DnsDiscover::from_fn(discovery, |addr: SocketAddr| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client: PlainClient =
                    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                        .build(connector);
                let to_pod = tower::service_fn(move |req: http::Request<ReqBody>| {
                    let client = client.clone();
                    let (mut parts, body) = req.into_parts();
                    parts.uri = format!("http://{addr}{}", parts.uri.path())
                        .parse()
                        .expect("an address and a path make a URI");
                    async move { client.request(http::Request::from_parts(parts, body)).await }
                });
                // tower's defaults as a user would pick them: 30 ms default
                // RTT, 10 s decay (the same as ours).
                tower::load::PeakEwma::new(
                    to_pod,
                    Duration::from_millis(30),
                    Duration::from_secs(10).as_nanos() as f64,
                    tower::load::CompleteOnResponse::default(),
                )
            });
            let balance = tower::balance::p2c::Balance::new(discover);
            let buffer = tower::buffer::Buffer::new(balance, 1024);
            // Boxed so that the send future's `Send` bound is checked once
            // here, not through Buffer's higher-ranked error conversion.
            let buffer: TowerStack = tower::util::BoxCloneService::new(buffer);
            sender(buffer, |buffer| {
                Box::pin(async move {
                    let request = http::Request::get("/")
                        .body(ReqBody::default())
                        .expect("a valid request");
                    match buffer.oneshot(request).await {
                        Ok(rsp) => read_http(rsp).await,
                        Err(_) => false,
                    }
                })
            })
        }
        Kind::GrpcOurs => {
            let channel = headless_lb::grpc::Channel::builder()
                .nameserver(nameserver)
                .build(target)
                .map_err(|e| e.to_string())?;
            first_endpoints(channel.discovery()).await?;
            sender(channel, |channel| Box::pin(check(channel)))
        }
        Kind::GrpcTonic => {
            let discovery = discovery(&parsed, nameserver)?;
            first_endpoints(&discovery).await?;
            let origin: http::Uri = format!("http://{target}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            let mut changes = DnsDiscover::from_fn(discovery, move |addr: SocketAddr| {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("an address makes a URI")
                    .origin(origin.clone())
                    .tcp_nodelay(true)
            });
            let (channel, tx) = tonic::transport::Channel::balance_channel::<SocketAddr>(1024);
            tasks.push(tokio::spawn(async move {
                use tonic::transport::channel::Change;
                while let Some(Ok(change)) = changes.next().await {
                    let change = match change {
                        tower::discover::Change::Insert(a, e) => Change::Insert(a, e),
                        tower::discover::Change::Remove(a) => Change::Remove(a),
                    };
                    if tx.send(change).await.is_err() {
                        break;
                    }
                }
            }));
            sender(channel, |channel| Box::pin(check(channel)))
        }
        Kind::GrpcGinepro => {
            let host = parsed.authority();
            let (host, port) = host
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("{target} has no port"))?;
            let channel = ginepro::LoadBalancedChannel::builder((host, port))
                .lookup_service(TestDns::new(nameserver)?)
                .resolution_strategy(ginepro::ResolutionStrategy::Eager {
                    timeout: FIRST_ENDPOINTS,
                })
                .channel()
                .await
                .map_err(|e| format!("ginepro: {e:#}"))?;
            sender(Ginepro(channel), |channel| Box::pin(check(channel)))
        }
        Kind::GrpcTower => {
            let discovery = discovery(&parsed, nameserver)?;
            first_endpoints(&discovery).await?;
            let origin: http::Uri = format!("http://{target}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            let discover = DnsDiscover::from_fn(discovery, move |addr: SocketAddr| {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("an address makes a URI")
                    .origin(origin.clone())
                    .tcp_nodelay(true)
                    .connect_lazy();
                // As the HTTP tower stack: 30 ms default RTT, 10 s decay.
                tower::load::PeakEwma::new(
                    channel,
                    Duration::from_millis(30),
                    Duration::from_secs(10).as_nanos() as f64,
                    tower::load::CompleteOnResponse::default(),
                )
            });
            let balance = tower::balance::p2c::Balance::new(discover);
            let buffer = tower::buffer::Buffer::new(balance, 1024);
            let buffer: GrpcTowerStack = tower::util::BoxCloneService::new(buffer);
            sender(buffer, |buffer| Box::pin(check(buffer)))
        }
    };
    Ok(Contender {
        kind,
        label: kind.name().to_owned(),
        sender,
        hedged: None,
        tasks,
    })
}

/// Discovery over our hickory resolver pointed at `nameserver`.
fn discovery(target: &Target, nameserver: SocketAddr) -> Result<Discovery, String> {
    let resolver = HickoryResolver::builder()
        .nameserver(nameserver)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Discovery::spawn(target.clone(), Arc::new(resolver)))
}

/// Waits for the first non-empty endpoint set; its first address.
async fn first_endpoints(discovery: &Discovery) -> Result<SocketAddr, String> {
    let mut sets = discovery.watch();
    let first = tokio::time::timeout(FIRST_ENDPOINTS, sets.wait_for(|set| !set.is_empty()))
        .await
        .map_err(|_| "no endpoints within 5 s".to_owned())?
        .map_err(|_| "discovery stopped".to_owned())?;
    Ok(*first.iter().next().expect("waited for a non-empty set"))
}

/// Reads the whole body; true for a 2xx whose body arrived.
async fn read_http<B>(rsp: http::Response<B>) -> bool
where
    B: http_body::Body,
{
    let ok = rsp.status().is_success();
    rsp.into_body().collect().await.is_ok() && ok
}

/// One unary grpc.health.v1 Check; true if it ended in OK.
async fn check<T>(channel: T) -> bool
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok()
}

// ===== baselines =====

/// Round-robin or random over per-pod endpoints that follow discovery, as in
/// `examples/loadgen.rs`.
struct Baseline {
    random: bool,
    next: AtomicUsize,
    endpoints: Arc<ArcSwap<Vec<HttpEndpoint<ReqBody>>>>,
}

impl Baseline {
    async fn send(&self) -> bool {
        let endpoint = {
            let list = self.endpoints.load();
            if list.is_empty() {
                return false;
            }
            let i = if self.random {
                fastrand::usize(..list.len())
            } else {
                self.next.fetch_add(1, Ordering::Relaxed) % list.len()
            };
            list[i].clone()
        };
        let request = http::Request::get("/")
            .body(ReqBody::default())
            .expect("a valid request");
        match endpoint.oneshot(request).await {
            Ok(rsp) => read_http(rsp).await,
            Err(_) => false,
        }
    }
}

// ===== ginepro =====

/// ginepro's `LookupService`, as its own `DnsResolver` does it (hickory, no
/// cache, `lookup_ip`), but asking the scenario's DNS server instead of
/// `/etc/resolv.conf`'s.
struct TestDns(hickory_resolver::TokioResolver);

impl TestDns {
    fn new(nameserver: SocketAddr) -> Result<TestDns, String> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        let mut server = NameServerConfig::udp_and_tcp(nameserver.ip());
        for connection in &mut server.connections {
            connection.port = nameserver.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
        let mut builder = hickory_resolver::TokioResolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        builder.options_mut().cache_size = 0;
        builder.build().map(TestDns).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl ginepro::LookupService for TestDns {
    async fn resolve_service_endpoints(
        &self,
        definition: &ginepro::ServiceDefinition,
    ) -> Result<HashSet<SocketAddr>, anyhow::Error> {
        let lookup = self.0.lookup_ip(definition.hostname()).await?;
        Ok(lookup
            .iter()
            .map(|ip| SocketAddr::new(ip, definition.port()))
            .collect())
    }
}

/// ginepro's channel (tonic 0.13) as a tonic 0.14 `GrpcService`: both speak
/// `http` 1 requests; only the request body type needs wrapping.
#[derive(Clone)]
struct Ginepro(ginepro::LoadBalancedChannel);

type GineproService = ginepro::LoadBalancedChannel;
type GineproRequest = http::Request<tonic013::body::Body>;

impl Service<http::Request<tonic::body::Body>> for Ginepro {
    type Response = <GineproService as Service<GineproRequest>>::Response;
    type Error = <GineproService as Service<GineproRequest>>::Error;
    type Future = <GineproService as Service<GineproRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(request.map(tonic013::body::Body::new))
    }
}
