//! The result of a run: JSON (serde) and the Markdown section of BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::contenders::Kind;
use super::load::{OpenSummary, Summary, round};
use super::scenarios::{
    OPEN_BOUND, OPEN_CAPACITY, OPEN_DELAY, PAUSE, PAUSE_EVERY, QUARTER_CAPACITY,
};

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub healthy: Vec<LoadRow>,
    pub slow_pod: Vec<SlowRow>,
    pub pod_killed: Vec<KillRow>,
    pub scale_up: Vec<ScaleUpRow>,
    pub dns_load: Vec<DnsRow>,
    pub scale: Option<ScaleRow>,
    /// Scenario 7: pauses on every pod, open loop.
    pub pauses: Option<OpenSection>,
    /// Scenario 8: one pod at a quarter of the others' capacity, open loop.
    pub quarter: Option<OpenSection>,
    /// The targets this run checks.
    pub targets: Vec<Target>,
}

/// An open-loop scenario: the capacity measured, the rate sent, the rows.
#[derive(Debug, Serialize)]
pub struct OpenSection {
    /// Requests/s ours got through the pods with 64 in flight.
    pub capacity_rps: f64,
    /// Requests/s sent: half of the capacity.
    pub rate: f64,
    /// The fixed hedge delay (near the healthy p95), when hedging runs.
    pub hedge_after_ms: Option<f64>,
    pub rows: Vec<OpenRow>,
}

#[derive(Debug, Serialize)]
pub struct OpenRow {
    pub contender: String,
    pub protocol: String,
    pub summary: Option<OpenSummary>,
    /// Hedges sent in the measured window, for a contender that hedges.
    pub hedges: Option<u64>,
    /// Hedges that were due in the window but that the budget refused.
    pub hedges_refused: Option<u64>,
    /// The hedge delay in use, sampled every 100 ms over the window: least,
    /// median and most, in ms (a contender that hedges).
    pub hedge_delay_ms: Option<[f64; 3]>,
    /// Pauses the pods started in the measured window.
    pub pauses: Option<u64>,
    /// The first pod's share of the requests answered in the window.
    pub first_pod_share: Option<f64>,
    pub error: Option<String>,
}

impl OpenRow {
    pub fn failed(contender: String, protocol: &str, error: String) -> OpenRow {
        OpenRow {
            contender,
            protocol: protocol.to_owned(),
            summary: None,
            hedges: None,
            hedges_refused: None,
            hedge_delay_ms: None,
            pauses: None,
            first_pod_share: None,
            error: Some(error),
        }
    }
}

/// Each pod's share of the answers over time, sampled at the pods.
#[derive(Debug, Clone, Serialize)]
pub struct ShareSeries {
    /// `(end of the interval, s since the load started, each pod's share)`.
    pub points: Vec<(f64, Vec<f64>)>,
    /// When the kill or the DNS change happened, s since the load started.
    pub event_s: f64,
}

impl ShareSeries {
    pub fn new(points: Vec<(f64, Vec<f64>)>, event: std::time::Duration) -> ShareSeries {
        ShareSeries {
            points,
            event_s: round(event.as_secs_f64(), 3),
        }
    }
}

/// One of the targets: `measured / against ≤ bound`.
#[derive(Debug, Serialize)]
pub struct Target {
    pub scenario: u8,
    pub what: String,
    pub ratio: Option<f64>,
    pub bound: f64,
    pub met: Option<bool>,
}

impl Target {
    pub fn ratio(
        scenario: u8,
        what: String,
        measured: Option<f64>,
        against: Option<f64>,
        bound: f64,
    ) -> Target {
        let ratio = match (measured, against) {
            (Some(m), Some(a)) if a > 0.0 => Some(round(m / a, 3)),
            _ => None,
        };
        Target {
            scenario,
            what,
            ratio,
            bound,
            met: ratio.map(|r| r <= bound),
        }
    }
}

