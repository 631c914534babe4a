//! Error types: bad targets, classified DNS failures, balancer failures.

use std::time::Duration;

/// A target string that cannot be used, with the problem named.
///
/// Returned by [`Target::from_str`](crate::Target). Every variant says what is wrong
/// and, where it helps, which part of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The input was empty.
    #[error("target is empty")]
    Empty,
    // Variants are completed by the target parser.
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
    /// No endpoint became available within `failfast_timeout`.
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
    /// The endpoint the request went to failed it.
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

    /// True when the request was certainly never written to a connection,
    /// so that the caller may retry it without risk of a duplicate.
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
