//! Unary grpc.health.v1 Check through the balanced [`Channel`] against
//! tonic's own `Channel::balance_channel`, over the same 4 pods, one of them
//! 40 ms slower, at 16 concurrent RPCs: throughput and tail latency.
//!
//! `cargo bench --features tonic --bench grpc` (add `-- --quick` for a rough
//! run). Both channels get their pods from the same `Discovery`-backed DNS
//! answer; tonic's is fed through `DnsDiscover`, as a user keeping tonic's
//! balancer would do. After criterion's throughput figures, a fixed run of
//! each (interleaved, twice) prints p50/p99, RPC/s and the slow pod's share,
//! and the ratios ours / tonic's.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use headless_lb::grpc::Channel;
use headless_lb::resolve::HickoryResolver;
use headless_lb::testing::{DnsServer, GrpcPod};
use headless_lb::{Discovery, DnsDiscover};
use tokio::runtime::Runtime;
use tonic::client::GrpcService;
use tonic::codegen::StdError;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const NAME: &str = "web.default.svc.cluster.local";
const CONCURRENCY: usize = 16;
const SLOW: Duration = Duration::from_millis(40);

struct Cluster {
    _dns: DnsServer,
    pods: Vec<GrpcPod>,
    ours: Channel,
    tonic: tonic::transport::Channel,
}

fn cluster(rt: &Runtime) -> Cluster {
    rt.block_on(async {
        let dns = DnsServer::start().await.unwrap();
        let ips: Vec<IpAddr> = (191..195u8).map(|i| [127, 0, 0, i].into()).collect();
        let pods = GrpcPod::start_all(&ips).await.unwrap();
        pods[0].set_delay(SLOW);
        let target = format!("{NAME}:{}", pods[0].addr().port());
        dns.set_ips(NAME, &ips, 30);

        let ours = Channel::builder()
            .nameserver(dns.addr())
            .build(&target)
            .unwrap();

        let resolver = Arc::new(
            HickoryResolver::builder()
                .nameserver(dns.addr())
                .build()
                .unwrap(),
        );
        let discovery = Discovery::spawn(target.parse().unwrap(), resolver);
        let origin: http::Uri = format!("http://{target}").parse().unwrap();
        let mut changes = DnsDiscover::from_fn(discovery, move |addr: SocketAddr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .origin(origin.clone())
        });
        let (tonic, sender) = tonic::transport::Channel::balance_channel::<SocketAddr>(16);
        tokio::spawn(async move {
            use tonic::transport::channel::Change;
            while let Some(Ok(change)) = changes.next().await {
                let change = match change {
                    tower::discover::Change::Insert(a, e) => Change::Insert(a, e),
                    tower::discover::Change::Remove(a) => Change::Remove(a),
                };
                if sender.send(change).await.is_err() {
                    break;
                }
            }
        });
        // Warm both: every pod connected and measured once.
        run(&ours, 200, None).await;
        run(&tonic, 200, None).await;
        Cluster {
            _dns: dns,
            pods,
            ours,
            tonic,
        }
    })
}

/// `n` checks at [`CONCURRENCY`]; each latency is pushed to `latencies`.
async fn run<T>(channel: &T, n: u64, latencies: Option<&Mutex<Vec<Duration>>>) -> Duration
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let started = Instant::now();
    let mut times = futures::stream::iter(0..n)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            async move {
                let t = Instant::now();
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("check");
                t.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut local = Vec::with_capacity(n as usize);
    while let Some(t) = times.next().await {
        local.push(t);
    }
    if let Some(all) = latencies {
        all.lock().unwrap().extend(local);
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
    slow_share: f64,
}

fn measure<T>(rt: &Runtime, cluster: &Cluster, channel: &T, n: u64) -> Figures
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let before: Vec<u64> = cluster.pods.iter().map(GrpcPod::requests).collect();
    let latencies = Mutex::new(Vec::new());
    let took = rt.block_on(run(channel, n, Some(&latencies)));
    let mut sorted = latencies.into_inner().unwrap();
    sorted.sort();
    let after: Vec<u64> = cluster.pods.iter().map(GrpcPod::requests).collect();
    Figures {
        rps: n as f64 / took.as_secs_f64(),
        p50: percentile(&sorted, 0.50),
        p99: percentile(&sorted, 0.99),
        slow_share: (after[0] - before[0]) as f64 / n as f64,
    }
}

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = cluster(&rt);

    let mut group = c.benchmark_group("grpc_check_c16_one_pod_40ms_slower");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("headless_lb_channel", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| run(&cluster.ours, iters, None))
    });
    group.bench_function("tonic_balance_channel", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| run(&cluster.tonic, iters, None))
    });
    group.finish();

    // Tail latency, which criterion does not report: fixed runs, interleaved.
    const N: u64 = 4000;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..2 {
        ours.push(measure(&rt, &cluster, &cluster.ours, N));
        theirs.push(measure(&rt, &cluster, &cluster.tonic, N));
    }
    let print = |name: &str, f: &Figures| {
        eprintln!(
            "{name:<22} {:>8.0} RPC/s  p50 {:>8.2?}  p99 {:>8.2?}  slow pod {:>5.1} %",
            f.rps,
            f.p50,
            f.p99,
            f.slow_share * 100.0
        );
    };
    eprintln!("\nfixed runs: {N} checks at concurrency {CONCURRENCY}, 4 pods, one {SLOW:?} slower");
    for (o, t) in ours.iter().zip(&theirs) {
        print("headless_lb Channel", o);
        print("tonic balance_channel", t);
        eprintln!(
            "  ratio ours/tonic: throughput {:.2}x, p99 {:.3}x",
            o.rps / t.rps,
            o.p99.as_secs_f64() / t.p99.as_secs_f64()
        );
    }
}

criterion_group!(benches, unary);
criterion_main!(benches);
