//! Discovery end to end over real UDP/TCP DNS on loopback: `DnsServer` →
//! `HickoryResolver` → `Discovery` → `DnsDiscover`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use headless_lb::resolve::HickoryResolver;
use headless_lb::testing::{DnsServer, Fault, RecordType, wait_for};
use headless_lb::{Discovery, DnsDiscover, EmptyAnswer, RefreshPolicy, ResolveError};
use tower::discover::Change;

const NAME: &str = "web.default.svc.cluster.local";
const PORT: u16 = 8080;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn ips(lasts: &[u8]) -> Vec<IpAddr> {
    lasts.iter().map(|l| ip(*l)).collect()
}

fn addrs(lasts: &[u8]) -> BTreeSet<SocketAddr> {
    lasts
        .iter()
        .map(|l| SocketAddr::new(ip(*l), PORT))
        .collect()
}

fn discovery(dns: &DnsServer, policy: RefreshPolicy) -> Discovery {
    let resolver = HickoryResolver::builder()
        .nameserver(dns.addr())
        .timeout(Duration::from_millis(200))
        .attempts(1)
        .build()
        .expect("resolver");
    let target = format!("{NAME}:{PORT}").parse().expect("target");
    Discovery::spawn_with_policy(target, Arc::new(resolver), policy)
}

/// Reads changes until `expected` is reached, or panics after `deadline`.
async fn expect_changes<M>(
    discover: &mut DnsDiscover<M>,
    deadline: Duration,
    inserted: &[u8],
    removed: &[u8],
) where
    M: tower::Service<SocketAddr, Response = (), Error = std::convert::Infallible>,
{
    let (mut ins, mut rem) = (BTreeSet::new(), BTreeSet::new());
    let want = (addrs(inserted), addrs(removed));
    let started = Instant::now();
    while (ins.clone(), rem.clone()) != want {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, discover.next()).await {
            Ok(Some(Ok(Change::Insert(a, ())))) => assert!(ins.insert(a), "{a} inserted twice"),
            Ok(Some(Ok(Change::Remove(a)))) => assert!(rem.insert(a), "{a} removed twice"),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => {
                panic!("after {deadline:?}: inserted {ins:?}, removed {rem:?}; want {want:?}")
            }
        }
    }
    // Exactly those: nothing else is pending.
    assert!(
        futures::poll!(discover.next()).is_pending(),
        "extra changes"
    );
}

#[tokio::test]
async fn follows_scale_up_and_down_within_ttl_plus_one_second() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12, 13]), 1);
    let d = discovery(&dns, RefreshPolicy::default());
    let mut discover = DnsDiscover::from_fn(d.clone(), |_| ());
    expect_changes(&mut discover, Duration::from_secs(2), &[11, 12, 13], &[]).await;

    dns.set_ips(NAME, &ips(&[11, 12, 13, 14, 15]), 1);
    expect_changes(&mut discover, Duration::from_secs(2), &[14, 15], &[]).await;

    dns.set_ips(NAME, &ips(&[14, 15]), 1);
    expect_changes(&mut discover, Duration::from_secs(2), &[], &[11, 12, 13]).await;
    assert_eq!(*d.endpoints(), addrs(&[14, 15]));
    assert_eq!(d.stats().generation, 3);
}

#[tokio::test]
async fn respects_the_ttl_and_clamps_it() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11]), 2);
    let _d = discovery(&dns, RefreshPolicy::default());
    wait_for(Duration::from_secs(2), "first lookup", || {
        dns.queries_for(NAME, RecordType::A) == 1
    })
    .await;
    let first = Instant::now();
    wait_for(Duration::from_secs(4), "second lookup", || {
        dns.queries_for(NAME, RecordType::A) == 2
    })
    .await;
    let gap = first.elapsed();
    // TTL 2 s with ±10 % jitter; the first wait saw query 1 up to 10 ms late.
    assert!(
        gap >= Duration::from_millis(1750),
        "re-queried after {gap:?}"
    );
    assert_eq!(dns.queries_for(NAME, RecordType::A), 2);

    for (ttl, lo, hi) in [(0u32, 0.9, 1.1), (86_400, 27.0, 33.0)] {
        dns.set_ips(NAME, &ips(&[11]), ttl);
        let d = discovery(&dns, RefreshPolicy::default());
        wait_for(Duration::from_secs(2), "a lookup", || {
            d.stats().lookups >= 1
        })
        .await;
        let s = d.stats();
        let interval = (s.next_refresh.unwrap() - s.last_refresh.unwrap()).as_secs_f64();
        assert!(
            (lo..=hi).contains(&interval),
            "TTL {ttl}: next refresh in {interval} s"
        );
    }
}

