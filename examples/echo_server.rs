//! A pod for manual tests and acceptance checks: answers every request with
//! `200 OK` and its listen address as the body, over HTTP/1.1 and h2c on the
//! same port; with `--protocol grpc`, a grpc.health.v1 server answering
//! SERVING (needs `--features tonic`).
//!
//! ```text
//! cargo run --example echo_server -- --listen 127.0.0.11:8080 [--delay-ms N] [--protocol http|grpc] [--grace-ms N]
//!     [--pause-every-ms N --pause-ms M] [--capacity N]
//! cargo run --features tonic --example echo_server -- --listen 127.0.0.11:50051 --protocol grpc
//! cargo run --features tls --example echo_server -- --listen 127.0.0.11:8443 --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! With `--tls-cert` and `--tls-key` (PEM; build with `--features tls`) it
//! serves over TLS: HTTP/1.1 and h2 (ALPN offers both), or gRPC.
//!
//! Variance, as real pods show it (both protocols; `testing::Pod::set_pauses`
//! and `set_capacity`):
//!
//! - `--pause-every-ms N --pause-ms M`: GC-like stop-the-world pauses of
//!   `M` ms starting at random times, `N` ms apart on average (a Poisson
//!   process). Every request, arriving or in flight, is held until the pause
//!   ends; the `--delay-ms` of one in flight stops meanwhile.
//! - `--capacity N`: at most `N` requests served (in their `--delay-ms`) at
//!   once; the rest queue, first come first served, as on a CPU-starved pod.
//!
//! Serves until SIGTERM or SIGINT, then shuts down as a well-behaved pod
//! does: stops accepting (new connections are refused), sends HTTP/2 GOAWAY
//! (HTTP/2 and gRPC) or `Connection: close` (HTTP/1.1) on its open
//! connections, lets the requests in flight finish for at most `--grace-ms`
//! (default 5000), cuts off whatever is left, and exits 0. A second signal
//! during the grace period cuts off at once. Logs on stderr. Bad arguments
//! exit with status 2 and a one-line message on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use headless_lb::testing::Pod;

/// A pod: HTTP/1.1 and h2c answering 200 with its listen address as the
/// body, or a grpc.health.v1 server.
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
    /// On SIGTERM/SIGINT, let requests in flight finish for at most this
    /// many milliseconds before cutting them off. Keep it below the pod's
    /// terminationGracePeriodSeconds minus its preStop sleep.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    grace_ms: u64,
    /// Serve over TLS with this certificate chain (PEM; needs --tls-key and
    /// the `tls` feature).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Stop-the-world pauses start at random times this many milliseconds
    /// apart on average (a Poisson process; needs --pause-ms).
    #[arg(long, value_name = "N", requires = "pause_ms",
          value_parser = clap::value_parser!(u64).range(1..))]
    pause_every_ms: Option<u64>,
    /// Each pause lasts this many milliseconds: every request, arriving or
    /// in flight, is held until it ends (needs --pause-every-ms).
    #[arg(long, value_name = "N", requires = "pause_every_ms",
          value_parser = clap::value_parser!(u64).range(1..))]
    pause_ms: Option<u64>,
    /// Serve at most N requests at once; the rest queue (a CPU-starved pod).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    capacity: Option<u64>,
}

/// How the pod's answers vary: the same knobs for both protocols.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    delay: Duration,
    /// The mean interval between pause starts, and each pause's length.
    pauses: Option<(Duration, Duration)>,
    capacity: Option<usize>,
}

impl Knobs {
    fn new(args: &Args) -> Knobs {
        Knobs {
            delay: Duration::from_millis(args.delay_ms),
            // clap makes the two flags come together.
            pauses: args
                .pause_every_ms
                .zip(args.pause_ms)
                .map(|(every, pause)| (Duration::from_millis(every), Duration::from_millis(pause))),
            capacity: args
                .capacity
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// For the "listening" line: the delay always (as before), the rest when set.
    fn describe(&self) -> String {
        let mut text = format!("delay {} ms", self.delay.as_millis());
        if let Some((every, pause)) = self.pauses {
            text += &format!(
                ", pauses of {} ms every {} ms on average",
                pause.as_millis(),
                every.as_millis()
            );
        }
        if let Some(capacity) = self.capacity {
            text += &format!(", capacity {capacity}");
        }
        text
    }
}

/// Applies `Knobs` to a `Pod` or a `GrpcPod` (the same methods, no common trait).
macro_rules! apply_knobs {
    ($pod:expr, $knobs:expr) => {{
        let knobs: Knobs = $knobs;
        $pod.set_delay(knobs.delay);
        if let Some((every, pause)) = knobs.pauses {
            $pod.set_pauses(every, pause);
        }
        $pod.set_capacity(knobs.capacity);
    }};
}

// Only the server half is used here.
#[cfg(feature = "tls")]
#[allow(dead_code)]
#[path = "common/tls.rs"]
mod tls;

/// The TLS configuration to serve with, if any; without the `tls` feature
/// there never is one.
#[cfg(feature = "tls")]
type Tls = Option<std::sync::Arc<rustls::ServerConfig>>;
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

/// The server configuration from --tls-cert and --tls-key, if given.
fn tls_config(args: &Args) -> Result<Tls, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    #[cfg(feature = "tls")]
    return tls::server_config(cert, key).map(Some);
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key);
        Err("--tls-cert needs the example built with --features tls".to_owned())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge.
    Http,
    /// A grpc.health.v1 server answering SERVING (build with --features tonic).
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let knobs = Knobs::new(&args);
    let grace = Duration::from_millis(args.grace_ms);
    match args.protocol {
        Protocol::Http => serve_http(args.listen, knobs, grace, tls).await,
        Protocol::Grpc => serve_grpc(args.listen, knobs, grace, tls).await,
    }
}

