//! Drives HTTP or gRPC load at a target and prints ONE line of JSON with the result.
//!
//! ```text
//! cargo run --example loadgen -- TARGET [--nameserver IP:PORT] [--protocol http|grpc]
//!     [--mode p2c|round-robin|random|direct] [--concurrency N]
//!     [--duration SECS | --requests N] [--rate N] [--path P] [--timeout-ms N] [--http2]
//!     [--tls-ca PEM [--tls-server-name NAME]] [--metrics-listen IP:PORT] [--quiet]
//! ```
//!
//! stdout, once at the end:
//!
//! ```text
//! {"requests":N,"errors":N,"duration_s":F,"rps":F,"p50_ms":F,"p90_ms":F,"p99_ms":F,
//!  "p999_ms":F,"max_ms":F,"per_endpoint":{"ADDR":N,...}}
//! ```
//!
//! and with `--rate`, two more keys at the end: `,"rate":F,"overload":N`.
//!
//! - `requests`: requests finished, failed ones included (and with `--rate`,
//!   overloaded ones); `errors`: those that did not end in 2xx (timeouts,
//!   connection errors and overloaded ones included).
//! - Latency percentiles are over every finished request, failed ones included,
//!   measured until the whole response body has arrived, from the send (closed
//!   loop) or from the request's intended start (`--rate`); computed with an
//!   HdrHistogram to 3 significant digits.
//!
//! Two kinds of load:
//!
//! - Closed loop (without `--rate`): `--concurrency` workers, each sending its
//!   next request as soon as the previous one has finished. When a pod stalls,
//!   the workers stall with it and stop sending, so the stall shows in a few
//!   requests only (coordinated omission).
//! - Open loop (`--rate N`): request `i` is due at `start + i/N` seconds,
//!   whatever the answers' pace (as wrk2 runs), and its latency counts from
//!   that due time, so time spent waiting behind a stall counts. At most
//!   `--concurrency` are in flight: a request due while that many are is not
//!   sent and counts in `errors` and in `overload`; raise `--concurrency` to
//!   above the rate times the worst latency to avoid it. The run sends
//!   `--requests` requests, or those due within `--duration`
//!   (rate × duration), then waits for the last ones to finish. `rate` in the
//!   line is the rate asked for; `rps` is `requests` over the run's duration.
//! - `per_endpoint`: responses (any status) per pod, keyed by the response
//!   body when it is an address (the echo pods answer with their own), else
//!   by the address the mode sent to (`"unknown"` for `p2c`).
//!
//! Modes, all over the same discovery (DNS, re-resolved per TTL):
//!
//! - `p2c`: the balanced [`headless_lb::http::Client`].
//! - `round-robin`, `random`: baselines over the same per-pod connections
//!   (`HttpEndpointBuilder::make` per address), following DNS changes, with no
//!   load signal, health or retries.
//! - `direct`: one plain hyper-util client to the first resolved address (the
//!   no-balancer baseline).
//!
//! `--protocol grpc` (build with `--features tonic`) sends unary
//! `grpc.health.v1.Health/Check` RPCs instead (`--path` and `--http2` do not
//! apply); `errors` are the RPCs that did not end in OK. `p2c` is the balanced
//! [`headless_lb::grpc::Channel`]; `round-robin` and `random` pick among one
//! lazily connected tonic `Channel` per discovered pod; `direct` is one tonic
//! `Channel` to the first resolved address. `per_endpoint` counts the RPCs
//! that ended in OK, by the pod that served them (`ServedBy` for `p2c`, the
//! address sent to otherwise).
//!
//! `--tls-ca` (build with `--features tls`) speaks TLS to the pods, trusting
//! the CA certificates in that PEM file and checking each pod's certificate
//! against the target's host (or `--tls-server-name`); ALPN picks h2 with
//! `--http2` and for gRPC. It applies to `p2c` (HTTP and gRPC) and to the
//! HTTP `round-robin` and `random` baselines.
//!
//! `--metrics-listen` (build with `--features metrics`) serves the client's
//! metrics (`headless_lb::metrics`) in Prometheus text format on
//! `http://IP:PORT/metrics` while it runs, through `metrics-exporter-prometheus`
//! with a 60 s idle timeout (departed pods' series leave) and histogram
//! buckets for the `_seconds` metrics.
//!
//! `--hedge-after-ms N|auto` (`--mode p2c`) hedges every request that has no
//! answer after N ms, or after the p95 of recent answers with `auto`: a copy
//! goes to another pod and the first answer counts (gRPC: the `Check`
//! method is listed as hedgeable). `--hedge-budget PCT` caps the copies at
//! that percentage of the requests \[10\]; `--max-hedges N` lets a request
//! get up to N hedges (1 to 4), each a delay after the last \[1\].
//!
//! Progress goes to stderr once a second unless `--quiet`: the requests and
//! errors so far (and the overloaded ones, if any) and, over the last second,
//! the rate, errors, p99 and each pod's share:
//!
//! ```text
//! loadgen: 3s 12000 requests, 0 errors, 4000 rps; last 1s: 4012 rps, 0 errors, p99 2.1 ms, 127.0.0.11:8080 33% 127.0.0.12:8080 33% 127.0.0.13:8080 34%
//! ```
//!
//! Bad arguments exit with status 2 and one line on stderr; a target that
//! never resolves exits with status 1.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use headless_lb::http::{Client, HttpEndpoint, HttpEndpointBuilder, Protocol};
use headless_lb::resolve::HickoryResolver;
use headless_lb::{Discovery, Endpoint, Target};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

