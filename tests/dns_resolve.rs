//! `HickoryResolver` against real DNS servers on loopback (`DnsServer`, `FaultyDns`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use headless_lb::resolve::{HickoryResolver, Resolution, Resolve};
use headless_lb::testing::{DnsServer, Fault, FaultyDns, FaultyMode};
use headless_lb::{ResolveError, Target};
use hickory_proto::rr::RecordType;

const WEB: &str = "web.default.svc.cluster.local";
/// Short, so that timeout tests take a fraction of a second.
const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn target(s: &str) -> Target {
    s.parse()
        .unwrap_or_else(|e| panic!("test target {s:?} must parse: {e}"))
}

fn endpoints(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A resolver that only talks to `server`, with a short timeout.
fn resolver(server: SocketAddr) -> HickoryResolver {
    HickoryResolver::builder()
        .resolv_conf("")
        .nameserver(server)
        .timeout(SHORT_TIMEOUT)
        .build()
        .unwrap()
}

async fn resolve(resolver: &HickoryResolver, t: &str) -> Result<Resolution, ResolveError> {
    resolver.resolve(&target(t)).await
}

// ===== A / AAAA =====

#[tokio::test]
async fn a_records_become_endpoints_with_the_target_port_and_the_shortest_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1"), ip("10.0.0.2")], 7);
    let resolution = resolve(&resolver(dns.addr()), &format!("{WEB}:8080"))
        .await
        .unwrap();
    assert_eq!(
        resolution.endpoints,
        endpoints(&["10.0.0.1:8080", "10.0.0.2:8080"])
    );
    assert_eq!(resolution.ttl, Duration::from_secs(7));
}

#[tokio::test]
async fn a_and_aaaa_records_give_both_families_and_the_minimum_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ip_records(
        WEB,
        &[(ip("10.0.0.1"), 30), (ip("fd00::1"), 4), (ip("fd00::2"), 4)],
    );
    let both = resolve(&resolver(dns.addr()), &format!("{WEB}:80"))
        .await
        .unwrap();
    assert_eq!(
        both.endpoints,
        endpoints(&["10.0.0.1:80", "[fd00::1]:80", "[fd00::2]:80"])
    );
    assert_eq!(
        both.ttl,
        Duration::from_secs(4),
        "the AAAA set's shorter TTL"
    );
    assert_eq!(dns.queries_for(WEB, RecordType::A), 1);
    assert_eq!(dns.queries_for(WEB, RecordType::AAAA), 1);
}

#[tokio::test]
async fn a_failed_aaaa_query_fails_the_lookup_instead_of_dropping_ipv6_pods() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1"), ip("fd00::1")], 30);
    let resolver = resolver(dns.addr());
    let t = format!("{WEB}:80");

    dns.set_fault_for(RecordType::AAAA, Fault::Silent);
    let err = resolve(&resolver, &t).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    dns.set_fault_for(RecordType::AAAA, Fault::ServFail);
    let err = resolve(&resolver, &t).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // An A-only name is fine: AAAA NODATA is an answer, not a failure.
    dns.clear_type_faults();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);
    let v4_only = resolve(&resolver, &t).await.unwrap();
    assert_eq!(v4_only.endpoints, endpoints(&["10.0.0.1:80"]));
}

#[tokio::test]
async fn records_are_never_cached_between_resolutions() {
    let dns = DnsServer::start().await.unwrap();
    let resolver = resolver(dns.addr());
    dns.set_ips(WEB, &[ip("10.0.0.1")], 300);
    let first = resolve(&resolver, &format!("{WEB}:80")).await.unwrap();
    assert_eq!(first.endpoints, endpoints(&["10.0.0.1:80"]));
    dns.set_ips(WEB, &[ip("10.0.0.2")], 300);
    let second = resolve(&resolver, &format!("{WEB}:80")).await.unwrap();
    assert_eq!(second.endpoints, endpoints(&["10.0.0.2:80"]));
}

#[tokio::test]
async fn ip_literals_resolve_to_themselves_without_dns() {
    let dns = DnsServer::start().await.unwrap();
    let resolution = resolve(&resolver(dns.addr()), "127.0.0.11:9000")
        .await
        .unwrap();
    assert_eq!(resolution.endpoints, endpoints(&["127.0.0.11:9000"]));
    assert_eq!(resolution.ttl, Duration::from_secs(3600));
    assert_eq!(dns.queries(), 0);
}

