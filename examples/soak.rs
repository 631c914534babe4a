//! Soak test: the balanced client under load for a while, against a real
//! in-process DNS server and pods on 127.0.77.x, while a seeded random
//! schedule scales pods up and down, makes them slow, kills and restarts
//! them, and takes DNS away. Checks invariants and prints a summary.
//!
//! ```text
//! cargo run --example soak -- [--duration SECS] [--seed N] [--concurrency N]
//! ```
//!
//! Invariants (exit status 1 if one fails, 2 for bad arguments):
//! - every failed request names a pod that was killed, and started at most
//!   `--kill-window-ms` [500] after that pod's kill (requests in flight on a
//!   dying pod, or put on a pooled connection whose close was not yet seen);
//! - at the end (pods 1–4 listed again, as at the start) and after a drain,
//!   the client lists exactly what DNS lists;
//! - once the load stops and the client is dropped, the process's open file
//!   descriptors (`/proc/self/fd`) come back within a small margin of their
//!   number before the client was built (every connection it opened is
//!   closed; pool sizes at the end do not matter);
//! - resident memory (`VmRSS`) at the end, under load, is within a small
//!   margin of its value after warm-up.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use headless_lb::balance::EndpointState;
use headless_lb::http::Client;
use headless_lb::testing::{DnsServer, Fault, Pod};
use headless_lb::{EmptyAnswer, RefreshPolicy};
use http_body_util::BodyExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

const SERVICE: &str = "soak.default.svc.cluster.local";
/// Pods live on 127.0.77.1 ..= 127.0.77.MAX_PODS.
const MAX_PODS: u8 = 8;
const MIN_PODS: usize = 2;
/// Extra descriptors, once the client is gone, and kilobytes of RSS allowed
/// at the end.
const FD_MARGIN: usize = 16;
const RSS_MARGIN_KB: u64 = 32 * 1024;

/// Soak the balanced client with a random schedule of pod and DNS faults.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the fault schedule (the same seed gives the same schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent request loops.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long after a pod's kill its requests may still fail.
    #[arg(long, default_value_t = 500)]
    kill_window_ms: u64,
}

