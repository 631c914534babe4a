//! What the resolver takes from resolv.conf: nameservers, the search list and `ndots`.
//!
//! The parsing is the `resolv-conf` crate's, the parser hickory's own system
//! configuration uses. hickory's wrapper around it is not used: it fails a
//! file without nameservers (which is fine here when the builder names
//! them), fails a whole file for one bad search domain, and exists only on
//! some platforms.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::Name;

use super::hickory::ResolverConfigError;

/// Where the system resolver configuration lives.
const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// The port of nameservers read from resolv.conf.
const DNS_PORT: u16 = 53;
/// glibc caps `ndots` at 15.
const MAX_NDOTS: usize = 15;

/// What the resolver keeps from resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvConf {
    pub(super) nameservers: Vec<SocketAddr>,
    /// Absolute names, from the last `search` or `domain` line (as in glibc).
    pub(super) search: Vec<Name>,
    pub(super) ndots: usize,
}

/// Where the search list, `ndots` and default nameservers come from.
#[derive(Debug, Clone)]
pub(super) enum ConfigSource {
    /// `/etc/resolv.conf`, read at build time.
    System,
    /// resolv.conf text given to the builder.
    Text(String),
}

// ===== impl ConfigSource =====

impl ConfigSource {
    /// Reads and parses the configuration.
    pub(super) fn read(&self) -> Result<ResolvConf, ResolverConfigError> {
        match self {
            Self::System => {
                let text = std::fs::read_to_string(RESOLV_CONF_PATH).map_err(|e| {
                    ResolverConfigError::Read {
                        path: RESOLV_CONF_PATH.to_owned(),
                        message: e.to_string(),
                    }
                })?;
                Ok(parse_resolv_conf(&text))
            }
            Self::Text(text) => Ok(parse_resolv_conf(text)),
        }
    }
}

/// Parses resolv.conf text; lines and entries that cannot be used are
/// skipped with a warning, as the C library skips them.
fn parse_resolv_conf(text: &str) -> ResolvConf {
    let (parsed, errors) = resolv_conf::Config::parse_with_errors(text.as_bytes());
    for error in errors {
        tracing::warn!(%error, "resolv.conf: ignoring a line");
    }
    let nameservers = parsed
        .nameservers
        .iter()
        // A scope suffix (fe80::1%eth0) cannot be kept in a SocketAddr.
        .map(|ip| SocketAddr::new(IpAddr::from(ip), DNS_PORT))
        .collect();
    let search = parsed
        .get_last_search_or_domain()
        .map(String::as_str)
        .filter(|domain| *domain != "." && *domain != "--")
        .filter_map(
            |domain| match Name::from_ascii(domain.trim_end_matches('.')) {
                Ok(mut name) => {
                    name.set_fqdn(true);
                    Some(name)
                }
                Err(error) => {
                    tracing::warn!(domain, %error, "resolv.conf: ignoring bad search domain");
                    None
                }
            },
        )
        .collect();
    ResolvConf {
        nameservers,
        search,
        ndots: usize::try_from(parsed.ndots).map_or(MAX_NDOTS, |n| n.min(MAX_NDOTS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn parses_a_kubernetes_resolv_conf() {
        let conf = parse_resolv_conf(
            "# generated\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(
            conf,
            ResolvConf {
                nameservers: vec!["10.96.0.10:53".parse().unwrap()],
                search: vec![
                    name("default.svc.cluster.local."),
                    name("svc.cluster.local."),
                    name("cluster.local."),
                ],
                ndots: 5,
            }
        );
    }

    #[test]
    fn last_of_search_and_domain_wins_and_junk_is_skipped() {
        let conf = parse_resolv_conf(
            "search a.example b.example\ndomain c.example\nnameserver nonsense\n\
             nameserver fe80::1%eth0\noptions ndots:99\nsortlist 10.0.0.0\n",
        );
        assert_eq!(conf.search, vec![name("c.example.")]);
        assert_eq!(conf.nameservers, vec!["[fe80::1]:53".parse().unwrap()]);
        assert_eq!(conf.ndots, MAX_NDOTS);
    }

    #[test]
    fn defaults_without_a_file() {
        let conf = parse_resolv_conf("");
        assert!(conf.nameservers.is_empty() && conf.search.is_empty());
        assert_eq!(conf.ndots, 1, "glibc's default");
    }
}
