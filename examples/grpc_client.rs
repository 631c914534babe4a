//! Minimal use of the balanced gRPC channel: a few grpc.health.v1 checks,
//! then where they went.
//!
//! ```text
//! cargo run --features tonic --example grpc_client -- TARGET [--nameserver IP:PORT] [--count N]
//! cargo run --features tonic --example grpc_client -- dns:///web.default.svc.cluster.local:50051
//! ```
//!
//! Prints one line per check and the channel's stats on stdout; exits 1 if
//! a check failed. Bad arguments exit with status 2 and a one-line message.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use headless_lb::grpc::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Health-check the pods of a headless service through the balanced channel.
#[derive(Debug, Parser)]
#[command(name = "grpc_client")]
struct Args {
    /// The service: host:port, dns:///host:port, dns://IP:PORT/host:port or _port._proto.host.
    target: String,
    /// Use this DNS server (UDP and TCP) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// How many checks to send.
    #[arg(long, value_name = "N", default_value_t = 5)]
    count: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = common::parse_args();
    common::init_logging();

    let mut builder = Channel::builder();
    if let Some(nameserver) = args.nameserver {
        builder = builder.nameserver(nameserver);
    }
    let channel = match builder.build(&args.target) {
        Ok(channel) => channel,
        Err(err) => return common::usage_error(err),
    };

    let mut health = HealthClient::new(channel.clone());
    let mut failed = false;
    for i in 1..=args.count {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match health.check(request).await {
            Ok(reply) => println!("check {i}: {:?}", reply.into_inner().status()),
            Err(status) => {
                failed = true;
                println!("check {i}: {:?}: {}", status.code(), status.message());
            }
        }
    }

    let stats = channel.stats();
    for e in &stats.endpoints {
        println!(
            "{} {:?} requests={} failures={} pending={} rtt={:?}",
            e.address, e.state, e.requests, e.failures, e.pending, e.rtt
        );
    }
    if let Some(err) = &stats.discovery.last_error {
        println!("last DNS error: {err}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