/// Where and with what the run happened; read off the machine and Cargo.lock.
#[derive(Debug, Default, Serialize)]
pub struct Meta {
    pub quick: bool,
    pub date: String,
    pub commit: String,
    pub cpus: usize,
    pub cpu: String,
    pub rustc: String,
    /// /proc/loadavg when the run started: other work on the machine.
    pub loadavg: String,
    /// `name version` of the crates compared, from Cargo.lock.
    pub versions: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LoadRow {
    pub contender: String,
    pub protocol: String,
    pub concurrency: usize,
    pub summary: Option<Summary>,
    /// CPU time of the client's threads per request (the pods' left out).
    pub cpu_us_per_request: Option<f64>,
    /// Heap allocations per request in the whole process (pods included:
    /// theirs are the same for every contender of a protocol).
    pub allocations_per_request: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SlowRow {
    pub contender: String,
    pub protocol: String,
    pub summary: Option<Summary>,
    /// The slow pod's share of the requests answered in the measured window.
    pub slow_share: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KillRow {
    pub contender: String,
    pub protocol: String,
    /// Requests that failed from the kill on.
    pub failed: Option<u64>,
    /// When the last of them finished, after the kill.
    pub last_failure_ms: Option<f64>,
    /// How long the load went on after the kill.
    pub run_after_kill_ms: Option<f64>,
    pub summary: Option<Summary>,
    pub shares_over_time: Option<ShareSeries>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ScaleUpRow {
    pub contender: String,
    pub protocol: String,
    /// From the DNS change until the new pod answered its first request.
    pub first_request_ms: Option<f64>,
    pub gave_up_after_ms: f64,
    /// The new pod's share in the `share_window_s` after its first request.
    pub new_pod_share: Option<f64>,
    pub share_window_s: f64,
    pub errors: Option<u64>,
    pub shares_over_time: Option<ShareSeries>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DnsRow {
    pub contender: String,
    pub protocol: String,
    pub queries_per_minute: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ScaleRow {
    pub memory_bytes_per_endpoint_ours: Option<f64>,
    pub memory_bytes_per_endpoint_tower: Option<f64>,
    /// Criterion's mean time per request, `(endpoints, ours ns, tower ns)`.
    pub pick: Vec<Pair>,
    /// Criterion's mean time per request, `(callers, ours ns, tower ns)`.
    pub throughput: Vec<Pair>,
}

/// `(parameter, ours, tower's)`.
pub type Pair = (usize, Option<f64>, Option<f64>);

macro_rules! failed_ctor {
    ($row:ident { $($field:ident: $value:expr),* }) => {
        impl $row {
            pub fn failed(kind: Kind, error: String) -> $row {
                $row {
                    contender: kind.name().to_owned(),
                    protocol: kind.wire().to_owned(),
                    error: Some(error),
                    $($field: $value),*
                }
            }
        }
    };
}

failed_ctor!(SlowRow {
    summary: None,
    slow_share: None
});
failed_ctor!(KillRow {
    failed: None,
    last_failure_ms: None,
    run_after_kill_ms: None,
    summary: None,
    shares_over_time: None
});
failed_ctor!(ScaleUpRow {
    first_request_ms: None,
    gave_up_after_ms: 0.0,
    new_pod_share: None,
    share_window_s: 0.0,
    errors: None,
    shares_over_time: None
});
failed_ctor!(DnsRow {
    queries_per_minute: None
});

impl LoadRow {
    pub fn failed(kind: Kind, concurrency: usize, error: String) -> LoadRow {
        LoadRow {
            contender: kind.name().to_owned(),
            protocol: kind.wire().to_owned(),
            concurrency,
            summary: None,
            cpu_us_per_request: None,
            allocations_per_request: None,
            error: Some(error),
        }
    }
}

// ===== meta =====

/// The crates whose versions the report names.
const CRATES: [&str; 9] = [
    "headless-lb",
    "tower",
    "hyper",
    "hyper-util",
    "tonic",
    "ginepro",
    "hickory-resolver",
    "tokio",
    "criterion",
];

impl Meta {
    pub fn collect(quick: bool) -> Meta {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Meta {
            quick,
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: command("git", &["describe", "--always", "--dirty"]),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            rustc: command(
                &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()),
                &["--version"],
            ),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            versions: locked_versions(),
        }
    }
}

fn command(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `name version` for each of [`CRATES`] in Cargo.lock (every version of it).
fn locked_versions() -> Vec<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && CRATES.contains(&n.as_str())
        {
            found.push(format!("{n} {}", v.trim_matches('"')));
        }
    }
    found.sort_by_key(|s| {
        CRATES
            .iter()
            .position(|c| s.split(' ').next() == Some(c))
            .unwrap_or(usize::MAX)
    });
    found
}

// ===== criterion =====

/// Where criterion keeps its results.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
    target.join("criterion")
}

/// Criterion's mean in ns for `group/function/param`, if `benches/balance.rs` ran.
fn criterion_mean(group: &str, function: &str, param: usize) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join(param.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Pick cost and handle throughput as `benches/balance.rs` last measured them.
pub fn criterion_figures() -> (Vec<Pair>, Vec<Pair>) {
    let figures = |group: &str, params: &[usize]| {
        params
            .iter()
            .map(|&p| {
                (
                    p,
                    criterion_mean(group, "headless_lb", p),
                    criterion_mean(group, "tower_buffer_balance", p),
                )
            })
            .collect()
    };
    (
        figures("pick", &[10, 100, 1_000, 10_000]),
        figures("throughput", &[1, 2, 8]),
    )
}

// ===== markdown =====

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
}

/// `x / base` as `1.23×`; `—` when either is missing or the base is zero.
fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "—".to_owned(),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |x| format!("{:.1} %", x * 100.0))
}

/// The contender's name, or the name and its error.
fn name(contender: &str, error: &Option<String>) -> String {
    match error {
        Some(e) => format!("{contender} (error: {})", e.replace('|', "/")),
        None => contender.to_owned(),
    }
}

impl Report {
    /// The Markdown section for BENCHMARKS.md: tables and the run's facts.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.meta;
        let _ = writeln!(
            md,
            "<!-- written by `benches/peers.rs`; do not edit by hand -->"
        );
        let _ = writeln!(
            md,
            "Run {}{} at commit `{}` on {} CPUs ({}), {}; load average at the start: {}.\n",
            m.date,
            if m.quick {
                " (QUICK: smoke run, not figures)"
            } else {
                ""
            },
            m.commit,
            m.cpus,
            m.cpu,
            m.rustc,
            m.loadavg
        );
        let _ = writeln!(md, "Versions (Cargo.lock): {}.\n", m.versions.join(", "));
        let _ = writeln!(
            md,
            "Ratios compare each contender with ours in the same run and protocol: \
             `req/s ×` above 1 means faster than ours, `p99 ×` above 1 means a \
             slower tail than ours.\n"
        );
        self.healthy_md(&mut md);
        self.slow_md(&mut md);
        self.kill_md(&mut md);
        self.scale_up_md(&mut md);
        self.dns_md(&mut md);
        self.scale_md(&mut md);
        self.pauses_md(&mut md);
        self.quarter_md(&mut md);
        self.targets_md(&mut md);
        md
    }

