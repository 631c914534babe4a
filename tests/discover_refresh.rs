//! Timer logic of the refresh loop, on tokio's paused clock through a fake `Resolve`.
//!
//! Real-socket DNS behaviour is covered in `dns_discover.rs`; here only the
//! schedule and the set bookkeeping are under test, exactly and instantly.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use headless_lb::resolve::ResolveFuture;
use headless_lb::{
    Discovery, DnsDiscover, EmptyAnswer, RefreshPolicy, Resolution, Resolve, ResolveError, Target,
};
use tokio::time::Instant;
use tower::discover::Change;

/// One scripted answer; `Hang` never completes.
#[derive(Clone)]
enum Step {
    Answer(Vec<u16>, u64),
    NoRecords(Option<u64>),
    ServFail,
    Hang,
}

/// A resolver that plays a script (repeating the last step) and records when it was asked.
#[derive(Clone, Default)]
struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(steps: &[Step]) -> Self {
        let s = Scripted::default();
        s.steps.lock().unwrap().extend(steps.iter().cloned());
        s
    }

    fn push(&self, step: Step) {
        self.steps.lock().unwrap().push_back(step);
    }

    /// Seconds (since `start`) at which lookups happened.
    fn call_times(&self, start: Instant) -> Vec<f64> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.duration_since(start).as_millis() as f64) / 1000.0)
            .collect()
    }
}

fn addrs(ports: &[u16]) -> BTreeSet<SocketAddr> {
    ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 11], *p)))
        .collect()
}

impl Resolve for Scripted {
    fn resolve(&self, target: &Target) -> ResolveFuture {
        self.calls.lock().unwrap().push(Instant::now());
        let step = {
            let mut steps = self.steps.lock().unwrap();
            if steps.len() > 1 {
                steps.pop_front().unwrap()
            } else {
                steps.front().cloned().unwrap_or(Step::Hang)
            }
        };
        let name = target.to_string();
        Box::pin(async move {
            match step {
                Step::Answer(ports, ttl) => Ok(Resolution {
                    endpoints: addrs(&ports),
                    ttl: Duration::from_secs(ttl),
                }),
                Step::NoRecords(neg) => Err(ResolveError::NoRecords {
                    name,
                    negative_ttl: neg.map(Duration::from_secs),
                }),
                Step::ServFail => Err(ResolveError::ServerFailure {
                    name,
                    code: "SERVFAIL".into(),
                }),
                Step::Hang => futures::future::pending().await,
            }
        })
    }
}

fn target() -> Target {
    "web.default.svc.cluster.local:8080".parse().unwrap()
}

fn exact() -> RefreshPolicy {
    RefreshPolicy {
        jitter: 0.0,
        ..RefreshPolicy::default()
    }
}

