//! Tests of the test support itself: `DnsServer`, `FaultyDns`, `wait_for`.
//!
//! Queries go over real loopback sockets, as raw hickory-proto messages (to
//! see header bits) or through a hickory resolver (to see what a client sees).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use headless_lb::testing::{DnsServer, Fault, FaultyDns, FaultyMode, wait_for, wait_for_async};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WEB: &str = "web.default.svc.cluster.local";
/// Every raw query in these tests gets an answer well within this.
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn query_message(name: &str, record_type: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = fastrand::u16(..);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

/// One query over UDP; `None` when nothing comes back within `wait`.
async fn udp_raw(server: SocketAddr, query: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let len = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(len);
    Some(buf)
}

async fn udp_query(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let bytes = udp_raw(
        server,
        &query_message(name, record_type, true),
        ANSWER_DEADLINE,
    )
    .await
    .expect("an answer over UDP");
    Message::from_vec(&bytes).unwrap()
}

async fn tcp_query(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let query = query_message(name, record_type, false);
    stream.write_u16(query.len() as u16).await.unwrap();
    stream.write_all(&query).await.unwrap();
    let len = tokio::time::timeout(ANSWER_DEADLINE, stream.read_u16())
        .await
        .expect("an answer over TCP")
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn answer_ips(message: &Message) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

/// A plain hickory resolver (no cache, UDP+TCP) pointed at `server`.
fn raw_resolver(server: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut ns.connections {
        connection.port = server.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_millis(500);
    builder.build().unwrap()
}

// ===== DnsServer =====

#[tokio::test]
async fn dns_server_serves_a_and_aaaa_with_their_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")], 7);

    let a = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(answer_ips(&a), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    assert!(a.answers.iter().all(|r| r.ttl == 7));

    let aaaa = udp_query(dns.addr(), WEB, RecordType::AAAA).await;
    assert_eq!(answer_ips(&aaaa), vec![ip("fd00::1")]);
}

#[tokio::test]
async fn dns_server_record_changes_are_seen_by_a_resolver() {
    let dns = DnsServer::start().await.unwrap();
    let resolver = raw_resolver(dns.addr());
    let fqdn = format!("{WEB}.");

    dns.set_ips(WEB, &[ip("10.0.0.1")], 1);
    let first: Vec<IpAddr> = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(first, vec![ip("10.0.0.1")]);

    dns.set_ips(WEB, &[ip("10.0.0.2"), ip("10.0.0.3")], 1);
    let mut second: Vec<IpAddr> = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .unwrap()
        .iter()
        .collect();
    second.sort();
    assert_eq!(second, vec![ip("10.0.0.2"), ip("10.0.0.3")]);

    dns.remove(WEB);
    let gone = resolver.lookup_ip(fqdn.as_str()).await.unwrap_err();
    assert!(gone.is_nx_domain(), "{gone}");
}

#[tokio::test]
async fn dns_server_answers_nxdomain_and_nodata_with_the_soa_negative_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_negative_ttl(17);
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);

    let nx = udp_query(dns.addr(), "nope.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let soa = nx
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some((r.ttl, soa.minimum)),
            _ => None,
        })
        .expect("SOA in the authority section");
    assert_eq!(soa, (17, 17));

    // The name exists with A only: AAAA is NODATA, not NXDOMAIN.
    let nodata = udp_query(dns.addr(), WEB, RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(
        nodata
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );

    // An empty non-terminal exists too.
    let ent = udp_query(dns.addr(), "default.svc.cluster.local", RecordType::A).await;
    assert_eq!(ent.metadata.response_code, ResponseCode::NoError);

    // Outside the zone: refused.
    let outside = udp_query(dns.addr(), "example.com", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn dns_server_srv_answers_carry_glue_for_every_target() {
    let dns = DnsServer::start().await.unwrap();
    let srv = "_http._tcp.web.default.svc.cluster.local";
    let pods = [
        "pod-a.web.default.svc.cluster.local",
        "pod-b.web.default.svc.cluster.local",
    ];
    dns.set_ips(pods[0], &[ip("10.0.0.1")], 30);
    dns.set_ips(pods[1], &[ip("10.0.0.2"), ip("fd00::2")], 30);
    dns.set_srv(srv, &[(0, 50, 8080, pods[0]), (0, 50, 8081, pods[1])], 10);

    let answer = udp_query(dns.addr(), srv, RecordType::SRV).await;
    assert_eq!(answer.answers.len(), 2);
    let mut glue: Vec<IpAddr> = answer
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    glue.sort();
    assert_eq!(glue, vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::2")]);

    dns.set_srv_without_glue(srv, &[(0, 50, 8080, pods[0])], 10);
    let bare = udp_query(dns.addr(), srv, RecordType::SRV).await;
    assert_eq!(bare.answers.len(), 1);
    assert!(
        bare.additionals
            .iter()
            .all(|r| !matches!(r.record_type(), RecordType::A | RecordType::AAAA))
    );
}

#[tokio::test]
async fn dns_server_truncates_large_udp_answers_and_serves_them_whole_over_tcp() {
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<IpAddr> = (0..500u32)
        .map(|i| IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]))
        .collect();
    dns.set_ips(WEB, &ips, 30);

    let udp = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert!(
        udp.metadata.truncation,
        "500 A records cannot fit one datagram"
    );
    assert!(udp.answers.len() < 500);

    let tcp = tcp_query(dns.addr(), WEB, RecordType::A).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 500);
}

#[tokio::test]
async fn dns_server_counts_and_logs_queries() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);

    udp_query(dns.addr(), WEB, RecordType::A).await;
    udp_query(dns.addr(), &WEB.to_uppercase(), RecordType::A).await;
    tcp_query(dns.addr(), WEB, RecordType::AAAA).await;

    assert_eq!(dns.queries(), 3);
    assert_eq!(dns.queries_for(WEB, RecordType::A), 2);
    assert_eq!(dns.queries_for(&format!("{WEB}."), RecordType::AAAA), 1);
    assert_eq!(
        dns.query_log(),
        vec![
            (WEB.to_string(), RecordType::A),
            (WEB.to_string(), RecordType::A),
            (WEB.to_string(), RecordType::AAAA),
        ]
    );

    dns.reset_counts();
    assert_eq!(dns.queries(), 0);
    assert!(dns.query_log().is_empty());
}

