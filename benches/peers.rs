//! headless-lb against what users would pick instead, on the same pods in one
//! run: prints a Markdown comparison (the section pasted into BENCHMARKS.md)
//! on stdout and writes it, with the same data as JSON, to files.
//!
//! ```text
//! cargo bench --all-features --bench peers                 # about 5½ minutes
//! cargo bench --all-features --bench peers -- --quick      # smoke run, ~80 s
//!     [--markdown PATH] [--json PATH] [--scenarios 1,2,…]
//!     [--kinds KEY,…] [--concurrencies N,…] [--seconds S]
//! cargo bench --all-features --bench peers -- --count [--kinds KEY,…]
//!     [--concurrencies N] [--requests N]
//! ```
//!
//! `--kinds` runs only the named contenders in scenarios 1 to 5
//! (`http-ours`, `round-robin`, `h2c-ours`, `h2c-round-robin` (scenario 1
//! only), `random`, `direct`, `http-tower`, `grpc-ours`, `tonic`,
//! `ginepro`), `--concurrencies` sets scenario 1's, and `--seconds` how long
//! each contender runs at each of them (2 s by default, in 8 rounds that
//! alternate the contenders' order). Together they run one contender long
//! enough to profile it:
//!
//! ```text
//! perf record -g -- target/release/deps/peers-HASH --scenarios 1 \
//!     --kinds http-ours --concurrencies 16 --seconds 20
//! ```
//!
//! `--count` counts instead of timing: what one request costs each of
//! `--kinds` (default `http-ours,round-robin`) on a single client thread, at
//! the first of `--concurrencies` (default 16) over `--requests` requests
//! (default 20 000): allocations and CPU time per request, and a measured
//! phase that callgrind can count alone (see `peers_core/count.rs`):
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_phase*' \
//!     target/release/deps/peers-HASH --count --kinds http-ours --requests 20000
//! ```
//!
//! Defaults: `target/peers/report.md` and `target/peers/report.json`; SVG
//! plots go next to them (`target/peers/*.svg`).
//! `cargo bench --all-features` runs `benches/balance.rs` first, whose
//! criterion results scenario 6 reads. Scenarios (see BENCHMARKS.md):
//! 1 healthy pods, 2 one slow pod, 3 a pod killed, 4 scale-up, 5 DNS load of
//! an idle client, 6 pick cost, handle throughput and memory per endpoint,
//! 7 pauses on every pod (open loop, hedging), 8 one pod at a quarter of the
//! others' capacity (open loop).

#[path = "peers_core/mod.rs"]
mod peers_core;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use peers_core::Options;
use peers_core::contenders::Kind;

#[global_allocator]
static ALLOC: peers_core::memory::Counting = peers_core::memory::Counting;

fn main() -> ExitCode {
    let mut quick = false;
    let mut markdown = None;
    let mut json = None;
    let mut scenarios = None;
    let mut kinds = None;
    let mut concurrencies = None;
    let mut healthy_time = None;
    let mut count = false;
    let mut requests = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            // cargo bench passes `--bench`; criterion's own flags may come along too.
            "--bench" => {}
            "--markdown" => markdown = args.next().map(PathBuf::from),
            "--json" => json = args.next().map(PathBuf::from),
            "--scenarios" => {
                let list = args.next().unwrap_or_default();
                match list
                    .split(',')
                    .map(str::parse::<u8>)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) if v.iter().all(|n| (1..=8).contains(n)) => scenarios = Some(v),
                    _ => {
                        eprintln!("error: --scenarios takes numbers 1 to 8, e.g. 1,7");
                        return ExitCode::from(2);
                    }
                }
            }
            "--kinds" => {
                let list = args.next().unwrap_or_default();
                let all = Kind::ALL;
                match list
                    .split(',')
                    .map(|key| all.iter().copied().find(|k| k.key() == key).ok_or(key))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) => kinds = Some(v),
                    Err(key) => {
                        let keys: Vec<_> = all.iter().map(|k| k.key()).collect();
                        eprintln!(
                            "error: --kinds: unknown contender {key:?}; known: {}",
                            keys.join(", ")
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            "--concurrencies" => {
                let list = args.next().unwrap_or_default();
                match list
                    .split(',')
                    .map(str::parse::<usize>)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) if v.iter().all(|&n| (1..=4096).contains(&n)) => concurrencies = Some(v),
                    _ => {
                        eprintln!("error: --concurrencies takes numbers 1 to 4096, e.g. 1,16");
                        return ExitCode::from(2);
                    }
                }
            }
            "--count" => count = true,
            "--requests" => {
                let value = args.next().unwrap_or_default();
                match value.parse::<u64>() {
                    Ok(n) if (1..=100_000_000).contains(&n) => requests = n,
                    _ => {
                        eprintln!(
                            "error: --requests takes a count from 1 to 100000000, e.g. 20000"
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            "--seconds" => {
                let value = args.next().unwrap_or_default();
                match value.parse::<f64>() {
                    Ok(s) if s.is_finite() && (0.01..=3600.0).contains(&s) => {
                        healthy_time = Some(Duration::from_secs_f64(s))
                    }
                    _ => {
                        eprintln!("error: --seconds takes seconds from 0.01 to 3600, e.g. 20");
                        return ExitCode::from(2);
                    }
                }
            }
            other => eprintln!("peers: ignoring argument {other:?}"),
        }
    }
    if count {
        let kinds = kinds.unwrap_or_else(|| vec![Kind::HttpOurs, Kind::HttpRoundRobin]);
        let concurrency = concurrencies.and_then(|c| c.first().copied()).unwrap_or(16);
        let costs = peers_core::count::run(&kinds, concurrency, requests, 21);
        println!("{}", peers_core::count::markdown(&costs, concurrency));
        return if costs.len() == kinds.len() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut opts = Options::new(quick);
    if let Some(s) = scenarios {
        opts.scenarios = s;
    }
    if let Some(k) = kinds {
        opts.kinds = k;
    }
    if let Some(c) = concurrencies {
        opts.concurrencies = c;
    }
    opts.healthy_time = healthy_time;
    let started = Instant::now();
    let report = peers_core::run(&opts);
    let md = report.markdown();
    println!("{md}");
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
        .join("peers");
    let markdown = markdown.unwrap_or_else(|| out.join("report.md"));
    let json = json.unwrap_or_else(|| out.join("report.json"));
    let text = serde_json::to_string_pretty(&report).expect("the report serializes");
    for (path, body) in [(&markdown, &md), (&json, &text)] {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, body) {
            eprintln!("peers: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match peers_core::plots::write_all(&report, &out) {
        Ok(paths) => {
            for path in paths {
                eprintln!("peers: wrote {}", path.display());
            }
        }
        Err(e) => eprintln!("peers: cannot write the plots: {e}"),
    }
    eprintln!(
        "peers: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        markdown.display(),
        json.display()
    );
    ExitCode::SUCCESS
}