    fn healthy_md(&self, md: &mut String) {
        if self.healthy.is_empty() {
            return;
        }
        let _ = writeln!(md, "### 1. All pods healthy\n");
        let _ = writeln!(
            md,
            "| contender | protocol | concurrency | req/s | req/s × | p50 ms | p99 ms | p99 × | p99.9 ms | errors | client CPU µs/req | CPU × | allocations/req |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in &self.healthy {
            let ours = self.healthy.iter().find(|r| {
                r.protocol == row.protocol
                    && r.concurrency == row.concurrency
                    && is_ours(&r.contender)
            });
            let ours_cpu = ours.and_then(|r| r.cpu_us_per_request);
            let ours = ours.and_then(|r| r.summary.as_ref());
            let s = row.summary.as_ref();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                name(&row.contender, &row.error),
                row.protocol,
                row.concurrency,
                opt(s.map(|s| s.rps), 0),
                ratio(s.map(|s| s.rps), ours.map(|s| s.rps)),
                opt(s.map(|s| s.p50_ms), 2),
                opt(s.map(|s| s.p99_ms), 2),
                ratio(s.map(|s| s.p99_ms), ours.map(|s| s.p99_ms)),
                opt(s.map(|s| s.p999_ms), 2),
                s.map_or_else(|| "—".to_owned(), |s| s.errors.to_string()),
                opt(row.cpu_us_per_request, 2),
                ratio(row.cpu_us_per_request, ours_cpu),
                opt(row.allocations_per_request, 1),
            );
        }
        let _ = writeln!(md);
    }

    fn slow_md(&self, md: &mut String) {
        if self.slow_pod.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "### 2. One pod of four 40 ms slower (16 in flight)\n\nA fair share is 25 %; \
             the less the slow pod gets, the better.\n"
        );
        let _ = writeln!(
            md,
            "| contender | protocol | req/s | p50 ms | p99 ms | p99 × | p99.9 ms | slow pod's share | errors |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
        for row in &self.slow_pod {
            let ours = self
                .slow_pod
                .iter()
                .find(|r| r.protocol == row.protocol && is_ours(&r.contender))
                .and_then(|r| r.summary.as_ref());
            let s = row.summary.as_ref();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                name(&row.contender, &row.error),
                row.protocol,
                opt(s.map(|s| s.rps), 0),
                opt(s.map(|s| s.p50_ms), 2),
                opt(s.map(|s| s.p99_ms), 2),
                ratio(s.map(|s| s.p99_ms), ours.map(|s| s.p99_ms)),
                opt(s.map(|s| s.p999_ms), 2),
                pct(row.slow_share),
                s.map_or_else(|| "—".to_owned(), |s| s.errors.to_string()),
            );
        }
        let _ = writeln!(md);
    }

    fn kill_md(&self, md: &mut String) {
        if self.pod_killed.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "### 3. A pod killed mid-run (1 of 4, still listed in DNS)\n\n\
             Failed requests from the kill on, and when the last of them finished: \
             after that, no request reached the dead pod and failed.\n"
        );
        let _ = writeln!(
            md,
            "| contender | protocol | failed after the kill | last failure, ms after the kill | req/s | p99 ms |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|");
        for row in &self.pod_killed {
            let s = row.summary.as_ref();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                name(&row.contender, &row.error),
                row.protocol,
                row.failed.map_or_else(|| "—".to_owned(), |n| n.to_string()),
                last_failure(row),
                opt(s.map(|s| s.rps), 0),
                opt(s.map(|s| s.p99_ms), 2),
            );
        }
        let _ = writeln!(md);
    }

    fn scale_up_md(&self, md: &mut String) {
        if self.scale_up.is_empty() {
            return;
        }
        let window = self.scale_up.first().map_or(0.0, |r| r.share_window_s);
        let _ = writeln!(
            md,
            "### 4. Scale-up mid-run (3 → 4 pods, TTL 1 s)\n\n\
             From the DNS change until the new pod answers its first request, and its \
             share of the next {window} s (fair: 25 %).\n"
        );
        let _ = writeln!(
            md,
            "| contender | protocol | first request on the new pod, ms | its share next | errors |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|");
        for row in &self.scale_up {
            let first = match (row.first_request_ms, &row.error) {
                (Some(t), _) => format!("{t:.0}"),
                (None, None) => format!("none within {:.0}", row.gave_up_after_ms),
                (None, Some(_)) => "—".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                name(&row.contender, &row.error),
                row.protocol,
                first,
                pct(row.new_pod_share),
                row.errors.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            );
        }
        let _ = writeln!(md);
    }

    fn dns_md(&self, md: &mut String) {
        if self.dns_load.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "### 5. DNS load of one idle client (TTL 5 s)\n\nQueries counted at the test DNS server.\n"
        );
        let _ = writeln!(md, "| contender | protocol | queries per minute |");
        let _ = writeln!(md, "|---|---|--:|");
        for row in &self.dns_load {
            let value = match (&row.queries_per_minute, &row.error) {
                (Some(q), _) => format!("{q:.1}"),
                (None, Some(e)) => format!("— ({e})"),
                (None, None) => "—".to_owned(),
            };
            let _ = writeln!(md, "| {} | {} | {} |", row.contender, row.protocol, value);
        }
        let _ = writeln!(md);
    }

    fn scale_md(&self, md: &mut String) {
        let Some(scale) = &self.scale else {
            return;
        };
        let _ = writeln!(md, "### 6. Scale\n");
        let _ = writeln!(
            md,
            "Heap per endpoint at 10 000 endpoints ((live bytes at 10 000 − at 1 000) / 9 000, \
             immediate endpoints): ours {} B, tower `Buffer<Balance<PeakEwma>>` {} B ({}).\n",
            opt(scale.memory_bytes_per_endpoint_ours, 0),
            opt(scale.memory_bytes_per_endpoint_tower, 0),
            ratio(
                scale.memory_bytes_per_endpoint_ours,
                scale.memory_bytes_per_endpoint_tower
            )
            .replace('×', "× tower's")
        );
        if scale.pick.iter().all(|p| p.1.is_none() && p.2.is_none()) {
            let _ = writeln!(
                md,
                "Pick cost and throughput: no criterion results found; run \
                 `cargo bench --bench balance` first.\n"
            );
            return;
        }
        let _ = writeln!(
            md,
            "Pick cost (one request through the balancer to an immediate endpoint, \
             criterion mean, `benches/balance.rs`):\n"
        );
        let _ = writeln!(
            md,
            "| endpoints | ours ns | tower Buffer<Balance> ns | tower / ours |"
        );
        let _ = writeln!(md, "|--:|--:|--:|--:|");
        for (n, ours, theirs) in &scale.pick {
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} |",
                opt(*ours, 0),
                opt(*theirs, 0),
                ratio(*theirs, *ours)
            );
        }
        let _ = writeln!(
            md,
            "\nHandle throughput at 10 endpoints (multi-thread runtime, one worker per CPU):\n"
        );
        let _ = writeln!(
            md,
            "| callers | ours req/s | tower Buffer<Balance> req/s | ours / tower |"
        );
        let _ = writeln!(md, "|--:|--:|--:|--:|");
        let per_s = |ns: Option<f64>| ns.map(|ns| round(1e9 / ns, 0));
        for (n, ours, theirs) in &scale.throughput {
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} |",
                opt(per_s(*ours), 0),
                opt(per_s(*theirs), 0),
                ratio(per_s(*ours), per_s(*theirs))
            );
        }
        let _ = writeln!(md);
    }
}