/// How long to wait for the first DNS answer before giving up.
const FIRST_RESOLUTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies longer than this are never taken for an address.
const MAX_ADDR_BODY: usize = 64;

/// Drive HTTP load through the balancer (or a baseline) and print one JSON line.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// What to load: host:port, dns:///host:port, dns://IP:PORT/host:port or _port._proto.host.
    target: Target,
    /// Use this DNS server (UDP and TCP) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// What to speak.
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    protocol: Proto,
    /// How to pick a pod.
    #[arg(long, value_enum, default_value_t = Mode::P2c)]
    mode: Mode,
    /// Requests in flight at once (with --rate: at most).
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Run this many seconds [10 unless --requests is given].
    #[arg(long, value_name = "SECS", value_parser = parse_secs, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Send this many requests, then stop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Open loop: start N requests a second on a fixed schedule, whatever
    /// the answers' pace; latency counts from each request's intended start,
    /// and one due while --concurrency are in flight is an `overload` error.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Path (and query) of every request.
    #[arg(long, value_name = "P", default_value = "/", value_parser = parse_path)]
    path: PathAndQuery,
    /// Each request, body included, fails after this many milliseconds.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// TLS to the pods, trusting the CA certificates in this PEM file
    /// (needs the `tls` feature).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the pods' certificates are checked against [the target's host].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Serve the client's metrics in Prometheus text format on
    /// http://IP:PORT/metrics while running (needs the `metrics` feature).
    #[arg(long, value_name = "IP:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Hedge a request with no answer after N milliseconds, or after the
    /// p95 of recent answers with `auto` (--mode p2c).
    #[arg(long, value_name = "N|auto", value_parser = parse_hedge_after)]
    hedge_after_ms: Option<HedgeAfter>,
    /// The most hedges, in percent of requests [10].
    #[arg(long, value_name = "PCT", requires = "hedge_after_ms", value_parser = parse_hedge_budget)]
    hedge_budget: Option<f64>,
    /// The most hedges one request gets, 1 to 4, each a delay after the last [1].
    #[arg(long, value_name = "N", requires = "hedge_after_ms", value_parser = clap::value_parser!(u32).range(1..=4))]
    max_hedges: Option<u32>,
    /// The client configuration read from --tls-ca.
    #[cfg(feature = "tls")]
    #[arg(skip)]
    tls: Option<rustls::ClientConfig>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    /// HTTP/1.1 (or h2c with --http2).
    Http,
    /// Unary grpc.health.v1 Check RPCs (needs the `tonic` feature).
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The balanced client: power of two choices over peak-EWMA load.
    P2c,
    /// Every pod in turn, over the same per-pod connections.
    RoundRobin,
    /// A uniformly random pod, over the same per-pod connections.
    Random,
    /// One plain hyper client to the first resolved address.
    Direct,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e6) {
        return Err(format!("{s:?} is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= 1e7) {
        return Err(format!(
            "{s:?} is not a rate of requests a second (above 0, at most 1e7)"
        ));
    }
    Ok(rate)
}

fn parse_path(s: &str) -> Result<PathAndQuery, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} does not start with '/'"));
    }
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// When `--hedge-after-ms` hedges.
#[derive(Debug, Clone, Copy)]
enum HedgeAfter {
    Fixed(Duration),
    Auto,
}