#[tokio::test]
async fn a_target_nameserver_overrides_the_resolver_nameserver() {
    let configured = DnsServer::start().await.unwrap();
    let named = DnsServer::start().await.unwrap();
    configured.set_ips(WEB, &[ip("10.0.0.1")], 30);
    named.set_ips(WEB, &[ip("10.0.0.9")], 30);
    let resolver = resolver(configured.addr());
    let t = format!("dns://{}/{WEB}:80", named.addr());
    for _ in 0..2 {
        let resolution = resolve(&resolver, &t).await.unwrap();
        assert_eq!(resolution.endpoints, endpoints(&["10.0.0.9:80"]));
    }
    assert_eq!(configured.queries(), 0);
    assert_eq!(named.queries_for(WEB, RecordType::A), 2);
}

// ===== SRV =====

const SRV_NAME: &str = "_http._tcp.web.default.svc.cluster.local";
const POD_A: &str = "pod-a.web.default.svc.cluster.local";
const POD_B: &str = "pod-b.web.default.svc.cluster.local";

#[tokio::test]
async fn srv_with_glue_uses_the_additional_section_and_the_record_ports() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(POD_A, &[ip("10.0.0.1")], 30);
    dns.set_ips(POD_B, &[ip("10.0.0.2"), ip("fd00::2")], 20);
    dns.set_srv(SRV_NAME, &[(0, 50, 8080, POD_A), (0, 50, 9090, POD_B)], 10);

    let resolution = resolve(&resolver(dns.addr()), SRV_NAME).await.unwrap();
    assert_eq!(
        resolution.endpoints,
        endpoints(&["10.0.0.1:8080", "10.0.0.2:9090", "[fd00::2]:9090"])
    );
    assert_eq!(resolution.ttl, Duration::from_secs(10));
    assert_eq!(
        dns.queries_for(POD_A, RecordType::A),
        0,
        "glue makes follow-ups unneeded"
    );
    assert_eq!(dns.queries(), 1);
}

#[tokio::test]
async fn srv_without_glue_looks_the_targets_up() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(POD_A, &[ip("10.0.0.1")], 3);
    dns.set_ips(POD_B, &[ip("fd00::2")], 30);
    dns.set_srv_without_glue(SRV_NAME, &[(0, 50, 8080, POD_A), (0, 50, 9090, POD_B)], 10);

    let resolution = resolve(&resolver(dns.addr()), SRV_NAME).await.unwrap();
    assert_eq!(
        resolution.endpoints,
        endpoints(&["10.0.0.1:8080", "[fd00::2]:9090"])
    );
    assert_eq!(
        resolution.ttl,
        Duration::from_secs(3),
        "address TTLs count too"
    );
    assert_eq!(dns.queries_for(POD_A, RecordType::A), 1);
    assert_eq!(dns.queries_for(POD_B, RecordType::AAAA), 1);
}

#[tokio::test]
async fn srv_targets_without_addresses_are_skipped() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(POD_B, &[ip("10.0.0.2")], 30);
    // POD_A has no records at all: its SRV record contributes nothing.
    dns.set_srv_without_glue(SRV_NAME, &[(0, 50, 8080, POD_A), (0, 50, 8080, POD_B)], 10);
    let resolution = resolve(&resolver(dns.addr()), SRV_NAME).await.unwrap();
    assert_eq!(resolution.endpoints, endpoints(&["10.0.0.2:8080"]));

    dns.set_srv_without_glue(SRV_NAME, &[(0, 50, 8080, POD_A)], 10);
    let err = resolve(&resolver(dns.addr()), SRV_NAME).await.unwrap_err();
    assert!(err.is_no_records(), "{err}");
}

#[tokio::test]
async fn a_failed_srv_target_lookup_fails_the_whole_lookup() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(POD_A, &[ip("10.0.0.1")], 30);
    // The second target is outside the zone: the server REFUSES its lookup.
    // Returning only POD_A would silently drop the other pod from a good set.
    dns.set_srv_without_glue(
        SRV_NAME,
        &[(0, 50, 8080, POD_A), (0, 50, 8080, "pod.elsewhere.test")],
        10,
    );
    let err = resolve(&resolver(dns.addr()), SRV_NAME).await.unwrap_err();
    assert!(
        matches!(&err, ResolveError::ServerFailure { code, .. } if code == "REFUSED"),
        "{err:?}"
    );
}

// ===== large answers =====

fn many_ips(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from([10, 3, (i / 256) as u8, (i % 256) as u8]))
        .collect()
}

