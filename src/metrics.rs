//! What the clients report to dashboards: metrics through the
//! [`metrics`](https://docs.rs/metrics) facade (cargo feature `metrics`) and
//! `tracing` spans.
//!
//! # Metrics
//!
//! The library only *emits*, through the facade; the application installs
//! the exporter it wants (`metrics-exporter-prometheus`, an OpenTelemetry
//! bridge, StatsD) **before** it builds its clients, since each pod's series
//! are registered when discovery adds the pod. Without the feature nothing is
//! compiled in; with it and no exporter installed, every call lands in the
//! facade's no-op recorder.
//!
//! Names follow the Prometheus and OpenTelemetry conventions (units in the
//! name, seconds, `_total` counters). Every series carries `target` (the
//! target as written, e.g. `web.default.svc.cluster.local:8080`); per-pod
//! series also carry `endpoint` (the pod's address, `10.1.2.3:8080`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `headless_lb_requests_total` | counter | target, endpoint, outcome | attempts on the pod, by how they ended: `ok`; `failed` (an error after the request may have reached the pod, a 5xx or gRPC `UNAVAILABLE`, a body that broke off); `not_sent` (never written: the pod's connection failed; retried on a pod the request has not tried, within `failfast_timeout`); `timed_out` (the caller gave up first: `request_timeout`, a gRPC deadline, a dropped future) |
//! | `headless_lb_endpoint_rtt_seconds` | histogram | target, endpoint | time from dispatch to the response head, per response |
//! | `headless_lb_endpoint_rtt_estimate_seconds` | gauge | target, endpoint | the pod's peak-EWMA RTT estimate, what P2C compares (sampled each second) |
//! | `headless_lb_endpoint_pending_requests` | gauge | target, endpoint | requests dispatched to the pod and not complete (sampled each second) |
//! | `headless_lb_endpoint_state` | gauge | target, endpoint, state | 1 for the pod's current state (`connecting`, `ready`, `backoff`, `draining`), 0 for the others; all four 0 once a removed pod has drained (terminal) |
//! | `headless_lb_retries_total` | counter | target | requests re-sent because the previous attempt was never sent: to a pod not tried yet, or (at most `max_retries` times) to one tried |
//! | `headless_lb_failfast_errors_total` | counter | target | requests that found no pod within `failfast_timeout` and failed with `NoEndpoints` (gRPC `UNAVAILABLE`): the "no endpoints" outcome |
//! | `headless_lb_hedges_total` | counter | target | hedged requests: copies sent to a second pod after the hedge delay (see [`HedgePolicy`](crate::HedgePolicy)) |
//! | `headless_lb_hedges_won_total` | counter | target | hedges whose answer was the one returned (it came first, or the original failed) |
//! | `headless_lb_hedges_refused_total` | counter | target | hedges due (the delay passed, another pod was free) that the hedge budget refused |
//! | `headless_lb_panic_mode_entries_total` | counter | target | times every listed pod was backing off, so picks went to all of them (panic mode) |
//! | `headless_lb_panic_mode` | gauge | target | 1 while in panic mode, else 0 |
//! | `headless_lb_dns_lookups_total` | counter | target, outcome | DNS lookups: `ok`, `no_records` (NXDOMAIN or empty), `timeout`, `error` (SERVFAIL, REFUSED, network) |
//! | `headless_lb_dns_lookup_duration_seconds` | histogram | target | how long each lookup took |
//! | `headless_lb_dns_endpoints` | gauge | target | pods in the published set |
//! | `headless_lb_dns_last_success_timestamp_seconds` | gauge | target | Unix time of the last good answer; its age is `time() - headless_lb_dns_last_success_timestamp_seconds` |
//!
//! # Bounded cardinality
//!
//! The facade has no "remove": a series leaves an exporter when the exporter
//! drops it. The library keeps every live pod's series fresh (it touches
//! them once a second, [`SAMPLE_INTERVAL`]) and stops touching a pod's
//! series once the pod has left DNS and its last in-flight request ended,
//! after setting its `headless_lb_endpoint_state` series to 0 (the terminal
//! value). An exporter with an idle timeout then drops them; with
//! `metrics-exporter-prometheus`:
//!
//! ```ignore
//! PrometheusBuilder::new()
//!     .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(60)))
//!     .install()?;
//! ```
//!
//! The timeout must be well above [`SAMPLE_INTERVAL`] (1 s); a minute or more
//! also keeps the DNS series of a client that looks up every 30 s. Without
//! an idle timeout a churning service grows the registry by one set of
//! series per pod ever seen; their state series then read 0.
//!
//! # Spans
//!
//! - `request` (debug, target `headless_lb::balance`): one per request through a balanced client, with
//!   `target` and the chosen `endpoint`; the pick's two candidates and their
//!   costs are a trace event (`p2c`) in it, each retry a debug event.
//! - `dns_refresh` (debug, target `headless_lb::discover`): one per DNS lookup, with `target`, `outcome` and
//!   `endpoints`; the set's changes and lookup warnings are events in it.
//!
//! With no subscriber, or one that filters out debug, a span costs a cached
//! callsite check (see `benches/balance.rs`).

