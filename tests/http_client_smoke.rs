//! Smoke test: the balanced client reaches every pod through real DNS.

use std::collections::BTreeMap;
use std::time::Duration;

use headless_lb::http::{Client, ServedBy};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::BodyExt;

#[tokio::test]
async fn spreads_requests_over_every_pod() {
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<std::net::IpAddr> = (31..34u8).map(|i| [127, 0, 0, i].into()).collect();
    let same_port = Pod::start_all(&ips).await.unwrap();
    let port = same_port[0].addr().port();
    let ips: Vec<_> = same_port.iter().map(|p| p.addr().ip()).collect();
    dns.set_ips("web.default.svc.cluster.local", &ips, 1);
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .build(&format!("web.default.svc.cluster.local:{port}"))
        .unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..300 {
        let rsp = client.get("/hello").await.unwrap();
        assert_eq!(rsp.status(), 200);
        let served_by = rsp
            .extensions()
            .get::<ServedBy>()
            .copied()
            .expect("ServedBy");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            body,
            served_by.0.to_string(),
            "ServedBy names the pod that answered"
        );
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        same_port[0].last_authority().as_deref(),
        Some(format!("web.default.svc.cluster.local:{port}").as_str())
    );
    wait_for(Duration::from_secs(1), "pending back to 0", || {
        client.stats().endpoints.iter().all(|e| e.pending == 0)
    })
    .await;
}