/// SIGTERM (what Kubernetes sends after the preStop hook) and SIGINT
/// (Ctrl-C), caught from the moment of [`Signals::register`]: registered
/// before the "listening" line, so that a supervisor that signals as soon as
/// it reads that line never hits the default action (death without exit code).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let register = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(err) => {
                    eprintln!(
                        "warning: cannot handle {name} ({err}); it will not shut down gracefully"
                    );
                    None
                }
            };
            Signals {
                term: register(SignalKind::terminate(), "SIGTERM"),
                int: register(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next signal; returns its name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => "SIGTERM",
                () = recv(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Runs a graceful `shutdown`, cut short by a second signal; says how it went.
async fn drain<F: std::future::Future<Output = bool>>(
    signals: &mut Signals,
    addr: SocketAddr,
    grace: Duration,
    shutdown: F,
) {
    let started = std::time::Instant::now();
    tokio::select! {
        clean = shutdown => {
            if clean {
                eprintln!("echo_server on {addr}: drained in {} ms", started.elapsed().as_millis());
            } else {
                eprintln!(
                    "echo_server on {addr}: grace period of {} ms over; cut off the requests still open",
                    grace.as_millis()
                );
            }
        }
        signal = signals.next() => {
            eprintln!("echo_server on {addr}: {signal} again; cutting off the requests still open");
        }
    }
}

async fn serve_http(listen: SocketAddr, knobs: Knobs, grace: Duration, tls: Tls) -> ExitCode {
    let over = if tls.is_some() {
        "HTTP/1.1 and h2 over TLS"
    } else {
        "HTTP/1.1 and h2c"
    };
    let started = match tls {
        None => Pod::start(listen).await,
        #[cfg(feature = "tls")]
        Some(config) => Pod::start_tls(listen, config).await,
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
    };
    let pod = match started {
        Ok(pod) => pod,
        Err(err) => {
            eprintln!("error: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    apply_knobs!(pod, knobs);
    let mut signals = Signals::register();
    eprintln!(
        "echo_server listening on {} ({over}, {})",
        pod.addr(),
        knobs.describe()
    );
    let signal = signals.next().await;
    eprintln!(
        "echo_server on {}: {signal}; shutting down gracefully (grace {} ms)",
        pod.addr(),
        grace.as_millis()
    );
    drain(&mut signals, pod.addr(), grace, pod.shutdown(grace)).await;
    eprintln!(
        "echo_server on {}: served {} requests, paused {} times",
        pod.addr(),
        pod.requests(),
        pod.pauses()
    );
    ExitCode::SUCCESS
}

#[cfg(feature = "tonic")]
async fn serve_grpc(listen: SocketAddr, knobs: Knobs, grace: Duration, tls: Tls) -> ExitCode {
    use headless_lb::testing::GrpcPod;
    let over = if tls.is_some() { "TLS" } else { "h2c" };
    let started = match tls {
        None => GrpcPod::start(listen).await,
        #[cfg(feature = "tls")]
        Some(config) => GrpcPod::start_tls(listen, config).await,
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
    };
    let pod = match started {
        Ok(pod) => pod,
        Err(err) => {
            eprintln!("error: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    apply_knobs!(pod, knobs);
    let mut signals = Signals::register();
    eprintln!(
        "echo_server listening on {} (gRPC grpc.health.v1, {over}, SERVING, {})",
        pod.addr(),
        knobs.describe()
    );
    let signal = signals.next().await;
    eprintln!(
        "echo_server on {}: {signal}; shutting down gracefully (grace {} ms)",
        pod.addr(),
        grace.as_millis()
    );
    drain(&mut signals, pod.addr(), grace, pod.shutdown(grace)).await;
    eprintln!(
        "echo_server on {}: served {} RPCs, paused {} times",
        pod.addr(),
        pod.requests(),
        pod.pauses()
    );
    ExitCode::SUCCESS
}

#[cfg(not(feature = "tonic"))]
async fn serve_grpc(_listen: SocketAddr, _knobs: Knobs, _grace: Duration, _tls: Tls) -> ExitCode {
    eprintln!("error: --protocol grpc needs the example built with --features tonic");
    ExitCode::from(2)
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
