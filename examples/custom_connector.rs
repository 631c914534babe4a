//! `ClientBuilder::connector`: open pod connections with your own
//! `tower::Service<Endpoint>`. This is the hook for TLS of your own, proxies,
//! socket options or metrics; here it sets socket options and counts
//! connections. The `Endpoint` names the pod's address and the service's
//! name (what a TLS connector verifies and sends as SNI).
//!
//! Self-contained: starts an in-process DNS server and two pods on 127.0.0.x.
//!
//! ```text
//! cargo run --example custom_connector
//! ```

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use headless_lb::Endpoint;
use headless_lb::http::{Client, HttpEndpoint};
use headless_lb::testing::{DnsServer, Pod};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connector that counts the connections it opens per pod.
#[derive(Clone, Default)]
struct CountingConnector {
    opened: Arc<AtomicUsize>,
}

impl tower::Service<Endpoint> for CountingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let opened = self.opened.clone();
        let addr = endpoint.addr();
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            // Socket options go here; a TLS connector would wrap `stream` in
            // a handshake and return the TLS stream instead.
            stream.set_nodelay(true)?;
            let n = opened.fetch_add(1, Ordering::Relaxed) + 1;
            println!(
                "connector: connection #{n} to {addr} of {}",
                endpoint.server_name()
            );
            Ok(TokioIo::new(stream))
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two pods on one port and a DNS server that names them.
    let ips: [IpAddr; 2] = ["127.0.0.21".parse()?, "127.0.0.22".parse()?];
    let pods = Pod::start_all(&ips).await?;
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await?;
    dns.set_ips("web.default.svc.cluster.local", &ips, 5);

    let connector = CountingConnector::default();
    // The request body type must be named along with a custom connector.
    let client: Client<Full<Bytes>, HttpEndpoint<Full<Bytes>, CountingConnector>> =
        Client::builder()
            .nameserver(dns.addr())
            .connector(connector.clone())
            .build(&format!("web.default.svc.cluster.local:{port}"))?;

    for _ in 0..10 {
        let response = client.get("/").await?;
        println!("{}", response.status());
    }
    println!(
        "{} connections opened by the custom connector; pods served {:?}",
        connector.opened.load(Ordering::Relaxed),
        pods.iter().map(Pod::requests).collect::<Vec<_>>()
    );
    Ok(())
}
