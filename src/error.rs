//! Error types: bad targets, classified DNS failures, balancer failures.

use std::time::Duration;

/// A target string that cannot be used, with the problem named.
///
/// Returned by [`Target::from_str`](crate::Target) and
/// [`Target::new`](crate::Target::new). Every variant says what is wrong and,
/// where it helps, which part of the input; user input inside messages is
/// `Debug`-quoted so that control characters cannot garble a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The input was empty.
    #[error("target is empty")]
    Empty,
    /// The input starts or ends with whitespace; it is rejected rather than
    /// trimmed, since stray whitespace usually means a mangled config value.
    #[error("target {input:?} has leading or trailing whitespace")]
    SurroundingWhitespace {
        /// The whole input.
        input: String,
    },
    /// A `scheme://` other than `dns://`.
    #[error("unknown scheme {scheme:?}: only `dns://` is supported")]
    UnknownScheme {
        /// The scheme as written, without `://`.
        scheme: String,
    },
    /// `dns://` without the `/` that ends the nameserver part, as in
    /// `dns://web:80` (meant: `dns:///web:80`).
    #[error(
        "target {input:?} has no `/` after the nameserver: write `dns:///host:port` \
         or `dns://IP:PORT/host:port`"
    )]
    MissingPath {
        /// The whole input.
        input: String,
    },
    /// The nameserver in `dns://NAMESERVER/…` is not an `IP:PORT`.
    #[error("nameserver {nameserver:?} is not IP:PORT (e.g. `10.96.0.10:53` or `[::1]:53`)")]
    InvalidNameserver {
        /// The nameserver part as written.
        nameserver: String,
    },
    /// The nameserver in `dns://NAMESERVER/…` is an IP without a port.
    #[error("nameserver {nameserver:?} has no port: write IP:PORT (IPv6 in brackets, `[::1]:53`)")]
    NameserverMissingPort {
        /// The nameserver part as written.
        nameserver: String,
    },
    /// The nameserver in `dns://NAMESERVER/…` has port 0.
    #[error("nameserver {nameserver:?} has port 0")]
    NameserverZeroPort {
        /// The nameserver part as written.
        nameserver: String,
    },
    /// There is no host before the port, or nothing after `dns:///`.
    #[error("target {input:?} has no host")]
    MissingHost {
        /// The whole input.
        input: String,
    },
    /// A non-SRV target without a port (`web`, `web:`).
    #[error("target {input:?} has no port: write host:port, or `_service._proto.host` for SRV")]
    MissingPort {
        /// The whole input.
        input: String,
    },
    /// The port is not a decimal number from 1 to 65535.
    #[error("invalid port {port:?}: expected a number from 1 to 65535")]
    InvalidPort {
        /// The port as written.
        port: String,
    },
    /// The port is 0.
    #[error("port 0 is not allowed")]
    ZeroPort,
    /// An SRV target (`_service._proto.host`) with a port: SRV records carry the ports.
    #[error("SRV target {name:?} takes no port (got {port:?}): ports come from the SRV records")]
    PortWithSrv {
        /// The SRV name as written.
        name: String,
        /// The port as written.
        port: String,
    },
    /// A name starting with `_` that is not `_service._proto.host`.
    #[error("invalid SRV name {name:?}: expected `_service._proto.host`, e.g. `_http._tcp.web`")]
    InvalidSrvName {
        /// The name as written.
        name: String,
    },
    /// An empty label: `web..x`, `.web`, or a name that is only `.`.
    #[error("name {name:?} has an empty label")]
    EmptyLabel {
        /// The name as written.
        name: String,
    },
    /// A label longer than 63 bytes (RFC 1035 §2.3.4).
    #[error("label {label:?} is {len} bytes long; at most 63 are allowed")]
    LabelTooLong {
        /// The label as written.
        label: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A name longer than 253 bytes, not counting one trailing dot.
    #[error("name is {len} bytes long; at most 253 are allowed")]
    NameTooLong {
        /// Its length in bytes, without a trailing dot.
        len: usize,
    },
    /// A character other than an ASCII letter, digit or hyphen in a label
    /// (RFC 1123 §2.1); internationalised names must be given in punycode.
    #[error(
        "invalid character {ch:?} in label {label:?}: only letters, digits and `-` are allowed"
    )]
    InvalidCharacter {
        /// The first offending character.
        ch: char,
        /// The label it is in.
        label: String,
    },
    /// A label that starts or ends with `-`.
    #[error("label {label:?} starts or ends with `-`")]
    HyphenAtLabelEdge {
        /// The label as written.
        label: String,
    },
    /// A name whose last label is all digits: not a host name (RFC 1123 §2.1),
    /// and not a valid IPv4 address either (`10.0.0.300`, `1.2.3`, `010.0.0.1`).
    #[error("{name:?} is neither an IPv4 address nor a host name (its last label is all digits)")]
    NumericTopLabel {
        /// The name as written.
        name: String,
    },
    /// A bracketed host that is not a valid IPv6 address, or a bracket left open.
    #[error("{host:?} is not a valid bracketed IPv6 address (e.g. `[::1]:80`)")]
    InvalidIpv6 {
        /// The host as written.
        host: String,
    },
    /// An IPv6 address without brackets, where the port cannot be told apart.
    #[error("IPv6 address in {host:?} must be in brackets, e.g. `[::1]:80`")]
    UnbracketedIpv6 {
        /// The host and port as written.
        host: String,
    },
}

