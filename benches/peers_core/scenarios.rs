//! The six scenarios of issue #6 and the two open-loop ones of issue #13,
//! each a function from options to rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::cluster::{self, Cluster, Protocol};
use super::contenders::{self, Contender, Kind};
use super::load::{OpenRun, Sample, Summary, client_cpu_ns, drive, ms, open_loop, round};
use super::memory;
use super::report::{
    DnsRow, KillRow, LoadRow, Meta, OpenRow, OpenSection, Report, ScaleRow, ScaleUpRow,
    ShareSeries, SlowRow, Target, criterion_figures,
};

/// What to run, and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short runs: a smoke test of the runner, not figures to publish.
    pub quick: bool,
    /// Scenarios to run (1 to 8).
    pub scenarios: Vec<u8>,
    /// Contenders to run (all by default).
    pub kinds: Vec<Kind>,
    /// Concurrencies of scenario 1.
    pub concurrencies: Vec<usize>,
    /// Pods per cluster (4 unless a smoke test asks for fewer).
    pub pods: usize,
    /// Time each contender runs at each concurrency in scenario 1, when not
    /// the default (2 s, quick 0.4 s): longer for a profiler.
    pub healthy_time: Option<Duration>,
}

impl Options {
    pub fn new(quick: bool) -> Options {
        Options {
            quick,
            scenarios: vec![1, 2, 3, 4, 5, 6, 7, 8],
            kinds: Kind::ALL.to_vec(),
            concurrencies: vec![1, 16, 64],
            pods: 4,
            healthy_time: None,
        }
    }

    /// Picks the full or the quick figure.
    fn secs(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }
}

/// The slow pod's extra latency in scenario 2.
const SLOW: Duration = Duration::from_millis(40);
/// Rounds per contender and concurrency in scenario 1, alternately in
/// forward and reverse order.
const HEALTHY_ROUNDS: u32 = 8;
/// Requests in flight in scenarios 2 to 4.
const CONCURRENCY: usize = 16;
/// TTL of the records when nothing changes.
const STEADY_TTL: u32 = 30;
/// TTL when the scale-up must be seen quickly (our min_refresh).
const SCALE_UP_TTL: u32 = 1;
/// TTL for the idle-client DNS load: CoreDNS's default for services.
const IDLE_TTL: u32 = 5;
/// First address of HTTP pods (127.0.0.x) and of gRPC pods.
const HTTP_IP: u8 = 21;
const GRPC_IP: u8 = 41;

/// Runs the chosen scenarios; progress on stderr.
pub fn run(opts: &Options) -> Report {
    let pods_rt = cluster::pods_runtime();
    let client_rt = cluster::client_runtime();
    let mut report = Report {
        meta: Meta::collect(opts.quick),
        ..Report::default()
    };
    let wants = |n: u8| opts.scenarios.contains(&n);
    if wants(6) {
        // First, while no pods or clients allocate alongside.
        report.scale = Some(scale());
    }
    if wants(1) {
        report.healthy = healthy(opts, &pods_rt, &client_rt);
    }
    if wants(2) {
        report.slow_pod = slow_pod(opts, &pods_rt, &client_rt);
    }
    if wants(3) {
        report.pod_killed = pod_killed(opts, &pods_rt, &client_rt);
    }
    if wants(4) {
        report.scale_up = scale_up(opts, &pods_rt, &client_rt);
    }
    if wants(5) {
        report.dns_load = dns_load(opts, &pods_rt, &client_rt);
    }
    if wants(7) {
        report.pauses = pauses(opts, &pods_rt, &client_rt);
    }
    if wants(8) {
        report.quarter = quarter(opts, &pods_rt, &client_rt);
    }
    report.targets = targets(&report);
    // The runtimes' tasks (pods, clients) end with them.
    client_rt.shutdown_timeout(Duration::from_secs(1));
    pods_rt.shutdown_timeout(Duration::from_secs(1));
    report
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("peers: {msg}");
}

fn first_ip(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Http => HTTP_IP,
        Protocol::Grpc => GRPC_IP,
    }
}

/// Builds `kind` against `cluster` on the client's runtime.
fn build(client_rt: &Runtime, kind: Kind, cluster: &Cluster) -> Result<Contender, String> {
    client_rt.block_on(contenders::build(
        kind,
        &cluster.target(),
        cluster.dns.addr(),
    ))
}

/// Sends load for `d` and throws the figures away: connections up, estimates learnt.
fn warm_up(client_rt: &Runtime, contender: &Contender, d: Duration) {
    client_rt.block_on(drive(contender.sender.fork(), CONCURRENCY, d, None));
}