fn parse_hedge_after(s: &str) -> Result<HedgeAfter, String> {
    if s == "auto" {
        return Ok(HedgeAfter::Auto);
    }
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is neither a number of milliseconds nor \"auto\""))?;
    Ok(HedgeAfter::Fixed(Duration::from_millis(ms)))
}

fn parse_hedge_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct / 100.0),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

/// The hedge policy of `--hedge-after-ms`, `--hedge-budget` and
/// `--max-hedges`, if any.
fn hedge_policy(args: &Args) -> Option<headless_lb::HedgePolicy> {
    let policy = match args.hedge_after_ms? {
        HedgeAfter::Fixed(delay) => headless_lb::HedgePolicy::after(delay),
        HedgeAfter::Auto => headless_lb::HedgePolicy::auto(),
    };
    let policy = match args.hedge_budget {
        Some(budget) => policy.budget(budget),
        None => policy,
    };
    Some(match args.max_hedges {
        Some(n) => policy.max_hedges(n),
        None => policy,
    })
}

/// The JSON line: field order as documented.
#[derive(Debug, Serialize)]
struct Report {
    requests: u64,
    errors: u64,
    duration_s: f64,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    per_endpoint: BTreeMap<String, u64>,
    /// Open loop only: the `--rate` asked for (absent in a closed loop, so
    /// that its line keeps exactly the keys it always had).
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    /// Open loop only: requests not sent because `--concurrency` were in
    /// flight when they were due.
    #[serde(skip_serializing_if = "Option::is_none")]
    overload: Option<u64>,
}

type ReqBody = Full<Bytes>;

/// Where requests go.
enum Sender {
    P2c(Client),
    Baseline(Baseline),
    Direct {
        client: Box<hyper_util::client::legacy::Client<HttpConnector, ReqBody>>,
        addr: SocketAddr,
        authority: http::HeaderValue,
    },
    #[cfg(feature = "tonic")]
    Grpc(grpc::GrpcSender),
}

/// Round-robin or random over per-pod endpoints that follow discovery.
struct Baseline {
    random: bool,
    next: AtomicUsize,
    endpoints: Arc<ArcSwap<Vec<HttpEndpoint<ReqBody>>>>,
}

/// How one request ended.
struct Outcome {
    ok: bool,
    /// The pod that answered, if a response arrived.
    endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    #[allow(unused_mut)]
    let mut args: Args = common::parse_args();
    if let Some(ca) = &args.tls_ca {
        #[cfg(feature = "tls")]
        match common::tls::client_config(ca) {
            Ok(config) => args.tls = Some(config),
            Err(e) => return common::usage_error(e),
        }
        #[cfg(not(feature = "tls"))]
        return common::usage_error(format!(
            "--tls-ca {} needs the tls feature: build with `--features tls`",
            ca.display()
        ));
    }
    if args.tls_ca.is_some()
        && (args.mode == Mode::Direct || (args.mode != Mode::P2c && !is_http(&args)))
    {
        return common::usage_error(
            "--tls-ca applies to --mode p2c, and to round-robin and random over HTTP",
        );
    }
    if args.hedge_after_ms.is_some() && args.mode != Mode::P2c {
        return common::usage_error("--hedge-after-ms applies to --mode p2c");
    }
    #[cfg(not(feature = "tonic"))]
    if let Proto::Grpc = args.protocol {
        return common::usage_error(
            "--protocol grpc needs the tonic feature: build with `--features tonic`",
        );
    }
    common::init_logging();
    if let Some(addr) = args.metrics_listen {
        #[cfg(feature = "metrics")]
        if let Err(e) = serve_metrics(addr) {
            eprintln!("error: cannot serve metrics on {addr}: {e}");
            return ExitCode::FAILURE;
        }
        #[cfg(not(feature = "metrics"))]
        return common::usage_error(format!(
            "--metrics-listen {addr} needs the metrics feature: build with `--features metrics`"
        ));
    }

