//! [`DnsServer`]: an in-process authoritative DNS server with records a test changes at runtime.
//!
//! ```text
//!  client ──UDP/TCP──► hickory Server ──► ZoneHandler (ours)
//!                      (framing, EDNS,     │ log the query, apply the Fault,
//!                       UDP truncation)    │ answer from the record map
//!                                          ▼
//!                              Arc<State> ◄── DnsServer::set_ips / set_srv / …
//! ```
//!
//! hickory-server's own `InMemoryZoneHandler` behind a `Catalog` would do most
//! of this, but it adds glue for the *first* SRV target only, and a headless
//! service's SRV answer has one target per pod. So the handler here is ours:
//! a small record map behind a lock, answered the way CoreDNS answers a
//! headless service (AA, glue for every SRV target, SOA in the authority
//! section of NXDOMAIN and NODATA answers).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::sync::lock;

/// The zone a plain [`DnsServer::start`] serves.
const CLUSTER_ORIGIN: &str = "cluster.local.";
/// Negative TTL (SOA minimum) until [`DnsServer::set_negative_ttl`]: CoreDNS's
/// default for the kubernetes plugin.
const DEFAULT_NEGATIVE_TTL: u32 = 5;
/// How long an idle TCP client connection stays open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection response buffer of hickory's TCP handler.
const TCP_RESPONSE_BUFFER: usize = 64;
/// Attempts to find a port that is free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 20;

/// How the server misbehaves; switch with [`DnsServer::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Drop every query without an answer: clients time out.
    Silent,
    /// Answer every query with SERVFAIL.
    ServFail,
    /// Answer every query with REFUSED.
    Refused,
    /// Answer every query with NXDOMAIN (and the zone's SOA, for the negative TTL).
    NxDomain,
}

/// An in-process authoritative DNS server on 127.0.0.1, UDP and TCP on one random port.
///
/// Serves one zone (`cluster.local.` unless started with
/// [`start_with_origin`](Self::start_with_origin)) from records that the test
/// replaces while clients run. Every query is logged, so tests can assert how
/// many queries a client sent and for which names. Names are given without
/// or with the trailing dot, in any case.
///
/// Answers follow what CoreDNS does for a headless service: authoritative,
/// A/AAAA and SRV records with the TTL given, A/AAAA glue in the additional
/// section for every SRV target inside the zone, NXDOMAIN for names that do not
/// exist and NODATA (empty NOERROR) for names that exist without the asked
/// type, both with the zone's SOA so clients learn the negative TTL. Queries
/// for names outside the zone are REFUSED. UDP answers larger than the
/// client's EDNS buffer (512 bytes without EDNS) are truncated with the TC bit,
/// so clients must retry over TCP to see large answers.
///
/// Dropping the server (or [`shutdown`](Self::shutdown)) stops it.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    server: Server<ZoneHandler>,
}

/// Shared between the [`DnsServer`] handle and its request handler.
struct State {
    origin: Name,
    zone: Mutex<Zone>,
    fault: Mutex<Fault>,
    /// Faults for one record type, which win over `fault`.
    type_faults: Mutex<BTreeMap<RecordType, Fault>>,
    log: Mutex<Vec<(String, RecordType)>>,
}

/// The zone's records, keyed by lowercase absolute owner name and type.
struct Zone {
    records: BTreeMap<(Name, RecordType), Vec<Record>>,
    /// SRV owners whose answers carry no glue.
    without_glue: BTreeSet<Name>,
    negative_ttl: u32,
    serial: u32,
}

/// hickory-server's view of [`State`].
struct ZoneHandler {
    state: Arc<State>,
}

// ===== impl DnsServer =====

impl DnsServer {
    /// Starts a server authoritative for `cluster.local.` on 127.0.0.1 with a random port.
    ///
    /// Must be called inside a tokio runtime; the server runs on it as
    /// background tasks.
    pub async fn start() -> io::Result<Self> {
        Self::start_with_origin(CLUSTER_ORIGIN).await
    }

