//! TLS to the pods over real sockets: TLS pods (`Pod::start_tls`,
//! `GrpcPod::start_tls`) with certificates a test CA issues for the
//! service's name, found through the in-process DNS server, and the
//! balanced clients built with `tls(..)`.
//!
//! Every test uses its own `127.0.14N.x` range, so that tests can run in
//! parallel. Waits are `wait_for` with a deadline, never fixed sleeps.

#![cfg(feature = "tls")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use headless_lb::BuildError;
use headless_lb::balance::EndpointState;
use headless_lb::http::{Client, ConnectError, HttpEndpointBuilder, Protocol};
use headless_lb::testing::{AUTHORITY_HEADER, DnsServer, Pod, TestCa, wait_for};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod examples_support;

const SERVICE: &str = "web.default.svc.cluster.local";
const TTL: u32 = 1;
/// How long pods may take to become Ready (DNS answer + TLS handshakes).
const READY: Duration = Duration::from_secs(10);

/// `127.0.net.1 ..= 127.0.net.n`.
fn ips(net: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, net, i)))
        .collect()
}

async fn dns_for(addrs: &[SocketAddr]) -> DnsServer {
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    dns.set_ips(SERVICE, &ips, TTL);
    dns
}

fn states(client: &Client) -> BTreeMap<SocketAddr, EndpointState> {
    client
        .stats()
        .endpoints
        .into_iter()
        .map(|e| (e.address, e.state))
        .collect()
}

/// The error and its sources, on one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(" <- ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Sends `n` GETs; returns the responses per pod (by body) and the failures.
async fn spread(client: &Client, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut per_pod = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..n {
        match client.get("/").await {
            Ok(rsp) if rsp.status().is_success() => {
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                *per_pod
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            }
            Ok(rsp) => failures.push(format!("status {}", rsp.status())),
            Err(e) => failures.push(chain(&e)),
        }
    }
    (per_pod, failures)
}

/// HTTP/1.1 and HTTP/2 over TLS through the balanced client: ALPN picks
/// the protocol, every pod serves, the service's name is the authority and
/// HTTP/2 requests carry `:scheme https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_by_alpn_to_every_pod() {
    let ca = TestCa::new().unwrap();
    let pods = Pod::start_all_tls(&ips(140, 3), ca.server_config(&[SERVICE]).unwrap())
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let port = addrs[0].port();
    let dns = dns_for(&addrs).await;

    for (protocol, alpn, version) in [
        (Protocol::Http1, &b"http/1.1"[..], http::Version::HTTP_11),
        (Protocol::Http2, &b"h2"[..], http::Version::HTTP_2),
    ] {
        let client: Client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .tls(ca.client_config().unwrap())
            .build(&format!("{SERVICE}:{port}"))
            .unwrap();
        let want: BTreeMap<_, _> = addrs.iter().map(|a| (*a, EndpointState::Ready)).collect();
        wait_for(READY, &format!("{protocol:?}: every pod Ready"), || {
            states(&client) == want
        })
        .await;

        let (per_pod, failures) = spread(&client, 300).await;
        assert!(failures.is_empty(), "{protocol:?}: {failures:?}");
        for addr in &addrs {
            let n = per_pod.get(&addr.to_string()).copied().unwrap_or(0);
            assert!(n > 0, "{protocol:?}: {addr} served none: {per_pod:?}");
        }
        let rsp = client.get("/").await.unwrap();
        assert_eq!(rsp.headers()[AUTHORITY_HEADER], format!("{SERVICE}:{port}"));
        for pod in &pods {
            assert_eq!(pod.last_alpn().as_deref(), Some(alpn), "{protocol:?}");
            assert_eq!(pod.last_version(), Some(version), "{protocol:?}");
        }
        if protocol == Protocol::Http2 {
            for pod in &pods {
                assert_eq!(pod.last_scheme().as_deref(), Some("https"));
            }
        }
    }
}

/// gRPC health over TLS through a tonic-generated client on the balanced
/// channel: every RPC SERVING, every pod used.
#[cfg(feature = "tonic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_over_tls() {
    use headless_lb::grpc::Channel;
    use headless_lb::testing::GrpcPod;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let ca = TestCa::new().unwrap();
    let pods = GrpcPod::start_all_tls(&ips(141, 2), ca.server_config(&[SERVICE]).unwrap())
        .await
        .unwrap();
    let addrs: Vec<SocketAddr> = pods.iter().map(GrpcPod::addr).collect();
    let dns = dns_for(&addrs).await;
    let channel = Channel::builder()
        .nameserver(dns.addr())
        .tls(ca.client_config().unwrap())
        .build(&format!("dns:///{SERVICE}:{}", addrs[0].port()))
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for i in 0..200 {
        let reply = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|s| panic!("RPC {i}: {s:?}"));
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
    for pod in &pods {
        assert!(pod.requests() > 0, "{} served none", pod.addr());
        assert!(pod.connections() > 0);
    }
}

