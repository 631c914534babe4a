//! A and AAAA of one absolute name, judged together.
//!
//! Both queries must answer (with records, NXDOMAIN or NODATA) for the name
//! to have an answer: if either fails, the name fails, so that a lost AAAA
//! answer can never turn into a set with only the IPv4 pods (which would
//! remove the IPv6 ones).

use std::convert::Infallible;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::classify::{Classified, classify};

/// An address with the TTL of the record it came from.
pub(super) type TtlAddr = (IpAddr, u32);

/// A and AAAA of `name`, in parallel, with each address's TTL.
pub(super) async fn lookup_addresses(
    resolver: &TokioResolver,
    name: Name,
) -> Classified<Vec<TtlAddr>> {
    let (a, aaaa) = futures::future::join(
        resolver.lookup(name.clone(), RecordType::A),
        resolver.lookup(name, RecordType::AAAA),
    )
    .await;
    let mut addresses = Vec::new();
    let mut negative_ttl: Option<u32> = None;
    for result in [a, aaaa] {
        match result {
            Ok(lookup) => addresses.extend(answer_addresses(lookup.answers())),
            Err(error) => match classify::<Infallible>(error) {
                Classified::Empty(ttl) => negative_ttl = min_option(negative_ttl, ttl),
                Classified::Failed(failure) => return Classified::Failed(failure),
                Classified::Found(never) => match never {},
            },
        }
    }
    if addresses.is_empty() {
        Classified::Empty(negative_ttl)
    } else {
        Classified::Found(addresses)
    }
}

/// The A/AAAA addresses in a lookup's answer section, with their TTLs; a
/// CNAME in the chain lowers the TTL of what it points to.
pub(super) fn answer_addresses(answers: &[Record]) -> Vec<TtlAddr> {
    let chain_ttl = answers
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .map(|r| r.ttl)
        .min()
        .unwrap_or(u32::MAX);
    answers
        .iter()
        .filter_map(|record| Some((record_ip(record)?, record.ttl.min(chain_ttl))))
        .collect()
}

/// The address of an A or AAAA record; `None` for any other record.
pub(super) fn record_ip(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// The smaller of two optional TTLs, or the one that is there.
fn min_option(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