/// When the last failure came; "still failing" if it came in the run's last 100 ms.
fn last_failure(row: &KillRow) -> String {
    match (row.last_failure_ms, row.run_after_kill_ms) {
        (Some(last), Some(run)) if run - last < 100.0 => {
            format!("still failing when the run ended, {run:.0} ms after the kill")
        }
        (Some(last), _) => format!("{last:.0}"),
        (None, _) => "—".to_owned(),
    }
}

fn is_ours(contender: &str) -> bool {
    Kind::ALL
        .iter()
        .any(|k| k.is_ours() && k.name() == contender)
}

// ===== open loop =====

impl Report {
    fn pauses_md(&self, md: &mut String) {
        let Some(section) = &self.pauses else {
            return;
        };
        let _ = writeln!(
            md,
            "### 7. Pauses on every pod (gRPC, open loop)\n\n\
             Four gRPC pods, each serving at most {OPEN_CAPACITY} requests at once in \
             {} ms (capacity measured with ours at 64 in flight: {:.0} req/s), each \
             pausing {} ms at Poisson times {} s apart on average; open loop at half \
             the capacity, {:.0} req/s, latency from each request's intended start, \
             at most {OPEN_BOUND} in flight. The fixed hedge delay is the reference \
             row's p95 rounded up: {} ms. `sent`: requests sent in the measured \
             window; `extra`: hedges sent / requests sent, the hedges that were \
             due but that the budget refused, and the hedge delay in use (sampled \
             every 100 ms: least, median, most).\n",
            OPEN_DELAY.as_millis(),
            section.capacity_rps,
            PAUSE.as_millis(),
            PAUSE_EVERY.as_secs_f64(),
            section.rate,
            opt(section.hedge_after_ms, 1)
        );
        open_table(md, &section.rows, false);
    }

