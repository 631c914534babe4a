//! Simulates many clients of one headless service with and without subsetting,
//! with the library's own balancer and subset code, in simulated time.
//!
//! ```text
//! cargo run --release --example simulate -- --clients N --pods M
//!     [--subset K] [--subset-mode none|random|rendezvous|ours] [--seed S]
//!     [--duration-s SECS] [--requests N] [--events N] [--svg PATH] [--quiet]
//! ```
//!
//! Every client is a real [`headless_lb::balance::Balancer`] (P2C over
//! peak-EWMA, the background task, the subset rule) fed by a `Discover`
//! channel; every pod is an in-memory `tower::Service` with one worker
//! (requests queue) and a service time of its own: most pods take the base
//! time, one in ten twice as long, each request an exponential draw around
//! it. Time is tokio's paused clock, so seconds of traffic take a fraction of
//! a second and a seed repeats a run exactly. No socket is opened.
//!
//! - Clients send at Poisson times; their rates differ (log-normal, σ = 1,
//!   normalised to the mean), the total being `--requests` over `--duration-s`.
//!   The base service time puts the average pod at 40 % busy.
//! - `--events` scale events, one pod each, spread over the run: every odd
//!   one deletes a random pod, every even one adds a new pod.
//! - Modes: `none` (every client balances over every pod), `random` (each
//!   client a uniformly random `K` pods, drawn again at every change: the
//!   naive subset), `rendezvous` ([`Subset`] by name, each client named
//!   `client-I`: gRFC A68's rule) and `ours` ([`Subset`] by ordinal: client
//!   `I` of `N`). Without `--subset-mode` every mode runs and a table is
//!   printed (`none` only up to 4 000 000 client × pod endpoints: 1 000 ×
//!   10 000 would take minutes and gigabytes); the JSON line is `ours`'s (or
//!   the one mode's).
//!
//! stdout ends with ONE line of JSON:
//!
//! ```text
//! {"mode":S,"clients":N,"pods":N,"subset":K,"seed":S,"requests":N,
//!  "conn_per_pod_max_over_mean":F,"req_per_pod_max_over_mean":F,
//!  "subset_moves_per_event":F,"p99_ms":F}
//! ```
//!
//! - `conn_per_pod_max_over_mean`: clients connected to the busiest pod over
//!   the mean, after start-up.
//! - `req_per_pod_max_over_mean`: requests served by the busiest pod over the
//!   mean, over the run.
//! - `subset_moves_per_event`: pods that entered a client's set at one scale
//!   event, averaged over clients and events (rendezvous: about K / pods).
//! - `p99_ms`: the 99th percentile of request latency in simulated time,
//!   queueing at the pods included.
//!
//! `--svg PATH` writes a plot of requests per pod (sorted, busiest first) for
//! every mode run. A progress line per mode goes to stderr unless `--quiet`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clap::{Parser, ValueEnum};

mod common;
use futures::channel::mpsc;
use headless_lb::balance::{Balancer, ClientIdentity, EndpointState};
use tokio::time::Instant;
use tower::ServiceExt;
use tower::discover::Change;

#[derive(Parser, Debug)]
#[command(about = "Simulate many clients of one service with and without subsetting")]
struct Args {
    /// Clients.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    clients: u32,
    /// Pods at start.
    #[arg(long, value_name = "M", default_value_t = 1000)]
    pods: usize,
    /// Pods per client in the subset modes.
    #[arg(long, value_name = "K", default_value_t = 20)]
    subset: usize,
    /// Run one mode only (default: all four, with a table).
    #[arg(long, value_enum)]
    subset_mode: Option<Mode>,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds of traffic.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    duration_s: f64,
    /// Requests in all, over the run (spread over clients by their rates).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    requests: u64,
    /// Scale events (one pod each; odd: delete, even: add).
    #[arg(long, value_name = "N", default_value_t = 10)]
    events: usize,
    /// Write an SVG plot of requests per pod to PATH.
    #[arg(long, value_name = "PATH")]
    svg: Option<std::path::PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    None,
    Random,
    Rendezvous,
    Ours,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Random => "random",
            Mode::Rendezvous => "rendezvous",
            Mode::Ours => "ours",
        }
    }
}

/// One simulated pod: one worker, a service time, counters.
struct PodSim {
    addr: SocketAddr,
    service_time: Duration,
    worker: tokio::sync::Semaphore,
    requests: AtomicU64,
}

/// A client's handle on a pod: what the balancer calls.
#[derive(Clone)]
struct PodService(Arc<PodSim>);