    /// Starts a server authoritative for `origin` (e.g. `"example.test"`).
    pub async fn start_with_origin(origin: &str) -> io::Result<Self> {
        let origin = Name::from_str(origin)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_lowercase();
        let mut origin = origin;
        origin.set_fqdn(true);

        let (udp, tcp) = bind_udp_and_tcp().await?;
        let addr = udp.local_addr()?;

        let state = Arc::new(State {
            origin,
            zone: Mutex::new(Zone {
                records: BTreeMap::new(),
                without_glue: BTreeSet::new(),
                negative_ttl: DEFAULT_NEGATIVE_TTL,
                serial: 1,
            }),
            fault: Mutex::new(Fault::None),
            type_faults: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let mut server = Server::new(ZoneHandler {
            state: state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The address clients send queries to (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone this server is authoritative for, as an absolute name (`cluster.local.`).
    pub fn origin(&self) -> String {
        self.state.origin.to_ascii()
    }

    /// Replaces the A and AAAA records of `name` with `ips` (A for IPv4, AAAA
    /// for IPv6), each with `ttl_secs`. An empty `ips` removes them.
    ///
    /// # Panics
    ///
    /// Panics if `name` is not a valid name inside the zone.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr], ttl_secs: u32) {
        let records: Vec<(IpAddr, u32)> = ips.iter().map(|ip| (*ip, ttl_secs)).collect();
        self.set_ip_records(name, &records);
    }

    /// Like [`set_ips`](Self::set_ips), with a TTL per record, e.g. to give
    /// the A and AAAA sets different TTLs.
    ///
    /// # Panics
    ///
    /// Panics if `name` is not a valid name inside the zone.
    pub fn set_ip_records(&self, name: &str, records: &[(IpAddr, u32)]) {
        let owner = self.owner(name);
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for &(ip, ttl_secs) in records {
            match ip {
                IpAddr::V4(ip) => {
                    v4.push(Record::from_rdata(owner.clone(), ttl_secs, RData::A(A(ip))))
                }
                IpAddr::V6(ip) => v6.push(Record::from_rdata(
                    owner.clone(),
                    ttl_secs,
                    RData::AAAA(AAAA(ip)),
                )),
            }
        }
        let mut zone = lock(&self.state.zone);
        zone.replace(&owner, RecordType::A, v4);
        zone.replace(&owner, RecordType::AAAA, v6);
    }

    /// Replaces the SRV records of `name` with one record per
    /// `(priority, weight, port, target)`, each with `ttl_secs`. An empty
    /// `records` removes them.
    ///
    /// Targets are absolute names (a trailing dot is optional). Answers carry
    /// the A/AAAA records of every target that is inside the zone as glue in
    /// the additional section; use [`set_srv_without_glue`](Self::set_srv_without_glue)
    /// to make clients look the targets up themselves.
    ///
    /// # Panics
    ///
    /// Panics if `name` or a target is not a valid name, or `name` is not inside the zone.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl_secs: u32) {
        self.set_srv_records(name, records, ttl_secs, true);
    }

    /// Like [`set_srv`](Self::set_srv), but answers for `name` carry no glue:
    /// a client must send follow-up A/AAAA queries for the targets.
    ///
    /// # Panics
    ///
    /// As [`set_srv`](Self::set_srv).
    pub fn set_srv_without_glue(
        &self,
        name: &str,
        records: &[(u16, u16, u16, &str)],
        ttl_secs: u32,
    ) {
        self.set_srv_records(name, records, ttl_secs, false);
    }

    /// Removes every record of `name` (it answers NXDOMAIN afterwards unless
    /// names below it still exist).
    ///
    /// # Panics
    ///
    /// Panics if `name` is not a valid name inside the zone.
    pub fn remove(&self, name: &str) {
        let owner = self.owner(name);
        let mut zone = lock(&self.state.zone);
        zone.records.retain(|(n, _), _| *n != owner);
        zone.without_glue.remove(&owner);
        zone.serial = zone.serial.wrapping_add(1);
    }

    /// Sets the negative TTL: the SOA minimum and the SOA record's own TTL, so
    /// that NXDOMAIN and NODATA answers tell clients to cache them for `ttl_secs`.
    pub fn set_negative_ttl(&self, ttl_secs: u32) {
        lock(&self.state.zone).negative_ttl = ttl_secs;
    }

    /// Switches how the server answers from now on, for every query type
    /// without its own [`set_fault_for`](Self::set_fault_for).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// Switches how the server answers queries of `record_type` only, e.g.
    /// AAAA queries timing out while A queries work. `Fault::None` here
    /// answers that type normally whatever [`set_fault`](Self::set_fault) says;
    /// [`clear_type_faults`](Self::clear_type_faults) removes all of these.
    pub fn set_fault_for(&self, record_type: RecordType, fault: Fault) {
        lock(&self.state.type_faults).insert(record_type, fault);
    }

    /// Removes every [`set_fault_for`](Self::set_fault_for).
    pub fn clear_type_faults(&self) {
        lock(&self.state.type_faults).clear();
    }

    /// The number of queries received since start or [`reset_counts`](Self::reset_counts),
    /// over UDP and TCP, answered or not.
    pub fn queries(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// The number of queries for `name` (trailing dot and case ignored) of type `record_type`.
    pub fn queries_for(&self, name: &str, record_type: RecordType) -> usize {
        let name = normalize(name);
        lock(&self.state.log)
            .iter()
            .filter(|(n, t)| *n == name && *t == record_type)
            .count()
    }

    /// Every query received, in order: lowercase name without the trailing dot, and type.
    pub fn query_log(&self) -> Vec<(String, RecordType)> {
        lock(&self.state.log).clone()
    }

    /// Forgets the queries received so far.
    pub fn reset_counts(&self) {
        lock(&self.state.log).clear();
    }

    /// Stops the server and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        // Errors here only say that a socket task had already failed; the
        // server is stopped either way.
        let _ = self.server.shutdown_gracefully().await;
    }

    fn set_srv_records(
        &self,
        name: &str,
        records: &[(u16, u16, u16, &str)],
        ttl_secs: u32,
        glue: bool,
    ) {
        let owner = self.owner(name);
        let srv = records
            .iter()
            .map(|&(priority, weight, port, target)| {
                let target = absolute(target)
                    .unwrap_or_else(|e| panic!("invalid SRV target {target:?}: {e}"));
                Record::from_rdata(
                    owner.clone(),
                    ttl_secs,
                    RData::SRV(SRV::new(priority, weight, port, target)),
                )
            })
            .collect();
        let mut zone = lock(&self.state.zone);
        zone.replace(&owner, RecordType::SRV, srv);
        if glue {
            zone.without_glue.remove(&owner);
        } else {
            zone.without_glue.insert(owner);
        }
    }

    /// The absolute lowercase owner name for `name`, which must be in the zone.
    fn owner(&self, name: &str) -> Name {
        let owner = absolute(name).unwrap_or_else(|e| panic!("invalid name {name:?}: {e}"));
        assert!(
            self.state.origin.zone_of(&owner),
            "{owner} is not inside the zone {}",
            self.state.origin
        );
        owner
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("origin", &self.state.origin)
            .finish_non_exhaustive()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // The server's tasks also stop when its JoinSet is dropped; cancelling
        // first lets them close their sockets in an orderly way.
        self.server.shutdown_token().cancel();
    }
}

// ===== impl Zone =====

impl Zone {
    fn replace(&mut self, owner: &Name, record_type: RecordType, records: Vec<Record>) {
        let key = (owner.clone(), record_type);
        if records.is_empty() {
            self.records.remove(&key);
        } else {
            self.records.insert(key, records);
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// True if `name` owns records or has names below it (an empty
    /// non-terminal such as `svc.cluster.local.`): such names answer NODATA,
    /// not NXDOMAIN.
    fn name_exists(&self, origin: &Name, name: &Name) -> bool {
        name == origin
            || self
                .records
                .iter()
                .any(|((owner, _), records)| !records.is_empty() && name.zone_of(owner))
    }

    fn soa(&self, origin: &Name) -> Record {
        let ns = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone());
        Record::from_rdata(
            origin.clone(),
            self.negative_ttl,
            RData::SOA(SOA::new(
                ns,
                hostmaster,
                self.serial,
                7200,
                1800,
                86400,
                self.negative_ttl,
            )),
        )
    }

    /// The records to send for one question: (rcode, answers, authority, additionals).
    fn answer(
        &self,
        origin: &Name,
        name: &Name,
        record_type: RecordType,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>, Vec<Record>) {
        if !origin.zone_of(name) {
            return (ResponseCode::Refused, vec![], vec![], vec![]);
        }
        if record_type == RecordType::SOA && name == origin {
            return (
                ResponseCode::NoError,
                vec![self.soa(origin)],
                vec![],
                vec![],
            );
        }
        let answers = self
            .records
            .get(&(name.clone(), record_type))
            .cloned()
            .unwrap_or_default();
        if answers.is_empty() {
            let code = if self.name_exists(origin, name) {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            return (code, vec![], vec![self.soa(origin)], vec![]);
        }
        let mut additionals = Vec::new();
        if record_type == RecordType::SRV && !self.without_glue.contains(name) {
            for record in &answers {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let target = srv.target.to_lowercase();
                for glue_type in [RecordType::A, RecordType::AAAA] {
                    if let Some(glue) = self.records.get(&(target.clone(), glue_type)) {
                        for g in glue {
                            if !additionals.contains(g) {
                                additionals.push(g.clone());
                            }
                        }
                    }
                }
            }
        }
        (ResponseCode::NoError, answers, vec![], additionals)
    }
}

// ===== impl ZoneHandler =====

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;

        let question = request.queries.queries().first().map(|q| {
            let name: Name = q.name().into();
            (name.to_lowercase(), q.query_type())
        });
        if let Some((name, record_type)) = &question {
            lock(&self.state.log).push((normalize(&name.to_ascii()), *record_type));
        }

        let type_fault = question
            .as_ref()
            .and_then(|(_, t)| lock(&self.state.type_faults).get(t).copied());
        let fault = type_fault.unwrap_or_else(|| *lock(&self.state.fault));
        // Section contents and the response code, computed under the lock and
        // then owned, because sending awaits.
        let (code, answers, authority, additionals) = match (fault, &question) {
            (Fault::Silent, _) => {
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            (Fault::ServFail, _) | (Fault::None, None) => {
                (ResponseCode::ServFail, vec![], vec![], vec![])
            }
            (Fault::Refused, _) => (ResponseCode::Refused, vec![], vec![], vec![]),
            (Fault::NxDomain, _) => {
                let zone = lock(&self.state.zone);
                let soa = zone.soa(&self.state.origin);
                (ResponseCode::NXDomain, vec![], vec![soa], vec![])
            }
            (Fault::None, Some((name, record_type))) => {
                let zone = lock(&self.state.zone);
                zone.answer(&self.state.origin, name, *record_type)
            }
        };
        metadata.response_code = code;

        // Echo EDNS so that UDP answers may use the client's larger buffer;
        // hickory truncates to it (or to 512 bytes without EDNS).
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answers.iter(),
            authority.iter(),
            std::iter::empty(),
            additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "test DNS server failed to send a response");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

// ===== helpers =====

/// Binds UDP and TCP on the same random loopback port, retrying when the
/// port the OS picked for UDP is taken for TCP.
pub(super) async fn bind_udp_and_tcp() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP")))
}

/// Parses `name` as an absolute lowercase name (a trailing dot is optional).
fn absolute(name: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_ascii(name)?.to_lowercase();
    name.set_fqdn(true);
    Ok(name)
}

/// The form names take in the query log: lowercase, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
