//! `--count`: what one request costs a contender, on one thread, counted
//! rather than timed.
//!
//! The client runs on a current-thread runtime on the calling thread, so its
//! own work (the balancer, hyper's connection tasks, the DNS watch) happens
//! on that thread and nowhere else; the pods and the DNS server run on the
//! pods' runtime as in every scenario. Per request, over a measured phase
//! after a warm-up, it reports the allocations the client's thread made
//! (counted by [`super::memory::Counting`]) and that thread's CPU time.
//!
//! Instructions are the figure that repeats on a busy machine: the measured
//! phase runs inside [`measured_phase`], so callgrind can count it alone,
//! start-up, warm-up and the pods' threads left out:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*measured_phase*' --callgrind-out-file=cg.%p \
//!     target/release/deps/peers-HASH --count --kinds http-ours --requests 20000
//! ```
//!
//! and the total (`callgrind_annotate cg.PID | head`) over `--requests` is
//! the instructions per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cluster::{Cluster, pods_runtime};
use super::contenders::{Kind, Sender, build};
use super::{load, memory};

/// The pods behind the name, as in scenario 1.
const PODS: usize = 4;

/// One contender's cost per request.
#[derive(Debug, Clone)]
pub struct Cost {
    pub kind: Kind,
    pub requests: u64,
    pub failed: u64,
    /// Heap allocations the client's thread made, per request.
    pub allocations: f64,
    /// Heap allocations of the whole process (the pods' too), per request.
    pub process_allocations: f64,
    /// CPU time of the client's thread, per request, in µs; None where
    /// `/proc/thread-self/schedstat` cannot be read.
    pub cpu_us: Option<f64>,
}

/// Counts each of `kinds` in turn: `requests / 10` warm-up requests, then
/// `requests` measured, `concurrency` in flight. The first IP of the pods
/// is 127.0.0.`first_ip`.
pub fn run(kinds: &[Kind], concurrency: usize, requests: u64, first_ip: u8) -> Vec<Cost> {
    let pods = pods_runtime();
    let mut costs = Vec::new();
    for &kind in kinds {
        eprintln!(
            "count: {} ({requests} requests, {concurrency} in flight)",
            kind.name()
        );
        match count(&pods, kind, concurrency, requests, first_ip) {
            Ok(cost) => costs.push(cost),
            Err(e) => eprintln!("count: {}: {e}", kind.name()),
        }
    }
    costs
}

fn count(
    pods: &tokio::runtime::Runtime,
    kind: Kind,
    concurrency: usize,
    requests: u64,
    first_ip: u8,
) -> Result<Cost, String> {
    let cluster = Cluster::start(pods, kind.protocol(), first_ip, PODS, PODS, 300)
        .map_err(|e| format!("cannot start the pods: {e}"))?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the client's runtime: {e}"))?;
    let contender = client.block_on(build(kind, &cluster.target(), cluster.dns.addr()))?;
    let warm_up = send_all(&client, &*contender.sender, concurrency, requests / 10);
    if warm_up > 0 {
        return Err(format!("{warm_up} warm-up requests failed"));
    }
    let cpu_before = thread_cpu_ns();
    let allocations_before = memory::thread_allocations();
    let process_before = memory::allocations().unwrap_or(0);
    let failed = measured_phase(&client, &*contender.sender, concurrency, requests);
    let allocations = memory::thread_allocations() - allocations_before;
    let process_allocations = memory::allocations().unwrap_or(0) - process_before;
    let cpu_us = thread_cpu_ns()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / 1e3 / requests as f64);
    drop(contender);
    drop(client);
    pods.block_on(cluster.dns.shutdown());
    Ok(Cost {
        kind,
        requests,
        failed,
        allocations: allocations as f64 / requests as f64,
        process_allocations: process_allocations as f64 / requests as f64,
        cpu_us,
    })
}

/// The measured requests, in a function of their own so that callgrind's
/// `--toggle-collect` can count exactly them.
#[inline(never)]
fn measured_phase(
    client: &tokio::runtime::Runtime,
    sender: &dyn Sender,
    concurrency: usize,
    requests: u64,
) -> u64 {
    send_all(client, sender, concurrency, requests)
}

/// Sends `requests` requests, `concurrency` at a time, each through its own
/// fork of `sender`; how many failed.
fn send_all(
    client: &tokio::runtime::Runtime,
    sender: &dyn Sender,
    concurrency: usize,
    requests: u64,
) -> u64 {
    let left = Arc::new(AtomicU64::new(requests));
    let failed = Arc::new(AtomicU64::new(0));
    client.block_on(async {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let mut sender = sender.fork();
                let left = left.clone();
                let failed = failed.clone();
                tokio::spawn(async move {
                    // Takes one request from the shared count while any is left.
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let ok = tokio::time::timeout(load::REQUEST_TIMEOUT, sender.send())
                            .await
                            .unwrap_or(false);
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    });
    failed.load(Ordering::Relaxed)
}

/// CPU time of the calling thread so far, in ns.
fn thread_cpu_ns() -> Option<u64> {
    load::schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// The Markdown table of `costs`, with each row's ratio to the first's.
pub fn markdown(costs: &[Cost], concurrency: usize) -> String {
    let mut out = format!(
        "| client ({concurrency} in flight, one thread) | requests | failed | allocations / request | client CPU / request | CPU vs first |\n|---|--:|--:|--:|--:|--:|\n"
    );
    let first = costs.first().and_then(|c| c.cpu_us);
    for cost in costs {
        let cpu = cost
            .cpu_us
            .map_or_else(|| "n/a".to_owned(), |us| format!("{us:.2} µs"));
        let ratio = cost.cpu_us.zip(first).map_or_else(
            || "n/a".to_owned(),
            |(us, first)| format!("{:.2}", us / first),
        );
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {cpu} | {ratio} |\n",
            cost.kind.name(),
            cost.requests,
            cost.failed,
            cost.allocations,
        ));
    }
    out
}