impl tower::Service<()> for PodService {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let pod = self.0.clone();
        // Exponential around the pod's service time.
        let draw = -(1.0 - fastrand::f64()).ln();
        let time = pod.service_time.mul_f64(draw);
        Box::pin(async move {
            let _worker = pod.worker.acquire().await;
            pod.requests.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(time).await;
            Ok(())
        })
    }
}

/// The most client × pod endpoints the all-modes run simulates without subsetting.
const NONE_LIMIT: u64 = 4_000_000;

type Tx = mpsc::UnboundedSender<Result<Change<SocketAddr, PodService>, Infallible>>;

/// One mode's figures.
struct Outcome {
    mode: Mode,
    conn_max_over_mean: f64,
    req_max_over_mean: f64,
    moves_per_event: f64,
    p99_ms: f64,
    requests: u64,
    per_pod: Vec<u64>,
}

fn main() -> ExitCode {
    let args: Args = common::parse_args();
    if args.clients == 0 || args.pods == 0 || args.subset == 0 || args.requests == 0 {
        return common::usage_error(
            "--clients, --pods, --subset and --requests must be at least 1",
        );
    }
    if !(args.duration_s > 0.0 && args.duration_s.is_finite() && args.duration_s <= 86_400.0) {
        return common::usage_error("--duration-s must be a number of seconds in (0, 86400]");
    }
    if args.pods.saturating_add(args.events) > 1 << 24 || args.requests > 100_000_000 {
        return common::usage_error(
            "at most 16 777 216 pods (with the added ones) and 100 000 000 requests",
        );
    }
    // Every client holding every pod is what subsetting exists to avoid, and
    // simulating it costs as much: past this many endpoints the all-modes
    // run leaves `none` out (ask for it with `--subset-mode none`).
    let none_endpoints = u64::from(args.clients) * args.pods as u64;
    let skip_none = args.subset_mode.is_none() && none_endpoints > NONE_LIMIT;
    let modes = match args.subset_mode {
        Some(mode) => vec![mode],
        None if skip_none => vec![Mode::Random, Mode::Rendezvous, Mode::Ours],
        None => vec![Mode::None, Mode::Random, Mode::Rendezvous, Mode::Ours],
    };
    let mut outcomes = Vec::new();
    for mode in modes {
        let started = std::time::Instant::now();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        let outcome = runtime.block_on(run(&args, mode));
        if !args.quiet {
            eprintln!(
                "simulate: {} done in {:.1} s: {} requests, connections max/mean {:.2}, requests max/mean {:.2}, moves/event {:.3}, p99 {:.1} ms",
                mode.name(),
                started.elapsed().as_secs_f64(),
                outcome.requests,
                outcome.conn_max_over_mean,
                outcome.req_max_over_mean,
                outcome.moves_per_event,
                outcome.p99_ms
            );
        }
        outcomes.push(outcome);
    }
    if outcomes.len() > 1 {
        println!(
            "{} clients × {} pods, subset {}, seed {}, {} requests over {} s, {} scale events",
            args.clients,
            args.pods,
            args.subset,
            args.seed,
            args.requests,
            args.duration_s,
            args.events
        );
        println!();
        println!(
            "| mode | connections per pod, max/mean | requests per pod, max/mean | p99 latency | subset moves per event |"
        );
        println!("|---|--:|--:|--:|--:|");
        if skip_none {
            println!("| none | not run: {none_endpoints} endpoints (over {NONE_LIMIT}) | | | |");
        }
        for o in &outcomes {
            println!(
                "| {} | {:.2} | {:.2} | {:.1} ms | {:.3} |",
                o.mode.name(),
                o.conn_max_over_mean,
                o.req_max_over_mean,
                o.p99_ms,
                o.moves_per_event
            );
        }
        println!();
    }
    if let Some(path) = &args.svg
        && let Err(error) = plot(path, &args, &outcomes)
    {
        eprintln!("simulate: cannot write {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    let last = outcomes
        .iter()
        .find(|o| o.mode == Mode::Ours)
        .or(outcomes.last())
        .expect("at least one mode ran");
    println!(
        "{}",
        serde_json::json!({
            "mode": last.mode.name(),
            "clients": args.clients,
            "pods": args.pods,
            "subset": args.subset,
            "seed": args.seed,
            "requests": last.requests,
            "conn_per_pod_max_over_mean": round(last.conn_max_over_mean),
            "req_per_pod_max_over_mean": round(last.req_max_over_mean),
            "subset_moves_per_event": round(last.moves_per_event),
            "p99_ms": round(last.p99_ms),
        })
    );
    ExitCode::SUCCESS
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn pod_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

async fn run(args: &Args, mode: Mode) -> Outcome {
    fastrand::seed(args.seed);
    let total_rate = args.requests as f64 / args.duration_s;
    // One worker per pod, 40 % busy on average.
    let base = Duration::from_secs_f64(0.4 * args.pods as f64 / total_rate / 1.1);
    let new_pod = |i: usize| {
        let slow = fastrand::u32(..10) == 0;
        Arc::new(PodSim {
            addr: pod_addr(i),
            service_time: if slow { base * 2 } else { base },
            worker: tokio::sync::Semaphore::new(1),
            requests: AtomicU64::new(0),
        })
    };
    let mut pods: Vec<Arc<PodSim>> = (0..args.pods).map(new_pod).collect();
    let mut next_pod = args.pods;

    // Client rates: log-normal, normalised to the mean.
    let raw: Vec<f64> = (0..args.clients).map(|_| normal().exp()).collect();
    let raw_mean = raw.iter().sum::<f64>() / raw.len() as f64;
    let per_client = total_rate / f64::from(args.clients);
    let rates: Vec<f64> = raw.iter().map(|r| r / raw_mean * per_client).collect();

    let mut clients: Vec<(Balancer<(), PodService>, Tx)> = Vec::new();
    let mut random_sets: Vec<Vec<SocketAddr>> = Vec::new();
    for c in 0..args.clients {
        let (tx, rx) = mpsc::unbounded();
        let mut builder = Balancer::builder()
            .target_name(format!("client-{c}"))
            .max_connected(usize::MAX)
            .connect_concurrency(usize::MAX);
        builder = match mode {
            Mode::None | Mode::Random => builder,
            Mode::Rendezvous => builder
                .subset_size(args.subset)
                .subset_identity(ClientIdentity::Name(format!("client-{c}"))),
            Mode::Ours => builder
                .subset_size(args.subset)
                .subset_identity(ClientIdentity::ordinal(c, args.clients).expect("c < clients")),
        };
        let lb = builder.build(rx);
        if mode == Mode::Random {
            let set = random_subset(pods.len(), args.subset);
            for &i in &set {
                insert(&tx, &pods[i]);
            }
            random_sets.push(set.iter().map(|&i| pods[i].addr).collect());
        } else {
            for pod in &pods {
                insert(&tx, pod);
            }
        }
        clients.push((lb, tx));
    }
    settle().await;
    let conn = connections(&clients, &pods);

    // Traffic: one task per client, Poisson arrivals, bounded by the run's end.
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(
        args.requests as usize + 1024,
    )));
    let end = Instant::now() + Duration::from_secs_f64(args.duration_s);
    let mut senders = Vec::new();
    for ((lb, _), &rate) in clients.iter().zip(&rates) {
        let lb = lb.clone();
        let latencies = latencies.clone();
        senders.push(tokio::spawn(async move {
            let mut at = Instant::now();
            loop {
                at += Duration::from_secs_f64(-(1.0 - fastrand::f64()).ln() / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let lb = lb.clone();
                let latencies = latencies.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let ok = lb.oneshot(()).await.is_ok();
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    latencies
                        .lock()
                        .expect("latencies")
                        .push(if ok { ms } else { f64::INFINITY });
                });
            }
        }));
    }

    // Scale events, evenly spread over the run.
    let mut moves = 0u64;
    let gap = Duration::from_secs_f64(args.duration_s / (args.events as f64 + 1.0));
    let start = Instant::now();
    for event in 1..=args.events {
        tokio::time::sleep_until(start + gap * event as u32).await;
        let before = members(&clients);
        if event % 2 == 1 && pods.len() > 1 {
            let gone = pods.remove(fastrand::usize(..pods.len()));
            if mode == Mode::Random {
                redraw(&clients, &mut random_sets, &pods, args.subset);
                drop(gone);
            } else {
                for (_, tx) in &clients {
                    let _ = tx.unbounded_send(Ok(Change::Remove(gone.addr)));
                }
            }
        } else {
            let pod = new_pod(next_pod);
            next_pod += 1;
            pods.push(pod.clone());
            if mode == Mode::Random {
                redraw(&clients, &mut random_sets, &pods, args.subset);
            } else {
                for (_, tx) in &clients {
                    insert(tx, &pod);
                }
            }
        }
        settle().await;
        let after = members(&clients);
        moves += before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.iter().filter(|x| b.binary_search(x).is_err()).count() as u64)
            .sum::<u64>();
    }
    for sender in senders {
        let _ = sender.await;
    }
    // Let the last requests finish.
    tokio::time::sleep(Duration::from_secs(30)).await;

    let mut lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
    let requests = lat.len() as u64;
    lat.sort_by(f64::total_cmp);
    let p99 = lat
        .get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    // Requests per pod, over the pods that lived through the whole run.
    let mut per_pod: Vec<u64> = pods
        .iter()
        .filter(|p| {
            let i = pod_index(p.addr);
            i < args.pods
        })
        .map(|p| p.requests.load(Ordering::Relaxed))
        .collect();
    per_pod.sort_unstable_by(|a, b| b.cmp(a));
    let req_mean = per_pod.iter().sum::<u64>() as f64 / per_pod.len().max(1) as f64;
    let req_max = per_pod.first().copied().unwrap_or(0) as f64;
    Outcome {
        mode,
        conn_max_over_mean: conn,
        req_max_over_mean: if req_mean > 0.0 {
            req_max / req_mean
        } else {
            0.0
        },
        moves_per_event: moves as f64 / (f64::from(args.clients) * args.events.max(1) as f64),
        p99_ms: p99,
        requests,
        per_pod,
    }
}

