//! End-to-end HTTP over loopback: the balanced `headless_lb::http::Client`
//! over 1 pod and over 4 pods, against a plain hyper-util legacy client to one
//! pod (the no-balancer baseline), for HTTP/1.1 and h2c, with 1 and 16
//! requests in flight. Every request reads its whole (tiny) body.
//!
//! Pods and DNS run in-process on the bench's runtime, so the numbers are the
//! client's cost plus a minimal hyper server's, not a network's.
//!
//! `cargo bench --bench http` (about a minute; add `-- --quick` for a rough run).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;

type Plain = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// What sends one GET and reads the body.
#[derive(Clone)]
enum Sender {
    Ours(Client),
    Plain(Box<Plain>, http::Uri),
}

impl Sender {
    async fn get(&self) {
        let status = match self {
            Sender::Ours(client) => {
                let rsp = client.get("/").await.expect("request");
                let status = rsp.status();
                black_box(rsp.into_body().collect().await.expect("body"));
                status
            }
            Sender::Plain(client, uri) => {
                let rsp = client.get(uri.clone()).await.expect("request");
                let status = rsp.status();
                black_box(rsp.into_body().collect().await.expect("body"));
                status
            }
        };
        assert!(status.is_success());
    }
}

/// `iters` requests over `concurrency` tasks; the wall time of all of them.
async fn drive(sender: &Sender, iters: u64, concurrency: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let sender = sender.clone();
            let n = iters / concurrency + u64::from(i < iters % concurrency);
            tokio::spawn(async move {
                for _ in 0..n {
                    sender.get().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a bench task panicked");
    }
    start.elapsed()
}

struct Setup {
    rt: Runtime,
    _dns: DnsServer,
    _pods: Vec<Pod>,
    port: u16,
    dns_addr: std::net::SocketAddr,
    first_pod: std::net::SocketAddr,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (dns, pods) = rt.block_on(async {
        let ips: Vec<IpAddr> = (61..65u8).map(|i| [127, 0, 0, i].into()).collect();
        let pods = Pod::start_all(&ips).await.expect("pods");
        let dns = DnsServer::start().await.expect("dns");
        dns.set_ips("one.default.svc.cluster.local", &ips[..1], 30);
        dns.set_ips("four.default.svc.cluster.local", &ips, 30);
        (dns, pods)
    });
    Setup {
        port: pods[0].addr().port(),
        dns_addr: dns.addr(),
        first_pod: pods[0].addr(),
        rt,
        _dns: dns,
        _pods: pods,
    }
}

impl Setup {
    /// A balanced client whose endpoints are all connected.
    fn ours(&self, name: &str, protocol: Protocol, pods: usize) -> Sender {
        self.rt.block_on(async {
            let client: Client = Client::builder()
                .protocol(protocol)
                .nameserver(self.dns_addr)
                .build(&format!("{name}.default.svc.cluster.local:{}", self.port))
                .expect("client");
            wait_for(Duration::from_secs(5), "every endpoint known", || {
                client.stats().endpoints.len() == pods
            })
            .await;
            let sender = Sender::Ours(client);
            drive(&sender, 256, 16).await;
            sender
        })
    }

    fn plain(&self, protocol: Protocol) -> Sender {
        let _guard = self.rt.enter();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2)
            .build(connector);
        let uri = format!("http://{}/", self.first_pod).parse().expect("uri");
        let sender = Sender::Plain(Box::new(client), uri);
        self.rt.block_on(drive(&sender, 256, 16));
        sender
    }
}

fn http(c: &mut Criterion) {
    let setup = setup();
    for (label, protocol) in [("http1", Protocol::Http1), ("h2c", Protocol::Http2)] {
        let senders = [
            ("plain_1pod", setup.plain(protocol)),
            ("ours_1pod", setup.ours("one", protocol, 1)),
            ("ours_4pods", setup.ours("four", protocol, 4)),
        ];
        let mut group = c.benchmark_group(format!("http/{label}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(1));
        for concurrency in [1u64, 16] {
            for (name, sender) in &senders {
                group.bench_with_input(
                    BenchmarkId::new(*name, format!("c{concurrency}")),
                    &concurrency,
                    |b, &concurrency| {
                        b.iter_custom(|iters| setup.rt.block_on(drive(sender, iters, concurrency)))
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Plots and the default 100 000 bootstrap resamples took ~15 s per
    // benchmark; without them the whole run stays well under two minutes.
    config = Criterion::default().without_plots().nresamples(10_000);
    targets = http
}
criterion_main!(benches);