    let protocol = if args.http2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let built = match args.protocol {
        Proto::Http => build_sender(&args, protocol).await,
        #[cfg(feature = "tonic")]
        Proto::Grpc => grpc::build(&args).await.map(Sender::Grpc),
        #[cfg(not(feature = "tonic"))]
        Proto::Grpc => unreachable!("refused above"),
    };
    let sender = match built {
        Ok(sender) => Arc::new(sender),
        Err(Failure::Usage(msg)) => return common::usage_error(msg),
        Err(Failure::Runtime(msg)) => {
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };

    let report = run(&args, sender).await;
    match serde_json::to_string(&report) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot encode the report: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Runtime(String),
}

/// Installs the Prometheus exporter, serving `/metrics` on `addr`; before
/// any client is built, since clients register their series as pods appear.
#[cfg(feature = "metrics")]
fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    // 100 µs to 10 s.
    const BUCKETS: [f64; 16] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    // Binding here reports a taken port as an error rather than a log line.
    std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(60)))
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())
}

fn is_http(args: &Args) -> bool {
    matches!(args.protocol, Proto::Http)
}

/// Waits for discovery's first non-empty endpoint set.
async fn wait_first(
    discovery: Discovery,
) -> Result<Arc<std::collections::BTreeSet<SocketAddr>>, Failure> {
    let mut sets = discovery.watch();
    let first = tokio::time::timeout(
        FIRST_RESOLUTION_TIMEOUT,
        sets.wait_for(|set| !set.is_empty()),
    )
    .await;
    match first {
        Ok(Ok(set)) => Ok(set.clone()),
        _ => Err(Failure::Runtime(format!(
            "{} did not resolve to any address within {FIRST_RESOLUTION_TIMEOUT:?}{}",
            discovery.target(),
            discovery
                .stats()
                .last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))),
    }
}

/// Discovery for the baseline modes, over the same resolver settings as `p2c`.
fn spawn_discovery(args: &Args) -> Result<Discovery, Failure> {
    let mut resolver = HickoryResolver::builder();
    if let Some(ns) = args.nameserver {
        resolver = resolver.nameserver(ns);
    }
    let resolver = resolver
        .build()
        .map_err(|e| Failure::Usage(format!("cannot set up the resolver: {e}")))?;
    Ok(Discovery::spawn(args.target.clone(), Arc::new(resolver)))
}

async fn build_sender(args: &Args, protocol: Protocol) -> Result<Sender, Failure> {
    let target = args.target.clone();
    let authority = target.authority();

    if args.mode == Mode::P2c {
        let mut builder = Client::builder().protocol(protocol);
        if let Some(ns) = args.nameserver {
            builder = builder.nameserver(ns);
        }
        if let Some(name) = &args.tls_server_name {
            builder = builder.tls_server_name(name);
        }
        #[cfg(feature = "tls")]
        if let Some(config) = &args.tls {
            builder = builder.tls(config.clone());
        }
        if let Some(policy) = hedge_policy(args) {
            builder = builder.hedge(policy);
        }
        let client: Client = builder
            .build_target(target)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        // Start the clock with endpoints known, as for the other modes.
        wait_first(client.discovery().clone()).await?;
        return Ok(Sender::P2c(client));
    }

    let discovery = spawn_discovery(args)?;
    let first = wait_first(discovery.clone()).await?;

    if args.mode == Mode::Direct {
        let addr = *first.iter().next().expect("waited for a non-empty set");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2)
            .build(connector);
        let authority = http::HeaderValue::from_str(&authority)
            .map_err(|e| Failure::Usage(format!("bad authority {authority:?}: {e}")))?;
        return Ok(Sender::Direct {
            client: Box::new(client),
            addr,
            authority,
        });
    }

    let authority = authority
        .parse()
        .map_err(|e| Failure::Usage(format!("bad authority {authority:?}: {e}")))?;
    #[allow(unused_mut)]
    let mut builder = HttpEndpointBuilder::new(protocol).authority(authority);
    #[cfg(feature = "tls")]
    if let Some(config) = &args.tls {
        builder = builder.tls(config.clone());
    }
    let server_name = args.tls_server_name.clone();
    let endpoints = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let published = endpoints.clone();
    tokio::spawn(common::follow::follow(
        discovery,
        move |addr| match &server_name {
            Some(name) => {
                builder.make_for::<ReqBody>(&Endpoint::new(addr, name.as_str(), protocol))
            }
            None => builder.make::<ReqBody>(addr),
        },
        move |current| published.store(Arc::new(current.values().cloned().collect())),
    ));
    // `follow` publishes the current set at once; wait for it.
    while endpoints.load().is_empty() {
        tokio::task::yield_now().await;
    }
    Ok(Sender::Baseline(Baseline {
        random: args.mode == Mode::Random,
        next: AtomicUsize::new(0),
        endpoints,
    }))
}

