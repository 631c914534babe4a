//! The six scenarios of issue #6, each a function from options to rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::cluster::{self, Cluster, Protocol};
use super::contenders::{self, Contender, Kind};
use super::load::{Sample, Summary, drive, ms, round};
use super::memory;
use super::report::{
    DnsRow, KillRow, LoadRow, Meta, Report, ScaleRow, ScaleUpRow, SlowRow, criterion_figures,
};

/// What to run, and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short runs: a smoke test of the runner, not figures to publish.
    pub quick: bool,
    /// Scenarios to run (1 to 6).
    pub scenarios: Vec<u8>,
    /// Contenders to run (all by default).
    pub kinds: Vec<Kind>,
    /// Concurrencies of scenario 1.
    pub concurrencies: Vec<usize>,
    /// Pods per cluster (4 unless a smoke test asks for fewer).
    pub pods: usize,
}

impl Options {
    pub fn new(quick: bool) -> Options {
        Options {
            quick,
            scenarios: vec![1, 2, 3, 4, 5, 6],
            kinds: Kind::ALL.to_vec(),
            concurrencies: vec![1, 16, 64],
            pods: 4,
        }
    }

    /// Picks the full or the quick figure.
    fn secs(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { quick } else { full })
    }
}

/// The slow pod's extra latency in scenario 2.
const SLOW: Duration = Duration::from_millis(40);
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
            match build(client_rt, kind, &cluster) {
                Ok(contender) => {
                    warm_up(client_rt, &contender, opts.secs(0.5, 0.2));
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
        let half = opts.secs(1.0, 0.2);
        for &c in &opts.concurrencies {
            let mut runs: Vec<(Vec<Sample>, Duration)> = vec![Default::default(); built.len()];
            let forward: Vec<usize> = (0..built.len()).collect();
            for order in [forward.clone(), forward.into_iter().rev().collect()] {
                for i in order {
                    let run = client_rt.block_on(drive(built[i].sender.fork(), c, half, None));
                    runs[i].0.extend(run.samples);
                    runs[i].1 += run.elapsed;
                }
            }
            for (contender, (samples, elapsed)) in built.iter().zip(runs) {
                let summary = Summary::of(&samples, elapsed);
                progress(format_args!(
                    "1 healthy, {} c={c}: {:.0} req/s, p99 {} ms, {} errors",
                    contender.kind.name(),
                    summary.rps,
                    summary.p99_ms,
                    summary.errors
                ));
                rows.push(LoadRow::of(contender.kind, c, summary));
            }
        }
    }
    rows
}

// ===== 2: one pod of four 40 ms slower =====

fn slow_pod(opts: &Options, pods_rt: &Runtime, client_rt: &Runtime) -> Vec<SlowRow> {
    let mut rows = Vec::new();
    for kind in opts.kinds.iter().copied().filter(|k| k.balances()) {
        let protocol = kind.protocol();
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
            protocol: protocol_name(protocol),
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
    for kind in opts.kinds.iter().copied().filter(|k| k.balances()) {
        let protocol = kind.protocol();
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
        let load = client_rt.spawn(drive(contender.sender.fork(), CONCURRENCY, run_for, None));
        let started = Instant::now();
        std::thread::sleep(kill_at);
        pods_rt.block_on(cluster.pods.kill(victim));
        let killed = Instant::now();
        let run = match client_rt.block_on(load) {
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
            protocol: protocol_name(protocol),
            failed: Some(failures.len() as u64),
            last_failure_ms: last_failure,
            run_after_kill_ms: Some(ms(run.elapsed.saturating_sub(kill_offset))),
            summary: Some(summary),
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
    for kind in opts.kinds.iter().copied().filter(|k| k.balances()) {
        let protocol = kind.protocol();
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
        progress(format_args!(
            "4 scale-up, {}: first request after {:?}, share {:?}",
            kind.name(),
            first,
            share
        ));
        rows.push(ScaleUpRow {
            contender: kind.name().to_owned(),
            protocol: protocol_name(protocol),
            first_request_ms: first.map(ms),
            gave_up_after_ms: ms(give_up),
            new_pod_share: share,
            share_window_s: share_window.as_secs_f64(),
            errors,
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
    for (i, kind) in opts.kinds.iter().copied().enumerate() {
        let protocol = kind.protocol();
        if !kind.balances() {
            rows.push(DnsRow {
                contender: kind.name().to_owned(),
                protocol: protocol_name(protocol),
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
            protocol: protocol_name(kind.protocol()),
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

pub fn protocol_name(protocol: Protocol) -> String {
    match protocol {
        Protocol::Http => "http",
        Protocol::Grpc => "grpc",
    }
    .to_owned()
}

impl LoadRow {
    fn of(kind: Kind, concurrency: usize, summary: Summary) -> LoadRow {
        LoadRow {
            contender: kind.name().to_owned(),
            protocol: protocol_name(kind.protocol()),
            concurrency,
            summary: Some(summary),
            error: None,
        }
    }
}
