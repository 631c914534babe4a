//! The hickory-backed [`Resolve`](super::Resolve): one uncached lookup per call, answers vetted.
//!
//! ```text
//! Target ──► candidate names ──► A + AAAA (or SRV, then glue / follow-ups) ──► vet addresses ──► Resolution
//!            (cluster names: one         per name, both must answer            (drop unspecified,
//!             absolute name; others:     or fail together)                      multicast, broadcast,
//!             resolv.conf search/ndots)                                         link-local; cap)
//! ```
//!
//! hickory does the wire work (UDP, TCP on truncation, retries, timeouts); its
//! cache is off because the refresh loop schedules lookups from the TTL itself.
//! The search-list walk is done here rather than by hickory, for two reasons:
//! a Kubernetes service name (`*.svc.cluster.local`) must cost one query per
//! record type, not one per search domain; and A and AAAA must be judged
//! together per candidate name, so that a failed AAAA query can never turn into
//! an answer with only the IPv4 pods (which would remove the IPv6 ones).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
#[cfg(fuzzing)]
use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::{Resolution, Resolve, ResolveFuture};
use crate::error::ResolveError;
use crate::target::{Host, Target};

/// Where the system resolver configuration lives.
const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// The port of nameservers read from resolv.conf.
const DNS_PORT: u16 = 53;
/// `ndots` when resolv.conf does not set it (glibc's default).
const DEFAULT_NDOTS: usize = 1;
/// glibc caps `ndots` at 15.
const MAX_NDOTS: usize = 15;
/// The TTL reported for IP literals, which never change; the refresh loop
/// clamps it to its `max_refresh`.
const IP_LITERAL_TTL: Duration = Duration::from_secs(3600);
/// Follow-up A/AAAA lookups of SRV targets in flight at once: hickory allows
/// 32 requests in flight per connection, and each target costs two.
const MAX_CONCURRENT_FOLLOW_UPS: usize = 8;
/// How many distinct rejected addresses are remembered for log-once; beyond
/// this a hostile server could grow the set without bound, so they are not logged.
const MAX_REMEMBERED_REJECTIONS: usize = 1024;

/// Resolves [`Target`]s with hickory-resolver, one uncached lookup per call.
///
/// Built with [`HickoryResolver::builder`]. Cloning is cheap and clones share
/// the underlying connections.
///
/// What one [`resolve`](Resolve::resolve) does:
/// - an IP literal resolves to itself, with no query and a TTL of an hour;
/// - `host:port` looks up A and AAAA in parallel; every address becomes
///   `ip:port`; the TTL is the shortest among the records used;
/// - an SRV target looks up SRV, takes each record's addresses from the
///   additional section when the server sent them there, or else looks the
///   record's target up; each address gets its record's port;
/// - names ending in `.svc.<cluster domain>` are queried as absolute names,
///   one query per record type; other names follow resolv.conf's `search` and
///   `ndots` rules as glibc does;
/// - a target with a nameserver (`dns://IP:PORT/…`) is looked up there (UDP
///   and TCP) with the same search rules;
/// - answers are vetted: unspecified, multicast and broadcast addresses are
///   dropped, and link-local ones unless allowed; each dropped address is logged
///   once at warn. At most `max_endpoints` endpoints are returned.
///
/// Errors are classified for the refresh loop: NXDOMAIN, an empty answer or an
/// answer with nothing usable is [`ResolveError::NoRecords`] (with the SOA's
/// negative TTL when the server sent one); timeouts, SERVFAIL, REFUSED and
/// everything else are transient.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: Arc<Inner>,
}

/// Builds a [`HickoryResolver`]; every setting has a documented default.
#[derive(Debug, Clone)]
pub struct HickoryResolverBuilder {
    source: ConfigSource,
    nameservers: Vec<SocketAddr>,
    cluster_domain: String,
    timeout: Duration,
    attempts: usize,
    allow_link_local: bool,
    max_endpoints: usize,
}

