//! The metrics (cargo feature `metrics`) as a recorder sees them, over real
//! pods and the in-process DNS server:
//!
//! - every metric `headless_lb::metrics` documents is emitted with its labels
//!   (metrics-util's `DebuggingRecorder`), and a pod removed from DNS ends
//!   with its state series at the terminal 0;
//! - cardinality: 200 pods churned through DNS leave only the live pods'
//!   series in `metrics-exporter-prometheus` with an idle timeout.
//!
//! Each test installs its recorder for its own thread only
//! (`metrics::set_default_local_recorder`) and runs on a current-thread
//! runtime, so that the clients, pods and DNS server it starts all record
//! there and the tests can run in parallel.

#![cfg(feature = "metrics")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use headless_lb::http::Client;
use headless_lb::metrics as m;
use headless_lb::testing::{DnsServer, Pod, wait_for};
use headless_lb::{EndpointState, RefreshPolicy};
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::MetricKindMask;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const SERVICE: &str = "web.default.svc.cluster.local";

fn ip(net: u8, i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, i))
}

/// Labels of a series, by name.
type Labels = BTreeMap<String, String>;

#[tokio::test]
async fn every_documented_metric_is_emitted_with_its_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    // ok, failed (503), not sent (killed: refused connections), timed out (hung).
    let pods = Pod::start_all(&[ip(214, 1), ip(214, 2), ip(214, 3), ip(214, 4)])
        .await
        .unwrap();
    let (ok, failing, killed, hung) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    failing.set_status(StatusCode::SERVICE_UNAVAILABLE);
    hung.set_hang(true);
    let port = ok.addr().port();
    let dns = DnsServer::start().await.unwrap();
    let all: Vec<IpAddr> = pods.iter().map(|p| p.addr().ip()).collect();
    dns.set_ips(SERVICE, &all, 1);
    // Panic mode: the one pod of this name refuses connections.
    dns.set_ips("dead.default.svc.cluster.local", &[ip(214, 9)], 1);

    let target = format!("{SERVICE}:{port}");
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .request_timeout(Some(Duration::from_millis(300)))
        .build(&target)
        .unwrap();
    let dead_target = format!("dead.default.svc.cluster.local:{port}");
    let dead: Client = Client::builder()
        .nameserver(dns.addr())
        .failfast_timeout(Duration::from_millis(300))
        .build(&dead_target)
        .unwrap();
    // Fail-fast and a DNS "no records": a name that does not exist.
    let none_target = format!("none.default.svc.cluster.local:{port}");
    let none: Client = Client::builder()
        .nameserver(dns.addr())
        .failfast_timeout(Duration::from_millis(300))
        .build(&none_target)
        .unwrap();

    wait_for(Duration::from_secs(5), "four pods ready", || {
        let stats = client.stats().endpoints;
        stats.len() == 4 && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;
    // Killed once connected: the next request to it finds the connection refused.
    killed.kill().await;
    for _ in 0..40 {
        let _ = client.get("/").await;
    }
    for _ in 0..3 {
        let _ = dead.get("/").await;
    }
    assert!(none.get("/").await.is_err());

    // The working pod leaves DNS; once it drained its state series read 0.
    dns.set_ips(SERVICE, &all[1..], 1);
    wait_for(Duration::from_secs(5), "the removed pod drained", || {
        client
            .stats()
            .endpoints
            .iter()
            .all(|e| e.address != ok.addr())
    })
    .await;
    // Two samples of the gauges (one a second).
    tokio::time::sleep(m::SAMPLE_INTERVAL * 2 + Duration::from_millis(200)).await;

    let mut series: BTreeMap<&str, Vec<(Labels, DebugValue)>> = BTreeMap::new();
    for (key, _unit, _desc, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let Some(name) = m::ALL.iter().find(|n| **n == key.name()) else {
            continue;
        };
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        series.entry(name).or_default().push((labels, value));
    }
    for name in m::ALL {
        assert!(series.contains_key(name), "{name} not emitted: {series:#?}");
    }
    let find = |name: &str, want: &[(&str, &str)]| -> Vec<&DebugValue> {
        series[name]
            .iter()
            .filter(|(labels, _)| {
                want.iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .collect()
    };
    let counter = |name: &str, want: &[(&str, &str)]| -> u64 {
        find(name, want)
            .iter()
            .map(|v| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    };
    let gauge = |name: &str, want: &[(&str, &str)]| -> Option<f64> {
        find(name, want).first().map(|v| match v {
            DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        })
    };
    let histogram = |name: &str, want: &[(&str, &str)]| -> usize {
        find(name, want)
            .iter()
            .map(|v| match v {
                DebugValue::Histogram(h) => h.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    };

    // Labels: every series has `target`; per-pod series `endpoint`; some a third.
    for (name, list) in &series {
        let per_pod = name.starts_with("headless_lb_endpoint_") || *name == m::REQUESTS_TOTAL;
        let third = match *name {
            m::REQUESTS_TOTAL | m::DNS_LOOKUPS_TOTAL => Some("outcome"),
            m::ENDPOINT_STATE => Some("state"),
            _ => None,
        };
        for (labels, _) in list {
            let mut want = vec!["target"];
            if per_pod {
                want.push("endpoint");
            }
            want.extend(third);
            let have: Vec<&str> = labels.keys().map(String::as_str).collect();
            want.sort_unstable();
            assert_eq!(have, want, "{name} labels");
        }
    }

    let pod = |p: &Pod| p.addr().to_string();
    let t = target.as_str();
    let at = |p: &Pod, outcome: &'static str| {
        counter(
            m::REQUESTS_TOTAL,
            &[("target", t), ("endpoint", &pod(p)), ("outcome", outcome)],
        )
    };
    assert!(at(ok, "ok") > 0, "ok");
    assert!(at(failing, "failed") > 0, "failed");
    assert!(at(killed, "not_sent") > 0, "not sent");
    assert!(at(hung, "timed_out") > 0, "timed out");
    assert!(counter(m::RETRIES_TOTAL, &[("target", t)]) > 0, "retries");
    assert!(
        histogram(m::ENDPOINT_RTT_SECONDS, &[("endpoint", &pod(ok))]) > 0,
        "RTT histogram"
    );
    assert!(
        gauge(
            m::ENDPOINT_RTT_ESTIMATE_SECONDS,
            &[("endpoint", &pod(failing))]
        )
        .is_some_and(|s| s > 0.0),
        "estimate"
    );
    assert!(
        gauge(m::ENDPOINT_PENDING_REQUESTS, &[("endpoint", &pod(failing))]).is_some(),
        "pending"
    );
    let state = |p: &Pod, s: &str| {
        gauge(m::ENDPOINT_STATE, &[("endpoint", &pod(p)), ("state", s)])
            .unwrap_or_else(|| panic!("state {s} of {}", p.addr()))
    };
    assert_eq!(state(killed, "backoff"), 1.0, "the killed pod backs off");
    assert_eq!(state(killed, "ready"), 0.0);
    for s in ["connecting", "ready", "backoff", "draining"] {
        assert_eq!(
            state(ok, s),
            0.0,
            "the drained pod's {s} series is terminal 0"
        );
    }

    let dead_t = dead_target.as_str();
    assert!(counter(m::PANIC_MODE_ENTRIES_TOTAL, &[("target", dead_t)]) > 0);
    assert_eq!(gauge(m::PANIC_MODE, &[("target", dead_t)]), Some(1.0));
    assert_eq!(gauge(m::PANIC_MODE, &[("target", t)]), Some(0.0));
    let none_t = none_target.as_str();
    assert!(counter(m::FAILFAST_ERRORS_TOTAL, &[("target", none_t)]) > 0);
    assert_eq!(counter(m::FAILFAST_ERRORS_TOTAL, &[("target", t)]), 0);

    assert!(counter(m::DNS_LOOKUPS_TOTAL, &[("target", t), ("outcome", "ok")]) > 0);
    assert!(
        counter(
            m::DNS_LOOKUPS_TOTAL,
            &[("target", none_t), ("outcome", "no_records")]
        ) > 0
    );
    assert!(histogram(m::DNS_LOOKUP_DURATION_SECONDS, &[("target", t)]) > 0);
    assert_eq!(gauge(m::DNS_ENDPOINTS, &[("target", t)]), Some(3.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = gauge(m::DNS_LAST_SUCCESS_TIMESTAMP_SECONDS, &[("target", t)]).unwrap();
    assert!((now - last).abs() < 30.0, "last success {last}, now {now}");
}

/// The `endpoint` label values in a Prometheus text rendering.
fn endpoints_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = &l[l.find("endpoint=\"")? + "endpoint=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

/// The `endpoint` values of `ENDPOINT_STATE` series.
fn state_endpoints(text: &str) -> BTreeSet<String> {
    endpoints_in(
        &text
            .lines()
            .filter(|l| l.starts_with(m::ENDPOINT_STATE))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// 200 pods churn through DNS while requests flow; afterwards only the live
/// pods' series remain. The churn runs for about 4 s rather than 60: removal
/// depends on a pod draining and on the exporter's idle timeout, not on how
/// long the churn lasted, and the count during the churn is checked to stay
/// bounded by the pods listed within the last idle timeout.
#[tokio::test]
async fn churned_pods_leave_only_the_live_pods_series() {
    const PODS: usize = 200;
    const LIVE: usize = 10;
    const STEP: usize = 5;
    const IDLE: Duration = Duration::from_secs(2);
    let recorder = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, Some(IDLE))
        .build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let ips: Vec<IpAddr> = (0..PODS)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 3, (i / 100) as u8, (i % 100 + 1) as u8)))
        .collect();
    let pods = Pod::start_all(&ips).await.unwrap();
    let port = pods[0].addr().port();
    let addr = |i: usize| SocketAddr::new(ips[i], port).to_string();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips[..LIVE], 0);
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .refresh_policy(RefreshPolicy {
            min_refresh: Duration::from_millis(100),
            ..RefreshPolicy::default()
        })
        .build(&format!("{SERVICE}:{port}"))
        .unwrap();
    wait_for(Duration::from_secs(5), "the first pods", || {
        client.stats().endpoints.len() == LIVE
    })
    .await;

    let load = tokio::spawn({
        let client = client.clone();
        async move {
            loop {
                let _ = client.get("/").await;
            }
        }
    });

    // Slide the window of listed pods by STEP every 100 ms.
    let mut max_seen = 0;
    let mut start = 0;
    let mut last_render = Instant::now();
    while start + LIVE < PODS {
        start = (start + STEP).min(PODS - LIVE);
        dns.set_ips(SERVICE, &ips[start..start + LIVE], 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_render.elapsed() >= Duration::from_millis(500) {
            // Rendering is what prunes idle series.
            max_seen = max_seen.max(endpoints_in(&handle.render()).len());
            last_render = Instant::now();
        }
    }
    let live: BTreeSet<String> = (start..start + LIVE).map(addr).collect();
    wait_for(Duration::from_secs(5), "the last window listed", || {
        client
            .stats()
            .endpoints
            .iter()
            .filter(|e| e.state != EndpointState::Draining)
            .map(|e| e.address.to_string())
            .collect::<BTreeSet<_>>()
            == live
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.abort();

    // Departed pods' series go within the idle timeout (plus a render).
    let deadline = Instant::now() + IDLE * 3;
    let mut seen = endpoints_in(&handle.render());
    while seen != live && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = endpoints_in(&handle.render());
    }
    let gone: Vec<_> = seen.difference(&live).collect();
    assert!(gone.is_empty(), "series of departed pods remain: {gone:?}");
    assert_eq!(seen, live);
    // The churn went through every pod, and the registry never held much
    // more than the pods listed within an idle timeout (20 windows of 5).
    let every: BTreeSet<String> = (0..PODS).map(addr).collect();
    assert_eq!(every.len(), PODS);
    assert!(
        max_seen <= LIVE + STEP * 20 * 3 / 2,
        "at most {} endpoints' series at once, saw {max_seen}",
        LIVE + STEP * 30
    );
    eprintln!("churn: at most {max_seen} endpoints' series at once; {LIVE} at the end");

    // Live pods keep their series while idle for longer than the idle timeout.
    tokio::time::sleep(IDLE + Duration::from_millis(500)).await;
    let text = handle.render();
    assert_eq!(state_endpoints(&text), live, "{text}");
}