#[tokio::test]
async fn five_hundred_a_records_arrive_whole_over_tcp() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &many_ips(500), 30);
    let resolution = resolve(&resolver(dns.addr()), &format!("{WEB}:80"))
        .await
        .unwrap();
    assert_eq!(resolution.endpoints.len(), 500);
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let dns = FaultyDns::start(FaultyMode::Truncated).await.unwrap();
    dns.set_ips(&many_ips(500), 30);
    let resolution = resolve(&resolver(dns.addr()), "big.example.test:80")
        .await
        .unwrap();
    assert_eq!(resolution.endpoints.len(), 500);
    assert!(dns.tcp_queries() >= 1, "the answer must have come over TCP");
}

// ===== no records =====

#[tokio::test]
async fn nxdomain_is_no_records_with_the_soa_negative_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_negative_ttl(12);
    let err = resolve(&resolver(dns.addr()), "gone.default.svc.cluster.local:80")
        .await
        .unwrap_err();
    assert!(err.is_no_records(), "{err}");
    assert_eq!(err.negative_ttl(), Some(Duration::from_secs(12)));
}

#[tokio::test]
async fn an_empty_answer_is_no_records() {
    let dns = DnsServer::start().await.unwrap();
    // The name exists (it has SRV records) but has no addresses: NODATA.
    dns.set_srv(WEB, &[(0, 0, 80, POD_A)], 30);
    let err = resolve(&resolver(dns.addr()), &format!("{WEB}:80"))
        .await
        .unwrap_err();
    assert!(err.is_no_records(), "{err}");
    assert_eq!(err.negative_ttl(), Some(Duration::from_secs(5)));

    let faulty = FaultyDns::start(FaultyMode::Answer).await.unwrap();
    let err = resolve(&resolver(faulty.addr()), "x.example.test:80")
        .await
        .unwrap_err();
    assert!(err.is_no_records(), "{err}");
}

// ===== failures =====

#[tokio::test]
async fn servfail_and_refused_are_server_failures() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);
    let resolver = resolver(dns.addr());
    let t = format!("{WEB}:80");

    dns.set_fault(Fault::ServFail);
    let err = resolve(&resolver, &t).await.unwrap_err();
    assert!(
        matches!(&err, ResolveError::ServerFailure { code, .. } if code == "SERVFAIL"),
        "{err:?}"
    );

    dns.set_fault(Fault::Refused);
    let err = resolve(&resolver, &t).await.unwrap_err();
    assert!(
        matches!(&err, ResolveError::ServerFailure { code, .. } if code == "REFUSED"),
        "{err:?}"
    );

    dns.set_fault(Fault::None);
    assert!(resolve(&resolver, &t).await.is_ok(), "recovers at once");
}

#[tokio::test]
async fn a_silent_server_is_a_timeout() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);
    dns.set_fault(Fault::Silent);
    let err = resolve(&resolver(dns.addr()), &format!("{WEB}:80"))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn faulty_answers_are_transient_errors_never_panics() {
    let dns = FaultyDns::start(FaultyMode::Garbage).await.unwrap();
    dns.set_ips(&[ip("10.0.0.1")], 30);
    let resolver = resolver(dns.addr());

    let err = resolve(&resolver, "x.example.test:80").await.unwrap_err();
    assert!(err.is_transient(), "garbage: {err:?}");

    dns.set_mode(FaultyMode::TruncatedTcpRefused);
    let err = resolve(&resolver, "x.example.test:80").await.unwrap_err();
    assert!(err.is_transient(), "truncated, TCP refused: {err:?}");

    dns.set_mode(FaultyMode::ServFail);
    let err = resolve(&resolver, "x.example.test:80").await.unwrap_err();
    assert!(matches!(err, ResolveError::ServerFailure { .. }), "{err:?}");

    dns.set_mode(FaultyMode::NxDomain);
    dns.set_negative_ttl(3);
    let err = resolve(&resolver, "x.example.test:80").await.unwrap_err();
    assert_eq!(err.negative_ttl(), Some(Duration::from_secs(3)), "{err:?}");

    dns.set_mode(FaultyMode::Delay(SHORT_TIMEOUT * 3));
    let err = resolve(&resolver, "x.example.test:80").await.unwrap_err();
    assert!(err.is_timeout(), "slower than the timeout: {err:?}");
}

// ===== search list =====

const KUBERNETES_RESOLV_CONF: &str = "\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
";

fn kubernetes_resolver(server: SocketAddr) -> HickoryResolver {
    HickoryResolver::builder()
        .resolv_conf(KUBERNETES_RESOLV_CONF)
        .nameserver(server)
        .timeout(SHORT_TIMEOUT)
        .build()
        .unwrap()
}