#[tokio::test]
async fn keeps_last_good_set_while_dns_is_silent_or_failing_then_catches_up() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12]), 1);
    let d = discovery(&dns, RefreshPolicy::default());
    wait_for(Duration::from_secs(2), "first set", || {
        d.endpoints().len() == 2
    })
    .await;

    dns.set_fault(Fault::Silent);
    wait_for(Duration::from_secs(3), "a timed-out lookup", || {
        d.stats()
            .last_error
            .as_ref()
            .is_some_and(ResolveError::is_timeout)
    })
    .await;
    assert_eq!(*d.endpoints(), addrs(&[11, 12]), "kept while silent");

    dns.set_fault(Fault::ServFail);
    wait_for(Duration::from_secs(5), "a SERVFAIL", || {
        matches!(
            d.stats().last_error,
            Some(ResolveError::ServerFailure { .. })
        )
    })
    .await;
    assert_eq!(*d.endpoints(), addrs(&[11, 12]), "kept on SERVFAIL");
    assert!(d.stats().consecutive_failures >= 2);

    // A change made during the outage is picked up after recovery.
    dns.set_ips(NAME, &ips(&[12, 13]), 1);
    dns.set_fault(Fault::None);
    wait_for(
        Duration::from_secs(10),
        "the new set after recovery",
        || *d.endpoints() == addrs(&[12, 13]),
    )
    .await;
    assert_eq!(d.stats().consecutive_failures, 0);
}

#[tokio::test]
async fn nxdomain_keeps_or_clears_the_set_as_configured() {
    for (mode, cleared) in [
        (EmptyAnswer::KeepLastGood, false),
        (EmptyAnswer::Clear, true),
    ] {
        let dns = DnsServer::start().await.unwrap();
        dns.set_negative_ttl(1);
        dns.set_ips(NAME, &ips(&[11, 12]), 1);
        let policy = RefreshPolicy {
            empty_answer: mode,
            ..RefreshPolicy::default()
        };
        let d = discovery(&dns, policy);
        wait_for(Duration::from_secs(2), "first set", || {
            d.endpoints().len() == 2
        })
        .await;
        dns.remove(NAME);
        wait_for(Duration::from_secs(3), "an NXDOMAIN", || {
            d.stats()
                .last_error
                .as_ref()
                .is_some_and(ResolveError::is_no_records)
        })
        .await;
        assert_eq!(d.endpoints().is_empty(), cleared, "{mode:?}");
    }
}

#[tokio::test]
async fn nxdomain_before_any_answer_leaves_the_set_empty_and_keeps_trying() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_negative_ttl(1);
    let d = discovery(&dns, RefreshPolicy::default());
    wait_for(Duration::from_secs(4), "two failed lookups", || {
        d.stats().consecutive_failures >= 2
    })
    .await;
    assert!(d.endpoints().is_empty());
    dns.set_ips(NAME, &ips(&[11]), 1);
    wait_for(Duration::from_secs(3), "the pod to appear", || {
        *d.endpoints() == addrs(&[11])
    })
    .await;
}

#[tokio::test]
async fn watch_receivers_see_each_new_set() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11]), 1);
    let d = discovery(&dns, RefreshPolicy::default());
    let mut rx = d.watch();
    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| s.len() == 1))
        .await
        .expect("first set in time")
        .unwrap();
    dns.set_ips(NAME, &ips(&[11, 12]), 1);
    let set = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| s.len() == 2))
        .await
        .expect("second set in time")
        .unwrap()
        .clone();
    assert_eq!(*set, addrs(&[11, 12]));
}

#[tokio::test]
async fn feeds_tower_p2c_balance_and_requests_flow() {
    use tower::{Service, ServiceExt};
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12, 13]), 1);
    let d = discovery(&dns, RefreshPolicy::default());
    let discover = DnsDiscover::from_fn(d, |addr: SocketAddr| {
        let svc =
            tower::service_fn(move |()| async move { Ok::<_, std::convert::Infallible>(addr) });
        tower::load::Constant::new(svc, 0u32)
    });
    let mut balance = tower::balance::p2c::Balance::new(discover);
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let addr = tokio::time::timeout(Duration::from_secs(3), async {
            balance
                .ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("call")
        })
        .await
        .expect("request within 3 s");
        seen.insert(addr);
    }
    assert_eq!(seen, addrs(&[11, 12, 13]));
}