fn pod_index(addr: SocketAddr) -> usize {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let [_, a, b, c] = ip.octets();
            (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
        }
        std::net::IpAddr::V6(_) => usize::MAX,
    }
}

fn insert(tx: &Tx, pod: &Arc<PodSim>) {
    let _ = tx.unbounded_send(Ok(Change::Insert(pod.addr, PodService(pod.clone()))));
}

/// Lets every balancer task apply what it was sent.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Connected clients per pod, max over mean, from every balancer's stats.
fn connections(clients: &[(Balancer<(), PodService>, Tx)], pods: &[Arc<PodSim>]) -> f64 {
    let mut per_pod = std::collections::HashMap::<SocketAddr, u64>::new();
    for pod in pods {
        per_pod.insert(pod.addr, 0);
    }
    for (lb, _) in clients {
        for s in lb.stats() {
            if s.state == EndpointState::Ready {
                *per_pod.entry(s.address).or_default() += 1;
            }
        }
    }
    let max = per_pod.values().copied().max().unwrap_or(0) as f64;
    let mean = per_pod.values().sum::<u64>() as f64 / per_pod.len().max(1) as f64;
    if mean > 0.0 { max / mean } else { 0.0 }
}

/// Every client's listed (not draining) endpoints, sorted by address.
fn members(clients: &[(Balancer<(), PodService>, Tx)]) -> Vec<Vec<SocketAddr>> {
    clients
        .iter()
        .map(|(lb, _)| {
            lb.stats()
                .into_iter()
                .filter(|s| s.state != EndpointState::Draining)
                .map(|s| s.address)
                .collect()
        })
        .collect()
}