impl Sender {
    async fn send(&self, path: &PathAndQuery) -> Outcome {
        match self {
            Sender::P2c(client) => match client.get(path.as_str()).await {
                Ok(rsp) => finish(rsp, None).await,
                Err(e) => failed(&e),
            },
            Sender::Baseline(baseline) => baseline.send(path).await,
            #[cfg(feature = "tonic")]
            Sender::Grpc(grpc) => grpc.send().await,
            Sender::Direct {
                client,
                addr,
                authority,
            } => {
                let uri = format!("http://{addr}{path}");
                let request = http::Request::get(uri)
                    .header(http::header::HOST, authority.clone())
                    .body(ReqBody::default())
                    .expect("a valid address and path make a valid URI");
                match client.request(request).await {
                    Ok(rsp) => finish(rsp, Some(*addr)).await,
                    Err(e) => failed(&e),
                }
            }
        }
    }
}

impl Baseline {
    async fn send(&self, path: &PathAndQuery) -> Outcome {
        let mut endpoint = loop {
            let list = self.endpoints.load();
            if !list.is_empty() {
                let i = if self.random {
                    fastrand::usize(..list.len())
                } else {
                    self.next.fetch_add(1, Ordering::Relaxed) % list.len()
                };
                break list[i].clone();
            }
            // Only `EmptyAnswer::Clear` empties a set once it had endpoints;
            // the request timeout bounds this wait.
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let addr = endpoint.addr();
        let request = http::Request::get(path.as_str())
            .body(ReqBody::default())
            .expect("a valid path makes a valid request");
        let result = match endpoint.ready().await {
            Ok(endpoint) => endpoint.call(request).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(rsp) => finish(rsp, Some(addr)).await,
            Err(e) => failed(&*e),
        }
    }
}

/// Reads the whole body and names the pod that answered.
async fn finish<B>(rsp: http::Response<B>, sent_to: Option<SocketAddr>) -> Outcome
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let ok = rsp.status().is_success();
    let body = match rsp.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "response body failed");
            return Outcome {
                ok: false,
                endpoint: sent_to.map(|a| a.to_string()),
            };
        }
    };
    let from_body = (body.len() <= MAX_ADDR_BODY)
        .then(|| std::str::from_utf8(&body).ok())
        .flatten()
        .and_then(|s| s.trim().parse::<SocketAddr>().ok());
    let endpoint = from_body
        .or(sent_to)
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    Outcome {
        ok,
        endpoint: Some(endpoint),
    }
}

fn failed(e: &dyn std::fmt::Display) -> Outcome {
    tracing::debug!(error = %e, "request failed");
    Outcome {
        ok: false,
        endpoint: None,
    }
}

/// Latencies in nanoseconds, to 3 significant digits (at most 0.1 %
/// off), growing to whatever the largest value needs.
type Latencies = Histogram<u64>;

fn histogram() -> Latencies {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Tallies at most this many: requests record into `tallies[i % len]`, so
/// that a lock is rarely contended while memory stays bounded whatever
/// `--concurrency` is (a histogram takes up to a few hundred KiB).
const MAX_TALLIES: u64 = 16;

/// What the requests add up to, in one of a few shards.
struct Tally {
    /// Every finished request, failed ones included.
    latencies: Latencies,
    /// The same since the last progress line, which takes and resets it.
    window: Latencies,
    /// Finished requests that failed, and (open loop) overloaded ones.
    errors: u64,
    /// Open loop: requests due while `--concurrency` were in flight, never
    /// sent (counted in `errors` too).
    overload: u64,
    per_endpoint: HashMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latencies: histogram(),
            window: histogram(),
            errors: 0,
            overload: 0,
            per_endpoint: HashMap::new(),
        }
    }
}

impl Tally {
    /// Counts one finished request (`None`: it timed out).
    fn record(&mut self, latency: Duration, outcome: Option<Outcome>) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        for histogram in [&mut self.latencies, &mut self.window] {
            // `record` grows the histogram to fit; only a value beyond any
            // size it can take (centuries) is clamped to its top instead.
            if histogram.record(nanos).is_err() {
                histogram.saturating_record(nanos);
            }
        }
        let ok = match outcome {
            Some(outcome) => {
                if let Some(endpoint) = outcome.endpoint {
                    *self.per_endpoint.entry(endpoint).or_default() += 1;
                }
                outcome.ok
            }
            None => false,
        };
        if !ok {
            self.errors += 1;
        }
    }

    /// Counts one request that found `--concurrency` in flight.
    fn overloaded(&mut self) {
        self.overload += 1;
        self.errors += 1;
    }

    /// Requests accounted for: finished ones and overloaded ones.
    fn requests(&self) -> u64 {
        self.latencies.len() + self.overload
    }
}