/// A fresh cluster of `opts.pods` pods for one contender, and the contender.
struct Setup {
    /// Pods listed in DNS at first.
    listed: usize,
    ttl: u32,
    warm_up: Duration,
}

impl Setup {
    /// Starts the pods, lets `prepare` change them, builds `kind` and warms it up.
    fn start(
        &self,
        opts: &Options,
        pods_rt: &Runtime,
        client_rt: &Runtime,
        kind: Kind,
        prepare: impl FnOnce(&Cluster),
    ) -> Result<(Cluster, Contender), String> {
        let protocol = kind.protocol();
        let cluster = Cluster::start(
            pods_rt,
            protocol,
            first_ip(protocol),
            opts.pods,
            self.listed,
            self.ttl,
        )
        .map_err(|e| format!("pods: {e}"))?;
        prepare(&cluster);
        let contender = build(client_rt, kind, &cluster)?;
        warm_up(client_rt, &contender, self.warm_up);
        Ok((cluster, contender))
    }
}

/// Each pod's share of the requests answered between `before` and `after`.
fn shares(before: &[u64], after: &[u64]) -> Vec<f64> {
    let deltas: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total: u64 = deltas.iter().sum();
    deltas
        .iter()
        .map(|d| {
            if total == 0 {
                0.0
            } else {
                round(*d as f64 / total as f64, 4)
            }
        })
        .collect()
}

// ===== 1: all pods healthy =====

fn healthy(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<LoadRow> {
    let mut rows = Vec::new();
    for protocol in [Protocol::Http, Protocol::Grpc] {
        let kinds: Vec<Kind> = opts
            .kinds
            .iter()
            .copied()
            .filter(|k| k.protocol() == protocol)
            .collect();
        if kinds.is_empty() {
            continue;
        }
        let cluster = match Cluster::start(
            pods_rt,
            protocol,
            first_ip(protocol),
            opts.pods,
            opts.pods,
            STEADY_TTL,
        ) {
            Ok(c) => c,
            Err(e) => {
                for kind in kinds {
                    for &c in &opts.concurrencies {
                        rows.push(LoadRow::failed(kind, c, format!("pods: {e}")));
                    }
                }
                continue;
            }
        };
        // All contenders stay built; each concurrency is measured in two
        // rounds, forward then reverse order, so that no contender always
        // runs first (or last) after a change of load.
        let mut built = Vec::new();
        for kind in kinds {
            let connections = cluster.connections();
            match build(client_rt, kind, &cluster) {
                Ok(contender) => {
                    warm_up(client_rt, &contender, opts.secs(0.5, 0.2));
                    progress(format_args!(
                        "1 {}: {} connections to the pods after the warm-up",
                        kind.name(),
                        cluster.connections() - connections
                    ));
                    built.push(contender);
                }
                Err(e) => {
                    progress(format_args!("1 {}: {e}", kind.name()));
                    for &c in &opts.concurrencies {
                        rows.push(LoadRow::failed(kind, c, e.clone()));
                    }
                }
            }
        }
        // Short rounds, in alternating order, so that a burst of other work
        // on the machine (seconds long) falls on every contender alike.
        let round_time = opts.healthy_time.unwrap_or_else(|| opts.secs(2.0, 0.4)) / HEALTHY_ROUNDS;
        for &c in &opts.concurrencies {
            let mut runs: Vec<Tally> = vec![Tally::default(); built.len()];
            let forward: Vec<usize> = (0..built.len()).collect();
            let reverse: Vec<usize> = forward.iter().rev().copied().collect();
            for r in 0..HEALTHY_ROUNDS {
                let order = if r % 2 == 0 { &forward } else { &reverse };
                for &i in order {
                    let cpu_before = client_cpu_ns();
                    let allocations_before = memory::allocations();
                    let run =
                        client_rt.block_on(drive(built[i].sender.fork(), c, round_time, None));
                    let allocations = allocations_before
                        .zip(memory::allocations())
                        .map(|(a, b)| b.saturating_sub(a));
                    let cpu = cpu_before
                        .zip(client_cpu_ns())
                        .map(|(a, b)| b.saturating_sub(a));
                    let tally = &mut runs[i];
                    tally.samples.extend(run.samples);
                    tally.elapsed += run.elapsed;
                    tally.cpu_ns = tally.cpu_ns.zip(cpu).map(|(sum, ns)| sum + ns);
                    tally.allocations = tally.allocations.zip(allocations).map(|(sum, n)| sum + n);
                }
            }
            for (contender, tally) in built.iter().zip(runs) {
                let Tally {
                    samples,
                    elapsed,
                    cpu_ns,
                    allocations,
                } = tally;
                let summary = Summary::of(&samples, elapsed);
                let mut row = LoadRow::of(contender.kind, c, summary.clone());
                let per_request = |total: u64| total as f64 / summary.requests as f64;
                row.cpu_us_per_request = cpu_ns
                    .filter(|_| summary.requests > 0)
                    .map(|ns| round(per_request(ns) / 1e3, 2));
                row.allocations_per_request = allocations
                    .filter(|_| summary.requests > 0)
                    .map(|n| round(per_request(n), 1));
                let show = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| v.to_string());
                progress(format_args!(
                    "1 healthy, {} c={c}: {:.0} req/s, p99 {} ms, {} errors, client CPU {} µs/request, {} allocations/request",
                    contender.kind.name(),
                    summary.rps,
                    summary.p99_ms,
                    summary.errors,
                    show(row.cpu_us_per_request),
                    show(row.allocations_per_request),
                ));
                rows.push(row);
            }
        }
    }
    rows
}