/// A pod whose certificate names another service fails its connects with
/// an error naming the pod and the expected name; it backs off, stays
/// listed, and the other pods serve every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_the_wrong_name_backs_off_while_the_others_serve() {
    let ca = TestCa::new().unwrap();
    let good = Pod::start_all_tls(&ips(142, 2), ca.server_config(&[SERVICE]).unwrap())
        .await
        .unwrap();
    let port = good[0].addr().port();
    let bad_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 142, 3)), port);
    let bad = Pod::start_tls(
        bad_addr,
        ca.server_config(&["other.default.svc.cluster.local"])
            .unwrap(),
    )
    .await
    .unwrap();

    // One pod's service on its own: the connect error is a TLS error that
    // names the pod and the name it was checked against.
    let endpoint = HttpEndpointBuilder::new(Protocol::Http2)
        .authority(format!("{SERVICE}:{port}").parse().unwrap())
        .tls(ca.client_config().unwrap())
        .make::<http_body_util::Empty<bytes::Bytes>>(bad_addr);
    let err = endpoint.ready_oneshot().await.unwrap_err();
    let connect = err
        .downcast_ref::<ConnectError>()
        .unwrap_or_else(|| panic!("not a ConnectError: {}", chain(&*err)));
    let message = connect.to_string();
    assert!(connect.is_tls(), "{message}");
    assert_eq!(connect.addr(), bad_addr);
    assert!(message.contains(&bad_addr.to_string()), "{message}");
    assert!(message.contains(SERVICE), "{message}");
    assert!(message.contains("certificate"), "{message}");

    // Through the balancer.
    let mut addrs: Vec<SocketAddr> = good.iter().map(Pod::addr).collect();
    addrs.push(bad.addr());
    let dns = dns_for(&addrs).await;
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .protocol(Protocol::Http2)
        .tls(ca.client_config().unwrap())
        .build(&format!("{SERVICE}:{port}"))
        .unwrap();
    wait_for(
        READY,
        "the good pods Ready, the bad one backing off",
        || {
            let s = states(&client);
            good.iter()
                .all(|p| s.get(&p.addr()) == Some(&EndpointState::Ready))
                && s.get(&bad_addr) == Some(&EndpointState::Backoff)
        },
    )
    .await;
    let (per_pod, failures) = spread(&client, 300).await;
    assert!(failures.is_empty(), "{failures:?}");
    for pod in &good {
        assert!(per_pod.get(&pod.addr().to_string()).is_some_and(|n| *n > 0));
    }
    assert_eq!(bad.requests(), 0, "a pod that fails TLS answered requests");
    assert!(bad.connections() > 0, "the bad pod was never tried");
    let bad_state = states(&client).get(&bad_addr).copied();
    assert!(
        matches!(
            bad_state,
            Some(EndpointState::Backoff | EndpointState::Connecting)
        ),
        "the bad pod must stay listed and out of picks, is {bad_state:?}"
    );
}

/// A server that requires client certificates: without one the client gets
/// no answer from it; with one issued by the CA it is served.
///
/// Under TLS 1.3 the server rejects a missing certificate after the client
/// finished its handshake, so the client's connect succeeds and its first
/// request fails: over HTTP/1.1 with the server's `CertificateRequired`
/// alert, over HTTP/2 as a closed connection (hyper's connection task
/// holds the alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_by_the_server() {
    let ca = TestCa::new().unwrap();
    let config = ca.server_config_requiring_client_cert(&[SERVICE]).unwrap();
    let pod = Pod::start_tls("127.0.143.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let dns = dns_for(&[pod.addr()]).await;
    let target = format!("{SERVICE}:{}", pod.addr().port());

    for protocol in [Protocol::Http1, Protocol::Http2] {
        let (served, tried) = (pod.requests(), pod.connections());
        let without: Client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .failfast_timeout(Duration::from_millis(500))
            .tls(ca.client_config().unwrap())
            .build(&target)
            .unwrap();
        for _ in 0..3 {
            let err = without
                .get("/")
                .await
                .expect_err("served without a client certificate");
            let text = chain(&err);
            if protocol == Protocol::Http1 {
                assert!(text.contains("CertificateRequired"), "{text}");
            }
        }
        assert_eq!(
            pod.requests(),
            served,
            "{protocol:?}: served without a certificate"
        );
        assert!(
            pod.connections() > tried,
            "{protocol:?}: the pod was never tried"
        );

        let with: Client = Client::builder()
            .nameserver(dns.addr())
            .protocol(protocol)
            .tls(ca.client_config_with_cert("loadgen.default.svc").unwrap())
            .build(&target)
            .unwrap();
        let (per_pod, failures) = spread(&with, 20).await;
        assert!(failures.is_empty(), "{protocol:?}: {failures:?}");
        assert_eq!(per_pod.get(&pod.addr().to_string()), Some(&20));
    }
}