#[tokio::test]
async fn dns_server_faults_switch_at_runtime() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);

    dns.set_fault(Fault::ServFail);
    let answer = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);

    dns.set_fault(Fault::Refused);
    let answer = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);

    dns.set_fault(Fault::NxDomain);
    let answer = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        answer
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );

    dns.set_fault(Fault::Silent);
    let silent = udp_raw(
        dns.addr(),
        &query_message(WEB, RecordType::A, true),
        Duration::from_millis(200),
    )
    .await;
    assert!(silent.is_none(), "a silent server must not answer");
    assert_eq!(dns.queries(), 4, "silent queries are still counted");

    dns.set_fault(Fault::None);
    let answer = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer_ips(&answer), vec![ip("10.0.0.1")]);
}

#[tokio::test]
async fn dns_server_with_another_origin() {
    let dns = DnsServer::start_with_origin("example.test").await.unwrap();
    assert_eq!(dns.origin(), "example.test.");
    dns.set_ips("api.example.test.", &[ip("192.0.2.1")], 30);
    let answer = udp_query(dns.addr(), "api.example.test", RecordType::A).await;
    assert_eq!(answer_ips(&answer), vec![ip("192.0.2.1")]);
}

#[tokio::test]
async fn dns_server_stops_on_shutdown() {
    let dns = DnsServer::start().await.unwrap();
    let addr = dns.addr();
    dns.shutdown().await;
    wait_for_async(ANSWER_DEADLINE, "the TCP port to close", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

// ===== FaultyDns =====

#[tokio::test]
async fn faulty_dns_answers_with_its_records() {
    let dns = FaultyDns::start(FaultyMode::Answer).await.unwrap();
    dns.set_ips(&[ip("10.0.0.1"), ip("fd00::1")], 9);
    let a = udp_query(dns.addr(), "anything.example", RecordType::A).await;
    assert_eq!(answer_ips(&a), vec![ip("10.0.0.1")]);
    assert!(a.answers.iter().all(|r| r.ttl == 9));
    let aaaa = tcp_query(dns.addr(), "anything.example", RecordType::AAAA).await;
    assert_eq!(answer_ips(&aaaa), vec![ip("fd00::1")]);
    assert_eq!(
        (dns.udp_queries(), dns.tcp_queries(), dns.queries()),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn faulty_dns_error_modes() {
    let dns = FaultyDns::start(FaultyMode::ServFail).await.unwrap();
    let answer = udp_query(dns.addr(), "x.example", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);

    dns.set_mode(FaultyMode::NxDomain);
    dns.set_negative_ttl(11);
    let answer = udp_query(dns.addr(), "x.example", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let minimum = answer.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.minimum),
        _ => None,
    });
    assert_eq!(minimum, Some(11));

    dns.set_mode(FaultyMode::Silent);
    let silent = udp_raw(
        dns.addr(),
        &query_message("x.example", RecordType::A, true),
        Duration::from_millis(200),
    )
    .await;
    assert!(silent.is_none());

    dns.set_mode(FaultyMode::Garbage);
    let query = query_message("x.example", RecordType::A, true);
    let garbage = udp_raw(dns.addr(), &query, ANSWER_DEADLINE).await.unwrap();
    assert_eq!(garbage[..2], query[..2], "garbage echoes the query ID");
    assert_eq!(dns.udp_queries(), 4);
}

#[tokio::test]
async fn faulty_dns_truncated_sends_tc_over_udp_and_the_whole_answer_over_tcp() {
    let dns = FaultyDns::start(FaultyMode::Truncated).await.unwrap();
    let ips: Vec<IpAddr> = (0..500u32)
        .map(|i| IpAddr::from([10, 2, (i / 256) as u8, (i % 256) as u8]))
        .collect();
    dns.set_ips(&ips, 30);

    let udp = udp_query(dns.addr(), "big.example", RecordType::A).await;
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());

    let tcp = tcp_query(dns.addr(), "big.example", RecordType::A).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 500);

    // And a resolver follows the TC bit to TCP by itself.
    let resolver = raw_resolver(dns.addr());
    let lookup = resolver.lookup_ip("big.example.").await.unwrap();
    assert_eq!(lookup.iter().filter(IpAddr::is_ipv4).count(), 500);
    assert!(dns.tcp_queries() >= 2);
}