/// What one contender's rounds at one concurrency measured, summed.
#[derive(Clone)]
struct Tally {
    samples: Vec<Sample>,
    elapsed: Duration,
    /// None once a reading was not available.
    cpu_ns: Option<u64>,
    allocations: Option<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            samples: Vec::new(),
            elapsed: Duration::ZERO,
            cpu_ns: Some(0),
            allocations: Some(0),
        }
    }
}

// ===== 2: one pod of four 40 ms slower =====

fn slow_pod(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<SlowRow> {
    let mut rows = Vec::new();
    for kind in opts
        .kinds
        .iter()
        .copied()
        .filter(|k| k.balances() && !k.healthy_only())
    {
        let setup = Setup {
            listed: opts.pods,
            ttl: STEADY_TTL,
            warm_up: opts.secs(1.0, 0.3),
        };
        let slow = |cluster: &Cluster| cluster.pods.set_delay(0, SLOW);
        let (cluster, contender) = match setup.start(opts, pods_rt, client_rt, kind, slow) {
            Ok(started) => started,
            Err(e) => {
                rows.push(SlowRow::failed(kind, e));
                continue;
            }
        };
        let before = cluster.requests();
        let run = client_rt.block_on(drive(
            contender.sender.fork(),
            CONCURRENCY,
            opts.secs(4.0, 1.0),
            None,
        ));
        let slow_share = shares(&before, &cluster.requests())[0];
        let summary = run.summary();
        progress(format_args!(
            "2 slow pod, {}: p99 {} ms, slow pod {:.2} %",
            kind.name(),
            summary.p99_ms,
            slow_share * 100.0
        ));
        rows.push(SlowRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            summary: Some(summary),
            slow_share: Some(slow_share),
            error: None,
        });
    }
    rows
}

// ===== 3: a pod killed mid-run =====

fn pod_killed(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<KillRow> {
    let mut rows = Vec::new();
    let run_for = opts.secs(5.0, 1.5);
    let kill_at = opts.secs(1.5, 0.5);
    for kind in opts
        .kinds
        .iter()
        .copied()
        .filter(|k| k.balances() && !k.healthy_only())
    {
        let setup = Setup {
            listed: opts.pods,
            ttl: STEADY_TTL,
            warm_up: opts.secs(0.5, 0.2),
        };
        let (cluster, contender) = match setup.start(opts, pods_rt, client_rt, kind, |_| {}) {
            Ok(started) => started,
            Err(e) => {
                rows.push(KillRow::failed(kind, e));
                continue;
            }
        };
        let victim = cluster.pods.len() - 1;
        let done = AtomicBool::new(false);
        let t0 = Instant::now();
        let (load, started, killed, over_time) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| sample_shares(&cluster, t0, &done));
            let load = client_rt.spawn(drive(contender.sender.fork(), CONCURRENCY, run_for, None));
            let started = Instant::now();
            std::thread::sleep(kill_at);
            pods_rt.block_on(cluster.pods.kill(victim));
            let killed = Instant::now();
            let load = client_rt.block_on(load);
            done.store(true, Ordering::Relaxed);
            let points = sampler.join().unwrap_or_default();
            (load, started, killed, points)
        });
        let run = match load {
            Ok(run) => run,
            Err(e) => {
                rows.push(KillRow::failed(kind, format!("load task: {e}")));
                continue;
            }
        };
        // `started` is a hair after the workers' start; the kill offset on
        // their clock is at least this.
        let kill_offset = killed.saturating_duration_since(run.start.min(started));
        let failures: Vec<Duration> = run
            .samples
            .iter()
            .filter(|s| !s.ok && s.done_at >= kill_offset)
            .map(|s| s.done_at - kill_offset)
            .collect();
        let summary = run.summary();
        let last_failure = failures.iter().max().map(|d| ms(*d));
        progress(format_args!(
            "3 pod killed, {}: {} failed after the kill, last at {:?} ms",
            kind.name(),
            failures.len(),
            last_failure
        ));
        rows.push(KillRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            failed: Some(failures.len() as u64),
            last_failure_ms: last_failure,
            run_after_kill_ms: Some(ms(run.elapsed.saturating_sub(kill_offset))),
            summary: Some(summary),
            shares_over_time: Some(ShareSeries::new(over_time, killed - t0)),
            error: None,
        });
    }
    rows
}

