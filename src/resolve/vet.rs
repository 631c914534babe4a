//! Which answered addresses may become endpoints, and how many.
//!
//! DNS answers are input like any other: an unspecified, multicast or
//! broadcast address is never a pod, and a link-local one (the cloud
//! metadata endpoint lives at 169.254.169.254) is used only when the user
//! allows it. A target holds at most `max_endpoints`, the lowest addresses,
//! so that every refresh of an oversized answer keeps the same ones.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use super::addresses::TtlAddr;
use crate::sync::lock;

/// How many distinct rejected addresses are remembered for log-once; beyond
/// this a hostile server could grow the set without bound, so they are not logged.
const MAX_REMEMBERED_REJECTIONS: usize = 1024;

/// The address rules of one resolver, and the addresses it has already
/// logged as rejected.
#[derive(Debug)]
pub(super) struct Vetter {
    allow_link_local: bool,
    max_endpoints: usize,
    rejected: Mutex<HashSet<IpAddr>>,
}

// ===== impl Vetter =====

impl Vetter {
    pub(super) fn new(allow_link_local: bool, max_endpoints: usize) -> Self {
        Self {
            allow_link_local,
            max_endpoints,
            rejected: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn allow_link_local(&self) -> bool {
        self.allow_link_local
    }

    pub(super) fn max_endpoints(&self) -> usize {
        self.max_endpoints
    }

    /// True if `ip` may be used as an endpoint; logs each rejected address once.
    pub(super) fn usable(&self, host: &str, ip: IpAddr) -> bool {
        let Some(reason) = rejection(ip, self.allow_link_local) else {
            return true;
        };
        let mut rejected = lock(&self.rejected);
        if rejected.len() < MAX_REMEMBERED_REJECTIONS && rejected.insert(ip) {
            tracing::warn!(name = host, address = %ip, reason, "ignoring unusable address in DNS answer");
        }
        false
    }

    /// Keeps at most `max_endpoints`, the lowest addresses, with a warning
    /// when the answer had more.
    pub(super) fn cap(&self, host: &str, endpoints: BTreeSet<SocketAddr>) -> BTreeSet<SocketAddr> {
        if endpoints.len() > self.max_endpoints {
            tracing::warn!(
                name = host,
                answered = endpoints.len(),
                max_endpoints = self.max_endpoints,
                "DNS answer has more endpoints than max_endpoints; using the lowest addresses"
            );
        }
        cap_endpoints(endpoints, self.max_endpoints)
    }
}

/// The usable addresses as endpoints on `port`, and the shortest TTL among
/// their records (0 when none is usable).
pub(super) fn vet_addresses(
    mut addresses: Vec<TtlAddr>,
    port: u16,
    mut usable: impl FnMut(IpAddr) -> bool,
) -> (BTreeSet<SocketAddr>, u32) {
    addresses.retain(|(ip, _)| usable(*ip));
    let ttl = addresses.iter().map(|(_, ttl)| *ttl).min().unwrap_or(0);
    let endpoints = addresses
        .into_iter()
        .map(|(ip, _)| SocketAddr::new(ip, port))
        .collect();
    (endpoints, ttl)
}

/// At most `max` endpoints, the lowest addresses, so that the cut is stable.
fn cap_endpoints(endpoints: BTreeSet<SocketAddr>, max: usize) -> BTreeSet<SocketAddr> {
    if endpoints.len() <= max {
        return endpoints;
    }
    endpoints.into_iter().take(max).collect()
}

/// Why `ip` must not be used as an endpoint, if it must not.
pub(super) fn rejection(ip: IpAddr, allow_link_local: bool) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_link_local() && !allow_link_local => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() && !allow_link_local => Some("link-local"),
        _ => None,
    }
}

/// What one A/AAAA answer message turns into for a `host:port` target: the
/// resolver's own conversion (addresses and CNAME TTLs from the answer
/// section, unusable addresses dropped, the shortest TTL, the cap), from raw
/// bytes. `None` if the bytes are not a DNS message. For fuzzing only
/// (`cargo fuzz` builds with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn endpoints_from_answer_message(
    bytes: &[u8],
    port: u16,
    allow_link_local: bool,
    max_endpoints: usize,
) -> Option<(BTreeSet<SocketAddr>, u32)> {
    let message = hickory_resolver::proto::op::Message::from_vec(bytes).ok()?;
    let addresses = super::addresses::answer_addresses(&message.answers);
    let (endpoints, ttl) = vet_addresses(addresses, port, |ip| {
        rejection(ip, allow_link_local).is_none()
    });
    Some((cap_endpoints(endpoints, max_endpoints.max(1)), ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unusable_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            assert!(rejection(ip(bad), true).is_some(), "{bad}");
        }
        for link_local in ["169.254.169.254", "fe80::1"] {
            assert_eq!(rejection(ip(link_local), false), Some("link-local"));
            assert_eq!(rejection(ip(link_local), true), None);
        }
        for good in ["10.0.0.1", "127.0.0.11", "fd00::1", "2001:db8::1"] {
            assert_eq!(rejection(ip(good), false), None, "{good}");
        }
    }

    #[test]
    fn the_cap_keeps_the_lowest_addresses() {
        let endpoints: BTreeSet<SocketAddr> = (1..=5)
            .map(|i| SocketAddr::from(([10, 0, 0, 6 - i], 80)))
            .collect();
        let vetter = Vetter::new(false, 2);
        let kept: Vec<_> = vetter.cap("web", endpoints).into_iter().collect();
        assert_eq!(
            kept,
            vec![
                SocketAddr::from(([10, 0, 0, 1], 80)),
                SocketAddr::from(([10, 0, 0, 2], 80))
            ]
        );
    }
}
