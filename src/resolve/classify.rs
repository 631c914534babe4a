//! What a hickory answer means for one name: records, none, or a transient failure.
//!
//! The refresh loop treats the two kinds of failure differently (no records
//! may empty the set after `max_stale`; a transient failure never does), so
//! every hickory error is sorted here, in one place.

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;

use crate::error::ResolveError;

/// The result of asking about one candidate name.
pub(super) enum Classified<T> {
    /// The name has records of the asked type.
    Found(T),
    /// NXDOMAIN or NODATA, with the negative TTL when the server sent an SOA.
    Empty(Option<u32>),
    /// Anything transient.
    Failed(Failure),
}

/// A transient failure, named once the target name is known.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    Timeout,
    Server(ResponseCode),
    Other(String),
}

/// Sorts a hickory error into no-records or a transient failure; never `Found`.
pub(super) fn classify<T>(error: NetError) -> Classified<T> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {
                Classified::Empty(no_records.negative_ttl)
            }
            code => Classified::Failed(Failure::Server(code)),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Classified::Failed(Failure::Server(code)),
        NetError::Timeout => Classified::Failed(Failure::Timeout),
        other => Classified::Failed(Failure::Other(other.to_string())),
    }
}

// ===== impl Failure =====

impl Failure {
    /// The error the refresh loop sees, naming the target's host.
    pub(super) fn into_error(self, name: &str) -> ResolveError {
        let name = name.to_owned();
        match self {
            Self::Timeout => ResolveError::Timeout { name },
            Self::Server(code) => ResolveError::ServerFailure {
                name,
                code: response_code_name(code),
            },
            Self::Other(message) => ResolveError::Other { name, message },
        }
    }
}

/// The mnemonic of a response code, as operators know them from dig.
fn response_code_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotAuth => "NOTAUTH".to_owned(),
        other => format!("{} ({other})", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_read_like_dig() {
        assert_eq!(response_code_name(ResponseCode::ServFail), "SERVFAIL");
        assert_eq!(response_code_name(ResponseCode::Refused), "REFUSED");
    }
}
