//! Nothing waits forever: requests without an endpoint fail after `failfast_timeout`.

mod balance_support;

use std::time::Duration;

use balance_support::*;
use headless_lb::balance::{Balancer, DEFAULT_FAILFAST_TIMEOUT};
use tokio::time::Instant;
use tower::ServiceExt;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_endpoints_fails_after_exactly_failfast_timeout_naming_target_and_dns_error() {
    let (lb, _tx) = balancer(
        Balancer::builder()
            .target_name("dns:///echo.default.svc.cluster.local:8080")
            .last_error_source(|| Some("SERVFAIL from 10.96.0.10:53".into())),
    );
    let start = Instant::now();

    let error = lb.oneshot(1).await.unwrap_err();

    assert_eq!(start.elapsed(), DEFAULT_FAILFAST_TIMEOUT);
    assert!(error.is_no_endpoints(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("dns:///echo.default.svc.cluster.local:8080"),
        "{message}"
    );
    assert!(message.contains("SERVFAIL from 10.96.0.10:53"), "{message}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failfast_timeout_is_configurable() {
    let (lb, _tx) = balancer(Balancer::builder().failfast_timeout(250 * MS));
    let start = Instant::now();
    assert!(lb.oneshot(1).await.unwrap_err().is_no_endpoints());
    assert_eq!(start.elapsed(), 250 * MS);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_request_is_served_by_an_endpoint_inserted_before_the_deadline() {
    let (lb, tx) = balancer(Balancer::builder());
    let pod = Pod::new(1, MS);
    let start = Instant::now();
    let request = tokio::spawn(lb.oneshot(1));

    tokio::time::sleep(Duration::from_secs(2)).await;
    insert(&tx, &pod);

    assert_eq!(request.await.unwrap().unwrap(), pod.addr());
    assert_eq!(start.elapsed(), Duration::from_secs(2) + MS);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn endpoints_that_are_still_connecting_are_waited_for_not_picked() {
    let (lb, tx) = balancer(Balancer::builder());
    let pod = Pod::new(1, MS);
    pod.stall(true);
    insert(&tx, &pod);
    let start = Instant::now();

    let error = lb.clone().oneshot(1).await.unwrap_err();

    assert!(error.is_no_endpoints(), "{error}");
    assert_eq!(start.elapsed(), DEFAULT_FAILFAST_TIMEOUT);
    assert_eq!(pod.calls(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_discover_streams_last_error_is_reported_without_a_source() {
    use futures::channel::mpsc;
    use tower::discover::Change;

    let (tx, rx) = mpsc::unbounded::<Result<Change<std::net::SocketAddr, Pod>, std::io::Error>>();
    let lb: Lb = Balancer::builder().target_name("svc:80").build(rx);
    tx.unbounded_send(Err(std::io::Error::other("NXDOMAIN")))
        .unwrap();

    let error = lb.oneshot(1).await.unwrap_err();

    assert!(error.to_string().contains("NXDOMAIN"), "{error}");
}
