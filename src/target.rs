//! What users write to name a service: parsing and validation of [`Target`].
//!
//! ```text
//! [dns://[IP:PORT]/] ( host:port | [ipv6]:port | ipv4:port | _service._proto.host )
//!  └ scheme + optional nameserver ┘  └ A/AAAA lookup, or none for IPs ┘  └ SRV lookup ┘
//! ```
//!
//! Parsing is strict: the string must be exactly one of the accepted forms,
//! with no surrounding whitespace, and every failure is a [`TargetError`]
//! naming the problem. Names are normalised (ASCII lowercase, no trailing dot)
//! so that two spellings of one service compare equal, and [`Display`] writes
//! the normalised form, which parses back to the same [`Target`].
//!
//! [`Display`]: fmt::Display

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::error::TargetError;

/// Longest name in text form, without a trailing dot (RFC 1035 §2.3.4: 255
/// octets on the wire, which is 253 characters of text).
const MAX_NAME_LEN: usize = 253;

/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, validated per RFC 1123, without a trailing dot.
    ///
    /// Always ASCII lowercase. For an SRV target this is the whole SRV name,
    /// `_service._proto.host`.
    Name(String),
    /// An IP literal: resolves to itself, with no DNS query.
    Ip(IpAddr),
}

/// A service to balance over, as users write it.
///
/// Accepted forms:
/// - `host:port` — e.g. `web.default.svc.cluster.local:8080`
/// - `IP:port` — e.g. `10.0.0.1:8080`, `[::1]:8080` (IPv6 in brackets); no DNS lookup
/// - `dns:///host:port` — the gRPC spelling of the same
/// - `dns://IP:PORT/host:port` — use the nameserver at `IP:PORT`
///   (e.g. `dns://10.96.0.10:53/web:80`, `dns://[::1]:5353/web:80`)
/// - `_service._proto.host` (optionally after `dns:///` or `dns://IP:PORT/`) —
///   an SRV lookup, e.g. `_http._tcp.web.default.svc.cluster.local`; ports
///   come from the records, so a port here is an error
///
/// Names follow RFC 1123: labels of 1 to 63 ASCII letters, digits and
/// hyphens, not starting or ending with a hyphen, at most 253 bytes in all,
/// with one optional trailing dot. Names are case-insensitive and stored in
/// lowercase; the trailing dot is dropped. The scheme `dns` is
/// case-insensitive too. Leading or trailing whitespace is an error
/// ([`TargetError::SurroundingWhitespace`]), not trimmed.
///
/// [`Display`](fmt::Display) writes the normalised form, keeping the `dns://`
/// prefix and nameserver if they were given, and parses back to an equal
/// `Target`.
///
/// ```
/// use headless_lb::Target;
/// use headless_lb::target::Host;
///
/// let t: Target = "dns://10.96.0.10:53/Web.Default.svc.cluster.local.:8080".parse()?;
/// assert_eq!(t.host(), &Host::Name("web.default.svc.cluster.local".into()));
/// assert_eq!(t.port(), Some(8080));
/// assert_eq!(t.nameserver(), Some("10.96.0.10:53".parse()?));
/// assert!(!t.is_srv());
/// assert_eq!(t.authority(), "web.default.svc.cluster.local:8080");
/// assert_eq!(t.to_string(), "dns://10.96.0.10:53/web.default.svc.cluster.local:8080");
///
/// let srv: Target = "_grpc._tcp.web.default.svc.cluster.local".parse()?;
/// assert!(srv.is_srv());
/// assert_eq!(srv.port(), None);
///
/// let err = "web.default.svc.cluster.local".parse::<Target>().unwrap_err();
/// assert!(matches!(err, headless_lb::TargetError::MissingPort { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: Host,
    /// `None` exactly when the target is SRV.
    port: Option<u16>,
    /// `Some` only if `dns_scheme`.
    nameserver: Option<SocketAddr>,
    /// Whether the user wrote `dns://`; kept so that `Display` round-trips.
    dns_scheme: bool,
}

// ===== impl Target =====