// ===== 4: scale-up mid-run =====

fn scale_up(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<ScaleUpRow> {
    let mut rows = Vec::new();
    let change_at = opts.secs(1.0, 0.3);
    // ginepro probes DNS every 10 s by default: wait long enough to see it.
    let give_up = opts.secs(14.0, 3.0);
    let share_window = opts.secs(2.0, 0.5);
    for kind in opts
        .kinds
        .iter()
        .copied()
        .filter(|k| k.balances() && !k.healthy_only())
    {
        let n = opts.pods;
        let setup = Setup {
            listed: n - 1,
            ttl: SCALE_UP_TTL,
            warm_up: opts.secs(0.5, 0.2),
        };
        let (cluster, contender) = match setup.start(opts, pods_rt, client_rt, kind, |_| {}) {
            Ok(started) => started,
            Err(e) => {
                rows.push(ScaleUpRow::failed(kind, e));
                continue;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let limit = change_at + give_up + share_window + Duration::from_secs(1);
        let t0 = Instant::now();
        let (first, share, errors, changed, over_time) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| sample_shares(&cluster, t0, &stop));
            let load = client_rt.spawn(drive(
                contender.sender.fork(),
                CONCURRENCY,
                limit,
                Some(stop.clone()),
            ));
            std::thread::sleep(change_at);
            cluster.list(n);
            let changed = Instant::now();
            let newcomer = n - 1;
            let mut first = None;
            while changed.elapsed() < give_up {
                if cluster.pods.requests(newcomer) > 0 {
                    first = Some(changed.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut share = None;
            if first.is_some() {
                let before = cluster.requests();
                std::thread::sleep(share_window);
                share = Some(shares(&before, &cluster.requests())[newcomer]);
            }
            stop.store(true, Ordering::Relaxed);
            let errors = client_rt
                .block_on(load)
                .map(|run| run.summary().errors)
                .ok();
            let points = sampler.join().unwrap_or_default();
            (first, share, errors, changed, points)
        });
        progress(format_args!(
            "4 scale-up, {}: first request after {:?}, share {:?}",
            kind.name(),
            first,
            share
        ));
        rows.push(ScaleUpRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            first_request_ms: first.map(ms),
            gave_up_after_ms: ms(give_up),
            new_pod_share: share,
            share_window_s: share_window.as_secs_f64(),
            errors,
            shares_over_time: Some(ShareSeries::new(over_time, changed - t0)),
            error: None,
        });
    }
    rows
}

// ===== 5: DNS load of an idle client =====

fn dns_load(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<DnsRow> {
    let window = opts.secs(30.0, 6.0);
    // One cluster per contender (each with its own DNS server, so that
    // queries are counted apart), all idle at once over the same window.
    let mut idle = Vec::new();
    let mut rows = Vec::new();
    for (i, kind) in opts
        .kinds
        .iter()
        .copied()
        .filter(|k| !k.healthy_only())
        .enumerate()
    {
        let protocol = kind.protocol();
        if !kind.balances() {
            rows.push(DnsRow {
                contender: kind.name().to_owned(),
                protocol: kind.wire().to_owned(),
                queries_per_minute: None,
                error: Some("resolves once, at start".to_owned()),
            });
            continue;
        }
        let cluster = match Cluster::start(
            pods_rt,
            protocol,
            first_ip(protocol) + 5 * (i as u8 % 4),
            2,
            2,
            IDLE_TTL,
        ) {
            Ok(c) => c,
            Err(e) => {
                rows.push(DnsRow::failed(kind, format!("pods: {e}")));
                continue;
            }
        };
        match build(client_rt, kind, &cluster) {
            Ok(contender) => idle.push((kind, cluster, contender)),
            Err(e) => rows.push(DnsRow::failed(kind, e)),
        }
    }
    // Let start-up lookups finish, then count.
    std::thread::sleep(Duration::from_millis(500));
    for (_, cluster, _) in &idle {
        cluster.dns.reset_counts();
    }
    progress(format_args!(
        "5 DNS load: {} idle clients for {:?}",
        idle.len(),
        window
    ));
    std::thread::sleep(window);
    for (kind, cluster, _contender) in &idle {
        let per_minute = cluster.dns.queries() as f64 * 60.0 / window.as_secs_f64();
        progress(format_args!(
            "5 DNS load, {}: {per_minute:.1} queries/min",
            kind.name()
        ));
        rows.push(DnsRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            queries_per_minute: Some(round(per_minute, 1)),
            error: None,
        });
    }
    rows
}

// ===== 6: scale =====

fn scale() -> ScaleRow {
    progress("6 scale: memory per endpoint at 10 000 endpoints");
    let memory = memory::per_endpoint(1_000, 10_000);
    let (pick, throughput) = criterion_figures();
    ScaleRow {
        memory_bytes_per_endpoint_ours: memory.map(|m| round(m.0, 1)),
        memory_bytes_per_endpoint_tower: memory.map(|m| round(m.1, 1)),
        pick,
        throughput,
    }
}

impl LoadRow {
    fn of(kind: Kind, concurrency: usize, summary: Summary) -> LoadRow {
        LoadRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            concurrency,
            summary: Some(summary),
            cpu_us_per_request: None,
            allocations_per_request: None,
            error: None,
        }
    }
}

// ===== per-pod shares over time (scenarios 3 and 4) =====

/// How often each pod's served count is sampled for the share plots.
const SHARE_SAMPLE: Duration = Duration::from_millis(250);

/// Each pod's share of the requests answered in every [`SHARE_SAMPLE`]
/// interval from `t0` until `stop` is set: `(end of the interval in s since
/// t0, shares)`. Runs on a thread of its own.
fn sample_shares(cluster: &Cluster, t0: Instant, stop: &AtomicBool) -> Vec<(f64, Vec<f64>)> {
    let mut points = Vec::new();
    let mut before = cluster.requests();
    let mut next = t0 + SHARE_SAMPLE;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // The load may have ended within this interval: leave it out.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = cluster.requests();
        points.push((round((next - t0).as_secs_f64(), 3), shares(&before, &now)));
        before = now;
        next += SHARE_SAMPLE;
    }
    points
}

