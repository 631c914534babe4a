//! How the balancer's and the connection's errors become a [`tonic::Status`].
//!
//! gRPC's rule (the status-code guide in grpc/grpc's `doc/statuscodes.md`):
//! a client-side transport failure, whether no connection could be made or
//! one broke midway, is `UNAVAILABLE`, the code callers retry with backoff.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Code, Status};

use crate::error::BalanceError;
use crate::http::ConnectError;

/// The [`Status`] an RPC the balancer could not serve fails with.
///
/// - No endpoint within `failfast_timeout` ([`BalanceError::is_no_endpoints`]):
///   `UNAVAILABLE`, the message naming the target and the last DNS error.
/// - Never sent ([`BalanceError::is_not_sent`], a failed connect):
///   `UNAVAILABLE`; safe to retry.
/// - The connection failed after the request may have been written:
///   `UNAVAILABLE` too (the library does not retry it; the caller decides).
/// - A per-pod timeout layer (`tower::timeout::TimeoutLayer` through
///   `endpoint_layer`) ran out: `DEADLINE_EXCEEDED`.
/// - Anything else (an invalid request): `INTERNAL`.
///
/// The [`BalanceError`] stays reachable as the status's
/// [`source`](std::error::Error::source) for callers that want the endpoint.
pub(crate) fn from_balance_error(err: BalanceError) -> Status {
    let code = if is_elapsed(&err) {
        Code::DeadlineExceeded
    } else if err.is_no_endpoints() || err.is_not_sent() || is_transport(&err) {
        Code::Unavailable
    } else {
        Code::Internal
    };
    let mut status = Status::new(code, err.to_string());
    status.set_source(Arc::new(err));
    status
}

/// The [`Status`] a response stream that broke midway fails with: `UNAVAILABLE`.
pub(crate) fn from_stream_error(err: hyper::Error, endpoint: Option<SocketAddr>) -> Status {
    let message = match endpoint {
        Some(endpoint) => format!("stream from endpoint {endpoint} broke: {err}"),
        None => format!("stream broke: {err}"),
    };
    let mut status = Status::unavailable(message);
    status.set_source(Arc::new(err));
    status
}

/// True when a `tower` timeout layer's error is in `err`'s source chain.
fn is_elapsed(err: &(dyn StdError + 'static)) -> bool {
    crate::error::chain(err).any(|e| e.is::<tower::timeout::error::Elapsed>())
}

/// True when a connect or connection error is in `err`'s source chain.
fn is_transport(err: &(dyn StdError + 'static)) -> bool {
    crate::error::chain(err)
        .any(|e| e.is::<ConnectError>() || e.is::<hyper::Error>() || e.is::<std::io::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoints_is_unavailable_and_names_target_and_dns_error() {
        let status = from_balance_error(BalanceError::NoEndpoints {
            target: "dns:///web.default.svc.cluster.local:50051".into(),
            last_error: Some("web.default.svc.cluster.local.: no records".into()),
            waited: std::time::Duration::from_millis(300),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .contains("web.default.svc.cluster.local:50051")
        );
        assert!(status.message().contains("no records"));
        let source = status
            .source()
            .and_then(|s| s.downcast_ref::<BalanceError>());
        assert!(source.is_some_and(BalanceError::is_no_endpoints));
    }

    #[test]
    fn an_unsent_request_is_unavailable() {
        let status = from_balance_error(BalanceError::Endpoint {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            not_sent: true,
            source: "connection refused".into(),
        });
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn an_unknown_endpoint_error_is_internal() {
        let status = from_balance_error(BalanceError::Endpoint {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            not_sent: false,
            source: "invalid uri".into(),
        });
        assert_eq!(status.code(), Code::Internal);
    }
}
