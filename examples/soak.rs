//! Soak test: the balanced client under load for a while, against a real
//! in-process DNS server and pods on 127.0.77.x, while a seeded random
//! schedule scales pods up and down, makes them slow, kills and restarts
//! them, terminates them gracefully while DNS still lists them (SIGTERM
//! racing the endpoint update, as in Kubernetes), takes DNS away and, with
//! `--black-holes`, drops a pod's packets for a few seconds. Checks
//! invariants and prints a summary.
//!
//! ```text
//! cargo run --example soak -- [--duration SECS] [--seed N] [--concurrency N] [--black-holes]
//! ```
//!
//! `--black-holes` needs root, `unshare`, `ip` and `nft`: the soak runs
//! itself again in a network namespace of its own (`unshare -n`, `lo` up),
//! where an nftables table per black-holed pod drops its packets; nothing
//! outside the namespace is touched.
//!
//! Invariants (exit status 1 if one fails, 2 for bad arguments):
//! - every failed request is explained: it names a pod that was killed, and
//!   started at most `--kill-window-ms` [500] after that pod's kill
//!   (requests in flight on a dying pod, or put on a pooled connection whose
//!   close was not yet seen); or a pod that was black-holed while it was in
//!   flight (its own error, or the client's 2 s request timeout while a
//!   black hole was on). A graceful termination explains nothing: it must
//!   cost no request;
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
    /// Also black-hole pods (drop their packets) for a few seconds at a
    /// time; runs the soak in a network namespace of its own (needs root).
    #[arg(long)]
    black_holes: bool,
}

/// Set in the environment of the soak run inside its network namespace.
const NETNS_MARKER: &str = "HEADLESS_LB_SOAK_NETNS";
/// How long a request in flight on a black-holed pod may take to fail: the
/// documented bound of the clients' defaults.
const BLACK_HOLE_BOUND: Duration = Duration::from_secs(15);
/// The grace period of a graceful termination.
const GRACE: Duration = Duration::from_secs(2);