// ===== 7 and 8: open loop on pods of known capacity =====

/// Each pod of scenarios 7 and 8 serves at most this many requests at once…
pub const OPEN_CAPACITY: usize = 2;
/// …each taking this long, so that its capacity is bounded and known.
pub const OPEN_DELAY: Duration = Duration::from_millis(2);
/// Scenario 8's pods serve twice as many at once, and the starved one a quarter of that.
pub const QUARTER_CAPACITY: usize = 4;
/// The open loop's bound on requests in flight; beyond it, overload errors.
pub const OPEN_BOUND: usize = 1024;
/// Scenario 7's stop-the-world pauses: this long…
pub const PAUSE: Duration = Duration::from_millis(80);
/// …starting at Poisson times this far apart on average, on every pod.
pub const PAUSE_EVERY: Duration = Duration::from_secs(2);
/// Seed of the first pod's pause schedule in scenario 7 (the others take the
/// next numbers); chosen once, not tuned.
pub const PAUSE_SEED: u64 = 13;
/// Hedges a hedged contender may send at once (at least the requests in
/// flight on one pod, which a pause holds together).
pub const HEDGE_BURST: u32 = 32;
/// Hedges a request of a hedged contender may get.
pub const MAX_HEDGES: u32 = 2;

/// Requests/s that `kind` gets through `cluster` with 64 in flight: the
/// pods' capacity as a balancer that spreads load can use it.
fn capacity(opts: &Options, client_rt: &Runtime, contender: &Contender) -> f64 {
    let run = client_rt.block_on(drive(
        contender.sender.fork(),
        64,
        opts.secs(2.0, 0.5),
        None,
    ));
    run.summary().rps
}

/// A fresh cluster of `protocol` pods with `prepare` applied.
fn open_cluster(
    opts: &Options,
    pods_rt: &Runtime,
    protocol: Protocol,
    prepare: &dyn Fn(&Cluster),
) -> Result<Cluster, String> {
    let cluster = Cluster::start(
        pods_rt,
        protocol,
        first_ip(protocol),
        opts.pods,
        opts.pods,
        STEADY_TTL,
    )
    .map_err(|e| format!("pods: {e}"))?;
    prepare(&cluster);
    Ok(cluster)
}

/// One contender of an open-loop scenario, built by `make`.
type Make<'a> = Box<dyn Fn(&Cluster) -> Result<Contender, String> + 'a>;

