//! Early re-resolution through the clients: a pod that refuses connections makes the client look
//! DNS up again soon (rate-limited), instead of waiting out a 30 s TTL. Real pods, real DNS.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use headless_lb::EndpointState;
use headless_lb::http::Client;
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

const SERVICE: &str = "early.default.svc.cluster.local";
/// The record TTL, as CoreDNS's shipped Corefile has it.
const TTL: u32 = 30;

fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

#[tokio::test]
async fn a_killed_pod_deleted_from_dns_leaves_the_set_within_two_seconds_despite_ttl_30() {
    let ips = ips(51, 3);
    let pods = Pod::start_all(&ips).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips, TTL);
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .build(&format!("{SERVICE}:{}", pods[0].addr().port()))
        .unwrap();
    wait_for(Duration::from_secs(5), "three pods ready", || {
        let stats = client.stats().endpoints;
        stats.len() == 3 && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;
    let lookups_before = client.discovery().stats().lookups;

    // Kubernetes: the pod dies and leaves the endpoints at the same moment.
    dns.set_ips(SERVICE, &ips[1..], TTL);
    pods[0].kill().await;
    let killed = Instant::now();
    let gone = pods[0].addr();
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut failed = 0u32;
            while killed.elapsed() < Duration::from_secs(3) {
                match client.get("/").await {
                    Ok(response) => {
                        response.into_body().collect().await.unwrap();
                    }
                    Err(_) => failed += 1,
                }
            }
            failed
        })
    };
    wait_for(
        Duration::from_secs(2),
        "the killed pod leaves the set",
        || !client.discovery().endpoints().contains(&gone),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the killed pod left the set {took:?} after it died (TTL {TTL} s)");
    assert_eq!(
        load.await.unwrap(),
        0,
        "requests failed though two pods served"
    );
    let stats = client.discovery().stats();
    assert!(
        stats.lookups - lookups_before <= 4,
        "{} lookups in 3 s",
        stats.lookups - lookups_before
    );
}

#[tokio::test]
async fn every_pod_refusing_costs_at_most_about_one_lookup_a_second() {
    let ips = ips(52, 3);
    let pods = Pod::start_all(&ips).await.unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips, TTL);
    let client = Client::builder()
        .nameserver(dns.addr())
        .failfast_timeout(Duration::from_millis(200))
        .endpoint_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build::<Full<Bytes>>(&format!("{SERVICE}:{}", pods[0].addr().port()))
        .unwrap();
    wait_for(Duration::from_secs(5), "three pods ready", || {
        client.stats().endpoints.len() == 3
    })
    .await;
    for pod in &pods {
        pod.kill().await;
    }
    dns.reset_counts();
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let _ = client.get("/").await;
        calls += 1;
    }
    let queries = dns.queries();
    eprintln!("{calls} calls against refusing pods in 3 s: {queries} DNS queries");
    assert!(queries >= 2, "no early lookup at all ({queries} queries)");
    // At most one lookup a second (A, and AAAA where the resolver asks for
    // it), plus the one that may be in flight at the start.
    assert!(queries <= 2 * 4, "{queries} DNS queries in 3 s");
}
