//! Subsetting on real sockets: 500 `testing::Pod`s on 127.0.200.x and 127.0.201.x behind the
//! test DNS server (a 500-record answer, over TCP), 20 HTTP/2 clients in one process, each with
//! `subset_size(10)` and its ordinal. Every client connects to exactly the pods the subset rule
//! (the code `examples/simulate.rs` runs) predicts, one connection each, no pod has two clients
//! (the ordinal rule's cap at a mean of 0.4), and a scale-down of 50 pods — DNS updated first,
//! the pods draining and exiting once the clients have moved (a preStop delay) — loses no
//! request.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use headless_lb::balance::{ClientIdentity, EndpointState, Subset};
use headless_lb::http::{Client, Protocol};
use headless_lb::testing::{DnsServer, Pod, wait_for};
use http_body_util::BodyExt;

const SERVICE: &str = "big.default.svc.cluster.local";
const PODS: usize = 500;
const CLIENTS: u32 = 20;
const SUBSET: usize = 10;
const SCALE_DOWN: usize = 50;
const TTL: u32 = 1;

/// `127.0.200.1 ..= 127.0.201.250`.
fn ips() -> Vec<IpAddr> {
    (0..PODS)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                200 + (i / 250) as u8,
                (i % 250) as u8 + 1,
            ))
        })
        .collect()
}

fn subset(index: u32) -> Subset {
    Subset::new(SUBSET).identity(ClientIdentity::ordinal(index, CLIENTS).unwrap())
}

/// The pods a client uses now: listed, not draining.
fn members_of(client: &Client) -> Vec<SocketAddr> {
    client
        .stats()
        .endpoints
        .into_iter()
        .filter(|e| e.state != EndpointState::Draining)
        .map(|e| e.address)
        .collect()
}

fn ready_members_of(client: &Client) -> Vec<SocketAddr> {
    client
        .stats()
        .endpoints
        .into_iter()
        .filter(|e| e.state == EndpointState::Ready)
        .map(|e| e.address)
        .collect()
}

async fn get(client: &Client) -> Result<(), String> {
    let response = client.get("/").await.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_use_the_predicted_subsets_of_500_pods_and_a_scale_down_loses_nothing() {
    let pods = Pod::start_all(&ips()).await.unwrap();
    let port = pods[0].addr().port();
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let by_addr: BTreeMap<SocketAddr, &Pod> = pods.iter().map(|p| (p.addr(), p)).collect();
    let dns = DnsServer::start().await.unwrap();
    dns.set_ips(SERVICE, &ips(), TTL);

    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            Client::builder()
                .nameserver(dns.addr())
                // One connection per pod and client, so that the pods' own
                // connection counts are the number of clients that use them.
                .protocol(Protocol::Http2)
                .subset_size(SUBSET)
                .subset_identity(ClientIdentity::ordinal(i, CLIENTS).unwrap())
                .build(&format!("{SERVICE}:{port}"))
                .unwrap()
        })
        .collect();

    // The prediction: the subset rule over the listed pods, per client.
    let predicted: Vec<Vec<SocketAddr>> = (0..CLIENTS).map(|i| subset(i).members(&addrs)).collect();
    let mut predicted_per_pod: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for members in &predicted {
        assert_eq!(members.len(), SUBSET);
        for a in members {
            *predicted_per_pod.entry(*a).or_default() += 1;
        }
    }
    // Mean 20 × 10 / 500 = 0.4 clients per pod: the cap is one.
    assert_eq!(predicted_per_pod.len(), CLIENTS as usize * SUBSET);
    assert!(predicted_per_pod.values().all(|&n| n == 1));

    // Each client connects to exactly its members.
    wait_for(
        Duration::from_secs(20),
        "every client connected to exactly its predicted subset",
        || {
            clients
                .iter()
                .zip(&predicted)
                .all(|(c, p)| ready_members_of(c) == *p)
        },
    )
    .await;
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            ready_members_of(c),
            predicted[i],
            "client {i}'s connected pods"
        );
    }

    // Every member serves: requests until each has answered (P2C's probes
    // reach a member that lost its first comparisons within a second).
    let served = |members: &BTreeMap<SocketAddr, u64>| {
        members
            .keys()
            .all(|a| by_addr.get(a).is_some_and(|p| p.requests() > 0))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !served(&predicted_per_pod) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members that never served: {:?}",
            predicted_per_pod
                .keys()
                .filter(|a| by_addr[*a].requests() == 0)
                .collect::<Vec<_>>()
        );
        let rounds: Vec<_> = clients.iter().map(get).collect();
        for result in futures::future::join_all(rounds).await {
            result.unwrap();
        }
    }
    // Connections counted at the pods match the prediction exactly (margin
    // 0: an h2 client holds one connection per pod);
    // pods outside every subset were never connected to.
    for pod in &pods {
        let expected = predicted_per_pod.get(&pod.addr()).copied().unwrap_or(0);
        assert_eq!(pod.connections(), expected, "connections to {}", pod.addr());
        if expected == 0 {
            assert_eq!(pod.requests(), 0, "{} is in no subset", pod.addr());
        }
    }

    // Scale down by 50 pods, half of them members: DNS drops them while they
    // drain and exit, under load from every client.
    let members_gone: Vec<SocketAddr> = predicted_per_pod
        .keys()
        .copied()
        .step_by(8)
        .take(25)
        .collect();
    let others_gone: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !predicted_per_pod.contains_key(a))
        .take(SCALE_DOWN - members_gone.len())
        .collect();
    let gone: Vec<SocketAddr> = members_gone.iter().chain(&others_gone).copied().collect();
    assert_eq!(gone.len(), SCALE_DOWN);
    let remaining: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !gone.contains(a))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for client in &clients {
        let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        callers.spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = get(&client).await {
                    failures.push(e);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
    }
    let before = sent.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), "200 more requests", || {
        sent.load(Ordering::Relaxed) > before + 200
    })
    .await;

    // DNS drops them first; they keep serving until every client has moved
    // to the subset of the 450 that remain (a preStop delay, as Kubernetes
    // advises for a scale-down), then drain and exit under load.
    let remaining_ips: Vec<IpAddr> = remaining.iter().map(SocketAddr::ip).collect();
    dns.set_ips(SERVICE, &remaining_ips, TTL);
    let predicted_after: Vec<Vec<SocketAddr>> = (0..CLIENTS)
        .map(|i| subset(i).members(&remaining))
        .collect();
    wait_for(
        Duration::from_secs(20),
        "every client using the subset of the remaining pods",
        || {
            clients
                .iter()
                .zip(&predicted_after)
                .all(|(c, p)| members_of(c) == *p)
        },
    )
    .await;
    let drains = gone
        .iter()
        .map(|a| by_addr[a].shutdown(Duration::from_secs(5)));
    let drained = futures::future::join_all(drains).await;
    assert!(
        drained.iter().all(|&d| d),
        "every pod drained within its grace"
    );
    let at_move = sent.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), "200 more requests", || {
        sent.load(Ordering::Relaxed) > at_move + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    while let Some(result) = callers.join_next().await {
        failures.extend(result.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Members moved: each removed member is replaced in its client's subset;
    // the ordinal rule may move a few more, never a whole subset.
    let moved: usize = predicted
        .iter()
        .zip(&predicted_after)
        .map(|(b, a)| a.iter().filter(|x| !b.contains(x)).count())
        .sum();
    assert!(moved >= members_gone.len(), "moved {moved}");
    assert!(
        moved <= 3 * members_gone.len(),
        "moved {moved} for {} removed members",
        members_gone.len()
    );
}