fn random_subset(pods: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..pods).collect();
    fastrand::shuffle(&mut all);
    all.truncate(k.min(pods));
    all
}

/// The naive subset: every client draws its pods again from the new set.
fn redraw(
    clients: &[(Balancer<(), PodService>, Tx)],
    sets: &mut [Vec<SocketAddr>],
    pods: &[Arc<PodSim>],
    k: usize,
) {
    for ((_, tx), old) in clients.iter().zip(sets.iter_mut()) {
        let new = random_subset(pods.len(), k);
        let new_addrs: Vec<SocketAddr> = new.iter().map(|&i| pods[i].addr).collect();
        for addr in old.iter() {
            if !new_addrs.contains(addr) {
                let _ = tx.unbounded_send(Ok(Change::Remove(*addr)));
            }
        }
        for &i in &new {
            if !old.contains(&pods[i].addr) {
                insert(tx, &pods[i]);
            }
        }
        *old = new_addrs;
    }
}

/// A standard normal draw (Box-Muller).
fn normal() -> f64 {
    let u1 = 1.0 - fastrand::f64();
    let u2 = fastrand::f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn plot(path: &std::path::Path, args: &Args, outcomes: &[Outcome]) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_y = outcomes
        .iter()
        .filter_map(|o| o.per_pod.first())
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.05;
    let max_x = outcomes.iter().map(|o| o.per_pod.len()).max().unwrap_or(1);
    let title = format!(
        "Requests per pod, busiest first: {} clients × {} pods, subset {}",
        args.clients, args.pods, args.subset
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..max_x, 0.0..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("pods, sorted by requests served")
        .y_desc("requests")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLACK, RED, BLUE, GREEN];
    for (o, color) in outcomes.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(
                o.per_pod.iter().enumerate().map(|(i, &n)| (i, n as f64)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(o.mode.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