/// Why a [`HickoryResolverBuilder`] could not build a resolver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolverConfigError {
    /// The system resolver configuration could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file that could not be read.
        path: String,
        /// Why.
        message: String,
    },
    /// Neither the configuration nor the builder names a nameserver.
    #[error("no nameserver configured (resolv.conf has none and none was given)")]
    NoNameservers,
    /// The cluster domain is not a valid DNS name.
    #[error("invalid cluster domain {0:?}")]
    ClusterDomain(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(&'static str),
    /// hickory rejected the configuration.
    #[error("cannot build the hickory resolver: {0}")]
    Hickory(String),
}

/// Where the search list, `ndots` and default nameservers come from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// `/etc/resolv.conf`, read at build time.
    System,
    /// resolv.conf text given to the builder.
    Text(String),
}

/// What [`parse_resolv_conf`] keeps from resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<SocketAddr>,
    search: Vec<Name>,
    ndots: usize,
}

struct Inner {
    /// Resolver for targets without their own nameserver.
    default: TokioResolver,
    /// Resolvers for `dns://IP:PORT/…` targets, built on first use. Off the
    /// request path: only the refresh loop resolves.
    per_nameserver: Mutex<HashMap<SocketAddr, TokioResolver>>,
    search: Vec<Name>,
    ndots: usize,
    /// `.svc.<cluster domain>`, lowercase: names ending in it skip the search list.
    cluster_suffix: String,
    timeout: Duration,
    attempts: usize,
    allow_link_local: bool,
    max_endpoints: usize,
    /// Addresses already logged as rejected.
    rejected: Mutex<HashSet<IpAddr>>,
}

/// The result of asking about one candidate name.
enum Outcome<T> {
    /// The name has records of the asked type.
    Found(T),
    /// NXDOMAIN or NODATA, with the negative TTL when the server sent an SOA.
    Empty(Option<u32>),
    /// Anything transient.
    Failed(Failure),
}

/// A transient failure, named once the target name is known.
#[derive(Debug, Clone)]
enum Failure {
    Timeout,
    Server(ResponseCode),
    Other(String),
}

/// An address with the TTL of the record it came from.
type TtlAddr = (IpAddr, u32);

/// SRV records (target, port, ttl) and the glue that came with them.
struct SrvAnswer {
    records: Vec<(Name, u16, u32)>,
    glue: Vec<(Name, IpAddr, u32)>,
}

// ===== impl HickoryResolver =====

impl HickoryResolver {
    /// A builder with the defaults: system configuration, cluster domain
    /// `cluster.local`, 2 s timeout, 2 attempts, link-local addresses refused,
    /// at most 10 000 endpoints.
    pub fn builder() -> HickoryResolverBuilder {
        HickoryResolverBuilder::default()
    }
}

impl Resolve for HickoryResolver {
    fn resolve(&self, target: &Target) -> ResolveFuture {
        let inner = self.inner.clone();
        let target = target.clone();
        Box::pin(async move { inner.resolve(&target).await })
    }
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("search", &self.inner.search)
            .field("ndots", &self.inner.ndots)
            .field("cluster_suffix", &self.inner.cluster_suffix)
            .field("timeout", &self.inner.timeout)
            .field("attempts", &self.inner.attempts)
            .field("allow_link_local", &self.inner.allow_link_local)
            .field("max_endpoints", &self.inner.max_endpoints)
            .finish_non_exhaustive()
    }
}

// ===== impl HickoryResolverBuilder =====

impl Default for HickoryResolverBuilder {
    fn default() -> Self {
        Self {
            source: ConfigSource::System,
            nameservers: Vec::new(),
            cluster_domain: "cluster.local".to_owned(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            allow_link_local: false,
            max_endpoints: 10_000,
        }
    }
}

impl HickoryResolverBuilder {
    /// Sends queries to `addr` over UDP, and over TCP when an answer is
    /// truncated. Repeatable; when given, these replace the nameservers of the
    /// system configuration or [`resolv_conf`](Self::resolv_conf), while
    /// their search list and `ndots` still apply.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameservers.push(addr);
        self
    }

    /// Reads the search list, `ndots` and nameservers from `/etc/resolv.conf`
    /// when the resolver is built. The default.
    pub fn system_config(mut self) -> Self {
        self.source = ConfigSource::System;
        self
    }

