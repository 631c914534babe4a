//! What the example programs share: argument errors as one line and exit 2, logging on stderr.

#![allow(dead_code)]

pub mod follow;
#[cfg(feature = "tls")]
pub mod tls;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line; on a bad argument prints ONE line on stderr and
/// exits with status 2 (help and version print as usual and exit 0).
pub fn parse_args<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => {
                let text = e.to_string();
                eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
                std::process::exit(2)
            }
        },
    }
}

/// Prints `error: {msg}` as one line on stderr and returns exit status 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Logs to stderr; `RUST_LOG` overrides the default (`info`, the test DNS
/// server at `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The in-process DNS server logs every query at INFO: keep it to warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
