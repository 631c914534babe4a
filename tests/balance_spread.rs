//! How P2C spreads load: evenly over equals, away from the slow, fairly to newcomers.

mod balance_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use balance_support::*;
use headless_lb::balance::{Balancer, DEFAULT_RTT};
use tower::ServiceExt;

const MS: Duration = Duration::from_millis(1);

/// Four pods answering after `latency`, and a balancer over them that has
/// served `warm_up` requests from each of 8 callers. (Keep the sender: its
/// drop ends the balancer's discovery.)
async fn four_pods(latency: Duration, warm_up: usize) -> (Lb, Tx, Vec<Pod>) {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, latency)).collect();
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    drive(&lb, 8, warm_up).await;
    (lb, tx, pods)
}

/// The fourth pod, back from its `what` (pause, stall), took at least a
/// fifth of `calls` (each pod's count 0.25–0.5 s after).
fn assert_fourth_pod_back(calls: &[usize], what: &str) {
    let share = calls[3] as f64 / calls.iter().sum::<usize>() as f64;
    eprintln!("0.25–0.5 s after the {what}: calls {calls:?}");
    assert!(
        share >= 0.2,
        "0.25–0.5 s after its {what} the pod took {:.1} % (calls {calls:?})",
        share * 100.0
    );
}

/// How many requests each pod got over the next `window`.
async fn calls_over(pods: &[Pod], window: Duration) -> Vec<usize> {
    let before: Vec<_> = pods.iter().map(Pod::calls).collect();
    tokio::time::sleep(window).await;
    pods.iter()
        .zip(before)
        .map(|(p, b)| p.calls() - b)
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn equal_endpoints_share_requests_evenly() {
    let (lb, _tx, pods) = four_pods(10 * MS, 0).await;

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

/// A pod that answered in 2 s for a while (a GC pause, a frozen process)
/// and then recovered: its 2 s peak would keep it out of picks against
/// 1 ms pods until it decays, about 50 s at the default decay. A probe one
/// tenth of the decay after its last answer brings it back instead.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_that_recovers_from_a_long_peak_gets_its_share_back_within_seconds() {
    let (lb, _tx, pods) = four_pods(MS, 200).await;

    pods[3].set_latency(2_000 * MS);
    drive(&lb, 8, 200).await;
    assert!(
        stats_of(&lb, &pods[3]).rtt >= 1_900 * MS,
        "{:?}",
        stats_of(&lb, &pods[3])
    );
    pods[3].set_latency(MS);

    // About 3 s of load (8 callers, 1 ms requests).
    let before = pods[3].calls();
    drive(&lb, 8, 3_000).await;
    let share = (pods[3].calls() - before) as f64 / 24_000.0;
    eprintln!("recovered pod: {:.1} % of 24 000", share * 100.0);
    assert!(
        share > 0.10,
        "the recovered pod got {:.1} % of the requests",
        share * 100.0
    );
}

/// A pod that stays slow gets probes at growing intervals and nothing else:
/// in 30 s of load, a handful of requests besides those it got while it was
/// still unmeasured.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_that_stays_slow_gets_only_backed_off_probes() {
    let (lb, tx) = balancer(Balancer::builder());
    let pods: Vec<_> = (1..=4).map(|i| Pod::new(i, 10 * MS)).collect();
    pods[3].set_latency(1_000 * MS);
    pods.iter().for_each(|p| insert(&tx, p));
    settle().await;
    drive(&lb, 8, 100).await;
    let before = pods[3].calls();

    // 30 s of load: probes at about 1, 3, 7, 15 and 31 s after its last answer.
    drive(&lb, 8, 3_000).await;
    let probes = pods[3].calls() - before;
    eprintln!("slow pod: {probes} requests in 30 s");
    assert!(
        (1..=6).contains(&probes),
        "the slow pod got {probes} requests in 30 s"
    );
}

/// A pod that stops answering (no client timeout to give up on it): each
/// request it holds counts as pending, and the oldest one's wait is a lower
/// bound of its RTT, so its cost grows by the moment and P2C stops sending
/// to it after the first few (2-3 of 8 callers here). Without the wait in the cost, its idle
/// estimate decays towards zero while it holds requests, and it captures
/// every caller within seconds.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_that_stops_answering_holds_at_most_a_few_callers() {
    let (lb, _tx, pods) = four_pods(10 * MS, 50).await;

    pods[3].set_mode(Mode::Hang);
    let callers = Callers::start(&lb, 8, None);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = callers.answered();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let last_10s = callers.answered() - before;
    let held = stats_of(&lb, &pods[3]).pending;
    drop(callers);

    eprintln!("hung pod holds {held} of 8 callers; {last_10s} requests in the last 10 s");
    assert!(held <= 4, "the hung pod holds {held} of 8 callers");
    // The callers it does not hold go on: four or more at 10 ms a request.
    assert!(last_10s >= 4_000, "{last_10s} requests in the last 10 s");
}