/// The world the schedule changes: every pod slot and what DNS lists.
struct World {
    pods: BTreeMap<u8, Pod>,
    port: u16,
    listed: BTreeSet<u8>,
    /// When each address was last killed.
    kills: BTreeMap<SocketAddr, Vec<Instant>>,
    events: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Failed {
    started: Instant,
    endpoint: Option<SocketAddr>,
    message: String,
}

fn ip(slot: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 77, slot))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Args = common::parse_args();
    if args.duration == 0 || args.concurrency == 0 {
        return common::usage_error("--duration and --concurrency must be at least 1");
    }
    common::init_logging();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let initial: Vec<IpAddr> = (1..=4).map(ip).collect();
    let pods = Pod::start_all(&initial).await?;
    let port = pods[0].addr().port();
    let dns = DnsServer::start().await?;
    dns.set_negative_ttl(1);
    let mut world = World {
        pods: (1..=4).zip(pods).collect(),
        port,
        listed: (1..=4).collect(),
        kills: BTreeMap::new(),
        events: BTreeMap::new(),
    };
    publish(&dns, &world);
    let fd_start = open_fds();
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .refresh_policy(RefreshPolicy {
            min_refresh: Duration::from_millis(200),
            max_refresh: Duration::from_secs(1),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
            empty_answer: EmptyAnswer::KeepLastGood,
            ..RefreshPolicy::default()
        })
        .request_timeout(Some(Duration::from_secs(2)))
        .build(&format!("{SERVICE}:{port}"))?;

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<Failed>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, stop, requests, failed) = (
            client.clone(),
            stop.clone(),
            requests.clone(),
            failed.clone(),
        );
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if let Err(f) = fetch(&client).await {
                    failed.lock().await.push(Failed { started, ..f });
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // Warm-up, then the baseline for fds and memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = rss_kb();

    // The schedule: one event every 200–800 ms.
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let mut dns_down_until: Option<Instant> = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
        if let Some(t) = dns_down_until
            && Instant::now() >= t
        {
            dns.set_fault(Fault::None);
            dns_down_until = None;
            *world.events.entry("dns restored").or_default() += 1;
        }
        step(&mut rng, &dns, &mut world, &mut dns_down_until).await?;
        eprintln!(
            "[{:>5.1}s] requests {} failed {} listed {:?}",
            started.elapsed().as_secs_f64(),
            requests.load(Ordering::Relaxed),
            failed.lock().await.len(),
            world.listed
        );
    }

    // Quiet end, in the shape of the start so that fds and memory compare:
    // DNS back, pods 1–4 listed, running and fast; the others are removed
    // from DNS, drained, and only then stopped (as Kubernetes does).
    dns.set_fault(Fault::None);
    for slot in 1..=4 {
        if let Some(pod) = world.pods.get(&slot) {
            pod.restart().await?;
        } else {
            let pod = Pod::start(SocketAddr::new(ip(slot), world.port)).await?;
            world.pods.insert(slot, pod);
        }
        world.pods[&slot].set_delay(Duration::ZERO);
    }
    world.listed = (1..=4).collect();
    publish(&dns, &world);
    let want: BTreeSet<SocketAddr> = world
        .listed
        .iter()
        .map(|s| SocketAddr::new(ip(*s), world.port))
        .collect();
    let drained = Instant::now() + Duration::from_secs(10);
    let listed_by_client = loop {
        let listed: BTreeSet<SocketAddr> =
            client.stats().endpoints.iter().map(|e| e.address).collect();
        if listed == want || Instant::now() >= drained {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for slot in 5..=MAX_PODS {
        if let Some(pod) = world.pods.remove(&slot) {
            pod.kill().await;
        }
    }
    // Measured under the same load as the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fd_loaded, rss_end) = (open_fds(), rss_kb());
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let not_ready: Vec<SocketAddr> = client
        .stats()
        .endpoints
        .iter()
        .filter(|e| e.state != EndpointState::Ready)
        .map(|e| e.address)
        .collect();
    // The client and its connections go; both ends of each close.
    drop(client);
    let closed_by = Instant::now() + Duration::from_secs(5);
    let fd_end = loop {
        let fds = open_fds();
        if fds <= fd_start + FD_MARGIN || Instant::now() >= closed_by {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Invariants.
    let window = Duration::from_millis(args.kill_window_ms);
    let failed = failed.lock().await;
    let unexplained: Vec<&Failed> = failed
        .iter()
        .filter(|f| {
            let Some(endpoint) = f.endpoint else {
                return true;
            };
            !world.kills.get(&endpoint).is_some_and(|kills| {
                kills
                    .iter()
                    .any(|k| f.started <= *k + window && *k <= f.started + Duration::from_secs(3))
            })
        })
        .collect();
    let mut ok = true;
    let total = requests.load(Ordering::Relaxed);
    println!(
        "soak: seed {} duration {} s: {total} requests, {} failed, {} unexplained",
        args.seed,
        args.duration,
        failed.len(),
        unexplained.len()
    );
    println!("events: {:?}", world.events);
    for f in unexplained.iter().take(10) {
        println!(
            "  unexplained failure at +{:.3}s on {:?}: {}",
            f.started.saturating_duration_since(started).as_secs_f64(),
            f.endpoint,
            f.message
        );
    }
    if !unexplained.is_empty() {
        ok = false;
    }
    println!(
        "fds: {fd_start} before the client, {fd_loaded} at the end under load, {fd_end} after it was dropped (margin {FD_MARGIN}); \
         RSS: {rss_start} kB → {rss_end} kB (margin {RSS_MARGIN_KB} kB)"
    );
    if fd_end > fd_start + FD_MARGIN {
        println!("FAIL: file descriptors grew");
        ok = false;
    }
    if rss_end > rss_start + RSS_MARGIN_KB {
        println!("FAIL: resident memory grew");
        ok = false;
    }
    let stale: Vec<&SocketAddr> = listed_by_client.difference(&want).collect();
    let missing: Vec<&SocketAddr> = want.difference(&listed_by_client).collect();
    println!("after drain: stale {stale:?}, missing {missing:?}, not ready {not_ready:?}");
    if !stale.is_empty() || !missing.is_empty() {
        println!("FAIL: the client's endpoints are not what DNS lists");
        ok = false;
    }
    println!("{}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// One random event.
async fn step(
    rng: &mut fastrand::Rng,
    dns: &DnsServer,
    world: &mut World,
    dns_down_until: &mut Option<Instant>,
) -> std::io::Result<()> {
    let running: Vec<u8> = world
        .listed
        .iter()
        .copied()
        .filter(|s| world.pods.get(s).is_some_and(Pod::is_running))
        .collect();
    let event = match rng.u8(0..100) {
        0..20 => "scale up",
        20..35 => "scale down",
        35..50 => "slow",
        50..65 => "kill",
        65..80 => "restart",
        80..90 => "dns outage",
        _ => "heal",
    };
    match event {
        "scale up" if world.listed.len() < usize::from(MAX_PODS) => {
            let slot = (1..=MAX_PODS).find(|s| !world.listed.contains(s)).unwrap();
            if let Some(pod) = world.pods.get(&slot) {
                pod.restart().await?;
            } else {
                let pod = Pod::start(SocketAddr::new(ip(slot), world.port)).await?;
                world.pods.insert(slot, pod);
            }
            world.listed.insert(slot);
            publish(dns, world);
        }
        // Never below MIN_PODS listed and running: removing a running pod
        // while a killed one stays listed could leave DNS listing no live pod.
        "scale down" if world.listed.len() > MIN_PODS => {
            let removable: Vec<u8> = if running.len() > MIN_PODS {
                world.listed.iter().copied().collect()
            } else {
                world
                    .listed
                    .iter()
                    .copied()
                    .filter(|s| !running.contains(s))
                    .collect()
            };
            let Some(&slot) = rng.choice(removable.iter()) else {
                return Ok(());
            };
            // Removed from DNS first; the pod keeps serving its in-flight
            // requests while clients drain, then goes (as in Kubernetes).
            world.listed.remove(&slot);
            publish(dns, world);
        }
        "slow" if !running.is_empty() => {
            let slot = *rng.choice(running.iter()).unwrap();
            world.pods[&slot].set_delay(Duration::from_millis(rng.u64(20..300)));
        }
        // Keep at least MIN_PODS running, so that a failure is never "no pod left".
        "kill" if running.len() > MIN_PODS => {
            let slot = *rng.choice(running.iter()).unwrap();
            let addr = SocketAddr::new(ip(slot), world.port);
            world.kills.entry(addr).or_default().push(Instant::now());
            world.pods[&slot].kill().await;
        }
        "restart" => {
            for slot in world.listed.clone() {
                if let Some(pod) = world.pods.get(&slot)
                    && !pod.is_running()
                {
                    pod.restart().await?;
                    break;
                }
            }
        }
        "dns outage" if dns_down_until.is_none() => {
            let fault = *rng
                .choice([Fault::ServFail, Fault::Silent, Fault::NxDomain].iter())
                .unwrap();
            dns.set_fault(fault);
            *dns_down_until = Some(Instant::now() + Duration::from_millis(rng.u64(500..3000)));
        }
        "heal" => {
            for pod in world.pods.values() {
                pod.set_delay(Duration::ZERO);
            }
        }
        _ => return Ok(()),
    }
    *world.events.entry(event).or_default() += 1;
    Ok(())
}

fn publish(dns: &DnsServer, world: &World) {
    let ips: Vec<IpAddr> = world.listed.iter().map(|s| ip(*s)).collect();
    dns.set_ips(SERVICE, &ips, 0);
}

async fn fetch(client: &Client) -> Result<(), Failed> {
    let fail = |endpoint, message: String| Failed {
        started: Instant::now(),
        endpoint,
        message,
    };
    let rsp = client
        .get("/")
        .await
        .map_err(|e| fail(e.endpoint(), e.to_string()))?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(None, format!("body: {e}")))?
        .to_bytes();
    let from: Option<SocketAddr> = std::str::from_utf8(&body).ok().and_then(|b| b.parse().ok());
    if status != 200 || from.is_none() {
        return Err(fail(from, format!("status {status}")));
    }
    Ok(())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