#[tokio::test]
async fn resolve_now_drops_a_deleted_pod_within_two_seconds_despite_ttl_30() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12, 13]), 30);
    let d = discovery(&dns, RefreshPolicy::default());
    wait_for(Duration::from_secs(2), "first set", || {
        *d.endpoints() == addrs(&[11, 12, 13])
    })
    .await;
    // The pod is killed and deleted from DNS; the client, seeing its
    // connections refused, asks for a lookup instead of waiting 30 s.
    dns.set_ips(NAME, &ips(&[11, 12]), 30);
    let asked = Instant::now();
    d.resolve_now();
    wait_for(
        Duration::from_secs(2),
        "the deleted pod to leave the set",
        || *d.endpoints() == addrs(&[11, 12]),
    )
    .await;
    let stats = d.stats();
    assert_eq!(stats.early_lookups, 1, "{stats:?}");
    assert_eq!(stats.lookups, 2, "{stats:?}");
    eprintln!(
        "deleted pod dropped {:?} after resolve_now",
        asked.elapsed()
    );
}

#[tokio::test]
async fn resolve_now_from_every_failing_connection_stays_within_the_rate_limit() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12, 13]), 30);
    let d = discovery(&dns, RefreshPolicy::default());
    wait_for(Duration::from_secs(2), "first set", || {
        d.endpoints().len() == 3
    })
    .await;
    let before = d.stats().lookups;
    dns.reset_counts();
    // Every pod refuses: 8 tasks each ask for a lookup every millisecond
    // for 3 s (a measurement window, not a wait for a condition).
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                while started.elapsed() < window {
                    d.resolve_now();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let lookups = d.stats().lookups - before;
    let queries = dns.queries_for(NAME, RecordType::A);
    eprintln!(
        "{lookups} lookups, {queries} A queries in {:?}",
        started.elapsed()
    );
    // One a second at most: 3 (+1 for a window edge).
    assert!((2..=4).contains(&lookups), "{lookups} lookups");
    assert!(queries <= 4, "{queries} A queries reached DNS");
}

#[tokio::test]
async fn scale_to_zero_clears_the_set_after_max_stale_and_recovers_without_restart() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_negative_ttl(1);
    dns.set_ips(NAME, &ips(&[11, 12]), 1);
    let policy = RefreshPolicy {
        max_stale: Some(Duration::from_secs(2)),
        ..RefreshPolicy::default()
    };
    let d = discovery(&dns, policy);
    wait_for(Duration::from_secs(2), "first set", || {
        d.endpoints().len() == 2
    })
    .await;
    // Scaled to zero: NXDOMAIN from now on.
    dns.remove(NAME);
    wait_for(Duration::from_secs(5), "the set to clear", || {
        d.endpoints().is_empty()
    })
    .await;
    let stats = d.stats();
    let confirmed = stats.last_confirmed.expect("a good answer was seen");
    let age = confirmed.elapsed();
    assert!(
        age >= Duration::from_secs(2),
        "cleared {age:?} after the last good answer"
    );
    assert!(
        stats
            .last_error
            .as_ref()
            .is_some_and(ResolveError::is_no_records),
        "{stats:?}"
    );
    // Back in DNS: served again by the same Discovery.
    dns.set_ips(NAME, &ips(&[13]), 1);
    wait_for(Duration::from_secs(3), "the set to come back", || {
        *d.endpoints() == addrs(&[13])
    })
    .await;
}

#[tokio::test]
async fn servfail_past_max_stale_keeps_the_set() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(NAME, &ips(&[11, 12]), 1);
    let policy = RefreshPolicy {
        max_stale: Some(Duration::from_secs(1)),
        backoff_max: Duration::from_secs(1),
        ..RefreshPolicy::default()
    };
    let d = discovery(&dns, policy);
    wait_for(Duration::from_secs(2), "first set", || {
        d.endpoints().len() == 2
    })
    .await;
    dns.set_fault(Fault::ServFail);
    wait_for(Duration::from_secs(6), "SERVFAILs past max_stale", || {
        let s = d.stats();
        s.consecutive_failures >= 3
            && s.last_confirmed
                .is_some_and(|c| c.elapsed() > Duration::from_secs(2))
    })
    .await;
    assert_eq!(*d.endpoints(), addrs(&[11, 12]), "fail static");
}