/// A pod that stalls for 80 ms (a GC pause: the requests it holds are all
/// answered at its end) and then answers at its usual 2 ms: the first of
/// its late answers is a spike, 40 times its estimate, which tells of the
/// pause more than of the pod, so
/// it is probed again about 80 ms after them and has its share back within
/// a quarter of a second, where the probe interval of a steady slowness
/// (a tenth of the decay, 1 s) would keep it out for a second.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_back_from_a_short_pause_gets_its_share_back_within_a_quarter_second() {
    let (lb, _tx, pods) = four_pods(2 * MS, 100).await;

    let callers = Callers::start(&lb, 8, None);
    tokio::time::sleep(100 * MS).await;
    pods[3].pause(80 * MS);
    tokio::time::sleep(80 * MS).await;
    tokio::time::sleep(250 * MS).await;
    let calls = calls_over(&pods, 250 * MS).await;
    assert_eq!(callers.given_up(), 0);
    drop(callers);

    assert_fourth_pod_back(&calls, "pause");
}

/// `n` callers sending requests in a row, each given up after `deadline`
/// if there is one; counts the requests answered and given up.
struct Callers {
    workers: Vec<tokio::task::JoinHandle<()>>,
    answered: Arc<AtomicUsize>,
    given_up: Arc<AtomicUsize>,
}

impl Callers {
    fn start(lb: &Lb, n: u32, deadline: Option<Duration>) -> Self {
        let (answered, given_up) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let workers = (0..n)
            .map(|w| {
                let (lb, answered, given_up) = (lb.clone(), answered.clone(), given_up.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let call = lb.clone().oneshot(w * 1_000_000 + i);
                        let result = match deadline {
                            Some(deadline) => tokio::time::timeout(deadline, call).await.ok(),
                            None => Some(call.await),
                        };
                        match result {
                            Some(result) => {
                                result.unwrap();
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                given_up.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            workers,
            answered,
            given_up,
        }
    }

    fn given_up(&self) -> usize {
        self.given_up.load(Ordering::Relaxed)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        self.workers.iter().for_each(|w| w.abort());
    }
}

/// A pod that stops answering while its callers give up on what they sent
/// it (a deadline of 30 ms here):
/// a request given up is no answer, so the pod's silence keeps counting and
/// it gets only its backed-off probes. Were a given-up request counted as
/// an answer, the pod would look fresh each time one is dropped and keep
/// getting requests to lose to the deadline: hundreds in these 10 s.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_whose_requests_are_given_up_gets_only_probes_while_it_stays_silent() {
    let (lb, _tx, pods) = four_pods(10 * MS, 50).await;

    let at_hang = pods[3].calls();
    pods[3].set_mode(Mode::Hang);
    let callers = Callers::start(&lb, 8, Some(30 * MS));
    // The first second: the requests it held when it stopped, and probes
    // at growing intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pods[3].calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = pods[3].calls() - before;
    let (sent_to_hung, lost) = (pods[3].calls() - at_hang, callers.given_up());
    let answered = callers.answered();
    drop(callers);

    eprintln!(
        "silent pod: {calls} requests in the last 10 s, {sent_to_hung} since it hung; \
         {lost} given up, {answered} answered in all"
    );
    assert!(calls <= 5, "the silent pod got {calls} requests in 10 s");
    // Every request it got was given up, but one still waiting, and none
    // sent elsewhere.
    assert!(
        lost <= sent_to_hung && sent_to_hung <= lost + 1,
        "{lost} given up, {sent_to_hung} sent to the silent pod"
    );
}

/// A pod that stalls for 200 ms while its callers give up on its requests
/// (30 ms deadline), then answers again: asked again after about as long
/// as it was seen silent, it has its share back a quarter of a second after
/// resuming, as it would have if its dropped requests had counted as
/// answers; not about a second later, as with the probe interval of a
/// measured peak.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pod_that_answers_again_after_a_stall_its_callers_gave_up_on_soon_gets_its_share_back() {
    let (lb, _tx, pods) = four_pods(10 * MS, 50).await;

    let callers = Callers::start(&lb, 8, Some(30 * MS));
    pods[3].set_mode(Mode::Hang);
    tokio::time::sleep(200 * MS).await;
    pods[3].set_mode(Mode::Ok);
    tokio::time::sleep(250 * MS).await;
    let calls = calls_over(&pods, 250 * MS).await;
    drop(callers);

    assert_fourth_pod_back(&calls, "stall");
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
