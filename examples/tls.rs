//! TLS to every pod of a headless service, self-contained: an in-process DNS
//! server, three HTTP pods and two gRPC pods on 127.0.0.x serving
//! certificates for the service's name from a CA made at start, then the
//! balanced clients over TLS: HTTP/1.1, h2 (both by ALPN) and gRPC health.
//!
//! ```text
//! cargo run --features tls,tonic --example tls
//! ```
//!
//! Prints what each client saw; exits non-zero if any request failed or a
//! pod got none.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

use futures::StreamExt;
use headless_lb::grpc::Channel;
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{DnsServer, GrpcPod, Pod, TestCa};
use http_body_util::BodyExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "web.default.svc.cluster.local";
const REQUESTS: usize = 400;
const IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // A CA, and for every pod a certificate naming the service (not the pod).
    let ca = TestCa::new()?;
    let server = ca.server_config(&[SERVICE])?;
    let dns = DnsServer::start().await?;

    // ----- HTTP pods -----
    let ips: Vec<IpAddr> = (1..=3)
        .map(|i| format!("127.0.0.{}", 60 + i).parse())
        .collect::<Result<_, _>>()?;
    let pods = Pod::start_all_tls(&ips, server.clone()).await?;
    let port = pods[0].addr().port();
    dns.set_ips(SERVICE, &ips, 1);
    println!(
        "HTTP pods (TLS, certificate for {SERVICE}): {:?}",
        pods.iter().map(Pod::addr).collect::<Vec<_>>()
    );

    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client: Client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .tls(ca.client_config()?) // verified against SERVICE, ALPN per protocol
            .build(&format!("{SERVICE}:{port}"))?;
        let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
        // IN_FLIGHT requests at once, so that load spreads them.
        let mut responses = futures::stream::iter(0..REQUESTS)
            .map(|_| client.get("/"))
            .buffer_unordered(IN_FLIGHT);
        while let Some(rsp) = responses.next().await {
            let rsp = rsp?;
            if !rsp.status().is_success() {
                return Err(format!("{protocol:?}: status {}", rsp.status()).into());
            }
            let body = rsp.into_body().collect().await?.to_bytes();
            *per_pod
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
        let alpn: Vec<String> = pods
            .iter()
            .map(|p| String::from_utf8_lossy(&p.last_alpn().unwrap_or_default()).into_owned())
            .collect();
        println!(
            "{protocol:?} over TLS: {REQUESTS} requests, 0 failed, per pod {per_pod:?}, ALPN {alpn:?}"
        );
        if per_pod.len() != pods.len() {
            return Err(format!("{protocol:?}: not every pod served: {per_pod:?}").into());
        }
    }

    // ----- gRPC pods -----
    let grpc_ips: Vec<IpAddr> = (1..=2)
        .map(|i| format!("127.0.0.{}", 70 + i).parse())
        .collect::<Result<_, _>>()?;
    let grpc_pods = GrpcPod::start_all_tls(&grpc_ips, server).await?;
    let grpc_name = "grpc.default.svc.cluster.local";
    dns.set_ips(grpc_name, &grpc_ips, 1);
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .tls(ca.client_config()?)
        // The pods present the web service's certificate: say so.
        .tls_server_name(SERVICE)
        .build(&format!(
            "dns:///{grpc_name}:{}",
            grpc_pods[0].addr().port()
        ))?;
    let health = HealthClient::new(channel.clone());
    let mut replies = futures::stream::iter(0..REQUESTS)
        .map(|_| {
            let mut health = health.clone();
            async move { health.check(HealthCheckRequest::default()).await }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(reply) = replies.next().await {
        reply?;
    }
    if let Some(idle) = grpc_pods.iter().find(|p| p.requests() == 0) {
        return Err(format!("gRPC pod {} served none", idle.addr()).into());
    }
    println!(
        "gRPC health over TLS: {REQUESTS} RPCs SERVING, per pod {:?}",
        grpc_pods
            .iter()
            .map(|p| (p.addr(), p.requests()))
            .collect::<Vec<_>>()
    );
    Ok(())
}
