//! Test support (cargo feature `testing`): in-process DNS servers and pods on 127.0.0.x.
//!
//! Everything here runs on loopback inside the test's own tokio runtime, so
//! tests stay fast and hermetic:
//!
//! - [`DnsServer`]: a real authoritative server (hickory-server, UDP and TCP on
//!   one random port) for `cluster.local.` whose records a test changes while
//!   clients run, with query counting and a runtime fault switch.
//! - [`FaultyDns`]: a deliberately broken responder for the failure modes a
//!   well-behaved server never shows: truncation, garbage, TCP refused, delay.
//! - [`Pod`]: a real HTTP/1.1 + h2c server on a 127.0.0.x address that answers
//!   with its own address, and can be made slow, failing, hung, killed and restarted,
//!   and vary as real pods do: GC-like stop-the-world pauses at random times
//!   (`set_pauses`) and a capacity limit beyond which requests queue (`set_capacity`).
//! - [`GrpcPod`] (with the `tonic` feature): a real grpc.health.v1 server on
//!   a 127.0.0.x address, with the same knobs, for the gRPC channel.
//! - With the `tls` feature, [`TestCa`]: a CA that issues certificates for
//!   the service's name, and `Pod::start_tls` / `GrpcPod::start_tls`.
//! - [`wait_for`] / [`wait_for_async`]: poll a condition with a deadline instead
//!   of sleeping a fixed time.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use headless_lb::testing::{DnsServer, wait_for};
//! use std::time::Duration;
//!
//! let dns = DnsServer::start().await?;
//! dns.set_ips("web.default.svc.cluster.local", &["127.0.0.11".parse().unwrap()], 5);
//! // point a resolver at dns.addr() ...
//! wait_for(Duration::from_secs(2), "the first query", || dns.queries() > 0).await;
//! # Ok(()) }
//! ```

mod dns_server;
mod faulty_dns;
mod wait;

pub use self::dns_server::{DnsServer, Fault};
pub use self::faulty_dns::{FaultyDns, FaultyMode};
pub use self::wait::{wait_for, wait_for_async};

/// The record types [`DnsServer::queries_for`] and [`DnsServer::set_fault_for`]
/// take, re-exported so that tests need no direct hickory dependency.
pub use hickory_proto::rr::RecordType;

mod pod;
mod server;
pub use self::pod::{AUTHORITY_HEADER, Pod};

mod tls;
#[cfg(feature = "tls")]
pub use self::tls::{TestCa, TestCert};

#[cfg(feature = "tonic")]
mod grpc_pod;
#[cfg(feature = "tonic")]
pub use self::grpc_pod::GrpcPod;