use std::time::Duration;

/// Attempts on a pod by outcome (counter; target, endpoint, outcome).
pub const REQUESTS_TOTAL: &str = "headless_lb_requests_total";
/// Dispatch-to-response-head time per response (histogram, seconds; target, endpoint).
pub const ENDPOINT_RTT_SECONDS: &str = "headless_lb_endpoint_rtt_seconds";
/// The pod's peak-EWMA estimate (gauge, seconds; target, endpoint).
pub const ENDPOINT_RTT_ESTIMATE_SECONDS: &str = "headless_lb_endpoint_rtt_estimate_seconds";
/// Requests pending on the pod (gauge; target, endpoint).
pub const ENDPOINT_PENDING_REQUESTS: &str = "headless_lb_endpoint_pending_requests";
/// 1 for the pod's state, 0 for the others (gauge; target, endpoint, state).
pub const ENDPOINT_STATE: &str = "headless_lb_endpoint_state";
/// Requests re-sent elsewhere after a never-sent attempt (counter; target).
pub const RETRIES_TOTAL: &str = "headless_lb_retries_total";
/// Requests that failed with `NoEndpoints` (counter; target).
pub const FAILFAST_ERRORS_TOTAL: &str = "headless_lb_failfast_errors_total";
/// Hedges sent to a second pod (counter; target).
pub const HEDGES_TOTAL: &str = "headless_lb_hedges_total";
/// Hedges whose answer was returned (counter; target).
pub const HEDGES_WON_TOTAL: &str = "headless_lb_hedges_won_total";
/// Hedges refused by the hedge budget (counter; target).
pub const HEDGES_REFUSED_TOTAL: &str = "headless_lb_hedges_refused_total";
/// Entries into panic mode (counter; target).
pub const PANIC_MODE_ENTRIES_TOTAL: &str = "headless_lb_panic_mode_entries_total";
/// 1 while in panic mode (gauge; target).
pub const PANIC_MODE: &str = "headless_lb_panic_mode";
/// DNS lookups by outcome (counter; target, outcome).
pub const DNS_LOOKUPS_TOTAL: &str = "headless_lb_dns_lookups_total";
/// Lookup latency (histogram, seconds; target).
pub const DNS_LOOKUP_DURATION_SECONDS: &str = "headless_lb_dns_lookup_duration_seconds";
/// Pods in the published set (gauge; target).
pub const DNS_ENDPOINTS: &str = "headless_lb_dns_endpoints";
/// Unix time of the last good DNS answer (gauge, seconds; target).
pub const DNS_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "headless_lb_dns_last_success_timestamp_seconds";

/// Every metric above, for tests and dashboards that list them.
pub const ALL: [&str; 16] = [
    REQUESTS_TOTAL,
    ENDPOINT_RTT_SECONDS,
    ENDPOINT_RTT_ESTIMATE_SECONDS,
    ENDPOINT_PENDING_REQUESTS,
    ENDPOINT_STATE,
    RETRIES_TOTAL,
    FAILFAST_ERRORS_TOTAL,
    HEDGES_TOTAL,
    HEDGES_WON_TOTAL,
    HEDGES_REFUSED_TOTAL,
    PANIC_MODE_ENTRIES_TOTAL,
    PANIC_MODE,
    DNS_LOOKUPS_TOTAL,
    DNS_LOOKUP_DURATION_SECONDS,
    DNS_ENDPOINTS,
    DNS_LAST_SUCCESS_TIMESTAMP_SECONDS,
];