    /// Takes the search list, `ndots` and nameservers from resolv.conf text
    /// instead of `/etc/resolv.conf`, e.g. a Kubernetes pod's:
    ///
    /// ```text
    /// search default.svc.cluster.local svc.cluster.local cluster.local
    /// nameserver 10.96.0.10
    /// options ndots:5
    /// ```
    ///
    /// Understood: `nameserver`, `search`, `domain` (the last of `search` and
    /// `domain` wins, as in glibc) and `options ndots:N`. Timeouts and
    /// attempts come from this builder, not from the file.
    pub fn resolv_conf(mut self, text: &str) -> Self {
        self.source = ConfigSource::Text(text.to_owned());
        self
    }

    /// The cluster domain \[`cluster.local`\]: names ending in
    /// `.svc.<cluster domain>` are looked up as absolute names.
    pub fn cluster_domain(mut self, domain: &str) -> Self {
        self.cluster_domain = domain.to_owned();
        self
    }

    /// How long one query attempt waits for an answer [2 s].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a query is sent before its lookup fails \[2\], as
    /// resolv.conf's `attempts`. At least 1.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// Whether link-local answers (169.254.0.0/16, fe80::/10) are used
    /// [false]: the cloud metadata endpoint lives there, so they are refused
    /// unless a deployment really puts pods on link-local addresses.
    pub fn allow_link_local(mut self, allow: bool) -> Self {
        self.allow_link_local = allow;
        self
    }

    /// The most endpoints one resolution returns [10 000]; larger answers are
    /// cut (keeping the lowest addresses, so that every refresh keeps the same
    /// ones) with a warning.
    pub fn max_endpoints(mut self, max: usize) -> Self {
        self.max_endpoints = max;
        self
    }