/// Runs `contender` open loop at `rate` for `run_for` after an open-loop
/// warm-up, `during` applied to the cluster between the two.
#[allow(clippy::too_many_arguments)]
fn open_row(
    opts: &Options,
    client_rt: &Runtime,
    cluster: &Cluster,
    contender: &Contender,
    rate: f64,
    run_for: Duration,
    during: &dyn Fn(&Cluster),
    scenario: u8,
) -> OpenRow {
    client_rt.block_on(open_loop(
        contender.sender.fork(),
        rate,
        opts.secs(1.0, 0.3),
        OPEN_BOUND,
    ));
    during(cluster);
    let pauses_before: u64 = (0..cluster.pods.len())
        .map(|i| cluster.pods.pauses(i))
        .sum();
    let hedges_before = contender.hedge_counts().unwrap_or((0, 0));
    let before = cluster.requests();
    let (run, delays): (OpenRun, Vec<f64>) = client_rt.block_on(async {
        let run = open_loop(contender.sender.fork(), rate, run_for, OPEN_BOUND);
        tokio::pin!(run);
        // The delay a hedging contender uses, every 100 ms while the run lasts.
        let mut delays = Vec::new();
        let mut every = tokio::time::interval(Duration::from_millis(100));
        let run = loop {
            tokio::select! {
                run = &mut run => break run,
                _ = every.tick() => {
                    let hedging = contender.hedged.as_ref().and_then(|c| c.stats().hedging);
                    if let Some(delay) = hedging.and_then(|h| h.delay) {
                        delays.push(delay.as_secs_f64() * 1e3);
                    }
                }
            }
        };
        (run, delays)
    });
    let served = shares(&before, &cluster.requests());
    let pauses: u64 = (0..cluster.pods.len())
        .map(|i| cluster.pods.pauses(i))
        .sum();
    let summary = run.summary();
    let counts = contender
        .hedge_counts()
        .map(|(sent, refused)| (sent - hedges_before.0, refused - hedges_before.1));
    let hedges = counts.map(|(sent, _)| sent);
    let hedges_refused = counts.map(|(_, refused)| refused);
    let hedge_delay_ms = spread(delays);
    progress(format_args!(
        "{scenario} {}: {} req/s asked, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, {} errors ({} overload), hedges {:?}, refused {:?}",
        contender.label,
        summary.rate,
        summary.p50_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.max_ms,
        summary.errors,
        summary.overload,
        hedges,
        hedges_refused
    ));
    OpenRow {
        contender: contender.label.clone(),
        protocol: contender.kind.wire().to_owned(),
        hedges,
        hedges_refused,
        hedge_delay_ms,
        pauses: Some(pauses - pauses_before),
        first_pod_share: served.first().copied(),
        summary: Some(summary),
        error: None,
    }
}

/// The least, median and most of `samples`; None if there are none.
fn spread(mut samples: Vec<f64>) -> Option<[f64; 3]> {
    samples.sort_by(f64::total_cmp);
    let (first, last) = (*samples.first()?, *samples.last()?);
    Some([first, samples[samples.len() / 2], last].map(|ms| round(ms, 3)))
}

/// Measures the capacity with `kind` and returns half of it (rounded to 10
/// requests/s), and with `reference` also `kind`'s open-loop run at that
/// rate on the same pods, unchanged.
fn half_capacity(
    opts: &Options,
    pods_rt: &Runtime,
    client_rt: &Runtime,
    kind: Kind,
    prepare: &dyn Fn(&Cluster),
    scenario: u8,
    reference: bool,
) -> Result<(f64, f64, Option<OpenRow>), String> {
    let cluster = open_cluster(opts, pods_rt, kind.protocol(), prepare)?;
    let contender = build(client_rt, kind, &cluster)?;
    warm_up(client_rt, &contender, opts.secs(0.5, 0.2));
    let capacity = capacity(opts, client_rt, &contender);
    let rate = (capacity / 2.0 / 10.0).round().max(1.0) * 10.0;
    progress(format_args!(
        "{scenario} capacity with {}: {capacity:.0} req/s; open loop at {rate} req/s",
        kind.name()
    ));
    if !reference {
        return Ok((capacity, rate, None));
    }
    let mut row = open_row(
        opts,
        client_rt,
        &cluster,
        &contender,
        rate,
        opts.secs(4.0, 1.0),
        &|_| {},
        scenario,
    );
    row.contender = format!("{}, no pauses (reference)", kind.name());
    Ok((capacity, rate, Some(row)))
}

