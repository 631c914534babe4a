//! What users write to name a service: parsing and validation of [`Target`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::error::TargetError;

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, validated per RFC 1123, without a trailing dot.
    Name(String),
    /// An IP literal: resolves to itself, with no DNS query.
    Ip(IpAddr),
}

/// A service to balance over, as users write it.
///
/// Accepted forms:
/// - `host:port` — e.g. `web.default.svc.cluster.local:8080`
/// - `dns:///host:port` — the gRPC spelling of the same
/// - `dns://IP:PORT/host:port` — use the nameserver at `IP:PORT`
/// - `_port._proto.host` (optionally after `dns:///` or `dns://IP:PORT/`) — an
///   SRV lookup; ports come from the records
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: Host,
    port: Option<u16>,
    nameserver: Option<SocketAddr>,
    dns_scheme: bool,
}

// ===== impl Target =====

impl Target {
    /// The host: a DNS name or an IP literal.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, or `None` for an SRV target (ports come from the records).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// True for an SRV target (`_port._proto.host`).
    pub fn is_srv(&self) -> bool {
        self.port.is_none()
    }

    /// The nameserver named in a `dns://IP:PORT/…` target.
    pub fn nameserver(&self) -> Option<SocketAddr> {
        self.nameserver
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        Err(TargetError::Empty)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = self.dns_scheme;
        match &self.host {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}
