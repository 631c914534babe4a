//! SRV targets (`_port._proto.host`): the records, their addresses from glue or follow-up lookups, and each record's port.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use futures::stream::{self, StreamExt};
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::addresses::{TtlAddr, lookup_addresses, record_ip};
use super::classify::{Classified, classify};
use super::search::first_found;
use super::vet::Vetter;
use crate::error::ResolveError;

/// Follow-up A/AAAA lookups of SRV targets in flight at once: hickory allows
/// 32 requests in flight per connection, and each target costs two.
const MAX_CONCURRENT_FOLLOW_UPS: usize = 8;

/// SRV records (target, port, ttl) and the glue that came with them.
struct SrvAnswer {
    records: Vec<(Name, u16, u32)>,
    glue: Vec<(Name, IpAddr, u32)>,
}

/// The first candidate name with SRV records wins; each record's addresses
/// come from the glue the server sent, or else from a lookup of its target.
/// Returns the usable endpoints and the shortest TTL among the SRV and
/// address records they came from (0 when none is usable).
pub(super) async fn resolve_srv(
    resolver: &TokioResolver,
    host: &str,
    candidates: &[Name],
    vetter: &Vetter,
) -> Result<(BTreeSet<SocketAddr>, u32), ResolveError> {
    let answer = first_found(host, candidates, |name| lookup_srv(resolver, name)).await?;

    let mut addresses: HashMap<Name, Vec<TtlAddr>> = HashMap::new();
    for (name, ip, record_ttl) in answer.glue {
        addresses.entry(name).or_default().push((ip, record_ttl));
    }
    let missing: BTreeSet<Name> = answer
        .records
        .iter()
        .map(|(target, _, _)| target.clone())
        .filter(|target| !addresses.contains_key(target))
        .take(vetter.max_endpoints())
        .collect();
    let follow_ups: Vec<(Name, Classified<Vec<TtlAddr>>)> = stream::iter(missing)
        .map(|target| async move {
            let outcome = lookup_addresses(resolver, target.clone()).await;
            (target, outcome)
        })
        .buffer_unordered(MAX_CONCURRENT_FOLLOW_UPS)
        .collect()
        .await;
    for (target, outcome) in follow_ups {
        match outcome {
            Classified::Found(found) => {
                addresses.insert(target, found);
            }
            Classified::Empty(_) => {
                tracing::debug!(name = host, srv.target = %target, "SRV target has no addresses");
            }
            Classified::Failed(failure) => return Err(failure.into_error(host)),
        }
    }

    let mut ttl = None::<u32>;
    let mut endpoints = BTreeSet::new();
    for (target, port, srv_ttl) in &answer.records {
        let Some(found) = addresses.get(target) else {
            continue;
        };
        for &(ip, address_ttl) in found {
            if vetter.usable(host, ip) {
                endpoints.insert(SocketAddr::new(ip, *port));
                let used = (*srv_ttl).min(address_ttl);
                ttl = Some(ttl.map_or(used, |ttl| ttl.min(used)));
            }
        }
    }
    Ok((endpoints, ttl.unwrap_or(0)))
}

/// SRV records of one absolute name, with any A/AAAA glue for their targets.
async fn lookup_srv(resolver: &TokioResolver, name: Name) -> Classified<SrvAnswer> {
    let lookup = match resolver.lookup(name, RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(error) => return classify(error),
    };
    let records: Vec<(Name, u16, u32)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            // Port 0 and the root target mean "no service here" (RFC 2782).
            RData::SRV(srv) if srv.port != 0 && !srv.target.is_root() => {
                Some((absolute(&srv.target), srv.port, record.ttl))
            }
            _ => None,
        })
        .collect();
    if records.is_empty() {
        return Classified::Empty(None);
    }
    let glue = lookup
        .additionals()
        .iter()
        .filter_map(|record| Some((absolute(&record.name), record_ip(record)?, record.ttl)))
        .collect();
    Classified::Found(SrvAnswer { records, glue })
}

/// The absolute, lowercase form of `name`, for comparing SRV targets with glue owners.
fn absolute(name: &Name) -> Name {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name
}