/// A server name no certificate can carry is a build error, not a panic;
/// an IP address is a valid name.
#[tokio::test]
async fn invalid_server_name_is_a_build_error() {
    let ca = TestCa::new().unwrap();
    let err = Client::builder()
        .tls(ca.client_config().unwrap())
        .tls_server_name("not a name!")
        .build::<http_body_util::Full<bytes::Bytes>>("127.0.144.1:8443")
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::ServerName { name, .. } if name == "not a name!"),
        "{err}"
    );
    assert!(
        Client::builder()
            .tls(ca.client_config().unwrap())
            .build::<http_body_util::Full<bytes::Bytes>>("127.0.144.1:8443")
            .is_ok()
    );
    // Without TLS the name is never checked.
    assert!(
        Client::builder()
            .tls_server_name("not a name!")
            .build::<http_body_util::Full<bytes::Bytes>>("127.0.144.1:8443")
            .is_ok()
    );
}

/// `tls_server_name` replaces the target's host: a pod whose certificate
/// names only `web.internal` is verified against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_overrides_the_target_host() {
    let ca = TestCa::new().unwrap();
    let pod = Pod::start_tls(
        "127.0.145.1:0".parse().unwrap(),
        ca.server_config(&["web.internal"]).unwrap(),
    )
    .await
    .unwrap();
    let dns = dns_for(&[pod.addr()]).await;
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .tls(ca.client_config().unwrap())
        .tls_server_name("web.internal")
        .build(&format!("{SERVICE}:{}", pod.addr().port()))
        .unwrap();
    let (per_pod, failures) = spread(&client, 5).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(per_pod.get(&pod.addr().to_string()), Some(&5));
}

/// The command line: `echo_server --tls-cert --tls-key` pods (HTTP and
/// gRPC) and `loadgen` / `http_client` with `--tls-ca`, through the same
/// TLS code path, with 0 errors over both pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_tls_flags() {
    use examples_support::{finish, json_line, spawn};

    let ca = TestCa::new().unwrap();
    let cert = ca.server_cert(&[SERVICE]).unwrap();
    let dir = std::env::temp_dir().join(format!("headless-lb-tls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    std::fs::write(&cert_pem, cert.cert_pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pem()).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let mut protocols = vec!["http"];
    if cfg!(feature = "tonic") {
        protocols.push("grpc");
    }
    for (i, protocol) in protocols.into_iter().enumerate() {
        let ips = ips(147 + i as u8, 2);
        let port = {
            // A port free on both addresses; echo_server binds it just after.
            let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
            first.local_addr().unwrap().port()
        };
        let servers: Vec<_> = ips
            .iter()
            .map(|ip| {
                spawn(
                    "echo_server",
                    &[
                        "--listen".to_owned(),
                        SocketAddr::new(*ip, port).to_string(),
                        "--protocol".to_owned(),
                        protocol.to_owned(),
                        "--tls-cert".to_owned(),
                        path(&cert_pem),
                        "--tls-key".to_owned(),
                        path(&key_pem),
                    ],
                )
            })
            .collect();
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        headless_lb::testing::wait_for_async(READY, "echo_server listening", || async {
            for addr in &addrs {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        let dns = dns_for(&addrs).await;
        let target = format!("{SERVICE}:{port}");
        let ns = dns.addr().to_string();

        let mut args = vec![
            target.as_str(),
            "--nameserver",
            &ns,
            "--protocol",
            protocol,
            "--requests",
            "400",
            "--concurrency",
            "8",
            "--tls-ca",
        ];
        let ca_arg = path(&ca_pem);
        args.push(&ca_arg);
        if protocol == "http" {
            args.push("--http2");
        }
        let report = json_line("loadgen", &finish("loadgen", spawn("loadgen", &args)).await);
        assert_eq!(report["errors"], 0, "{protocol}: {report}");
        assert_eq!(report["requests"], 400, "{protocol}: {report}");
        for addr in &addrs {
            let n = report["per_endpoint"][addr.to_string()]
                .as_u64()
                .unwrap_or(0);
            assert!(n > 0, "{protocol}: {addr} served none: {report}");
        }

        if protocol == "http" {
            let out = finish(
                "http_client",
                spawn(
                    "http_client",
                    &[target.as_str(), "--nameserver", &ns, "--tls-ca", &ca_arg],
                ),
            )
            .await;
            assert_eq!(
                out.code,
                Some(0),
                "http_client: {}\n{}",
                out.stdout,
                out.stderr
            );
            assert_eq!(out.stdout.matches("200 OK").count(), 5, "{}", out.stdout);

            // The wrong name: every connect fails, the run reports errors.
            let out = finish(
                "http_client",
                spawn(
                    "http_client",
                    &[
                        target.as_str(),
                        "--nameserver",
                        &ns,
                        "--tls-ca",
                        &ca_arg,
                        "--tls-server-name",
                        "other.example",
                    ],
                ),
            )
            .await;
            assert_eq!(
                out.code,
                Some(1),
                "http_client with the wrong name: {}",
                out.stdout
            );
        }
        drop(servers);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
