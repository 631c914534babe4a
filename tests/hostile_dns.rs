//! Hostile DNS answers, over a real UDP socket: a tiny responder answers
//! the resolver with proptest-generated records (addresses that must never
//! be used, extreme TTLs, CNAME and TXT noise, SRV ports including 0) and
//! `HickoryResolver` must never panic, never return an unusable address,
//! cap at `max_endpoints`, and report the shortest TTL of the records used.
//!
//! 64 cases per property, so the file runs in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use headless_lb::resolve::HickoryResolver;
use headless_lb::{Resolve, ResolveError, Target};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;

const HOST: &str = "web.default.svc.cluster.local";
const SRV_HOST: &str = "_http._tcp.web.default.svc.cluster.local";
const PORT: u16 = 8080;
const MAX_ENDPOINTS: usize = 6;

// ===== the responder =====

/// What the responder answers, per (lowercase absolute name, type): the
/// answer section and the additional section.
type Answers = BTreeMap<(String, RecordType), (Vec<Record>, Vec<Record>)>;

struct Responder {
    answers: Arc<Mutex<Answers>>,
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One responder and one resolver for every case of this test binary.
fn fixture() -> &'static (Responder, HickoryResolver) {
    static FIXTURE: OnceLock<(Responder, HickoryResolver)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        runtime().block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let answers = Arc::new(Mutex::new(Answers::new()));
            tokio::spawn(serve(socket, answers.clone()));
            let resolver = HickoryResolver::builder()
                .nameserver(addr)
                .timeout(Duration::from_millis(500))
                .attempts(1)
                .max_endpoints(MAX_ENDPOINTS)
                .build()
                .unwrap();
            (Responder { answers }, resolver)
        })
    })
}

async fn serve(socket: UdpSocket, answers: Arc<Mutex<Answers>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let mut response = Message::response(query.metadata.id, OpCode::Query);
        response.metadata.message_type = MessageType::Response;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_queries(query.queries.iter().cloned());
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(4096);
            response.set_edns(edns);
        }
        if let Some(q) = query.queries.first() {
            let key = (q.name().to_lowercase().to_ascii(), q.query_type());
            if let Some((answer, additional)) = answers.lock().unwrap().get(&key) {
                response.add_answers(answer.iter().cloned());
                response.add_additionals(additional.iter().cloned());
            }
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn name(s: &str) -> Name {
    let mut n = Name::from_ascii(s).unwrap();
    n.set_fqdn(true);
    n
}

fn key(s: &str, t: RecordType) -> (String, RecordType) {
    (name(s).to_ascii(), t)
}

/// hickory caps the TTL of what it returns at one day (its
/// `positive_max_ttl`), TTLs of 2^31 and above included.
const HICKORY_MAX_TTL: u32 = 86_400;

/// Installs a case's answers and resolves `target`, one case at a time: the
/// properties run on parallel threads and share the responder.
fn resolve_with(
    install: impl FnOnce(&mut Answers),
    target: &str,
) -> Result<headless_lb::Resolution, ResolveError> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (responder, resolver) = fixture();
    {
        let mut answers = responder.answers.lock().unwrap();
        answers.clear();
        install(&mut answers);
    }
    let target: Target = target.parse().unwrap();
    runtime().block_on(resolver.resolve(&target))
}

fn expected_ttl(min_ttl: u32) -> Duration {
    Duration::from_secs(u64::from(min_ttl.min(HICKORY_MAX_TTL)))
}

// ===== generated records =====

/// Addresses a DNS answer must never turn into endpoints, and ordinary ones.
fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(Ipv4Addr::UNSPECIFIED),
        Just(Ipv4Addr::BROADCAST),
        Just(Ipv4Addr::new(224, 0, 0, 1)),
        Just(Ipv4Addr::new(239, 255, 255, 250)),
        Just(Ipv4Addr::new(169, 254, 169, 254)),
        Just(Ipv4Addr::LOCALHOST),
        (1u8..=3, 1u8..=20).prop_map(|(c, d)| Ipv4Addr::new(10, 0, c, d)),
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ]
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        Just(Ipv6Addr::UNSPECIFIED),
        Just("ff02::1".parse().unwrap()),
        Just("fe80::1".parse().unwrap()),
        Just("::ffff:0.0.0.0".parse().unwrap()),
        Just("::ffff:169.254.169.254".parse().unwrap()),
        Just(Ipv6Addr::LOCALHOST),
        (1u16..=20).prop_map(|d| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, d)),
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
    ]
}

