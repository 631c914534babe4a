//! Prints one line per endpoint change of a target: `+ ADDR` when it appears,
//! `- ADDR` when it goes. Logs (errors, TTL, next refresh) go to stderr.
//!
//! ```text
//! cargo run --example watch -- [--nameserver IP:PORT] TARGET
//! ```

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use futures::StreamExt;
use headless_lb::resolve::HickoryResolver;
use headless_lb::{Discovery, DnsDiscover, Target};
use tower::discover::Change;

/// Watch the endpoints of a headless service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Use this DNS server (UDP and TCP) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// What to watch: host:port, dns:///host:port, dns://IP:PORT/host:port or _port._proto.host.
    target: Target,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = common::parse_args();
    common::init_logging();
    let mut builder = HickoryResolver::builder();
    if let Some(ns) = args.nameserver {
        builder = builder.nameserver(ns);
    }
    let resolver = match builder.build() {
        Ok(r) => Arc::new(r),
        Err(e) => return common::usage_error(format!("cannot set up the resolver: {e}")),
    };
    let discovery = Discovery::spawn(args.target.clone(), resolver);
    let mut changes = DnsDiscover::from_fn(discovery.clone(), |_| ());
    let mut stats_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_lookups = 0;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            change = changes.next() => {
                let line = match change {
                    Some(Ok(Change::Insert(addr, ()))) => format!("+ {addr}"),
                    Some(Ok(Change::Remove(addr))) => format!("- {addr}"),
                    Some(Err(never)) => match never {},
                    None => return ExitCode::SUCCESS,
                };
                // A closed stdout (e.g. `| head`) ends the program quietly.
                if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            _ = stats_tick.tick() => {
                let s = discovery.stats();
                if s.lookups != last_lookups {
                    last_lookups = s.lookups;
                    let next = s.next_refresh.map(|t| t.saturating_duration_since(tokio::time::Instant::now()));
                    match &s.last_error {
                        Some(e) => eprintln!("lookup failed ({} in a row): {e}; keeping {} endpoints; next try in {next:.1?}", s.consecutive_failures, s.endpoints),
                        None => eprintln!("{} endpoints, TTL {:?}, next refresh in {next:.1?}", s.endpoints, s.ttl.unwrap_or_default()),
                    }
                }
            }
        }
    }
}