#[tokio::test]
async fn relative_names_resolve_through_the_search_list() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1")], 30);
    let resolution = resolve(&kubernetes_resolver(dns.addr()), "web.default:80")
        .await
        .unwrap();
    assert_eq!(resolution.endpoints, endpoints(&["10.0.0.1:80"]));
    // First search domain first (web.default.default.svc…: NXDOMAIN), then the hit.
    let names: Vec<String> = dns.query_log().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"web.default.default.svc.cluster.local".to_owned()));
    assert!(
        !names.contains(&"web.default".to_owned()),
        "stops at the first hit"
    );
}

#[tokio::test]
async fn cluster_service_names_skip_the_search_list() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("10.0.0.1"), ip("fd00::1")], 30);
    let resolver = kubernetes_resolver(dns.addr());
    resolve(&resolver, &format!("{WEB}:80")).await.unwrap();

    let mut log = dns.query_log();
    log.sort();
    assert_eq!(
        log,
        vec![
            (WEB.to_owned(), RecordType::A),
            (WEB.to_owned(), RecordType::AAAA),
        ],
        "exactly one query per record type"
    );

    // Also when the name does not exist: no walk through the search domains.
    dns.reset_counts();
    resolve(&resolver, "gone.default.svc.cluster.local:80")
        .await
        .unwrap_err();
    assert_eq!(dns.queries(), 2, "{:?}", dns.query_log());
}

#[tokio::test]
async fn a_custom_cluster_domain_is_honoured() {
    let dns = DnsServer::start_with_origin("corp.example").await.unwrap();
    let name = "web.default.svc.corp.example";
    dns.set_ips(name, &[ip("10.0.0.1")], 30);
    let resolver = HickoryResolver::builder()
        .resolv_conf(
            "search default.svc.corp.example svc.corp.example corp.example\noptions ndots:5",
        )
        .nameserver(dns.addr())
        .cluster_domain("corp.example")
        .timeout(SHORT_TIMEOUT)
        .build()
        .unwrap();
    resolve(&resolver, &format!("{name}:80")).await.unwrap();
    assert_eq!(dns.queries(), 2, "{:?}", dns.query_log());
}

// ===== vetting answers =====

#[tokio::test]
async fn unusable_addresses_are_dropped() {
    let dns = DnsServer::start().await.unwrap();
    let bad = [
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.169.254",
        "fe80::1",
        "::",
        "ff02::1",
    ];
    let mut ips: Vec<IpAddr> = bad.iter().map(|s| ip(s)).collect();
    ips.push(ip("10.0.0.1"));
    dns.set_ips(WEB, &ips, 30);
    let t = format!("{WEB}:80");

    let strict = resolve(&resolver(dns.addr()), &t).await.unwrap();
    assert_eq!(strict.endpoints, endpoints(&["10.0.0.1:80"]));

    let lenient = HickoryResolver::builder()
        .resolv_conf("")
        .nameserver(dns.addr())
        .allow_link_local(true)
        .build()
        .unwrap();
    let resolution = resolve(&lenient, &t).await.unwrap();
    assert_eq!(
        resolution.endpoints,
        endpoints(&["10.0.0.1:80", "169.254.169.254:80", "[fe80::1]:80"])
    );
}

#[tokio::test]
async fn an_answer_with_only_unusable_addresses_is_no_records() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &[ip("0.0.0.0"), ip("169.254.169.254")], 30);
    let err = resolve(&resolver(dns.addr()), &format!("{WEB}:80"))
        .await
        .unwrap_err();
    assert!(err.is_no_records(), "{err:?}");
}

#[tokio::test]
async fn endpoints_are_capped_at_max_endpoints() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(WEB, &many_ips(50), 30);
    let resolver = HickoryResolver::builder()
        .resolv_conf("")
        .nameserver(dns.addr())
        .max_endpoints(10)
        .build()
        .unwrap();
    let resolution = resolve(&resolver, &format!("{WEB}:80")).await.unwrap();
    assert_eq!(resolution.endpoints.len(), 10);
    let again = resolve(&resolver, &format!("{WEB}:80")).await.unwrap();
    assert_eq!(
        resolution.endpoints, again.endpoints,
        "the same cut every time"
    );
}

// ===== configuration =====

#[test]
fn build_rejects_bad_settings() {
    let base = || HickoryResolver::builder().resolv_conf("nameserver 127.0.0.1");
    assert!(base().build().is_ok());
    assert!(base().attempts(0).build().is_err());
    assert!(base().timeout(Duration::ZERO).build().is_err());
    assert!(base().max_endpoints(0).build().is_err());
    assert!(base().cluster_domain("bad domain").build().is_err());
    assert!(
        HickoryResolver::builder()
            .resolv_conf("search cluster.local")
            .build()
            .is_err(),
        "no nameserver anywhere"
    );
}