async fn run(args: &Args, sender: Arc<Sender>) -> Report {
    let timeout = Duration::from_millis(args.timeout_ms);
    let start = Instant::now();
    let budget = match (args.requests, args.duration) {
        (Some(n), _) => Budget::Count(n),
        (None, Some(d)) => Budget::Until(start + d),
        (None, None) => Budget::Until(start + Duration::from_secs(10)),
    };
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..args.concurrency.min(MAX_TALLIES))
        .map(|_| Arc::default())
        .collect();

    let progress = (!args.quiet).then(|| tokio::spawn(progress(tallies.clone(), start)));

    match args.rate {
        None => closed_loop(args, sender, budget, timeout, &tallies).await,
        Some(rate) => open_loop(args, sender, rate, start, budget, timeout, &tallies).await,
    }

    let mut total = Tally::default();
    for tally in &tallies {
        let tally = std::mem::take(&mut *lock(tally));
        total
            .latencies
            .add(&tally.latencies)
            .expect("auto-resizing histograms of one precision add up");
        total.errors += tally.errors;
        total.overload += tally.overload;
        for (endpoint, n) in tally.per_endpoint {
            *total.per_endpoint.entry(endpoint).or_default() += n;
        }
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }

    let requests = total.requests();
    let duration_s = elapsed.as_secs_f64();
    let latencies = &total.latencies;
    Report {
        requests,
        errors: total.errors,
        duration_s: round3(duration_s),
        rps: round3(requests as f64 / duration_s),
        p50_ms: percentile_ms(latencies, 0.50),
        p90_ms: percentile_ms(latencies, 0.90),
        p99_ms: percentile_ms(latencies, 0.99),
        p999_ms: percentile_ms(latencies, 0.999),
        max_ms: nanos_to_ms(latencies.max()),
        per_endpoint: total.per_endpoint.into_iter().collect(),
        rate: args.rate,
        overload: args.rate.map(|_| total.overload),
    }
}