/// Scenario 7: four gRPC pods of known capacity, each pausing at Poisson times.
fn pauses(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Option<OpenSection> {
    let prepare = |cluster: &Cluster| {
        for i in 0..cluster.pods.len() {
            cluster.pods.set_delay(i, OPEN_DELAY);
            cluster.pods.set_capacity(i, Some(OPEN_CAPACITY));
        }
    };
    let (capacity, rate, reference) =
        match half_capacity(opts, pods_rt, client_rt, Kind::GrpcOurs, &prepare, 7, true) {
            Ok((capacity, rate, Some(reference))) => (capacity, rate, reference),
            Ok(_) => return None,
            Err(e) => {
                progress(format_args!("7 pauses: {e}"));
                return None;
            }
        };
    let healthy_p95 = reference.summary.as_ref().map_or(0.0, |s| s.p95_ms);
    // A fixed hedge delay near the healthy p95, in whole tenths of a millisecond.
    let hedge_after = Duration::from_secs_f64((healthy_p95 * 10.0).ceil().max(1.0) / 1e4);
    // Every contender meets the same pauses at the same moments of its
    // measured window (each pod's schedule is seeded, and starts with the
    // window), so that their tails compare pause for pause rather than luck
    // against luck: a window of 15 s holds about 30 pauses, give or take 6.
    let pause_all = |cluster: &Cluster| {
        for i in 0..cluster.pods.len() {
            cluster
                .pods
                .set_pauses(i, PAUSE_EVERY, PAUSE, PAUSE_SEED + i as u64);
        }
    };
    let mut makes: Vec<Make> = Vec::new();
    for kind in [
        Kind::GrpcTonic,
        Kind::GrpcGinepro,
        Kind::GrpcTower,
        Kind::GrpcOurs,
    ] {
        makes.push(Box::new(move |cluster: &Cluster| {
            build(client_rt, kind, cluster)
        }));
    }
    let hedged = [
        (
            headless_lb::HedgePolicy::after(hedge_after)
                .burst(HEDGE_BURST)
                .max_hedges(MAX_HEDGES),
            format!(
                "headless-lb Channel, hedge after {:.1} ms, burst {HEDGE_BURST}, max {MAX_HEDGES}",
                hedge_after.as_secs_f64() * 1e3
            ),
        ),
        (
            headless_lb::HedgePolicy::auto()
                .burst(HEDGE_BURST)
                .max_hedges(MAX_HEDGES),
            format!("headless-lb Channel, hedge auto (p95), burst {HEDGE_BURST}, max {MAX_HEDGES}"),
        ),
    ];
    for (policy, label) in hedged {
        makes.push(Box::new(move |cluster: &Cluster| {
            client_rt.block_on(contenders::build_hedged(
                &cluster.target(),
                cluster.dns.addr(),
                policy.clone(),
                label.clone(),
            ))
        }));
    }
    let mut rows = vec![reference];
    for make in makes {
        let row = open_cluster(opts, pods_rt, Protocol::Grpc, &prepare).and_then(|cluster| {
            let contender = make(&cluster)?;
            Ok(open_row(
                opts,
                client_rt,
                &cluster,
                &contender,
                rate,
                opts.secs(15.0, 2.0),
                &pause_all,
                7,
            ))
        });
        match row {
            Ok(row) => rows.push(row),
            Err(e) => {
                progress(format_args!("7 pauses: {e}"));
                rows.push(OpenRow::failed("(a contender)".to_owned(), "grpc", e));
            }
        }
    }
    Some(OpenSection {
        capacity_rps: round(capacity, 0),
        rate,
        hedge_after_ms: Some(ms(hedge_after)),
        rows,
    })
}

/// Scenario 8: four HTTP pods, the first at a quarter of the others' capacity.
fn quarter(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Option<OpenSection> {
    let prepare = |cluster: &Cluster| {
        for i in 0..cluster.pods.len() {
            cluster.pods.set_delay(i, OPEN_DELAY);
            let capacity = if i == 0 {
                QUARTER_CAPACITY / 4
            } else {
                QUARTER_CAPACITY
            };
            cluster.pods.set_capacity(i, Some(capacity));
        }
    };
    let (capacity, rate) =
        match half_capacity(opts, pods_rt, client_rt, Kind::HttpOurs, &prepare, 8, false) {
            Ok((capacity, rate, _)) => (capacity, rate),
            Err(e) => {
                progress(format_args!("8 quarter capacity: {e}"));
                return None;
            }
        };
    let mut rows = Vec::new();
    for kind in [Kind::HttpOurs, Kind::HttpRoundRobin] {
        let row = open_cluster(opts, pods_rt, Protocol::Http, &prepare).and_then(|cluster| {
            let contender = build(client_rt, kind, &cluster)?;
            Ok(open_row(
                opts,
                client_rt,
                &cluster,
                &contender,
                rate,
                opts.secs(8.0, 2.0),
                &|_| {},
                8,
            ))
        });
        match row {
            Ok(row) => rows.push(row),
            Err(e) => rows.push(OpenRow::failed(kind.name().to_owned(), "http", e)),
        }
    }
    Some(OpenSection {
        capacity_rps: round(capacity, 0),
        rate,
        hedge_after_ms: None,
        rows,
    })
}

// ===== the targets =====

/// Scenario 1's targets at each protocol and concurrency: requests/s at
/// least 0.95 × round-robin's and 1.0 × tonic's and ginepro's, and client
/// CPU per request at most 1.1 × round-robin's. Written as "theirs / ours ≤
/// 1 / bound" for throughput, so that every target reads "ratio ≤ bound".
fn healthy_targets(rows: &[LoadRow]) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |kind: Kind, c: usize| {
        rows.iter()
            .find(|r| r.contender == kind.name() && r.concurrency == c)
    };
    let mut concurrencies: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    for c in concurrencies {
        let rps = |kind| {
            find(kind, c)
                .and_then(|r| r.summary.as_ref())
                .map(|s| s.rps)
        };
        let cpu = |kind| find(kind, c).and_then(|r| r.cpu_us_per_request);
        for (ours, peer, at_least) in [
            (Kind::HttpOurs, Kind::HttpRoundRobin, 0.95),
            (Kind::H2cOurs, Kind::H2cRoundRobin, 0.95),
            (Kind::GrpcOurs, Kind::GrpcTonic, 1.0),
            (Kind::GrpcOurs, Kind::GrpcGinepro, 1.0),
        ] {
            if find(ours, c).is_none() || find(peer, c).is_none() {
                continue;
            }
            out.push(Target::ratio(
                1,
                format!(
                    "{} req/s / {} req/s, {c} in flight",
                    peer.name(),
                    ours.name()
                ),
                rps(peer),
                rps(ours),
                round(1.0 / at_least, 3),
            ));
        }
        for (ours, baseline) in [
            (Kind::HttpOurs, Kind::HttpRoundRobin),
            (Kind::H2cOurs, Kind::H2cRoundRobin),
        ] {
            if find(ours, c).is_none() || find(baseline, c).is_none() {
                continue;
            }
            out.push(Target::ratio(
                1,
                format!(
                    "{} client CPU/request / {}'s, {c} in flight",
                    ours.name(),
                    baseline.name()
                ),
                cpu(ours),
                cpu(baseline),
                1.1,
            ));
        }
    }
    out
}

/// The targets of issue #13 that this run can check, as ratios in one run.
fn targets(report: &Report) -> Vec<Target> {
    let mut out = healthy_targets(&report.healthy);
    let find = |rows: &[OpenRow], name: &str| {
        rows.iter()
            .find(|r| r.contender == name)
            .and_then(|r| r.summary.clone())
    };
    if let Some(section) = &report.pauses {
        let rows = &section.rows;
        let ours = find(rows, Kind::GrpcOurs.name());
        for (peer, bound) in [
            (Kind::GrpcTonic, 0.1),
            (Kind::GrpcGinepro, 0.1),
            (Kind::GrpcTower, 0.7),
        ] {
            out.push(Target::ratio(
                7,
                format!("{} p99 / {} p99", Kind::GrpcOurs.name(), peer.name()),
                ours.as_ref().map(|s| s.p99_ms),
                find(rows, peer.name()).map(|s| s.p99_ms),
                bound,
            ));
        }
        for hedged in rows.iter().filter(|r| r.hedges.is_some()) {
            let s = hedged.summary.clone();
            for peer in [Kind::GrpcTonic, Kind::GrpcGinepro, Kind::GrpcTower] {
                out.push(Target::ratio(
                    7,
                    format!("{} p99.9 / {} p99.9", hedged.contender, peer.name()),
                    s.as_ref().map(|s| s.p999_ms),
                    find(rows, peer.name()).map(|s| s.p999_ms),
                    0.3,
                ));
            }
            // The budget: at most 10 % of requests plus one burst.
            let cap = s.as_ref().map(|s| {
                headless_lb::client::DEFAULT_HEDGE_BUDGET * s.sent as f64 + f64::from(HEDGE_BURST)
            });
            out.push(Target::ratio(
                7,
                format!(
                    "{}: hedges / (10 % of requests + burst {HEDGE_BURST})",
                    hedged.contender
                ),
                hedged.hedges.map(|h| h as f64),
                cap,
                1.0,
            ));
        }
    }
    if let Some(section) = &report.quarter {
        out.push(Target::ratio(
            8,
            format!(
                "{} p99 / {} p99",
                Kind::HttpOurs.name(),
                Kind::HttpRoundRobin.name()
            ),
            find(&section.rows, Kind::HttpOurs.name()).map(|s| s.p99_ms),
            find(&section.rows, Kind::HttpRoundRobin.name()).map(|s| s.p99_ms),
            0.2,
        ));
    }
    out
}
