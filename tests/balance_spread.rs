//! How P2C spreads load: evenly over equals, away from the slow, fairly to newcomers.

mod balance_support;

use std::time::Duration;

use balance_support::*;
use headless_lb::balance::{Balancer, DEFAULT_RTT};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn equal_endpoints_share_requests_evenly() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, 10 * MS)).collect();
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;

    drive(&lb, 8, 500).await;

    let fair = 8.0 * 500.0 / 4.0;
    for pod in &pods {
        let share = pod.calls() as f64 / fair;
        assert!(
            (0.8..=1.2).contains(&share),
            "{}: {} calls, {share:.2} of fair",
            pod.addr(),
            pod.calls()
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_endpoint_gets_under_ten_percent() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, 10 * MS)).collect();
    pods[3].set_latency(100 * MS);
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;

    drive(&lb, 8, 500).await;

    let share = pods[3].calls() as f64 / 4000.0;
    assert!(share < 0.10, "slow pod took {:.1} %", share * 100.0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_new_endpoint_starts_from_its_peers_estimate_and_gets_its_fair_share() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, 100 * MS)).collect();
    pods[..3].iter().for_each(|p| insert(&tx, p));
    settle().await;
    // 24 s of load, as in the measurement that showed tower's PeakEwma
    // giving a late pod 41 % of the traffic.
    drive(&lb, 8, 80).await;

    insert(&tx, &pods[3]);
    settle().await;
    let rtt = stats_of(&lb, &pods[3]).rtt;
    assert!(
        rtt > 80 * MS && rtt < 120 * MS,
        "new endpoint starts at {rtt:?}"
    );
    assert!(rtt != DEFAULT_RTT);

    let before: Vec<_> = pods.iter().map(Pod::calls).collect();
    drive(&lb, 8, 20).await; // 2 s
    let calls: Vec<_> = pods
        .iter()
        .zip(&before)
        .map(|(p, b)| p.calls() - b)
        .collect();
    let share = calls[3] as f64 / calls.iter().sum::<usize>() as f64;
    assert!(
        (0.15..=0.35).contains(&share),
        "new pod took {:.1} % (calls {calls:?})",
        share * 100.0
    );
}