/// Today's load: `--concurrency` workers, each sending its next request
/// when the previous one has finished; latency from the send.
async fn closed_loop(
    args: &Args,
    sender: Arc<Sender>,
    budget: Budget,
    timeout: Duration,
    tallies: &[Arc<Mutex<Tally>>],
) {
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let sender = sender.clone();
            let path = args.path.clone();
            let issued = issued.clone();
            let tally = tallies[shard(worker, tallies)].clone();
            tokio::spawn(async move {
                while budget.take(&issued) {
                    let sent = Instant::now();
                    let outcome = tokio::time::timeout(timeout, sender.send(&path)).await;
                    let latency = sent.elapsed();
                    lock(&tally).record(latency, outcome.ok());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
}

/// `--rate`: request `i` is due at `start + i / rate`, whether or not the
/// earlier ones have finished (an open loop, as wrk2 runs: a stalled pod
/// does not slow the arrivals down), and its latency counts from that
/// intended start, so that the time a request waited behind a stall is
/// measured instead of omitted. At most `--concurrency` are in flight: a
/// request due while that many are is not sent and counts as `overload`.
///
/// The schedule runs on a blocking thread of its own, sleeping with the
/// OS's timer (tens of microseconds late) rather than tokio's, whose 1 ms
/// ticks would start every request up to a millisecond late and add that
/// to every latency (measured on loopback at 200 to 400 a second: p50
/// 1.25 ms with tokio's timer, 0.5 ms with the thread's).
async fn open_loop(
    args: &Args,
    sender: Arc<Sender>,
    rate: f64,
    start: Instant,
    budget: Budget,
    timeout: Duration,
    tallies: &[Arc<Mutex<Tally>>],
) {
    let bound = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let in_flight = Arc::new(Semaphore::new(bound.min(Semaphore::MAX_PERMITS)));
    let runtime = tokio::runtime::Handle::current();
    let path = args.path.clone();
    let tallies = tallies.to_vec();
    let schedule = tokio::task::spawn_blocking(move || {
        let mut requests = JoinSet::new();
        // Bounded by the budget: `--requests N` stops at N, a duration at
        // the first request due after it (due times grow with `i`).
        for i in 0u64.. {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let more = match budget {
                Budget::Count(n) => i < n,
                Budget::Until(deadline) => due < deadline,
            };
            if !more {
                break;
            }
            // Late (the schedule fell behind): send at once; the lag
            // counts in this request's latency.
            let early = due.saturating_duration_since(Instant::now());
            if !early.is_zero() {
                std::thread::sleep(early);
            }
            let tally = tallies[shard(i, &tallies)].clone();
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                lock(&tally).overloaded();
                continue;
            };
            let sender = sender.clone();
            let path = path.clone();
            requests.spawn_on(
                async move {
                    let outcome = tokio::time::timeout(timeout, sender.send(&path)).await;
                    let latency = due.elapsed();
                    drop(permit);
                    lock(&tally).record(latency, outcome.ok());
                },
                &runtime,
            );
            // Reap finished requests so that a long run does not grow the set.
            while let Some(done) = requests.try_join_next() {
                done.expect("a request panicked");
            }
        }
        requests
    });
    let mut requests = schedule.await.expect("the schedule panicked");
    while let Some(done) = requests.join_next().await {
        done.expect("a request panicked");
    }
}

/// The tally that worker or request `i` records into.
fn shard(i: u64, tallies: &[Arc<Mutex<Tally>>]) -> usize {
    (i % tallies.len() as u64) as usize
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints a progress line to stderr once a second: totals, and over the last
/// second the rate, errors, p99 and each pod's share of the responses.
async fn progress(tallies: Vec<Arc<Mutex<Tally>>>, start: Instant) {
    let mut errors_before = 0;
    let mut per_endpoint_before: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut window = histogram();
        let (mut requests, mut errors, mut overload) = (0, 0, 0);
        let mut per_endpoint: HashMap<String, u64> = HashMap::new();
        for tally in &tallies {
            let mut tally = lock(tally);
            window
                .add(&tally.window)
                .expect("auto-resizing histograms of one precision add up");
            tally.window.reset();
            requests += tally.requests();
            errors += tally.errors;
            overload += tally.overload;
            for (endpoint, n) in &tally.per_endpoint {
                *per_endpoint.entry(endpoint.clone()).or_default() += n;
            }
        }
        let mut shares: Vec<(String, u64)> = per_endpoint
            .iter()
            .map(|(e, n)| {
                (
                    e.clone(),
                    n - per_endpoint_before.get(e).copied().unwrap_or(0),
                )
            })
            .collect();
        shares.sort();
        let answered: u64 = shares.iter().map(|(_, n)| n).sum();
        let shares: Vec<String> = shares
            .iter()
            .map(|(e, n)| format!("{e} {:.0}%", 100.0 * *n as f64 / answered.max(1) as f64))
            .collect();
        let t = start.elapsed().as_secs_f64();
        // Overload exists only in the open loop, and is named only if any.
        let overload = if overload > 0 {
            format!(" ({overload} overload)")
        } else {
            String::new()
        };
        eprintln!(
            "loadgen: {t:.0}s {requests} requests, {errors} errors{overload}, {:.0} rps; last 1s: {} rps, {} errors, p99 {:.1} ms, {}",
            requests as f64 / t,
            window.len(),
            errors - errors_before,
            percentile_ms(&window, 0.99),
            shares.join(" ")
        );
        errors_before = errors;
        per_endpoint_before = per_endpoint;
    }
}

/// When the requests stop.
#[derive(Clone, Copy)]
enum Budget {
    Count(u64),
    Until(Instant),
}

impl Budget {
    /// Closed loop: true if one more request may start.
    fn take(self, issued: &AtomicU64) -> bool {
        match self {
            Budget::Count(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
            Budget::Until(deadline) => Instant::now() < deadline,
        }
    }
}

/// The latency below which a fraction `q` of the requests fell, in
/// milliseconds (0 when none finished).
fn percentile_ms(latencies: &Latencies, q: f64) -> f64 {
    nanos_to_ms(latencies.value_at_quantile(q))
}

fn nanos_to_ms(nanos: u64) -> f64 {
    round3(nanos as f64 / 1e6)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// `--protocol grpc`: unary health checks through the balanced channel or a baseline.
#[cfg(feature = "tonic")]
mod grpc {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use headless_lb::http::ServedBy;
    use tonic::transport::{Channel, Endpoint};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::{Args, Failure, Mode, Outcome, spawn_discovery, wait_first};

    /// Where RPCs go.
    pub enum GrpcSender {
        P2c(headless_lb::grpc::Channel),
        /// Round-robin or random over one tonic channel per pod, following discovery.
        Baseline {
            random: bool,
            next: AtomicUsize,
            channels: Arc<ArcSwap<Vec<(SocketAddr, Channel)>>>,
        },
        /// One tonic channel to the first resolved address.
        Direct {
            addr: SocketAddr,
            channel: Channel,
        },
    }

    pub async fn build(args: &Args) -> Result<GrpcSender, Failure> {
        if args.mode == Mode::P2c {
            let mut builder = headless_lb::grpc::Channel::builder();
            if let Some(ns) = args.nameserver {
                builder = builder.nameserver(ns);
            }
            if let Some(name) = &args.tls_server_name {
                builder = builder.tls_server_name(name);
            }
            #[cfg(feature = "tls")]
            if let Some(config) = &args.tls {
                builder = builder.tls(config.clone());
            }
            if let Some(policy) = super::hedge_policy(args) {
                builder = builder
                    .hedge(policy)
                    .hedge_grpc_methods(["/grpc.health.v1.Health/Check"]);
            }
            let channel = builder
                .build_target(args.target.clone())
                .map_err(|e| Failure::Usage(e.to_string()))?;
            wait_first(channel.discovery().clone()).await?;
            return Ok(GrpcSender::P2c(channel));
        }

        let authority = args.target.authority();
        let origin: http::Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| Failure::Usage(format!("bad authority {authority:?}: {e}")))?;
        let discovery = spawn_discovery(args)?;
        let first = wait_first(discovery.clone()).await?;
        if args.mode == Mode::Direct {
            let addr = *first.iter().next().expect("waited for a non-empty set");
            return Ok(GrpcSender::Direct {
                addr,
                channel: connect(addr, &origin),
            });
        }
        let channels = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let published = channels.clone();
        tokio::spawn(crate::common::follow::follow(
            discovery,
            move |addr| connect(addr, &origin),
            move |current| {
                published.store(Arc::new(
                    current.iter().map(|(a, c)| (*a, c.clone())).collect(),
                ))
            },
        ));
        // `follow` publishes the current set at once; wait for it.
        while channels.load().is_empty() {
            tokio::task::yield_now().await;
        }
        Ok(GrpcSender::Baseline {
            random: args.mode == Mode::Random,
            next: AtomicUsize::new(0),
            channels,
        })
    }

    /// A lazily connecting tonic channel to one pod; `:authority` is the service.
    fn connect(addr: SocketAddr, origin: &http::Uri) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .origin(origin.clone())
            .tcp_nodelay(true)
            .connect_lazy()
    }

    fn request() -> HealthCheckRequest {
        HealthCheckRequest {
            service: String::new(),
        }
    }

    impl GrpcSender {
        pub async fn send(&self) -> Outcome {
            let (result, sent_to) = match self {
                GrpcSender::P2c(channel) => {
                    let result = HealthClient::new(channel.clone()).check(request()).await;
                    let served_by = result
                        .as_ref()
                        .ok()
                        .and_then(|rsp| rsp.extensions().get::<ServedBy>())
                        .map(|ServedBy(addr)| *addr);
                    (result, served_by)
                }
                GrpcSender::Baseline {
                    random,
                    next,
                    channels,
                } => {
                    let (addr, channel) = loop {
                        let list = channels.load();
                        if !list.is_empty() {
                            let i = if *random {
                                fastrand::usize(..list.len())
                            } else {
                                next.fetch_add(1, Ordering::Relaxed) % list.len()
                            };
                            break list[i].clone();
                        }
                        // The request timeout bounds this wait.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    };
                    let result = HealthClient::new(channel).check(request()).await;
                    (result, Some(addr))
                }
                GrpcSender::Direct { addr, channel } => {
                    let result = HealthClient::new(channel.clone()).check(request()).await;
                    (result, Some(*addr))
                }
            };
            match result {
                Ok(_) => Outcome {
                    ok: true,
                    endpoint: Some(sent_to.map_or_else(|| "unknown".to_owned(), |a| a.to_string())),
                },
                Err(status) => super::failed(&status),
            }
        }
    }
}