fn ttl() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(30),
        Just(i32::MAX as u32),
        Just(1 << 31),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}

/// What the library must refuse (ARCHITECTURE.md, "Bad input"), link-local included
/// (not allowed by default).
fn unusable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.is_link_local()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local(),
    }
}

fn address_record(owner: &Name, ip: IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, rdata)
}

fn record_type(ip: IpAddr) -> RecordType {
    if ip.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    }
}

/// Installs the answers for `owner`'s A and AAAA queries: the addresses of
/// the right family, each followed by `txt_noise` TXT records of any TTL.
fn install_addresses(answers: &mut Answers, owner: &str, addresses: &[(IpAddr, u32)], txt: &[u32]) {
    let owner_name = name(owner);
    for t in [RecordType::A, RecordType::AAAA] {
        let mut records: Vec<Record> = addresses
            .iter()
            .filter(|(ip, _)| record_type(*ip) == t)
            .map(|(ip, ttl)| address_record(&owner_name, *ip, *ttl))
            .collect();
        records.extend(txt.iter().map(|ttl| {
            Record::from_rdata(
                owner_name.clone(),
                *ttl,
                RData::TXT(TXT::new(vec!["v=noise".to_owned()])),
            )
        }));
        answers.insert(key(owner, t), (records, Vec::new()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// `host:port`: A and AAAA answers with hostile addresses, TTLs and
    /// TXT noise give exactly the usable addresses (the lowest
    /// `max_endpoints`), on the target's port, with the shortest TTL of the
    /// usable records; no usable address at all is NoRecords.
    #[test]
    fn a_and_aaaa_answers_give_only_usable_endpoints(
        addresses in proptest::collection::vec((ip(), ttl()), 0..16),
        txt in proptest::collection::vec(ttl(), 0..3),
    ) {
        let result = resolve_with(
            |answers| install_addresses(answers, HOST, &addresses, &txt),
            &format!("{HOST}:{PORT}"),
        );
        let usable: Vec<(IpAddr, u32)> = addresses
            .iter()
            .copied()
            .filter(|(ip, _)| !unusable(*ip))
            .collect();
        let all: BTreeSet<SocketAddr> =
            usable.iter().map(|(ip, _)| SocketAddr::new(*ip, PORT)).collect();
        match result {
            Ok(resolution) => {
                for e in &resolution.endpoints {
                    prop_assert!(!unusable(e.ip()), "{e} used");
                    prop_assert_eq!(e.port(), PORT);
                }
                let want: BTreeSet<SocketAddr> = all.iter().copied().take(MAX_ENDPOINTS).collect();
                prop_assert_eq!(&resolution.endpoints, &want);
                let min_ttl = usable.iter().map(|(_, t)| *t).min().unwrap();
                prop_assert_eq!(resolution.ttl, expected_ttl(min_ttl));
            }
            Err(e) => {
                prop_assert!(all.is_empty(), "usable {all:?} but {e:?}");
                prop_assert!(e.is_no_records(), "{e:?}");
            }
        }
    }

    /// A CNAME in the chain: its TTL bounds the answer's TTL, and the
    /// addresses are still vetted.
    #[test]
    fn a_cname_in_the_chain_bounds_the_ttl(
        addresses in proptest::collection::vec((ipv4().prop_map(IpAddr::V4), ttl()), 1..8),
        cname_ttl in ttl(),
    ) {
        let alias = "pods.web.default.svc.cluster.local";
        let install = |answers: &mut Answers| {
            for t in [RecordType::A, RecordType::AAAA] {
                let mut records = vec![Record::from_rdata(
                    name(HOST),
                    cname_ttl,
                    RData::CNAME(CNAME(name(alias))),
                )];
                records.extend(
                    addresses
                        .iter()
                        .filter(|(ip, _)| record_type(*ip) == t)
                        .map(|(ip, ttl)| address_record(&name(alias), *ip, *ttl)),
                );
                answers.insert(key(HOST, t), (records.clone(), Vec::new()));
                answers.insert(key(alias, t), (records[1..].to_vec(), Vec::new()));
            }
        };
        let result = resolve_with(install, &format!("{HOST}:{PORT}"));
        let usable: Vec<(IpAddr, u32)> =
            addresses.iter().copied().filter(|(ip, _)| !unusable(*ip)).collect();
        match result {
            Ok(resolution) => {
                for e in &resolution.endpoints {
                    prop_assert!(!unusable(e.ip()), "{e} used");
                }
                prop_assert!(resolution.endpoints.len() <= MAX_ENDPOINTS);
                prop_assert!(!usable.is_empty());
                let min_ttl = usable.iter().map(|(_, t)| *t).min().unwrap().min(cname_ttl);
                prop_assert_eq!(resolution.ttl, expected_ttl(min_ttl));
            }
            Err(e) => prop_assert!(usable.is_empty() && e.is_no_records(), "{e:?}"),
        }
    }

    /// SRV: records with random ports (0 among them) and targets whose glue
    /// holds hostile addresses. Endpoints are the usable glue addresses on
    /// their record's port, port-0 records skipped, capped; the TTL is the
    /// shortest among the SRV and address records used.
    #[test]
    fn srv_answers_give_only_usable_endpoints_on_nonzero_ports(
        records in proptest::collection::vec(
            (prop_oneof![Just(0u16), Just(PORT), 1u16..], ttl(), 0usize..4),
            0..8,
        ),
        glue in proptest::collection::vec(
            proptest::collection::vec((ip(), ttl()), 1..4),
            4,
        ),
    ) {
        let target_name = |i: usize| format!("pod-{i}.web.default.svc.cluster.local");
        let install = |answers: &mut Answers| {
            let srv: Vec<Record> = records
                .iter()
                .map(|(port, ttl, target)| {
                    Record::from_rdata(
                        name(SRV_HOST),
                        *ttl,
                        RData::SRV(SRV::new(0, 1, *port, name(&target_name(*target)))),
                    )
                })
                .collect();
            let additional: Vec<Record> = records
                .iter()
                .map(|(_, _, target)| *target)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .flat_map(|target| {
                    let owner = name(&target_name(target));
                    glue[target]
                        .iter()
                        .map(move |(ip, ttl)| address_record(&owner, *ip, *ttl))
                        .collect::<Vec<_>>()
                })
                .collect();
            answers.insert(key(SRV_HOST, RecordType::SRV), (srv, additional));
        };
        let result = resolve_with(install, SRV_HOST);
        let mut want = BTreeMap::new();
        for (port, srv_ttl, target) in &records {
            if *port == 0 {
                continue;
            }
            for (ip, ttl) in &glue[*target] {
                if !unusable(*ip) {
                    let e = SocketAddr::new(*ip, *port);
                    let t = want.entry(e).or_insert(u32::MAX);
                    *t = (*t).min(*srv_ttl).min(*ttl);
                }
            }
        }
        match result {
            Ok(resolution) => {
                for e in &resolution.endpoints {
                    prop_assert!(!unusable(e.ip()), "{e} used");
                    prop_assert!(e.port() != 0, "{e}");
                }
                let capped: BTreeSet<SocketAddr> =
                    want.keys().copied().take(MAX_ENDPOINTS).collect();
                prop_assert_eq!(&resolution.endpoints, &capped);
                let min_ttl = want.values().copied().min().unwrap();
                prop_assert_eq!(resolution.ttl, expected_ttl(min_ttl));
            }
            Err(e) => {
                prop_assert!(want.is_empty(), "want {want:?} but {e:?}");
                prop_assert!(e.is_no_records(), "{e:?}");
            }
        }
    }
}
