//! A rolling restart with Kubernetes' timing, against a DNS server this project did not write:
//! four `echo_server` processes behind Knot (record TTL 5 s). Each pod in turn gets SIGTERM at the
//! same moment as its DNS record is deleted, while its replacement on a new address is added; the
//! old pod drains gracefully (GOAWAY / `Connection: close`, in-flight requests finish). Under
//! load, no request may fail, over HTTP/1.1, HTTP/2 and gRPC.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use headless_lb::EndpointStats;
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::wait_for;
use http_body_util::BodyExt;
use tokio::task::JoinSet;

mod examples_support;
mod knot_support;
use examples_support::{EchoServer, free_port_on};
use knot_support::{Knot, binaries};

const NAME: &str = "web.default.svc.cluster.local";
/// The records' TTL, as a short stand-in for CoreDNS's 30 s (the same code
/// paths: the client learns of a deletion by a refused connect or the TTL);
/// one run uses CoreDNS's own 30 s.
const TTL: u32 = 5;
const COREDNS_TTL: u32 = 30;
/// Requests in flight while pods roll.
const CALLERS: usize = 8;
/// How long one pod may take to be replaced: DNS seen, new pod served.
const STEP_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Http(Protocol),
    Grpc,
}

/// An `echo_server` process serving `addr` with `kind`, graceful for 5 s.
async fn start_pod(addr: SocketAddr, kind: Kind) -> EchoServer {
    let protocol = match kind {
        Kind::Http(_) => "http",
        Kind::Grpc => "grpc",
    };
    EchoServer::start(addr, &["--protocol", protocol, "--grace-ms", "5000"]).await
}

/// The client under test, HTTP or gRPC.
#[derive(Clone)]
enum Caller {
    Http(Client),
    Grpc(headless_lb::grpc::Channel),
}

impl Caller {
    async fn call(&self) -> Result<(), String> {
        match self {
            Caller::Http(client) => {
                let response = client.get("/").await.map_err(|e| format!("{e:?}"))?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            Caller::Grpc(channel) => {
                let mut health =
                    tonic_health::pb::health_client::HealthClient::new(channel.clone());
                health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|s| {
                        format!(
                            "{:?}: {} ({:?})",
                            s.code(),
                            s.message(),
                            std::error::Error::source(&s)
                        )
                    })
            }
        }
    }

    fn stats(&self) -> Vec<EndpointStats> {
        match self {
            Caller::Http(client) => client.stats().endpoints,
            Caller::Grpc(channel) => channel.stats().endpoints,
        }
    }
}

fn ip(net: u8, last: u8) -> IpAddr {
    IpAddr::from([127, 0, net, last])
}

async fn rolling_restart(test: &str, net: u8, kind: Kind, ttl: u32) {
    let Some(bins) = binaries(test) else { return };
    let old: Vec<IpAddr> = (1..=4).map(|i| ip(net, i)).collect();
    let new: Vec<IpAddr> = (11..=14).map(|i| ip(net, i)).collect();
    let all: Vec<IpAddr> = old.iter().chain(&new).copied().collect();
    let port = free_port_on(&all);
    let records: String = old
        .iter()
        .map(|ip| format!("{NAME}. {ttl} A {ip}\n"))
        .collect();
    let knot = Knot::start_with_ttl(bins, &records, ttl).await;

    let mut pods = Vec::new();
    for ip in &old {
        pods.push(start_pod(SocketAddr::new(*ip, port), kind).await);
    }
    let target = format!("{NAME}:{port}");
    let caller = match kind {
        Kind::Http(protocol) => Caller::Http(
            Client::builder()
                .nameserver(knot.addr)
                .protocol(protocol)
                .build(&target)
                .unwrap(),
        ),
        Kind::Grpc => Caller::Grpc(
            headless_lb::grpc::Channel::builder()
                .nameserver(knot.addr)
                .build(&format!("dns:///{target}"))
                .unwrap(),
        ),
    };
    wait_for(Duration::from_secs(10), "four pods ready", || {
        caller.stats().len() == 4
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut load = JoinSet::new();
    for _ in 0..CALLERS {
        let (caller, stop, ok) = (caller.clone(), stop.clone(), ok.clone());
        load.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match caller.call().await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        });
    }

    let mut replacements = Vec::new();
    for (i, pod) in pods.into_iter().enumerate() {
        let replacement = start_pod(SocketAddr::new(new[i], port), kind).await;
        // The endpoint controller's update and the kubelet's SIGTERM race;
        // here they land together.
        knot.update(&[
            format!("update delete {NAME}. A {}", old[i]),
            format!("update add {NAME}. {ttl} A {}", new[i]),
        ])
        .await;
        pod.terminate();
        let served = replacement.addr();
        wait_for(STEP_DEADLINE, &format!("{served} takes requests"), || {
            caller
                .stats()
                .iter()
                .any(|e| e.address == served && e.requests > 0)
        })
        .await;
        pod.exited().await;
        // The replacement serves until the end (killed on drop).
        replacements.push(replacement);
    }

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(f) = load.join_next().await {
        failures.extend(f.unwrap());
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "{test}: {ok} requests succeeded, {} failed over a rolling restart of 4 pods",
        failures.len()
    );
    assert!(ok > 1000, "too little load to say anything: {ok}");
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_http1_request() {
    rolling_restart(
        "rolling_restart_loses_no_http1_request",
        71,
        Kind::Http(Protocol::Http1),
        TTL,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_http2_request() {
    rolling_restart(
        "rolling_restart_loses_no_http2_request",
        72,
        Kind::Http(Protocol::Http2),
        TTL,
    )
    .await;
}

#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_grpc_request() {
    rolling_restart("rolling_restart_loses_no_grpc_request", 73, Kind::Grpc, TTL).await;
}

/// With CoreDNS's TTL the client learns of each replacement from the early
/// lookup that the terminated pod's refused connects ask for, not from the
/// TTL: every step still completes within [`STEP_DEADLINE`].
#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_a_30_s_ttl_loses_no_grpc_request() {
    rolling_restart(
        "rolling_restart_with_a_30_s_ttl_loses_no_grpc_request",
        74,
        Kind::Grpc,
        COREDNS_TTL,
    )
    .await;
}