    fn quarter_md(&self, md: &mut String) {
        let Some(section) = &self.quarter else {
            return;
        };
        let _ = writeln!(
            md,
            "### 8. One pod at a quarter of the others' capacity (HTTP/1.1, open loop)\n\n\
             Four HTTP pods answering in {} ms, three serving at most \
             {QUARTER_CAPACITY} requests at once and the first at most {} (capacity \
             measured with ours at 64 in flight: {:.0} req/s); open loop at half the \
             capacity, {:.0} req/s, at most {OPEN_BOUND} in flight, for each contender \
             on fresh pods. `pod 1 share`: the starved pod's share of the answers \
             (its capacity is {:.1} % of the four pods').\n",
            OPEN_DELAY.as_millis(),
            QUARTER_CAPACITY / 4,
            section.capacity_rps,
            section.rate,
            100.0 * (QUARTER_CAPACITY / 4) as f64
                / (3 * QUARTER_CAPACITY + QUARTER_CAPACITY / 4) as f64
        );
        open_table(md, &section.rows, true);
    }

    fn targets_md(&self, md: &mut String) {
        if self.targets.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "### Targets of issue #13 in this run\n\n\
             | scenario | ratio | measured | target | |\n|--:|---|--:|--:|---|"
        );
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "—",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | ≤ {} | {} |",
                t.scenario,
                t.what,
                opt(t.ratio, 2),
                t.bound,
                mark
            );
        }
        let _ = writeln!(md);
    }
}

