//! A pod for manual tests and acceptance checks: answers every request with
//! `200 OK` and its listen address as the body, over HTTP/1.1 and h2c on the
//! same port.
//!
//! ```text
//! cargo run --example echo_server -- --listen 127.0.0.11:8080 [--delay-ms N] [--protocol http|grpc]
//! ```
//!
//! Serves until killed; logs on stderr. Bad arguments exit with status 2 and a
//! one-line message on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use headless_lb::testing::Pod;

/// A pod: HTTP/1.1 and h2c answering 200 with its listen address as the body.
#[derive(Debug, Parser)]
#[command(name = "echo_server")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.11:8080 or [::1]:8080 (port 0 picks one).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Wait this many milliseconds before answering each request.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// What to serve.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge.
    Http,
    /// A grpc.health.v1 server.
    Grpc,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version are not errors.
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{}", one_line(&err.to_string()));
            return ExitCode::from(2);
        }
    };
    if let Protocol::Grpc = args.protocol {
        eprintln!("error: --protocol grpc is not supported yet");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let pod = match Pod::start(args.listen).await {
        Ok(pod) => pod,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    pod.set_delay(Duration::from_millis(args.delay_ms));
    eprintln!(
        "echo_server listening on {} (HTTP/1.1 and h2c, delay {} ms)",
        pod.addr(),
        args.delay_ms
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!(
        "echo_server on {}: served {} requests",
        pod.addr(),
        pod.requests()
    );
    ExitCode::SUCCESS
}

/// The first paragraph of a clap error on one line: "error: the following
/// required arguments were not provided: --listen <IP:PORT>".
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}