/// How often the balancer samples its gauges and touches every live pod's
/// series, so that an exporter's idle timeout removes only departed pods'.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How a request attempt ended, as [`REQUESTS_TOTAL`]'s `outcome` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RequestOutcome {
    Ok = 0,
    Failed = 1,
    NotSent = 2,
    TimedOut = 3,
}

impl RequestOutcome {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Failed,
            2 => Self::NotSent,
            _ => Self::TimedOut,
        }
    }
}

// ===== spans (always compiled: tracing is a plain dependency) =====

/// The span of one request through a balancer.
#[inline]
pub(crate) fn request_span(target: &str) -> tracing::Span {
    tracing::debug_span!(
        target: "headless_lb::balance",
        "request",
        target = %target,
        endpoint = tracing::field::Empty
    )
}

/// Records the chosen pod in the current request span, if it is enabled.
#[inline]
pub(crate) fn record_endpoint(addr: std::net::SocketAddr) {
    if tracing::enabled!(target: "headless_lb::balance", tracing::Level::DEBUG) {
        tracing::Span::current().record("endpoint", tracing::field::display(addr));
    }
}

/// The span of one DNS refresh.
pub(crate) fn dns_span(target: &crate::Target) -> tracing::Span {
    tracing::debug_span!(
        target: "headless_lb::discover",
        "dns_refresh",
        target = %target,
        outcome = tracing::field::Empty,
        endpoints = tracing::field::Empty
    )
}

fn dns_outcome(result: &Result<crate::Resolution, crate::ResolveError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) if e.is_no_records() => "no_records",
        Err(e) if e.is_timeout() => "timeout",
        Err(_) => "error",
    }
}

/// One DNS lookup finished after `took`: its span fields and metrics.
pub(crate) fn dns_lookup(
    span: &tracing::Span,
    target: &crate::Target,
    result: &Result<crate::Resolution, crate::ResolveError>,
    took: Duration,
) {
    let outcome = dns_outcome(result);
    span.record("outcome", outcome);
    if let Ok(resolution) = result {
        span.record("endpoints", resolution.endpoints.len());
    }
    imp::dns_lookup(target, outcome, result.is_ok(), took);
}

/// The published set now holds `n` pods.
pub(crate) fn dns_endpoints(target: &crate::Target, n: usize) {
    imp::dns_endpoints(target, n);
}

pub(crate) use imp::{BalancerMetrics, EndpointMetrics, Ticker};

// ===== with the `metrics` feature =====