/// Lets the spawned refresh task run everything that is due.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn run_for(secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    // Advance in small steps so each timer fires at its own instant.
    while Instant::now() < end {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn refreshes_when_the_ttl_runs_out() {
    let dns = Scripted::new(&[Step::Answer(vec![1], 2)]);
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    run_for(6.05).await;
    assert_eq!(dns.call_times(start), vec![0.0, 2.0, 4.0, 6.0]);
    assert_eq!(d.stats().ttl, Some(Duration::from_secs(2)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn clamps_ttl_zero_to_min_refresh_and_long_ttls_to_max_refresh() {
    let zero = Scripted::new(&[Step::Answer(vec![1], 0)]);
    let long = Scripted::new(&[Step::Answer(vec![1], 86_400)]);
    let start = Instant::now();
    let _a = Discovery::spawn_with_policy(target(), Arc::new(zero.clone()), exact());
    let _b = Discovery::spawn_with_policy(target(), Arc::new(long.clone()), exact());
    settle().await;
    run_for(61.0).await;
    assert_eq!(
        zero.call_times(start).len(),
        62,
        "TTL 0 → one lookup a second"
    );
    assert_eq!(long.call_times(start), vec![0.0, 30.0, 60.0]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keeps_last_good_set_and_backs_off_while_dns_fails() {
    let dns = Scripted::new(&[
        Step::Answer(vec![1, 2], 5),
        Step::Hang, // lookup timeout (10 s) counts as a transient failure
        Step::ServFail,
        Step::ServFail,
        Step::ServFail,
        Step::Answer(vec![2, 3], 5),
    ]);
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    assert_eq!(*d.endpoints(), addrs(&[1, 2]));
    run_for(20.5).await;
    let stats = d.stats();
    assert_eq!(*d.endpoints(), addrs(&[1, 2]), "set kept while DNS fails");
    assert_eq!(stats.consecutive_failures, 3);
    assert!(matches!(
        stats.last_error,
        Some(ResolveError::ServerFailure { .. })
    ));
    // 0: answer; 5: hangs until 15 (timeout); +1 → 16 SERVFAIL; +2 → 18; +4 → 22.
    assert_eq!(dns.call_times(start), vec![0.0, 5.0, 16.0, 18.0]);
    // +4 → 22 SERVFAIL; +8 → 30 the new answer.
    run_for(10.0).await;
    assert_eq!(
        dns.call_times(start),
        vec![0.0, 5.0, 16.0, 18.0, 22.0, 30.0]
    );
    assert_eq!(
        *d.endpoints(),
        addrs(&[2, 3]),
        "change made meanwhile is picked up"
    );
    assert_eq!(d.stats().consecutive_failures, 0);
    assert_eq!(d.stats().last_error, None);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nxdomain_keeps_the_set_by_default_and_clears_it_when_asked() {
    for (mode, expect_empty) in [
        (EmptyAnswer::KeepLastGood, false),
        (EmptyAnswer::Clear, true),
    ] {
        let dns = Scripted::new(&[Step::Answer(vec![1, 2], 1), Step::NoRecords(Some(3))]);
        let policy = RefreshPolicy {
            empty_answer: mode,
            ..exact()
        };
        let start = Instant::now();
        let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), policy);
        settle().await;
        run_for(4.5).await;
        assert_eq!(d.endpoints().is_empty(), expect_empty, "{mode:?}");
        assert!(
            d.stats()
                .last_error
                .as_ref()
                .is_some_and(|e| e.is_no_records())
        );
        // The negative TTL (3 s) paces the retries.
        assert_eq!(dns.call_times(start), vec![0.0, 1.0, 4.0], "{mode:?}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nxdomain_before_any_answer_gives_an_empty_set_and_keeps_trying() {
    let dns = Scripted::new(&[
        Step::NoRecords(None),
        Step::NoRecords(None),
        Step::Answer(vec![7], 30),
    ]);
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    assert!(d.endpoints().is_empty());
    assert_eq!(d.stats().generation, 0);
    run_for(2.05).await;
    assert_eq!(*d.endpoints(), addrs(&[7]));
    assert_eq!(d.stats().generation, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refresh_that_changes_nothing_emits_nothing() {
    let dns = Scripted::new(&[Step::Answer(vec![1, 2], 1)]);
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    let made = Arc::new(Mutex::new(Vec::new()));
    let log = made.clone();
    let mut discover = DnsDiscover::from_fn(d.clone(), move |addr| {
        log.lock().unwrap().push(addr);
        addr.port()
    });
    let mut seen = Vec::new();
    for _ in 0..2 {
        match discover.next().await.unwrap().unwrap() {
            Change::Insert(addr, port) => {
                assert_eq!(addr.port(), port);
                seen.push(addr)
            }
            Change::Remove(addr) => panic!("unexpected remove of {addr}"),
        }
    }
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), addrs(&[1, 2]));
    run_for(5.0).await;
    assert!(dns.call_times(Instant::now()).len() >= 5);
    assert_eq!(d.stats().generation, 1, "unchanged answers publish nothing");
    // Nothing more is ready: the stream stays pending.
    assert!(futures::poll!(discover.next()).is_pending());
    assert_eq!(made.lock().unwrap().len(), 2, "services made once");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dns_discover_emits_only_differences_and_keeps_unchanged_services() {
    let dns = Scripted::new(&[Step::Answer(vec![1, 2, 3], 1)]);
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    let mut discover = DnsDiscover::from_fn(d, |addr| addr);
    let mut changes = Vec::new();
    for _ in 0..3 {
        changes.push(discover.next().await.unwrap().unwrap());
    }
    dns.push(Step::Answer(vec![2, 3, 4, 5], 1));
    // The scripted resolver repeats its last step after the queue drains.
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(match discover.next().await.unwrap().unwrap() {
            Change::Insert(a, _) => format!("+{}", a.port()),
            Change::Remove(a) => format!("-{}", a.port()),
        });
    }
    assert_eq!(later, vec!["-1", "+4", "+5"]);
    assert!(futures::poll!(discover.next()).is_pending());
}

// ===== early re-resolution (Discovery::resolve_now) =====

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn resolve_now_from_a_crowd_costs_at_most_one_extra_lookup_a_second() {
    // TTL 30: without resolve_now there would be one lookup in these 10 s.
    let dns = Scripted::new(&[Step::Answer(vec![1], 30)]);
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    // 1000 requests over 10 s, one every 10 ms, from this task and (every
    // 100th) from a plain OS thread: resolve_now needs no runtime.
    for i in 0..1000 {
        if i % 100 == 0 {
            let other = d.clone();
            std::thread::spawn(move || other.resolve_now())
                .join()
                .unwrap();
        } else {
            d.resolve_now();
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        settle().await;
    }
    let times = dns.call_times(start);
    assert!(
        times.len() <= 11,
        "at most one extra lookup a second: {times:?}"
    );
    assert!(times.len() >= 10, "requests were served: {times:?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 1.0,
            "lookups 1 s apart at least: {times:?}"
        );
    }
    assert_eq!(d.stats().early_lookups, times.len() as u64 - 1);
    // Nobody asks any more: the TTL schedule carries on from the last answer.
    let last = *times.last().unwrap();
    run_for(30.05).await;
    let after = dns.call_times(start);
    assert_eq!(after.len(), times.len() + 1, "{after:?}");
    assert!(
        (after[after.len() - 1] - (last + 30.0)).abs() < 0.01,
        "{after:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn resolve_now_long_after_a_lookup_is_served_at_once_and_the_ttl_restarts_from_it() {
    let dns = Scripted::new(&[Step::Answer(vec![1], 30), Step::Answer(vec![2], 30)]);
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    run_for(5.0).await;
    d.resolve_now();
    settle().await;
    assert_eq!(dns.call_times(start), vec![0.0, 5.0]);
    assert_eq!(*d.endpoints(), addrs(&[2]), "the early answer is published");
    run_for(30.05).await;
    assert_eq!(dns.call_times(start), vec![0.0, 5.0, 35.0]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn resolve_now_does_not_cut_a_backoff_short() {
    let dns = Scripted::new(&[
        Step::Answer(vec![1], 1),
        Step::ServFail, // at 1 s: retry after 1 s
        Step::ServFail, // at 2 s: retry after 2 s
        Step::Answer(vec![1], 30),
    ]);
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), exact());
    settle().await;
    run_for(2.5).await;
    for _ in 0..10 {
        d.resolve_now();
        run_for(0.1).await;
    }
    run_for(1.0).await;
    assert_eq!(dns.call_times(start), vec![0.0, 1.0, 2.0, 4.0]);
    assert_eq!(d.stats().early_lookups, 0);
}

// ===== bounded staleness (RefreshPolicy::max_stale) =====

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nxdomain_keeps_the_set_until_max_stale_then_clears_it() {
    let dns = Scripted::new(&[Step::Answer(vec![1, 2], 2), Step::NoRecords(Some(3))]);
    let policy = RefreshPolicy {
        max_stale: Some(Duration::from_secs(10)),
        ..exact()
    };
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), policy);
    settle().await;
    assert_eq!(d.stats().last_confirmed, Some(start));
    run_for(9.9).await;
    assert_eq!(*d.endpoints(), addrs(&[1, 2]), "kept before max_stale");
    run_for(0.2).await;
    assert!(d.endpoints().is_empty(), "cleared at max_stale");
    // 0 answer; 2, 5, 8 NXDOMAIN paced by the negative TTL (3 s), the last
    // delay cut to 2 s so that the lookup at 10 s clears the set on time.
    assert_eq!(dns.call_times(start), vec![0.0, 2.0, 5.0, 8.0, 10.0]);
    assert_eq!(d.stats().last_confirmed, Some(start));
    assert_eq!(d.stats().endpoints, 0);

    // Records back: the set comes back, with no restart (the lookup at 13 s
    // still says NXDOMAIN, the one at 16 s answers).
    dns.push(Step::Answer(vec![3], 30));
    run_for(6.1).await;
    assert_eq!(*d.endpoints(), addrs(&[3]));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nxdomain_keeps_the_set_for_ever_without_max_stale() {
    let dns = Scripted::new(&[Step::Answer(vec![1, 2], 2), Step::NoRecords(Some(30))]);
    let policy = RefreshPolicy {
        max_stale: None,
        ..exact()
    };
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), policy);
    settle().await;
    run_for(3600.0).await;
    assert_eq!(*d.endpoints(), addrs(&[1, 2]));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dns_outage_past_max_stale_keeps_the_set_and_a_later_nxdomain_clears_it() {
    let dns = Scripted::new(&[Step::Answer(vec![1, 2], 1), Step::ServFail]);
    let policy = RefreshPolicy {
        max_stale: Some(Duration::from_secs(10)),
        ..exact()
    };
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), policy);
    settle().await;
    run_for(120.0).await;
    assert_eq!(
        *d.endpoints(),
        addrs(&[1, 2]),
        "fail static through an outage"
    );
    assert!(d.stats().consecutive_failures >= 5);
    // The outage ends with an authoritative "no records": the set is long
    // past max_stale, so it goes at once.
    dns.push(Step::NoRecords(Some(5)));
    run_for(61.0).await;
    assert!(d.endpoints().is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_good_answer_restarts_the_staleness_clock() {
    let dns = Scripted::new(&[
        Step::Answer(vec![1], 5),
        Step::NoRecords(Some(1)), // 5 s: kept (age 5 of 8)
        Step::Answer(vec![1], 1), // 6 s: confirmed again
        Step::NoRecords(Some(1)), // from 7 s on: kept until 14 s
    ]);
    let policy = RefreshPolicy {
        max_stale: Some(Duration::from_secs(8)),
        ..exact()
    };
    let start = Instant::now();
    let d = Discovery::spawn_with_policy(target(), Arc::new(dns.clone()), policy);
    settle().await;
    run_for(13.9).await;
    assert_eq!(*d.endpoints(), addrs(&[1]));
    assert_eq!(
        d.stats().last_confirmed,
        Some(start + Duration::from_secs(6))
    );
    run_for(0.2).await;
    assert!(d.endpoints().is_empty());
}