fn open_table(md: &mut String, rows: &[OpenRow], shares: bool) {
    let _ = writeln!(
        md,
        "| contender | sent | p50 ms | p99 ms | p99.9 ms | max ms | errors (overload) | {} |",
        if shares { "pod 1 share" } else { "extra" }
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let s = row.summary.as_ref();
        let last = if shares {
            pct(row.first_pod_share)
        } else {
            match (row.hedges, s) {
                (Some(h), Some(s)) if s.sent > 0 => {
                    let refused = row
                        .hedges_refused
                        .map_or_else(String::new, |r| format!(", {r} refused"));
                    let delay = row
                        .hedge_delay_ms
                        .map_or_else(String::new, |[lo, mid, hi]| {
                            format!(", delay {lo:.2}/{mid:.2}/{hi:.2} ms")
                        });
                    format!(
                        "{h} ({:.2} %){refused}{delay}",
                        100.0 * h as f64 / s.sent as f64
                    )
                }
                _ => "—".to_owned(),
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            name(&row.contender, &row.error),
            s.map_or_else(|| "—".to_owned(), |s| s.sent.to_string()),
            opt(s.map(|s| s.p50_ms), 2),
            opt(s.map(|s| s.p99_ms), 2),
            opt(s.map(|s| s.p999_ms), 2),
            opt(s.map(|s| s.max_ms), 2),
            s.map_or_else(
                || "—".to_owned(),
                |s| format!("{} ({})", s.errors, s.overload)
            ),
            last
        );
    }
    let _ = writeln!(md);
}

/// Latency by percentile of a row, for the plots.
pub fn curve(summary: &OpenSummary) -> &[(f64, f64)] {
    &summary.by_percentile
}
