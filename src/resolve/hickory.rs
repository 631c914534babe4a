//! The hickory-backed [`Resolve`](super::Resolve): one uncached lookup per call, answers vetted.
//!
//! ```text
//! Target ──► candidate names ──► A + AAAA (or SRV, then glue / follow-ups) ──► vet addresses ──► Resolution
//!            (search.rs: cluster  (addresses.rs: both must answer            (vet.rs: drop unspecified,
//!             names one absolute   or fail together; srv.rs)                  multicast, broadcast,
//!             name; others                                                    link-local; cap)
//!             resolv.conf rules)
//! ```
//!
//! This file holds the resolver, its builder and the order of one lookup.
//! hickory does the wire work (UDP, TCP on truncation, retries, timeouts); its
//! cache is off because the refresh loop schedules lookups from the TTL
//! itself, and its search list is unused (names reach it absolute) because
//! `search.rs` walks the list itself. Errors are sorted in `classify.rs`;
//! resolv.conf is read in `config.rs`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;

use super::addresses::lookup_addresses;
use super::config::ConfigSource;
use super::search::{Search, first_found};
use super::srv::resolve_srv;
use super::vet::{Vetter, vet_addresses};
use super::{Resolution, Resolve, ResolveFuture};
use crate::error::ResolveError;
use crate::sync::lock;
use crate::target::{Host, Target};

/// The TTL reported for IP literals, which never change; the refresh loop
/// clamps it to its `max_refresh`.
const IP_LITERAL_TTL: Duration = Duration::from_secs(3600);

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

struct Inner {
    /// Resolver for targets without their own nameserver.
    default: TokioResolver,
    /// Resolvers for `dns://IP:PORT/…` targets, built on first use. Off the
    /// request path: only the refresh loop resolves.
    per_nameserver: Mutex<HashMap<SocketAddr, TokioResolver>>,
    search: Search,
    timeout: Duration,
    attempts: usize,
    vetter: Vetter,
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
            .field("search", &self.inner.search.domains)
            .field("ndots", &self.inner.search.ndots)
            .field("cluster_suffix", &self.inner.search.cluster_suffix)
            .field("timeout", &self.inner.timeout)
            .field("attempts", &self.inner.attempts)
            .field("allow_link_local", &self.inner.vetter.allow_link_local())
            .field("max_endpoints", &self.inner.vetter.max_endpoints())
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

        let conf = self.source.read()?;
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
                search: Search {
                    domains: conf.search,
                    ndots: conf.ndots,
                    cluster_suffix: format!(".svc.{domain}"),
                },
                timeout,
                attempts,
                vetter: Vetter::new(self.allow_link_local, self.max_endpoints),
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
        let candidates = self.search.candidates(host)?;
        let (endpoints, ttl) = match target.port() {
            Some(port) => {
                let lookup = |name| lookup_addresses(&resolver, name);
                let addresses = first_found(host, &candidates, lookup).await?;
                vet_addresses(addresses, port, |ip| self.vetter.usable(host, ip))
            }
            None => resolve_srv(&resolver, host, &candidates, &self.vetter).await?,
        };
        let endpoints = self.vetter.cap(host, endpoints);
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