    /// Reads the configuration and builds the resolver.
    pub fn build(self) -> Result<HickoryResolver, ResolverConfigError> {
        if self.attempts == 0 {
            return Err(ResolverConfigError::Invalid("attempts must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(ResolverConfigError::Invalid("timeout must not be zero"));
        }
        if self.max_endpoints == 0 {
            return Err(ResolverConfigError::Invalid(
                "max_endpoints must be at least 1",
            ));
        }
        let domain = self
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() || Name::from_ascii(&domain).is_err() {
            return Err(ResolverConfigError::ClusterDomain(self.cluster_domain));
        }

        let conf = match &self.source {
            ConfigSource::System => {
                let text = std::fs::read_to_string(RESOLV_CONF_PATH).map_err(|e| {
                    ResolverConfigError::Read {
                        path: RESOLV_CONF_PATH.to_owned(),
                        message: e.to_string(),
                    }
                })?;
                parse_resolv_conf(&text)
            }
            ConfigSource::Text(text) => parse_resolv_conf(text),
        };
        let nameservers = if self.nameservers.is_empty() {
            conf.nameservers
        } else {
            self.nameservers
        };
        if nameservers.is_empty() {
            return Err(ResolverConfigError::NoNameservers);
        }

        let attempts = self.attempts;
        let timeout = self.timeout;
        let default = hickory_resolver(&nameservers, timeout, attempts)?;
        Ok(HickoryResolver {
            inner: Arc::new(Inner {
                default,
                per_nameserver: Mutex::new(HashMap::new()),
                search: conf.search,
                ndots: conf.ndots,
                cluster_suffix: format!(".svc.{domain}"),
                timeout,
                attempts,
                allow_link_local: self.allow_link_local,
                max_endpoints: self.max_endpoints,
                rejected: Mutex::new(HashSet::new()),
            }),
        })
    }
}

// ===== impl Inner =====

impl Inner {
    async fn resolve(&self, target: &Target) -> Result<Resolution, ResolveError> {
        let host = match target.host() {
            Host::Ip(ip) => return resolve_ip_literal(*ip, target.port()),
            Host::Name(name) => name.as_str(),
        };
        let resolver = self.resolver_for(target.nameserver(), host)?;
        let candidates = self.candidates(host)?;
        let (endpoints, ttl) = match target.port() {
            Some(port) => {
                self.resolve_addresses(&resolver, host, &candidates, port)
                    .await?
            }
            None => self.resolve_srv(&resolver, host, &candidates).await?,
        };
        let endpoints = self.cap(host, endpoints);
        if endpoints.is_empty() {
            return Err(ResolveError::NoRecords {
                name: host.to_owned(),
                negative_ttl: None,
            });
        }
        Ok(Resolution {
            endpoints,
            ttl: Duration::from_secs(u64::from(ttl)),
        })
    }

    /// `host:port`: the first candidate name with addresses wins.
    async fn resolve_addresses(
        &self,
        resolver: &TokioResolver,
        host: &str,
        candidates: &[Name],
        port: u16,
    ) -> Result<(BTreeSet<SocketAddr>, u32), ResolveError> {
        let mut outcomes = Vec::new();
        for candidate in candidates {
            let outcome = lookup_addresses(resolver, candidate.clone()).await;
            let found = matches!(outcome, Outcome::Found(_));
            outcomes.push(outcome);
            if found {
                break;
            }
        }
        let addresses = settle(host, outcomes)?;
        Ok(vet_addresses(addresses, port, |ip| self.usable(host, ip)))
    }

    /// SRV: the first candidate name with SRV records wins; addresses come
    /// from glue, or else from follow-up lookups of the targets.
    async fn resolve_srv(
        &self,
        resolver: &TokioResolver,
        host: &str,
        candidates: &[Name],
    ) -> Result<(BTreeSet<SocketAddr>, u32), ResolveError> {
        let mut outcomes = Vec::new();
        for candidate in candidates {
            let outcome = lookup_srv(resolver, candidate.clone()).await;
            let found = matches!(outcome, Outcome::Found(_));
            outcomes.push(outcome);
            if found {
                break;
            }
        }
        let answer = settle(host, outcomes)?;

        let mut ttl = u32::MAX;
        let mut addresses: HashMap<Name, Vec<TtlAddr>> = HashMap::new();
        for (name, ip, record_ttl) in answer.glue {
            addresses.entry(name).or_default().push((ip, record_ttl));
        }
        let missing: BTreeSet<Name> = answer
            .records
            .iter()
            .map(|(target, _, _)| target.clone())
            .filter(|target| !addresses.contains_key(target))
            .take(self.max_endpoints)
            .collect();
        let follow_ups: Vec<(Name, Outcome<Vec<TtlAddr>>)> = stream::iter(missing)
            .map(|target| async move {
                let outcome = lookup_addresses(resolver, target.clone()).await;
                (target, outcome)
            })
            .buffer_unordered(MAX_CONCURRENT_FOLLOW_UPS)
            .collect()
            .await;
        for (target, outcome) in follow_ups {
            match outcome {
                Outcome::Found(found) => {
                    addresses.insert(target, found);
                }
                Outcome::Empty(_) => {
                    tracing::debug!(name = host, srv.target = %target, "SRV target has no addresses");
                }
                Outcome::Failed(failure) => return Err(failure.into_error(host)),
            }
        }

        let mut endpoints = BTreeSet::new();
        for (target, port, srv_ttl) in &answer.records {
            let Some(found) = addresses.get(target) else {
                continue;
            };
            for &(ip, address_ttl) in found {
                if self.usable(host, ip) {
                    endpoints.insert(SocketAddr::new(ip, *port));
                    ttl = ttl.min(*srv_ttl).min(address_ttl);
                }
            }
        }
        if ttl == u32::MAX {
            ttl = 0;
        }
        Ok((endpoints, ttl))
    }

    /// The names to try for `host`, in order, all absolute.
    fn candidates(&self, host: &str) -> Result<Vec<Name>, ResolveError> {
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
        let searched = self.search.iter().filter_map(|domain| {
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

    /// The resolver for a target's own nameserver, or the default one.
    fn resolver_for(
        &self,
        nameserver: Option<SocketAddr>,
        host: &str,
    ) -> Result<TokioResolver, ResolveError> {
        let Some(addr) = nameserver else {
            return Ok(self.default.clone());
        };
        let mut map = lock(&self.per_nameserver);
        if let Some(resolver) = map.get(&addr) {
            return Ok(resolver.clone());
        }
        let resolver = hickory_resolver(&[addr], self.timeout, self.attempts).map_err(|e| {
            ResolveError::Other {
                name: host.to_owned(),
                message: e.to_string(),
            }
        })?;
        map.insert(addr, resolver.clone());
        Ok(resolver)
    }

    /// True if `ip` may be used as an endpoint; logs each rejected address once.
    fn usable(&self, host: &str, ip: IpAddr) -> bool {
        let Some(reason) = rejection(ip, self.allow_link_local) else {
            return true;
        };
        let mut rejected = lock(&self.rejected);
        if rejected.len() < MAX_REMEMBERED_REJECTIONS && rejected.insert(ip) {
            tracing::warn!(name = host, address = %ip, reason, "ignoring unusable address in DNS answer");
        }
        false
    }

    /// Keeps at most `max_endpoints`, the lowest addresses, so the cut is stable.
    fn cap(&self, host: &str, mut endpoints: BTreeSet<SocketAddr>) -> BTreeSet<SocketAddr> {
        if endpoints.len() > self.max_endpoints {
            tracing::warn!(
                name = host,
                answered = endpoints.len(),
                max_endpoints = self.max_endpoints,
                "DNS answer has more endpoints than max_endpoints; using the lowest addresses"
            );
            endpoints = cap_endpoints(endpoints, self.max_endpoints);
        }
        endpoints
    }
}

// ===== impl Failure =====

impl Failure {
    fn into_error(self, name: &str) -> ResolveError {
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

// ===== lookups =====

/// A and AAAA of one absolute name, in parallel. Both must answer (with
/// records or NXDOMAIN/NODATA): if either fails, the name fails, so that a
/// lost AAAA answer never drops the IPv6 endpoints from a good set.
async fn lookup_addresses(resolver: &TokioResolver, name: Name) -> Outcome<Vec<TtlAddr>> {
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
            Err(error) => match classify(error) {
                Outcome::Empty(ttl) => negative_ttl = min_option(negative_ttl, ttl),
                Outcome::Failed(failure) => return Outcome::Failed(failure),
                Outcome::Found(never) => match never {},
            },
        }
    }
    if addresses.is_empty() {
        Outcome::Empty(negative_ttl)
    } else {
        Outcome::Found(addresses)
    }
}

/// SRV records of one absolute name, with any A/AAAA glue for their targets.
async fn lookup_srv(resolver: &TokioResolver, name: Name) -> Outcome<SrvAnswer> {
    let lookup = match resolver.lookup(name, RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(error) => {
            return match classify(error) {
                Outcome::Found(never) => match never {},
                Outcome::Empty(ttl) => Outcome::Empty(ttl),
                Outcome::Failed(failure) => Outcome::Failed(failure),
            };
        }
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
        return Outcome::Empty(None);
    }
    let glue = lookup
        .additionals()
        .iter()
        .filter_map(|record| {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            Some((absolute(&record.name), ip, record.ttl))
        })
        .collect();
    Outcome::Found(SrvAnswer { records, glue })
}

/// The A/AAAA addresses in a lookup's answer section, with their TTLs; a
/// CNAME in the chain lowers the TTL of what it points to.
fn answer_addresses(answers: &[Record]) -> Vec<TtlAddr> {
    let chain_ttl = answers
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .map(|r| r.ttl)
        .min()
        .unwrap_or(u32::MAX);
    answers
        .iter()
        .filter_map(|record| {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            Some((ip, record.ttl.min(chain_ttl)))
        })
        .collect()
}

/// The usable addresses as endpoints on `port`, and the shortest TTL among
/// their records (0 when none is usable).
fn vet_addresses(
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
    endpoints.into_iter().take(max).collect()
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
    let message = Message::from_vec(bytes).ok()?;
    let addresses = answer_addresses(&message.answers);
    let (endpoints, ttl) = vet_addresses(addresses, port, |ip| {
        rejection(ip, allow_link_local).is_none()
    });
    Some((cap_endpoints(endpoints, max_endpoints.max(1)), ttl))
}

/// Sorts a hickory error into no-records or a transient failure.
fn classify(error: NetError) -> Outcome<std::convert::Infallible> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {
                Outcome::Empty(no_records.negative_ttl)
            }
            code => Outcome::Failed(Failure::Server(code)),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Outcome::Failed(Failure::Server(code)),
        NetError::Timeout => Outcome::Failed(Failure::Timeout),
        other => Outcome::Failed(Failure::Other(other.to_string())),
    }
}

/// Turns the outcomes of a candidate walk into the answer, as glibc's
/// `res_search` does: the first name with records wins; if none has any, a
/// transient failure on any name makes the lookup transient (it might have
/// been the name with the records), otherwise it is NoRecords with the last
/// negative TTL.
fn settle<T>(host: &str, outcomes: Vec<Outcome<T>>) -> Result<T, ResolveError> {
    let mut failure = None;
    let mut negative_ttl = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Found(found) => return Ok(found),
            Outcome::Empty(ttl) => negative_ttl = ttl.or(negative_ttl),
            Outcome::Failed(f) => {
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

// ===== helpers =====

/// Builds a hickory resolver for `nameservers`: UDP with TCP on truncation,
/// no cache, no hosts file, both address families. Names are always given to
/// it absolute, so its own search settings do not matter.
fn hickory_resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
) -> Result<TokioResolver, ResolverConfigError> {
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            server
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), servers);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = timeout;
    // hickory counts retries after the first try; resolv.conf counts tries.
    options.attempts = attempts.saturating_sub(1);
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Never;
    options.edns0 = true;
    builder
        .build()
        .map_err(|e| ResolverConfigError::Hickory(e.to_string()))
}

/// An IP literal needs no DNS.
fn resolve_ip_literal(ip: IpAddr, port: Option<u16>) -> Result<Resolution, ResolveError> {
    match port {
        Some(port) => Ok(Resolution {
            endpoints: BTreeSet::from([SocketAddr::new(ip, port)]),
            ttl: IP_LITERAL_TTL,
        }),
        None => Err(ResolveError::Other {
            name: ip.to_string(),
            message: "an SRV lookup needs a DNS name, not an IP address".to_owned(),
        }),
    }
}

/// Why `ip` must not be used as an endpoint, if it must not.
fn rejection(ip: IpAddr, allow_link_local: bool) -> Option<&'static str> {
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

/// Parses the parts of resolv.conf this resolver uses; unknown lines and bad
/// entries are skipped with a warning, as the C library does.
fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        search: Vec::new(),
        ndots: DEFAULT_NDOTS,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scope suffix (fe80::1%eth0) cannot be kept in a SocketAddr.
                let ip = words.next().map(|w| w.split('%').next().unwrap_or(w));
                match ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
                    Some(ip) => conf.nameservers.push(SocketAddr::new(ip, DNS_PORT)),
                    None => tracing::warn!(line, "resolv.conf: ignoring bad nameserver line"),
                }
            }
            Some(keyword @ ("search" | "domain")) => {
                let words: Vec<&str> = if keyword == "domain" {
                    words.take(1).collect()
                } else {
                    words.collect()
                };
                conf.search = words
                    .into_iter()
                    .filter(|w| *w != "." && *w != "--")
                    .filter_map(|w| match Name::from_ascii(w.trim_end_matches('.')) {
                        Ok(mut name) => {
                            name.set_fqdn(true);
                            Some(name)
                        }
                        Err(error) => {
                            tracing::warn!(domain = w, %error, "resolv.conf: ignoring bad search domain");
                            None
                        }
                    })
                    .collect();
            }
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:") {
                        match n.parse::<usize>() {
                            Ok(n) => conf.ndots = n.min(MAX_NDOTS),
                            Err(_) => tracing::warn!(option, "resolv.conf: ignoring bad ndots"),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// The absolute, lowercase form of `name`, for comparing SRV targets with glue owners.
fn absolute(name: &Name) -> Name {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name
}

fn min_option(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn response_codes_read_like_dig() {
        assert_eq!(response_code_name(ResponseCode::ServFail), "SERVFAIL");
        assert_eq!(response_code_name(ResponseCode::Refused), "REFUSED");
    }
}
