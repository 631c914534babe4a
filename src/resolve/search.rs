//! Which names to ask for a host, and in what order: resolv.conf's `search` and `ndots` rules, as glibc applies them.
//!
//! The walk is done here rather than by hickory for two reasons: a
//! Kubernetes service name (`*.svc.cluster.local`) must cost one query per
//! record type, not one per search domain; and A and AAAA must be judged
//! together per candidate name (`addresses.rs`), so that a failed AAAA query
//! can never turn into an answer with only the IPv4 pods.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use hickory_resolver::proto::rr::Name;

use super::classify::Classified;
use crate::error::ResolveError;

/// The search rules of one resolver.
#[derive(Debug, Clone)]
pub(super) struct Search {
    /// resolv.conf's search list, absolute names.
    pub(super) domains: Vec<Name>,
    /// resolv.conf's `ndots`.
    pub(super) ndots: usize,
    /// `.svc.<cluster domain>`, lowercase: names ending in it skip the search list.
    pub(super) cluster_suffix: String,
}

// ===== impl Search =====

impl Search {
    /// The names to try for `host`, in order, all absolute.
    pub(super) fn candidates(&self, host: &str) -> Result<Vec<Name>, ResolveError> {
        let name = Name::from_ascii(host).map_err(|e| ResolveError::Other {
            name: host.to_owned(),
            message: format!("invalid DNS name: {e}"),
        })?;
        let mut absolute = name.clone();
        absolute.set_fqdn(true);
        let lower = host.to_ascii_lowercase();
        if lower.ends_with(&self.cluster_suffix) {
            return Ok(vec![absolute]);
        }
        let searched = self.domains.iter().filter_map(|domain| {
            let mut candidate = name.clone().append_domain(domain).ok()?;
            candidate.set_fqdn(true);
            Some(candidate)
        });
        // glibc: a name with at least `ndots` dots is tried as-is first.
        let dots = host.trim_end_matches('.').matches('.').count();
        let mut names: Vec<Name> = if dots >= self.ndots {
            std::iter::once(absolute).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(absolute)).collect()
        };
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        Ok(names)
    }
}

/// Asks `lookup` about each candidate name in turn, as glibc's `res_search`
/// does: the first name with records wins. If none has any, a transient
/// failure on any name makes the lookup transient (it might have been the
/// name with the records); otherwise it is `NoRecords` with the last negative
/// TTL a server sent.
pub(super) async fn first_found<T, F, Fut>(
    host: &str,
    candidates: &[Name],
    mut lookup: F,
) -> Result<T, ResolveError>
where
    F: FnMut(Name) -> Fut,
    Fut: Future<Output = Classified<T>>,
{
    let mut failure = None;
    let mut negative_ttl = None;
    for candidate in candidates {
        match lookup(candidate.clone()).await {
            Classified::Found(found) => return Ok(found),
            Classified::Empty(ttl) => negative_ttl = ttl.or(negative_ttl),
            Classified::Failed(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    match failure {
        Some(failure) => Err(failure.into_error(host)),
        None => Err(ResolveError::NoRecords {
            name: host.to_owned(),
            negative_ttl: negative_ttl.map(|ttl| Duration::from_secs(u64::from(ttl))),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn kubernetes() -> Search {
        Search {
            domains: vec![
                name("default.svc.cluster.local."),
                name("svc.cluster.local."),
                name("cluster.local."),
            ],
            ndots: 5,
            cluster_suffix: ".svc.cluster.local".to_owned(),
        }
    }

    #[test]
    fn cluster_names_are_asked_once_as_absolute_names() {
        let names = kubernetes()
            .candidates("web.default.svc.cluster.local")
            .unwrap();
        assert_eq!(names, vec![name("web.default.svc.cluster.local.")]);
    }

    #[test]
    fn short_names_walk_the_search_list_first() {
        let names = kubernetes().candidates("web").unwrap();
        assert_eq!(
            names,
            vec![
                name("web.default.svc.cluster.local."),
                name("web.svc.cluster.local."),
                name("web.cluster.local."),
                name("web."),
            ]
        );
        let mut one_dot = kubernetes();
        one_dot.ndots = 1;
        assert_eq!(
            one_dot.candidates("web.example").unwrap()[0],
            name("web.example.")
        );
    }

    #[tokio::test]
    async fn a_transient_failure_on_any_name_beats_no_records() {
        let candidates = kubernetes().candidates("web").unwrap();
        let mut asked = 0;
        let result: Result<(), _> = first_found("web", &candidates, |_| {
            asked += 1;
            let outcome = if asked == 2 {
                Classified::Failed(super::super::classify::Failure::Timeout)
            } else {
                Classified::Empty(Some(7))
            };
            std::future::ready(outcome)
        })
        .await;
        assert_eq!(asked, 4);
        assert!(matches!(result, Err(ResolveError::Timeout { .. })));

        let found = first_found("web", &candidates, |n| {
            std::future::ready(if n == name("web.svc.cluster.local.") {
                Classified::Found(n)
            } else {
                Classified::Empty(None)
            })
        })
        .await;
        assert_eq!(found.unwrap(), name("web.svc.cluster.local."));
    }
}
