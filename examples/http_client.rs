//! The smallest use of the balanced client: build it for a target, send a few
//! GETs, print what came back and what the client knows about the pods.
//!
//! ```text
//! cargo run --example http_client -- TARGET [--nameserver IP:PORT]
//! cargo run --features tls --example http_client -- TARGET --tls-ca ca.pem [--tls-server-name NAME]
//! ```
//!
//! `--tls-ca` (build with `--features tls`) speaks TLS to every pod,
//! trusting the CA certificates in that PEM file; each pod's certificate is
//! checked against the target's host, or `--tls-server-name`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use headless_lb::http::Client;
use http_body_util::BodyExt;

/// Send a few GETs through the balanced client.
#[derive(Debug, Parser)]
#[command(name = "http_client", version, about)]
struct Args {
    /// host:port, dns:///host:port, dns://IP:PORT/host:port or _port._proto.host.
    target: String,
    /// Use this DNS server (UDP and TCP) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// TLS to the pods, trusting the CA certificates in this PEM file
    /// (needs the `tls` feature).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The name the pods' certificates are checked against [the target's host].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = common::parse_args();
    common::init_logging();

    let mut builder = Client::builder();
    if let Some(ns) = args.nameserver {
        builder = builder.nameserver(ns);
    }
    if let Some(name) = &args.tls_server_name {
        builder = builder.tls_server_name(name);
    }
    if let Some(ca) = &args.tls_ca {
        #[cfg(feature = "tls")]
        match common::tls::client_config(ca) {
            Ok(config) => builder = builder.tls(config),
            Err(e) => return common::usage_error(e),
        }
        #[cfg(not(feature = "tls"))]
        return common::usage_error(format!(
            "--tls-ca {} needs the tls feature: build with `--features tls`",
            ca.display()
        ));
    }
    let client: Client = match builder.build(&args.target) {
        Ok(client) => client,
        Err(e) => return common::usage_error(e),
    };

    let mut failed = false;
    for _ in 0..5 {
        match client.get("/").await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(body) => println!("{status} {}", String::from_utf8_lossy(&body.to_bytes())),
                    Err(e) => println!("{status} (body failed: {e})"),
                }
            }
            Err(e) => {
                println!("error: {e}");
                failed = true;
            }
        }
    }

    let stats = client.stats();
    println!(
        "discovery: {} endpoints, generation {}, last error {:?}",
        stats.discovery.endpoints, stats.discovery.generation, stats.discovery.last_error
    );
    for e in &stats.endpoints {
        println!(
            "{} {:?}: {} requests, {} failures, {} pending, rtt {:?}",
            e.address, e.state, e.requests, e.failures, e.pending, e.rtt
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