impl Target {
    /// A `host:port` target, validated as if parsed.
    ///
    /// A [`Host::Name`] is normalised (lowercase, no trailing dot) and, if it
    /// is an IP address written as a name, turned into [`Host::Ip`]. SRV names
    /// are not accepted here: parse `_service._proto.host` instead.
    ///
    /// ```
    /// use headless_lb::Target;
    /// use headless_lb::target::Host;
    ///
    /// let t = Target::new(Host::Name("Web.default.".into()), 80)?;
    /// assert_eq!(t.to_string(), "web.default:80");
    /// assert!(Target::new(Host::Name("web".into()), 0).is_err());
    /// # Ok::<(), headless_lb::TargetError>(())
    /// ```
    pub fn new(host: Host, port: u16) -> Result<Self, TargetError> {
        if port == 0 {
            return Err(TargetError::ZeroPort);
        }
        let host = match host {
            Host::Ip(ip) => Host::Ip(ip),
            Host::Name(name) if name.is_empty() => {
                return Err(TargetError::MissingHost { input: name });
            }
            Host::Name(name) => match name.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(parse_name(&name, false)?),
            },
        };
        Ok(Self {
            host,
            port: Some(port),
            nameserver: None,
            dns_scheme: false,
        })
    }

    /// The host: a DNS name or an IP literal.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, or `None` for an SRV target (ports come from the records).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// True for an SRV target (`_service._proto.host`).
    pub fn is_srv(&self) -> bool {
        self.port.is_none()
    }

    /// The nameserver named in a `dns://IP:PORT/…` target.
    pub fn nameserver(&self) -> Option<SocketAddr> {
        self.nameserver
    }

    /// What an HTTP `Host` header or HTTP/2 `:authority` carries for this
    /// target: `host:port`, with an IPv6 literal in brackets (`[::1]:8080`).
    ///
    /// For an SRV target, whose port differs per record, it is the host name
    /// alone without the `_service._proto.` labels, since those name the SRV
    /// record, not the service: `_http._tcp.web.default` gives `web.default`.
    pub fn authority(&self) -> String {
        match (self.port, &self.host) {
            (Some(port), host) => HostPort(host, port).to_string(),
            (None, Host::Name(name)) => srv_host(name).to_owned(),
            // Unreachable by construction (SRV targets are names), but an IP
            // is still the right answer.
            (None, Host::Ip(ip)) => ip.to_string(),
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if s.trim() != s {
            return Err(TargetError::SurroundingWhitespace {
                input: s.to_owned(),
            });
        }

        let (dns_scheme, nameserver, rest) = match s.split_once("://") {
            None => (false, None, s),
            Some((scheme, _)) if !scheme.eq_ignore_ascii_case("dns") => {
                return Err(TargetError::UnknownScheme {
                    scheme: scheme.to_owned(),
                });
            }
            Some((_, after_scheme)) => {
                let Some((authority, path)) = after_scheme.split_once('/') else {
                    return Err(TargetError::MissingPath {
                        input: s.to_owned(),
                    });
                };
                let nameserver = match authority {
                    "" => None,
                    ns => Some(parse_nameserver(ns)?),
                };
                (true, nameserver, path)
            }
        };

        let (host, port) = if rest.starts_with('_') {
            if let Some((name, port)) = rest.rsplit_once(':') {
                return Err(TargetError::PortWithSrv {
                    name: name.to_owned(),
                    port: port.to_owned(),
                });
            }
            (Host::Name(parse_name(rest, true)?), None)
        } else {
            let (host, port) = parse_host_port(rest, s)?;
            (host, Some(port))
        };

        Ok(Self {
            host,
            port,
            nameserver,
            dns_scheme,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.nameserver {
            Some(ns) => write!(f, "dns://{ns}/")?,
            None if self.dns_scheme => f.write_str("dns:///")?,
            None => {}
        }
        match self.port {
            Some(port) => write!(f, "{}", HostPort(&self.host, port)),
            None => match &self.host {
                Host::Name(name) => f.write_str(name),
                Host::Ip(ip) => write!(f, "{ip}"),
            },
        }
    }
}

// ===== impl HostPort =====

/// `host:port` with an IPv6 host in brackets.
struct HostPort<'a>(&'a Host, u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Host::Name(name) => write!(f, "{name}:{}", self.1),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.1),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.1),
        }
    }
}

// ===== parsing =====
//
// Only ever split at ASCII characters found with `find`/`split_once`, so that
// no slice can land inside a multi-byte character.