#[tokio::test]
async fn faulty_dns_truncated_tcp_refused_closes_tcp_connections() {
    let dns = FaultyDns::start(FaultyMode::TruncatedTcpRefused)
        .await
        .unwrap();
    dns.set_ips(&[ip("10.0.0.1")], 30);
    let udp = udp_query(dns.addr(), "x.example", RecordType::A).await;
    assert!(udp.metadata.truncation);

    let mut stream = TcpStream::connect(dns.addr()).await.unwrap();
    let query = query_message("x.example", RecordType::A, false);
    // The server closes the connection: the write or the read fails.
    let _ = stream.write_u16(query.len() as u16).await;
    let _ = stream.write_all(&query).await;
    let read = tokio::time::timeout(ANSWER_DEADLINE, stream.read_u16())
        .await
        .expect("the server closes the connection promptly");
    assert!(read.is_err());
}

#[tokio::test]
async fn faulty_dns_delay_answers_late() {
    let delay = Duration::from_millis(150);
    let dns = FaultyDns::start(FaultyMode::Delay(delay)).await.unwrap();
    dns.set_ips(&[ip("10.0.0.1")], 30);
    let started = Instant::now();
    let answer = udp_query(dns.addr(), "x.example", RecordType::A).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(answer_ips(&answer), vec![ip("10.0.0.1")]);
}

// ===== wait_for =====

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn wait_for_returns_once_the_condition_holds() {
    let mut calls = 0;
    wait_for(Duration::from_secs(1), "the third call", || {
        calls += 1;
        calls == 3
    })
    .await;
    assert_eq!(calls, 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
#[should_panic(expected = "waiting for something that never happens")]
async fn wait_for_panics_naming_what_it_waited_for() {
    wait_for(
        Duration::from_millis(100),
        "something that never happens",
        || false,
    )
    .await;
}

#[tokio::test]
async fn dns_server_faults_can_target_one_record_type() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1"), ip("fd00::1")], 30);
    dns.set_fault_for(RecordType::AAAA, Fault::ServFail);

    let a = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer_ips(&a), vec![ip("10.0.0.1")]);
    let aaaa = udp_query(dns.addr(), WEB, RecordType::AAAA).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::ServFail);

    // A per-type None wins over a global fault.
    dns.set_fault(Fault::Refused);
    dns.set_fault_for(RecordType::A, Fault::None);
    let a = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(answer_ips(&a), vec![ip("10.0.0.1")]);

    dns.clear_type_faults();
    let a = udp_query(dns.addr(), WEB, RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::Refused);
}
