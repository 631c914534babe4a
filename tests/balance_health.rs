//! Endpoint health: backoff and rejoin, retries of unsent requests only (on every
//! endpoint not tried yet, then at most `max_retries` again), panic mode.

mod balance_support;

use std::time::Duration;

use balance_support::*;
use headless_lb::NotSent;
use headless_lb::balance::{Balancer, DEFAULT_FAILFAST_TIMEOUT, EndpointState};
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};

const MS: Duration = Duration::from_millis(1);

async fn four_pods() -> (Lb, Tx, Vec<Pod>) {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, MS)).collect();
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    (lb, tx, pods)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_endpoint_whose_ready_fails_backs_off_is_skipped_and_rejoins() {
    let (lb, _tx, pods) = four_pods().await;
    let sick = &pods[0];
    sick.refuse(true);

    // Every request succeeds: the one that finds the pod refusing moves on.
    for i in 0..40 {
        lb.clone().oneshot(i).await.unwrap();
    }
    assert_eq!(state_of(&lb, sick), EndpointState::Backoff);
    assert_eq!(sick.calls(), 0);
    assert!(stats_of(&lb, sick).failures >= 1);

    // While it backs off, it gets nothing.
    drive(&lb, 4, 50).await;
    assert_eq!(sick.calls(), 0);
    assert_eq!(state_of(&lb, sick), EndpointState::Backoff);

    // It recovers: the next reconnect (at most 10 s of backoff away) brings it back.
    sick.refuse(false);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(state_of(&lb, sick), EndpointState::Ready);
    drive(&lb, 4, 50).await;
    assert!(sick.calls() > 10, "rejoined pod got {} calls", sick.calls());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_never_sent_is_tried_on_every_endpoint_then_on_max_retries_of_them_again() {
    let (lb, _tx, pods) = four_pods().await;
    pods.iter().for_each(|p| p.set_mode(Mode::NotSent));
    let start = Instant::now();

    let error = lb.clone().oneshot(1).await.unwrap_err();

    assert!(error.is_endpoint() && error.is_not_sent(), "{error}");
    let calls: Vec<_> = pods.iter().map(Pod::calls).collect();
    assert_eq!(calls.iter().sum::<usize>(), 4 + 2, "{calls:?}");
    assert!(
        calls.iter().all(|&c| c >= 1),
        "every endpoint tried: {calls:?}"
    );
    assert!(start.elapsed() < DEFAULT_FAILFAST_TIMEOUT);
    // Every attempt was counted against the endpoint that took it, and each
    // took it out of picks. The last one is still backing off; an earlier
    // one may have reconnected by now: the go-backs wait for reconnects, and
    // a first backoff (about 100 ms, ±10 % jitter) can run out before the
    // request's last go-back (it ended 90–103 ms in, in 4 of 40 runs).
    let last = error
        .endpoint()
        .expect("an endpoint error names its endpoint");
    for (pod, &calls) in pods.iter().zip(&calls) {
        let stats = stats_of(&lb, pod);
        assert_eq!(stats.failures, calls as u64, "{stats:?}");
        let state = stats.state;
        if pod.addr() == last {
            assert_eq!(state, EndpointState::Backoff, "{stats:?}");
        } else {
            assert!(
                matches!(state, EndpointState::Backoff | EndpointState::Ready),
                "{stats:?}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn with_max_retries_zero_a_request_is_tried_once_on_each_endpoint_and_fails_at_once() {
    let (lb, tx) = balancer(Balancer::builder().max_retries(0));
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, MS)).collect();
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    pods.iter().for_each(|p| p.refuse(true));
    let start = Instant::now();

    let error = lb.clone().oneshot(1).await.unwrap_err();

    assert!(error.is_not_sent(), "{error}");
    assert!(error.to_string().contains("connection refused"), "{error}");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no wait once all were tried"
    );
    let failures: Vec<_> = pods.iter().map(|p| stats_of(&lb, p).failures).collect();
    assert_eq!(failures, [1, 1, 1, 1], "one try per endpoint");
    assert_eq!(pods.iter().map(Pod::calls).sum::<usize>(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retries_on_an_endpoint_already_tried_wait_for_a_change_and_end_at_failfast_timeout() {
    // A single pod refusing connections, and retries to spare: each retry
    // waits for the next snapshot (the pod's next reconnect attempt, backoff
    // doubling from 100 ms) rather than looping on the pod: six tries in the
    // 3 s, not a thousand.
    let (lb, tx) = balancer(Balancer::builder().max_retries(1_000));
    let pod = Pod::new(1, MS);
    insert(&tx, &pod);
    settle().await;
    pod.refuse(true);
    let start = Instant::now();

    let error = lb.clone().oneshot(1).await.unwrap_err();

    assert!(error.is_not_sent() && !error.is_no_endpoints(), "{error}");
    assert_eq!(start.elapsed(), DEFAULT_FAILFAST_TIMEOUT);
    let tries = stats_of(&lb, &pod).failures;
    assert!((2..=10).contains(&tries), "{tries} tries in 3 s");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_whose_only_endpoint_failed_it_unsent_goes_to_one_discovered_meanwhile() {
    let (lb, tx) = balancer(Balancer::builder());
    let (sick, new) = (Pod::new(1, MS), Pod::new(2, MS));
    insert(&tx, &sick);
    settle().await;
    sick.refuse(true);
    let start = Instant::now();
    let request = tokio::spawn(lb.clone().oneshot(1));

    // Before the sick pod's first reconnect attempt (about 100 ms).
    tokio::time::sleep(50 * MS).await;
    insert(&tx, &new);

    assert_eq!(request.await.unwrap().unwrap(), new.addr());
    assert_eq!(start.elapsed(), 51 * MS);
    assert!(stats_of(&lb, &sick).failures >= 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_succeeds_on_a_healthy_endpoint() {
    let (lb, _tx, pods) = four_pods().await;
    // Two bad endpoints: the third try at the latest finds a good one.
    pods[..2].iter().for_each(|p| p.set_mode(Mode::NotSent));

    for i in 0..10 {
        let served = lb.clone().oneshot(i).await.unwrap();
        assert!(served == pods[2].addr() || served == pods[3].addr());
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn not_sent_is_found_inside_a_wrapping_error() {
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BoxError);

    let inner: BoxError = NotSent::new(7u32, "refused").into();
    let outer = Wrapped(inner);
    let found = NotSent::<u32>::find(&outer).expect("found in the chain");
    assert_eq!(found.take_request(), Some(7));
    assert_eq!(found.take_request(), None);
    assert!(
        NotSent::<u64>::find(&outer).is_none(),
        "another request type"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_that_may_have_reached_a_server_is_never_retried() {
    let (lb, _tx, pods) = four_pods().await;
    pods.iter().for_each(|p| p.set_mode(Mode::Fail));

    let error = lb.clone().oneshot(1).await.unwrap_err();

    assert!(error.is_endpoint() && !error.is_not_sent(), "{error}");
    assert_eq!(pods.iter().map(Pod::calls).sum::<usize>(), 1);
    let failed = lb
        .stats()
        .into_iter()
        .find(|s| Some(s.address) == error.endpoint())
        .unwrap();
    assert_eq!((failed.failures, failed.state), (1, EndpointState::Ready));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn when_every_endpoint_backs_off_requests_go_to_them_anyway() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=2).map(|i| Pod::new(i, MS)).collect();
    pods.iter().for_each(|p| p.refuse(true));
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    assert!(lb.stats().iter().all(|s| s.state == EndpointState::Backoff));

    // The health signal was wrong (or is stale): the pods answer again, and
    // requests are served before the next reconnect attempt.
    pods.iter().for_each(|p| p.refuse(false));
    let served = lb.clone().oneshot(1).await.unwrap();

    assert!(pods.iter().any(|p| p.addr() == served));
    assert!(lb.stats().iter().all(|s| s.state == EndpointState::Backoff));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_that_reconnects_after_backoff_starts_afresh_and_gets_its_share() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, 10 * MS)).collect();
    let sick = &pods[0];
    // It is measured slow (3 s) first...
    sick.set_latency(3000 * MS);
    insert(&tx, sick);
    settle().await;
    lb.clone().oneshot(0).await.unwrap();
    assert!(stats_of(&lb, sick).rtt >= 2900 * MS);
    // ...then fails (the next request is not sent), and stays in backoff
    // while it refuses connections, as the other pods take the load.
    sick.set_mode(Mode::NotSent);
    sick.refuse(true);
    lb.clone().oneshot(1).await.unwrap_err();
    assert_eq!(state_of(&lb, sick), EndpointState::Backoff);
    pods[1..].iter().for_each(|p| insert(&tx, p));
    settle().await;
    drive(&lb, 4, 50).await;
    assert_eq!(state_of(&lb, sick), EndpointState::Backoff);

    // It comes back as a healthy, fast pod (a restarted process).
    sick.set_mode(Mode::Ok);
    sick.set_latency(10 * MS);
    sick.refuse(false);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(state_of(&lb, sick), EndpointState::Ready);
    // Its 3 s from before is forgotten: it gets its share at once, where the
    // old estimate (still over 1 s after 10 s of decay) would starve it.
    let before = sick.calls();
    drive(&lb, 8, 25).await;
    let share = (sick.calls() - before) as f64 / 200.0;
    assert!(
        (0.15..=0.35).contains(&share),
        "the recovered pod took {:.1} %",
        share * 100.0
    );
}

/// Sends `n` requests one after another; returns how many failed.
async fn serial_failures(lb: &Lb, n: u32) -> usize {
    let mut failed = 0;
    for i in 0..n {
        if lb.clone().oneshot(i).await.is_err() {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_failing_every_request_is_taken_out_after_five_and_back_after_one_success() {
    let (lb, _tx, pods) = four_pods().await;
    let bad = &pods[0];
    bad.set_mode(Mode::Fail);

    // 400 requests over ~0.4 s: five failures in a row take it out, then
    // each probe after a growing backoff (100 ms, 200 ms, …) fails once more.
    let failed = serial_failures(&lb, 400).await;
    assert!((5..=10).contains(&failed), "{failed} failed");
    assert_eq!(bad.calls(), failed);
    assert_eq!(stats_of(&lb, bad).failures, failed as u64);

    // Recovered: the next probe succeeds and it is back at its share.
    bad.set_mode(Mode::Ok);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(state_of(&lb, bad), EndpointState::Ready);
    let before = bad.calls();
    drive(&lb, 4, 50).await;
    let share = (bad.calls() - before) as f64 / 200.0;
    assert!(
        (0.15..=0.35).contains(&share),
        "the recovered pod took {:.1} %",
        share * 100.0
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failure_accrual_zero_keeps_a_failing_pod_in_picks() {
    let (lb, tx) = balancer(Balancer::builder().failure_accrual(0));
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, MS)).collect();
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    pods[0].set_mode(Mode::Fail);

    let failed = serial_failures(&lb, 400).await;
    assert!(failed > 60, "only {failed} failed");
    assert_eq!(state_of(&lb, &pods[0]), EndpointState::Ready);
}
