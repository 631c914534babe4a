//! The `tracing` spans a subscriber sees: one `request` span per request
//! with the target and the chosen pod, the pick's candidates and costs and
//! the retries as events in it; one `dns_refresh` span per DNS lookup.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headless_lb::EndpointState;
use headless_lb::http::Client;
use headless_lb::testing::{DnsServer, Pod, wait_for};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const SERVICE: &str = "web.default.svc.cluster.local";

/// A span as recorded: its name and fields.
#[derive(Debug, Clone, Default)]
struct SpanRecord {
    name: String,
    fields: BTreeMap<String, String>,
}

/// An event as recorded: its message and the name of the span it was in.
#[derive(Debug, Clone)]
struct EventRecord {
    message: String,
    fields: BTreeMap<String, String>,
    span: Option<u64>,
}

#[derive(Default)]
struct Seen {
    spans: BTreeMap<u64, SpanRecord>,
    events: Vec<EventRecord>,
}

struct Recorder(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut record = SpanRecord {
            name: attrs.metadata().name().to_owned(),
            ..SpanRecord::default()
        };
        attrs.record(&mut Fields(&mut record.fields));
        self.0.lock().unwrap().spans.insert(id.into_u64(), record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(record) = self.0.lock().unwrap().spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut record.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let span = ctx.event_span(event).map(|s| s.id().into_u64());
        self.0.lock().unwrap().events.push(EventRecord {
            message,
            fields,
            span,
        });
    }
}

#[tokio::test]
async fn a_span_per_request_and_per_dns_refresh() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let subscriber = tracing_subscriber::registry()
        .with(Recorder(seen.clone()))
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    // This thread only: the test runs on a current-thread runtime.
    let _default = tracing::subscriber::set_default(subscriber);

    let ip = |i| IpAddr::V4(Ipv4Addr::new(127, 0, 217, i));
    let pods = Pod::start_all(&[ip(1), ip(2), ip(3)]).await.unwrap();
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &[ip(1), ip(2), ip(3)], 1);
    let target = format!("{SERVICE}:{port}");
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .build(&target)
        .unwrap();
    wait_for(Duration::from_secs(5), "three pods ready", || {
        let stats = client.stats().endpoints;
        stats.len() == 3 && stats.iter().all(|e| e.state == EndpointState::Ready)
    })
    .await;
    // A pod killed once connected: requests picking it are retried elsewhere.
    pods[2].kill().await;
    for _ in 0..30 {
        client.get("/").await.expect("served by a live pod");
    }

    let seen = seen.lock().unwrap();
    let requests: Vec<(&u64, &SpanRecord)> = seen
        .spans
        .iter()
        .filter(|(_, s)| s.name == "request")
        .collect();
    assert!(requests.len() >= 30, "{} request spans", requests.len());
    let pod_addrs: Vec<String> = pods.iter().map(|p| p.addr().to_string()).collect();
    for (_, span) in &requests {
        assert_eq!(span.fields.get("target"), Some(&target), "{span:?}");
        let endpoint = span.fields.get("endpoint").expect("the chosen pod");
        assert!(pod_addrs.contains(endpoint), "{span:?}");
    }
    let in_request = |e: &&EventRecord| {
        e.span
            .and_then(|id| seen.spans.get(&id))
            .is_some_and(|s| s.name == "request")
    };
    let picks: Vec<&EventRecord> = seen
        .events
        .iter()
        .filter(|e| e.message == "p2c")
        .filter(in_request)
        .collect();
    assert!(!picks.is_empty(), "no p2c event in a request span");
    for key in ["a.endpoint", "a.cost", "b.endpoint", "b.cost", "chosen"] {
        assert!(picks[0].fields.contains_key(key), "{key}: {:?}", picks[0]);
    }
    assert!(
        seen.events
            .iter()
            .filter(in_request)
            .any(|e| e.message.contains("retrying")),
        "no retry event in a request span"
    );

    let refreshes: Vec<&SpanRecord> = seen
        .spans
        .values()
        .filter(|s| s.name == "dns_refresh")
        .collect();
    assert!(!refreshes.is_empty(), "no dns_refresh span");
    assert!(
        refreshes.iter().any(|s| {
            s.fields.get("outcome").map(String::as_str) == Some("ok")
                && s.fields.get("endpoints").map(String::as_str) == Some("3")
        }),
        "{refreshes:?}"
    );
    assert!(
        seen.events.iter().any(|e| {
            e.message == "endpoint added"
                && e.span
                    .and_then(|id| seen.spans.get(&id))
                    .is_some_and(|s| s.name == "dns_refresh")
        }),
        "set changes are events in the dns_refresh span"
    );
}