/// The world the schedule changes: every pod slot and what DNS lists.
struct World {
    pods: BTreeMap<u8, Arc<Pod>>,
    port: u16,
    listed: BTreeSet<u8>,
    /// When each address was last killed.
    kills: BTreeMap<SocketAddr, Vec<Instant>>,
    /// Black holes: when each began and ended (or will end).
    black_holes: BTreeMap<SocketAddr, Vec<(Instant, Instant)>>,
    /// Slots black-holed now, and until when.
    holed: BTreeMap<u8, Instant>,
    /// Whether black holes are on the schedule (`--black-holes`).
    with_black_holes: bool,
    /// Slots whose graceful termination may still be draining: not started
    /// again until it is over.
    draining: BTreeMap<u8, tokio::task::JoinHandle<bool>>,
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
    if args.black_holes && std::env::var_os(NETNS_MARKER).is_none() {
        return in_namespace();
    }
    if args.black_holes
        && let Err(e) = sh("ip link set lo up").await
    {
        eprintln!("error: cannot bring lo up in the soak's namespace: {e}");
        return ExitCode::from(1);
    }
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
        pods: (1..=4).zip(pods.into_iter().map(Arc::new)).collect(),
        port,
        listed: (1..=4).collect(),
        kills: BTreeMap::new(),
        black_holes: BTreeMap::new(),
        holed: BTreeMap::new(),
        with_black_holes: args.black_holes,
        draining: BTreeMap::new(),
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
        lift_black_holes(&mut world, false).await?;
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
    lift_black_holes(&mut world, true).await?;
    for (_, draining) in std::mem::take(&mut world.draining) {
        let _ = draining.await;
    }
    for slot in 1..=4 {
        if let Some(pod) = world.pods.get(&slot) {
            pod.restart().await?;
        } else {
            let pod = Pod::start(SocketAddr::new(ip(slot), world.port)).await?;
            world.pods.insert(slot, Arc::new(pod));
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
        .filter(|f| !explained(f, &world, window))
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
    let graceful = world.events.get("graceful").copied().unwrap_or(0);
    let holes = world.events.get("black hole").copied().unwrap_or(0);
    println!("{graceful} graceful terminations (must cost no request), {holes} black holes");
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
    // Running and reachable: a black-holed pod is neither killed nor
    // terminated while its packets are dropped.
    let running: Vec<u8> = world
        .listed
        .iter()
        .copied()
        .filter(|s| {
            world.pods.get(s).is_some_and(|p| p.is_running()) && !world.holed.contains_key(s)
        })
        .collect();
    let event = match rng.u8(0..100) {
        0..18 => "scale up",
        18..30 => "scale down",
        30..42 => "slow",
        42..54 => "kill",
        54..66 => "restart",
        66..74 => "graceful",
        74..82 if world.with_black_holes => "black hole",
        74..82 => "heal",
        82..90 => "dns outage",
        _ => "heal",
    };
    match event {
        "scale up" if world.listed.len() < usize::from(MAX_PODS) => {
            world.draining.retain(|_, drain| !drain.is_finished());
            let Some(slot) = (1..=MAX_PODS)
                .find(|s| !world.listed.contains(s) && !world.draining.contains_key(s))
            else {
                return Ok(());
            };
            if let Some(pod) = world.pods.get(&slot) {
                pod.restart().await?;
            } else {
                let pod = Pod::start(SocketAddr::new(ip(slot), world.port)).await?;
                world.pods.insert(slot, Arc::new(pod));
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
        // Kubernetes: the endpoint update and the kubelet's SIGTERM race. The
        // pod stops accepting, closes its connections gracefully (GOAWAY,
        // `Connection: close`) and finishes what is in flight, while the
        // client may still pick it until DNS tells it otherwise.
        "graceful" if running.len() > MIN_PODS => {
            let slot = *rng.choice(running.iter()).unwrap();
            world.listed.remove(&slot);
            publish(dns, world);
            let pod = world.pods[&slot].clone();
            world
                .draining
                .insert(slot, tokio::spawn(async move { pod.shutdown(GRACE).await }));
        }
        "black hole" if running.len() > MIN_PODS => {
            let slot = *rng.choice(running.iter()).unwrap();
            let now = Instant::now();
            let until = now + Duration::from_millis(rng.u64(2000..6000));
            sh(&format!(
                "nft add table inet soak{slot} && \
                 nft add chain inet soak{slot} out '{{ type filter hook output priority 0; }}' && \
                 nft add rule inet soak{slot} out ip daddr {ip} drop && \
                 nft add rule inet soak{slot} out ip saddr {ip} drop",
                ip = ip(slot)
            ))
            .await?;
            world.holed.insert(slot, until);
            world
                .black_holes
                .entry(SocketAddr::new(ip(slot), world.port))
                .or_default()
                .push((now, until));
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

/// Lifts the black holes whose time is up (all of them with `all`).
async fn lift_black_holes(world: &mut World, all: bool) -> std::io::Result<()> {
    let now = Instant::now();
    let due: Vec<u8> = world
        .holed
        .iter()
        .filter(|(_, until)| all || **until <= now)
        .map(|(slot, _)| *slot)
        .collect();
    for slot in due {
        sh(&format!("nft delete table inet soak{slot}")).await?;
        world.holed.remove(&slot);
        let addr = SocketAddr::new(ip(slot), world.port);
        if let Some(last) = world.black_holes.get_mut(&addr).and_then(|h| h.last_mut()) {
            last.1 = last.1.min(now);
        }
    }
    Ok(())
}

/// Whether a failed request is explained by a fault the schedule injected.
fn explained(f: &Failed, world: &World, kill_window: Duration) -> bool {
    let black_holed = |holes: &Vec<(Instant, Instant)>| {
        holes
            .iter()
            .any(|(from, to)| f.started <= *to && *from <= f.started + BLACK_HOLE_BOUND)
    };
    match f.endpoint {
        Some(endpoint) => {
            world.kills.get(&endpoint).is_some_and(|kills| {
                kills.iter().any(|k| {
                    f.started <= *k + kill_window && *k <= f.started + Duration::from_secs(3)
                })
            }) || world.black_holes.get(&endpoint).is_some_and(black_holed)
        }
        // The client's own request timeout names no pod: explained only
        // while some pod was black-holed.
        None => f.message.contains("timed out") && world.black_holes.values().any(black_holed),
    }
}

/// Runs `script` with `sh -c`; an error names it and what it printed.
async fn sh(script: &str) -> std::io::Result<()> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs this soak again, with the same arguments, in a network namespace of
/// its own, and exits as it does.
fn in_namespace() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the soak's own binary: {e}");
            return ExitCode::from(1);
        }
    };
    let status = std::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_MARKER, "1")
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("soak in its network namespace: {status}");
            ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("error: --black-holes needs `unshare -n` (root, util-linux): {e}");
            ExitCode::from(1)
        }
    }
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