#[cfg(feature = "metrics")]
mod imp {
    use std::fmt;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, SystemTime};

    use metrics::{Counter, Gauge, Key, Label, Level, Metadata, SharedString, Unit};

    use super::*;
    use crate::balance::EndpointState;
    use crate::balance::Load;

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    const STATES: [(EndpointState, &str); 4] = [
        (EndpointState::Connecting, "connecting"),
        (EndpointState::Ready, "ready"),
        (EndpointState::Backoff, "backoff"),
        (EndpointState::Draining, "draining"),
    ];

    /// Describes every metric to the installed recorder (help text, unit).
    fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            REQUESTS_TOTAL,
            "Request attempts on a pod by outcome: ok, failed, not_sent (never written; retried elsewhere), timed_out (the caller gave up)."
        );
        describe_histogram!(
            ENDPOINT_RTT_SECONDS,
            Unit::Seconds,
            "Time from dispatch to the response head, per response."
        );
        describe_gauge!(
            ENDPOINT_RTT_ESTIMATE_SECONDS,
            Unit::Seconds,
            "The pod's peak-EWMA round-trip-time estimate."
        );
        describe_gauge!(
            ENDPOINT_PENDING_REQUESTS,
            "Requests dispatched to the pod and not complete."
        );
        describe_gauge!(
            ENDPOINT_STATE,
            "1 for the pod's state (connecting, ready, backoff, draining), 0 for the others; all 0 once a removed pod drained."
        );
        describe_counter!(
            RETRIES_TOTAL,
            "Requests re-sent because the previous attempt was never sent (to a pod not tried yet, or to one tried)."
        );
        describe_counter!(
            FAILFAST_ERRORS_TOTAL,
            "Requests that found no pod within failfast_timeout (NoEndpoints)."
        );
        describe_counter!(
            HEDGES_TOTAL,
            "Hedged requests: copies sent to a second pod after the hedge delay."
        );
        describe_counter!(
            HEDGES_WON_TOTAL,
            "Hedges whose answer was the one returned."
        );
        describe_counter!(
            HEDGES_REFUSED_TOTAL,
            "Hedges due that the hedge budget refused."
        );
        describe_counter!(
            PANIC_MODE_ENTRIES_TOTAL,
            "Times every pod was backing off and picks went to all of them."
        );
        describe_gauge!(PANIC_MODE, "1 while every pod is backing off.");
        describe_counter!(
            DNS_LOOKUPS_TOTAL,
            "DNS lookups by outcome: ok, no_records, timeout, error."
        );
        describe_histogram!(
            DNS_LOOKUP_DURATION_SECONDS,
            Unit::Seconds,
            "How long each DNS lookup took."
        );
        describe_gauge!(DNS_ENDPOINTS, "Pods in the published set.");
        describe_gauge!(
            DNS_LAST_SUCCESS_TIMESTAMP_SECONDS,
            Unit::Seconds,
            "Unix time of the last good DNS answer."
        );
    }

    /// One pod's series, registered when discovery adds the pod.
    ///
    /// Handles are held rather than looked up per use: building a [`Key`]
    /// costs about 300 ns (label vector, hash), too much on the request path.
    /// Their label values are shared strings: the target's is shared by every
    /// series of the balancer, the pod's by the series of this pod, so that
    /// neither this struct nor a recorder's copies of the keys allocate them
    /// again. (The metrics facade does not say whether a recorder is
    /// installed, so the handles are registered either way; without one they
    /// are the facade's no-op handles, which allocate nothing.)
    pub(crate) struct EndpointMetrics {
        outcomes: [Counter; 4],
        /// Looked up per response rather than held: an exporter's idle
        /// timeout may drop an idle pod's histogram, and a held handle would
        /// then record into nothing.
        rtt: Key,
        estimate: Gauge,
        pending: Gauge,
        states: [Gauge; 4],
    }

    impl EndpointMetrics {
        /// Registers the series of the pod at `addr` in `balancer`'s target.
        pub(crate) fn new(balancer: &BalancerMetrics, addr: SocketAddr) -> Self {
            let target = SharedString::from(balancer.target.clone());
            let endpoint = SharedString::from(Arc::<str>::from(addr.to_string()));
            let labels = |extra: Option<(&'static str, &'static str)>| {
                let base = [
                    Label::new("target", target.clone()),
                    Label::new("endpoint", endpoint.clone()),
                ];
                let extra = extra.map(|(k, v)| Label::new(k, v));
                // Exactly sized: the held key keeps its vector.
                base.into_iter().chain(extra).collect::<Vec<_>>()
            };
            let counter = |outcome| {
                metrics::with_recorder(|r| {
                    r.register_counter(
                        &Key::from_parts(REQUESTS_TOTAL, labels(Some(("outcome", outcome)))),
                        &METADATA,
                    )
                })
            };
            let gauge = |name: &'static str, extra| {
                metrics::with_recorder(|r| {
                    r.register_gauge(&Key::from_parts(name, labels(extra)), &METADATA)
                })
            };
            let metrics = Self {
                outcomes: [
                    counter("ok"),
                    counter("failed"),
                    counter("not_sent"),
                    counter("timed_out"),
                ],
                rtt: Key::from_parts(ENDPOINT_RTT_SECONDS, labels(None)),
                estimate: gauge(ENDPOINT_RTT_ESTIMATE_SECONDS, None),
                pending: gauge(ENDPOINT_PENDING_REQUESTS, None),
                states: STATES.map(|(_, name)| gauge(ENDPOINT_STATE, Some(("state", name)))),
            };
            metrics.state(EndpointState::Connecting);
            metrics
        }

        /// A request attempt ended.
        #[inline]
        pub(crate) fn request_done(&self, outcome: RequestOutcome) {
            self.outcomes[outcome as usize].increment(1);
        }

        /// A response arrived `rtt` after dispatch.
        #[inline]
        pub(crate) fn rtt(&self, rtt: Duration) {
            metrics::with_recorder(|r| r.register_histogram(&self.rtt, &METADATA))
                .record(rtt.as_secs_f64());
        }

        /// The pod moved to `state`.
        pub(crate) fn state(&self, state: EndpointState) {
            for ((s, _), gauge) in STATES.iter().zip(&self.states) {
                gauge.set(if *s == state { 1.0 } else { 0.0 });
            }
        }

        /// The periodic sample: gauges from `load`, and a touch of every
        /// series so that an idle timeout keeps them.
        pub(crate) fn sample(&self, load: &Load, state: EndpointState, now: tokio::time::Instant) {
            self.pending
                .set(load.pending.load(Ordering::Relaxed) as f64);
            self.estimate.set(load.rtt.estimate_ns(now).max(0.0) / 1e9);
            self.state(state);
            for counter in &self.outcomes {
                counter.increment(0);
            }
        }
    }

    impl Drop for EndpointMetrics {
        /// The pod is gone and drained: its state series read 0 from now
        /// on, and nothing touches its series again.
        fn drop(&mut self) {
            for gauge in &self.states {
                gauge.set(0.0);
            }
            self.pending.set(0.0);
        }
    }

    impl fmt::Debug for EndpointMetrics {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EndpointMetrics").finish_non_exhaustive()
        }
    }

    /// One balancer's per-target series.
    #[derive(Clone)]
    pub(crate) struct BalancerMetrics {
        retries: Counter,
        failfast: Counter,
        /// Hedges sent, won, refused by the budget.
        hedges: [Counter; 3],
        panic_entries: Counter,
        panic: Gauge,
        /// The `target` label's value, shared with the balancer's endpoints' series.
        target: Arc<str>,
        in_panic: Arc<AtomicBool>,
    }

    impl BalancerMetrics {
        pub(crate) fn new(target: &str) -> Self {
            describe();
            let target: Arc<str> = target.into();
            let t = SharedString::from(target.clone());
            Self {
                retries: metrics::counter!(RETRIES_TOTAL, "target" => t.clone()),
                failfast: metrics::counter!(FAILFAST_ERRORS_TOTAL, "target" => t.clone()),
                hedges: [HEDGES_TOTAL, HEDGES_WON_TOTAL, HEDGES_REFUSED_TOTAL]
                    .map(|name| metrics::counter!(name, "target" => t.clone())),
                panic_entries: metrics::counter!(PANIC_MODE_ENTRIES_TOTAL, "target" => t.clone()),
                panic: metrics::gauge!(PANIC_MODE, "target" => t),
                target,
                in_panic: Default::default(),
            }
        }

        #[inline]
        pub(crate) fn retry(&self) {
            self.retries.increment(1);
        }

        #[inline]
        pub(crate) fn failfast(&self) {
            self.failfast.increment(1);
        }

        #[inline]
        pub(crate) fn hedge_sent(&self) {
            self.hedges[0].increment(1);
        }

        #[inline]
        pub(crate) fn hedge_won(&self) {
            self.hedges[1].increment(1);
        }

        #[inline]
        pub(crate) fn hedge_refused(&self) {
            self.hedges[2].increment(1);
        }

        /// The published snapshot is (or is not) in panic mode.
        pub(crate) fn panic_mode(&self, panic: bool) {
            if self.in_panic.swap(panic, Ordering::Relaxed) != panic {
                if panic {
                    self.panic_entries.increment(1);
                }
                self.panic.set(if panic { 1.0 } else { 0.0 });
            }
        }

        /// Keeps the per-target series fresh (see [`super::SAMPLE_INTERVAL`]).
        pub(crate) fn sample(&self) {
            self.retries.increment(0);
            self.failfast.increment(0);
            for counter in &self.hedges {
                counter.increment(0);
            }
            self.panic_entries.increment(0);
            let panic = self.in_panic.load(Ordering::Relaxed);
            self.panic.set(if panic { 1.0 } else { 0.0 });
        }
    }

    impl Default for BalancerMetrics {
        /// No-op handles, until [`BalancerMetrics::new`] registers the real ones.
        fn default() -> Self {
            Self {
                retries: Counter::noop(),
                failfast: Counter::noop(),
                hedges: [Counter::noop(), Counter::noop(), Counter::noop()],
                panic_entries: Counter::noop(),
                panic: Gauge::noop(),
                target: "".into(),
                in_panic: Default::default(),
            }
        }
    }

    impl fmt::Debug for BalancerMetrics {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("BalancerMetrics")
                .field("target", &self.target)
                .finish_non_exhaustive()
        }
    }

    /// Fires every [`SAMPLE_INTERVAL`].
    pub(crate) struct Ticker(tokio::time::Interval);

    impl Ticker {
        pub(crate) fn new() -> Self {
            let mut interval = tokio::time::interval_at(
                tokio::time::Instant::now() + SAMPLE_INTERVAL,
                SAMPLE_INTERVAL,
            );
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Self(interval)
        }

        pub(crate) async fn tick(&mut self) {
            self.0.tick().await;
        }
    }

    pub(super) fn dns_lookup(
        target: &crate::Target,
        outcome: &'static str,
        ok: bool,
        took: Duration,
    ) {
        describe();
        let t = target.to_string();
        metrics::counter!(DNS_LOOKUPS_TOTAL, "target" => t.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(DNS_LOOKUP_DURATION_SECONDS, "target" => t.clone())
            .record(took.as_secs_f64());
        if ok {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!(DNS_LAST_SUCCESS_TIMESTAMP_SECONDS, "target" => t)
                .set(now.as_secs_f64());
        }
    }

    pub(super) fn dns_endpoints(target: &crate::Target, n: usize) {
        metrics::gauge!(DNS_ENDPOINTS, "target" => target.to_string()).set(n as f64);
    }
}

