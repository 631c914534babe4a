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