/// The nameserver of `dns://NAMESERVER/…`: an `IP:PORT` with a non-zero port.
fn parse_nameserver(ns: &str) -> Result<SocketAddr, TargetError> {
    match ns.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(TargetError::NameserverZeroPort {
            nameserver: ns.to_owned(),
        }),
        Ok(addr) => Ok(addr),
        Err(_) => {
            let bare = ns
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(ns);
            if bare.parse::<IpAddr>().is_ok() {
                Err(TargetError::NameserverMissingPort {
                    nameserver: ns.to_owned(),
                })
            } else {
                Err(TargetError::InvalidNameserver {
                    nameserver: ns.to_owned(),
                })
            }
        }
    }
}

/// A non-SRV `host:port`, `IPv4:port` or `[IPv6]:port`; `input` is the whole
/// target, for error messages.
fn parse_host_port(hp: &str, input: &str) -> Result<(Host, u16), TargetError> {
    if hp.is_empty() {
        return Err(TargetError::MissingHost {
            input: input.to_owned(),
        });
    }

    if let Some(bracketed) = hp.strip_prefix('[') {
        let invalid = || TargetError::InvalidIpv6 {
            host: hp.to_owned(),
        };
        let (inside, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        let ip = inside.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => "",
            None => return Err(invalid()),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), parse_port(port, input)?));
    }

    let Some((host, port)) = hp.rsplit_once(':') else {
        return Err(TargetError::MissingPort {
            input: input.to_owned(),
        });
    };
    if host.contains(':') && (hp.parse::<Ipv6Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok()) {
        return Err(TargetError::UnbracketedIpv6 {
            host: hp.to_owned(),
        });
    }
    if host.is_empty() {
        return Err(TargetError::MissingHost {
            input: input.to_owned(),
        });
    }
    let host = match host.parse::<Ipv4Addr>() {
        Ok(ip) => Host::Ip(IpAddr::V4(ip)),
        Err(_) => Host::Name(parse_name(host, false)?),
    };
    Ok((host, parse_port(port, input)?))
}

/// A decimal port from 1 to 65535. Only ASCII digits: `u16::from_str` alone
/// would also take `+80`.
fn parse_port(port: &str, input: &str) -> Result<u16, TargetError> {
    if port.is_empty() {
        return Err(TargetError::MissingPort {
            input: input.to_owned(),
        });
    }
    let invalid = || TargetError::InvalidPort {
        port: port.to_owned(),
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(0) => Err(TargetError::ZeroPort),
        Ok(port) => Ok(port),
        Err(_) => Err(invalid()),
    }
}

/// Validates a DNS name per RFC 1123 and returns it normalised: lowercase,
/// without the trailing dot. With `srv`, the first two labels must be
/// `_service` and `_proto` (RFC 2782), followed by at least one host label.
fn parse_name(raw: &str, srv: bool) -> Result<String, TargetError> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err(TargetError::EmptyLabel {
            name: raw.to_owned(),
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TargetError::NameTooLong { len: name.len() });
    }

    let invalid_srv = || TargetError::InvalidSrvName {
        name: raw.to_owned(),
    };
    let mut labels = 0;
    let mut last = "";
    for (i, label) in name.split('.').enumerate() {
        if label.is_empty() {
            return Err(TargetError::EmptyLabel {
                name: raw.to_owned(),
            });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(TargetError::LabelTooLong {
                label: label.to_owned(),
                len: label.len(),
            });
        }
        if srv && i < 2 {
            let rest = label.strip_prefix('_').ok_or_else(invalid_srv)?;
            if rest.is_empty() {
                return Err(invalid_srv());
            }
            check_ldh(rest, label)?;
        } else {
            check_ldh(label, label)?;
        }
        labels += 1;
        last = label;
    }

    if srv && labels < 3 {
        return Err(invalid_srv());
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::NumericTopLabel {
            name: raw.to_owned(),
        });
    }
    Ok(name.to_ascii_lowercase())
}

/// Letters, digits and hyphens, no hyphen at either end. `label` is the whole
/// label, for error messages (`part` is it without an SRV `_`).
fn check_ldh(part: &str, label: &str) -> Result<(), TargetError> {
    if let Some(ch) = part
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(TargetError::InvalidCharacter {
            ch,
            label: label.to_owned(),
        });
    }
    if part.starts_with('-') || part.ends_with('-') {
        return Err(TargetError::HyphenAtLabelEdge {
            label: label.to_owned(),
        });
    }
    Ok(())
}

/// The host of a validated SRV name: everything after `_service._proto.`.
fn srv_host(name: &str) -> &str {
    name.splitn(3, '.').nth(2).unwrap_or(name)
}
