//! Endpoint lifecycle: discovery without traffic, draining, pending accounting, handles, shutdown.

mod balance_support;

use std::time::Duration;

use balance_support::*;
use headless_lb::balance::{Balancer, EndpointState};
use tower::{Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn discovery_changes_apply_while_no_requests_flow() {
    let (lb, tx) = balancer(Balancer::builder());
    let (a, b) = (Pod::new(1, MS), Pod::new(2, MS));
    insert(&tx, &b);
    insert(&tx, &a);
    settle().await;

    let stats = lb.stats();
    assert_eq!(
        stats.iter().map(|s| s.address).collect::<Vec<_>>(),
        [a.addr(), b.addr()],
        "sorted by address"
    );
    assert!(stats.iter().all(|s| s.state == EndpointState::Ready));

    remove(&tx, &a);
    settle().await;
    assert_eq!(
        lb.stats().iter().map(|s| s.address).collect::<Vec<_>>(),
        [b.addr()]
    );
    assert_eq!(
        a.copies(),
        0,
        "an idle removed endpoint's service is dropped at once"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_removed_endpoint_finishes_in_flight_requests_takes_no_new_ones_then_is_dropped() {
    let (lb, tx) = balancer(Balancer::builder());
    let (old, new) = (Pod::new(1, Duration::from_secs(1)), Pod::new(2, MS));
    insert(&tx, &old);
    settle().await;
    let in_flight = tokio::spawn(lb.clone().oneshot(1));
    settle().await;
    assert_eq!(stats_of(&lb, &old).pending, 1);

    remove(&tx, &old);
    insert(&tx, &new);
    settle().await;
    assert_eq!(state_of(&lb, &old), EndpointState::Draining);
    assert!(old.copies() > 0, "still serving");
    for i in 0..20 {
        assert_eq!(lb.clone().oneshot(i).await.unwrap(), new.addr());
    }
    assert_eq!(old.calls(), 1);

    assert_eq!(in_flight.await.unwrap().unwrap(), old.addr());
    settle().await;
    assert_eq!(
        old.copies(),
        0,
        "service dropped once its last request ended"
    );
    assert!(lb.stats().iter().all(|s| s.address != old.addr()));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_request_future_leaves_no_pending_count() {
    let (mut lb, tx) = balancer(Balancer::builder());
    let pod = Pod::new(1, MS);
    pod.set_mode(Mode::Hang);
    insert(&tx, &pod);
    settle().await;

    let mut request = lb.call(1);
    assert!(futures::poll!(&mut request).is_pending());
    assert_eq!(stats_of(&lb, &pod).pending, 1);

    drop(request);
    assert_eq!(stats_of(&lb, &pod).pending, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn pending_and_counters_follow_completed_requests() {
    // A low starting estimate, so that the first 20 ms response (a peak) replaces it.
    let (lb, tx) = balancer(Balancer::builder().default_rtt(MS));
    let pod = Pod::new(1, 20 * MS);
    insert(&tx, &pod);
    settle().await;

    drive(&lb, 3, 10).await;

    let stats = stats_of(&lb, &pod);
    assert_eq!((stats.pending, stats.requests, stats.failures), (0, 30, 0));
    assert_eq!(stats.rtt, 20 * MS);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn clones_of_the_handle_share_one_balancer_and_the_last_one_stops_it() {
    let (lb, tx) = balancer(Balancer::builder());
    let pod = Pod::new(1, MS);
    insert(&tx, &pod);
    settle().await;
    let clone = lb.clone();

    clone.clone().oneshot(1).await.unwrap();
    lb.clone().oneshot(2).await.unwrap();
    assert_eq!(stats_of(&lb, &pod).requests, 2);
    assert_eq!(lb.stats(), clone.stats());

    drop(lb);
    clone.clone().oneshot(3).await.unwrap();
    assert_eq!(pod.copies(), 1, "the balancer holds one copy");

    drop(clone);
    settle().await;
    assert_eq!(
        pod.copies(),
        0,
        "background task ended and dropped the endpoints"
    );
    assert!(tx.is_closed(), "the Discover stream was dropped");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_insert_for_a_known_address_replaces_its_service() {
    let (lb, tx) = balancer(Balancer::builder());
    let (first, second) = (Pod::new(1, MS), Pod::new(1, MS));
    insert(&tx, &first);
    settle().await;
    insert(&tx, &second);
    settle().await;

    lb.clone().oneshot(1).await.unwrap();

    assert_eq!((first.calls(), second.calls()), (0, 1));
    assert_eq!(first.copies(), 0);
    assert_eq!(lb.stats().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_completion_can_keep_a_request_pending_after_its_response() {
    use headless_lb::balance::{Completion, PendingGuard};

    /// Stands in for a response body that ends later than the response.
    #[derive(Clone)]
    struct KeepGuard;
    impl Completion<std::net::SocketAddr> for KeepGuard {
        type Output = (std::net::SocketAddr, PendingGuard);
        fn complete(&self, rsp: std::net::SocketAddr, guard: PendingGuard) -> Self::Output {
            (rsp, guard)
        }
    }

    let (tx, rx) = futures::channel::mpsc::unbounded();
    let lb: Balancer<Request, Pod, KeepGuard> = Balancer::builder()
        .default_rtt(MS)
        .build_with_completion(rx, KeepGuard);
    let pod = Pod::new(1, 10 * MS);
    insert(&tx, &pod);
    settle().await;

    let (addr, stream) = lb.clone().oneshot(1).await.unwrap();
    assert_eq!((addr, stream.endpoint()), (pod.addr(), pod.addr()));
    tokio::time::sleep(Duration::from_secs(1)).await; // the stream goes on
    let stats = lb.stats()[0].clone();
    assert_eq!(stats.pending, 1);
    assert!(
        stats.rtt < 11 * MS,
        "RTT is measured to the response: {:?}",
        stats.rtt
    );

    drop(stream);
    assert_eq!(lb.stats()[0].pending, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_that_waited_for_an_endpoint_times_its_round_trip_from_its_send() {
    let (lb, tx) = balancer(Balancer::builder().failfast_timeout(Duration::from_secs(10)));
    let pod = Pod::new(1, 2 * MS);
    let waiting = tokio::spawn(lb.clone().oneshot(1));
    settle().await;
    // No endpoint for 500 ms: the request waits, then goes to the first one.
    tokio::time::sleep(500 * MS).await;
    insert(&tx, &pod);
    assert_eq!(waiting.await.unwrap().unwrap(), pod.addr());
    let rtt = stats_of(&lb, &pod).rtt;
    assert!(
        rtt < 10 * MS,
        "the estimate is the pod's 2 ms round trip, not the wait: {rtt:?}"
    );
}
