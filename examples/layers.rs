//! `endpoint_layer`: a `tower::Layer` around every pod's service. Here a
//! per-pod timeout, a per-pod concurrency limit and a layer of our own that
//! counts what each pod is sent; one pod hangs, and its timeout takes it out.
//!
//! Self-contained: starts an in-process DNS server and three pods on 127.0.0.x.
//!
//! ```text
//! cargo run --example layers
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::http::{Client, HttpEndpoint};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::{BodyExt, Full};
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;

type Body = Full<Bytes>;

/// Counts the requests each pod's service is called with.
#[derive(Clone, Default)]
struct CountLayer(Arc<Mutex<BTreeMap<SocketAddr, u64>>>);

/// One pod's service inside a [`CountLayer`].
#[derive(Clone)]
struct Counted<S> {
    addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<SocketAddr, u64>>>,
    inner: S,
}

impl tower::Layer<HttpEndpoint<Body>> for CountLayer {
    type Service = Counted<HttpEndpoint<Body>>;

    fn layer(&self, inner: HttpEndpoint<Body>) -> Self::Service {
        Counted {
            addr: inner.addr(),
            counts: self.0.clone(),
            inner,
        }
    }
}

impl<S: tower::Service<Req>, Req> tower::Service<Req> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> S::Future {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(self.addr).or_default() += 1;
        }
        self.inner.call(request)
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let ips: [IpAddr; 3] = [
        "127.0.0.31".parse()?,
        "127.0.0.32".parse()?,
        "127.0.0.33".parse()?,
    ];
    let pods = Pod::start_all(&ips).await?;
    let dns = DnsServer::start().await?;
    dns.set_ips("web.default.svc.cluster.local", &ips, 5);
    let target = format!("web.default.svc.cluster.local:{}", pods[0].addr().port());

    let counts = CountLayer::default();
    let client = Client::builder()
        .nameserver(dns.addr())
        // Layers added first are outermost: the timeout covers the wait for
        // a concurrency permit too.
        .endpoint_layer(TimeoutLayer::new(Duration::from_millis(200)))
        .endpoint_layer(ConcurrencyLimitLayer::new(8))
        .endpoint_layer(counts.clone())
        .build::<Body>(&target)?;
    wait_for(Duration::from_secs(5), "three pods ready", || {
        client.stats().endpoints.len() == 3
    })
    .await;

    pods[0].set_hang(true);
    println!("{} hangs; its per-pod timeout is 200 ms", pods[0].addr());
    let mut failed = 0;
    for _ in 0..200 {
        match client.get("/").await {
            Ok(response) => {
                response.into_body().collect().await?;
            }
            Err(err) => {
                failed += 1;
                println!("failed: {err}");
            }
        }
    }
    let counts = counts.0.lock().map(|c| c.clone()).unwrap_or_default();
    for pod in &pods {
        println!(
            "{}: its layer saw {} requests, it answered {}",
            pod.addr(),
            counts.get(&pod.addr()).copied().unwrap_or(0),
            pod.requests()
        );
    }
    println!("{failed} of 200 requests failed (the hung pod's, until failure accrual took it out)");
    pods[0].set_hang(false);
    // The demonstration fails if the layers did not do their job: the hung
    // pod must have been tried and then left alone.
    Ok(if failed > 0 && failed < 20 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