// ===== without it: nothing =====

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::RequestOutcome;
    use crate::balance::{EndpointState, Load};

    #[derive(Debug)]
    pub(crate) struct EndpointMetrics;

    impl EndpointMetrics {
        #[inline(always)]
        pub(crate) fn new(_: &BalancerMetrics, _: SocketAddr) -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn request_done(&self, _: RequestOutcome) {}
        #[inline(always)]
        pub(crate) fn rtt(&self, _: Duration) {}
        #[inline(always)]
        pub(crate) fn state(&self, _: EndpointState) {}
        #[inline(always)]
        pub(crate) fn sample(&self, _: &Load, _: EndpointState, _: tokio::time::Instant) {}
    }

    #[derive(Debug, Clone, Default)]
    pub(crate) struct BalancerMetrics;

    impl BalancerMetrics {
        #[inline(always)]
        pub(crate) fn new(_: &str) -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn retry(&self) {}
        #[inline(always)]
        pub(crate) fn failfast(&self) {}
        #[inline(always)]
        pub(crate) fn hedge_sent(&self) {}
        #[inline(always)]
        pub(crate) fn hedge_won(&self) {}
        #[inline(always)]
        pub(crate) fn hedge_refused(&self) {}
        #[inline(always)]
        pub(crate) fn panic_mode(&self, _: bool) {}
        #[inline(always)]
        pub(crate) fn sample(&self) {}
    }

    /// Never fires: nothing to sample.
    pub(crate) struct Ticker;

    impl Ticker {
        pub(crate) fn new() -> Self {
            Self
        }
        pub(crate) async fn tick(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    #[inline(always)]
    pub(super) fn dns_lookup(_: &crate::Target, _: &'static str, _: bool, _: Duration) {}
    #[inline(always)]
    pub(super) fn dns_endpoints(_: &crate::Target, _: usize) {}
}