/// Why one DNS lookup produced no endpoints.
///
/// The split that matters to the refresh loop is [`NoRecords`](Self::NoRecords)
/// (the name exists in a well-behaved way but lists no pods: NXDOMAIN or an
/// empty answer) versus everything transient (timeouts, SERVFAIL, REFUSED,
/// network errors), which is retried with backoff while the last good set is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// NXDOMAIN or an answer without usable records.
    #[error("{name}: no records (NXDOMAIN or empty answer)")]
    NoRecords {
        /// The name that was looked up.
        name: String,
        /// The negative-caching TTL from the SOA record, when the server sent one.
        negative_ttl: Option<Duration>,
    },
    /// The server did not answer within the resolver timeout.
    #[error("{name}: DNS lookup timed out")]
    Timeout {
        /// The name that was looked up.
        name: String,
    },
    /// The server answered with an error code such as SERVFAIL or REFUSED.
    #[error("{name}: DNS server answered {code}")]
    ServerFailure {
        /// The name that was looked up.
        name: String,
        /// The response code, e.g. `SERVFAIL`.
        code: String,
    },
    /// Network I/O, a malformed answer, or anything else transient.
    #[error("{name}: DNS lookup failed: {message}")]
    Other {
        /// The name that was looked up.
        name: String,
        /// What went wrong.
        message: String,
    },
}

// ===== impl ResolveError =====

impl ResolveError {
    /// True for NXDOMAIN or an empty answer: "no ready pods" in Kubernetes.
    pub fn is_no_records(&self) -> bool {
        matches!(self, Self::NoRecords { .. })
    }

    /// True for failures that say nothing about the pod set (timeout,
    /// SERVFAIL, REFUSED, I/O): the refresh loop keeps the last good set and
    /// backs off.
    pub fn is_transient(&self) -> bool {
        !self.is_no_records()
    }

    /// True when the server did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The negative TTL the server gave with an NXDOMAIN or empty answer.
    pub fn negative_ttl(&self) -> Option<Duration> {
        match self {
            Self::NoRecords { negative_ttl, .. } => *negative_ttl,
            _ => None,
        }
    }
}

/// Why the [`Balancer`](crate::balance::Balancer) could not serve a request.
///
/// Branch with the predicates rather than by matching: [`is_no_endpoints`](Self::is_no_endpoints)
/// means nothing was available to send to within `failfast_timeout`;
/// [`is_endpoint`](Self::is_endpoint) means one endpoint failed the request,
/// and [`source`](std::error::Error::source) is that endpoint service's own
/// error (downcast it to e.g. a hyper or tonic error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// No endpoint became available within `failfast_timeout`: the request
    /// was tried on none. (One that was tried and never sent anywhere fails
    /// with [`Endpoint`](Self::Endpoint), `not_sent: true`.)
    #[error(
        "no endpoint of {target} available after {waited:?}{}",
        match .last_error { Some(e) => format!(" (last resolution error: {e})"), None => String::new() }
    )]
    NoEndpoints {
        /// The target the balancer serves, as given to the builder.
        target: String,
        /// The last discovery error, if any was reported.
        last_error: Option<String>,
        /// How long the request waited.
        waited: std::time::Duration,
    },
    /// The endpoint the request went to failed it; for a request that was
    /// never sent, the last of the endpoints it was tried on.
    #[error("endpoint {endpoint}: {source}")]
    Endpoint {
        /// The endpoint's address.
        endpoint: std::net::SocketAddr,
        /// True when the request was never written to a connection (so it is
        /// safe to retry); false when it may have reached the server.
        not_sent: bool,
        /// The endpoint service's error.
        #[source]
        source: tower::BoxError,
    },
}

// ===== impl BalanceError =====

impl BalanceError {
    /// True when no endpoint was available within `failfast_timeout`.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Self::NoEndpoints { .. })
    }

    /// True when an endpoint failed the request; see [`endpoint`](Self::endpoint).
    pub fn is_endpoint(&self) -> bool {
        matches!(self, Self::Endpoint { .. })
    }

    /// True when the request may be sent again without risk of a
    /// duplicate effect: it was certainly never written to a connection, or
    /// (HTTP/1.1) it is idempotent with no body and its reused connection
    /// closed before any byte of a response (see
    /// [`HttpEndpoint`](crate::http::HttpEndpoint)), and every pod tried
    /// failed it so.
    pub fn is_not_sent(&self) -> bool {
        matches!(self, Self::Endpoint { not_sent: true, .. })
    }

    /// The address of the endpoint that failed the request.
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Endpoint { endpoint, .. } => Some(*endpoint),
            Self::NoEndpoints { .. } => None,
        }
    }
}

/// Why a balanced client could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The target string is not valid.
    #[error("invalid target: {0}")]
    Target(#[from] TargetError),
    /// The DNS resolver could not be set up.
    #[error("cannot set up DNS resolution: {0}")]
    Resolver(#[from] crate::resolve::ResolverConfigError),
    /// The target cannot be used as an HTTP authority.
    #[error("target {target} is not a valid HTTP authority")]
    Authority {
        /// The target, as displayed.
        target: String,
    },
    /// The TLS server name (the target's host, or `tls_server_name`) is
    /// neither a DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The hedging settings ([`HedgePolicy`](crate::HedgePolicy), the gRPC
    /// methods to hedge) hold a value that cannot work.
    #[error("invalid hedging setting: {0}")]
    Hedge(#[from] crate::client::HedgePolicyError),
}

/// Why a request through a balanced client failed.
///
/// Branch with the `is_*` predicates; [`RequestError::Balance`] carries the
/// balancer's own [`BalanceError`] with the endpoint and cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No endpoint was available, or the chosen endpoint failed the request.
    #[error(transparent)]
    Balance(#[from] BalanceError),
    /// No response head arrived within the client's request timeout.
    #[error("request to {target} timed out after {after:?}")]
    Timeout {
        /// The target, as displayed.
        target: String,
        /// The configured request timeout.
        after: Duration,
    },
    /// The request could not be built (e.g. an invalid URI given to `get`).
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// What is wrong with it.
        message: String,
    },
}

// ===== impl RequestError =====

impl RequestError {
    /// True when no endpoint became available within `failfast_timeout`.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Self::Balance(e) if e.is_no_endpoints())
    }

    /// True when the request timeout fired.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// True when the request was certainly never written to a connection.
    pub fn is_not_sent(&self) -> bool {
        matches!(self, Self::Balance(e) if e.is_not_sent())
    }

    /// The endpoint that failed the request, if one did.
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Balance(e) => e.endpoint(),
            Self::Timeout { .. } | Self::InvalidRequest { .. } => None,
        }
    }
}

/// `error` and the errors of its source chain, outermost first.
pub(crate) fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}
