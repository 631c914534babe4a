//! The main job on an embedded default: an in-process DNS server, pods on
//! 127.0.0.x, and the balanced client under load through scale-up, a slow
//! pod, a pod crash, a DNS outage and scale-down.
//!
//! ```text
//! cargo run --example demo [-- --phase-secs SECS --concurrency N]
//! ```
//!
//! Needs no setup and no root. Every number it prints is measured, and every
//! phase checks what it claims: the demo exits with status 1 and says which
//! phase failed if one did not show it, so it doubles as a smoke test.
//! Library logs go to stderr; `RUST_LOG=headless_lb=debug` shows them.

mod common;
#[path = "demo/record.rs"]
mod record;
#[path = "demo/report.rs"]
mod report;

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use headless_lb::http::Client;
use headless_lb::testing::{DnsServer, Fault, Pod};
use headless_lb::{EndpointState, ResolveError, Stats};
use http_body_util::BodyExt;
use tokio::time::{Instant, sleep};

use record::{Outcome, Recorder, Summary, pod_index};
use report::{Color, NBSP, Row, Style, ms, pct};

/// The headless service the pods stand behind.
const SERVICE: &str = "web.default.svc.cluster.local";
/// The TTL of every DNS answer.
const TTL_SECS: u32 = 1;
/// The last octet of each pod's 127.0.0.x address.
const POD_OCTETS: [u8; 5] = [11, 12, 13, 14, 15];
/// How much slower the slow pod answers in phase 3.
const SLOW_DELAY: Duration = Duration::from_millis(40);
/// The client's request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const PHASES: usize = 6;
/// Load before phase 1 that is not measured.
const WARM_UP: Duration = Duration::from_secs(1);

// The pods' roles, as indices into `POD_OCTETS`.
const NEW_PODS: [usize; 2] = [3, 4];
const SLOW_POD: usize = 2;
const CRASHED_POD: usize = 1;
const KEPT_PODS: [usize; 2] = [0, 3];

// Claims each phase checks.
/// Phase 1: the least share any of the 3 equal pods may get (fair: 33 %).
const MIN_STEADY_SHARE: f64 = 15.0;
/// Phase 2: new pods must take traffic this soon after the DNS change
/// (TTL 1 s + 10 % jitter + connect, with room for a loaded machine).
const MAX_SCALE_UP_DELAY: Duration = Duration::from_secs(3);
/// Phase 3: the most the slow pod may get, in percent.
const MAX_SLOW_SHARE: f64 = 10.0;
/// Phases 5 and 6: how long to wait for the client to notice DNS changes.
const DNS_REACTION_DEADLINE: Duration = Duration::from_secs(20);

/// A self-contained tour of headless-lb: in-process DNS, 5 pods on
/// 127.0.0.11-15, and the balanced client under load through scale-up, a slow
/// pod, a crash, a DNS outage and scale-down. Every number is measured; exits
/// with status 1 if a phase does not show what it claims.
#[derive(Parser, Debug)]
#[command(
    name = "demo",
    version,
    after_help = "Library logs go to stderr, errors only; RUST_LOG=headless_lb=debug shows more."
)]
struct Args {
    /// Seconds of load per phase (the DNS phases also wait for the client to react).
    #[arg(long, value_name = "SECS", default_value_t = 4.0, value_parser = parse_phase_secs)]
    phase_secs: f64,
    /// Requests in flight at once (workers sending back to back).
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(2..=256))]
    concurrency: u16,
}

fn parse_phase_secs(s: &str) -> Result<f64, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (1.0..=60.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{secs} is out of range 1 to 60"))
    }
}

struct Demo {
    style: Style,
    dns: DnsServer,
    pods: Vec<Pod>,
    addrs: Vec<SocketAddr>,
    client: Client,
    recorder: Recorder,
    phase_len: Duration,
    concurrency: usize,
    /// The pods in the DNS answer now.
    in_dns: BTreeSet<usize>,
    /// The DNS answer when the current phase began.
    in_dns_at_start: BTreeSet<usize>,
    /// Each pod's share in the previous phase.
    last_shares: Vec<f64>,
    phase: usize,
    failed: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = common::parse_args();
    init_logging();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Library logs on stderr, errors only unless `RUST_LOG` says otherwise: the
/// warnings the crash and the DNS outage cause would interleave with the tables.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let begun = Instant::now();
    let style = Style::detect();
    let dns = DnsServer::start().await?;
    let ips: Vec<IpAddr> = POD_OCTETS.iter().map(|&o| [127, 0, 0, o].into()).collect();
    let pods = Pod::start_all(&ips).await?;
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let port = addrs[0].port();
    let target = format!("{SERVICE}:{port}");
    // DNS lists the first 3 pods before the client's first lookup.
    let first_three: Vec<IpAddr> = addrs[..3].iter().map(SocketAddr::ip).collect();
    dns.set_ips(SERVICE, &first_three, TTL_SECS);
    let client: Client = Client::builder()
        .nameserver(dns.addr())
        .request_timeout(Some(REQUEST_TIMEOUT))
        .build(&target)?;

    let mut demo = Demo {
        style,
        dns,
        pods,
        addrs,
        client,
        recorder: Recorder::new(),
        phase_len: Duration::from_secs_f64(args.phase_secs),
        concurrency: usize::from(args.concurrency),
        in_dns: BTreeSet::from([0, 1, 2]),
        in_dns_at_start: BTreeSet::new(),
        last_shares: vec![0.0; POD_OCTETS.len()],
        phase: 0,
        failed: Vec::new(),
    };
    demo.header(port);

    // Not measured: wait until the client connected to the 3 pods.
    let ready = demo
        .wait_until(Duration::from_secs(10), |d| {
            d.client
                .stats()
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Ready)
                .count()
                == 3
        })
        .await;
    if ready.is_none() {
        eprintln!(
            "demo: FAILED: the client did not connect to the 3 pods within 10 s: {:?}",
            demo.client.stats()
        );
        return Ok(ExitCode::FAILURE);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        demo.addrs
            .iter()
            .map(|a| Bytes::from(a.to_string()))
            .collect(),
    );
    let mut workers = Vec::new();
    for _ in 0..demo.concurrency {
        workers.push(tokio::spawn(worker(
            demo.client.clone(),
            demo.recorder.clone(),
            stop.clone(),
            bodies.clone(),
            demo.addrs.clone(),
        )));
    }

    // Unmeasured ramp-up: the pools open their connections under load.
    sleep(WARM_UP).await;
    demo.recorder.rotate(REQUEST_TIMEOUT).await;
    demo.steady().await;
    demo.scale_up().await;
    demo.slow_pod().await;
    demo.crash().await;
    demo.dns_outage().await;
    demo.scale_down().await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }

    println!();
    let elapsed = begun.elapsed().as_secs_f64();
    if demo.failed.is_empty() {
        let text = format!("all {PHASES} phases showed what they claim ({elapsed:.1} s)");
        println!("{}", style.paint(text, Color::Green));
        Ok(ExitCode::SUCCESS)
    } else {
        let text = format!(
            "FAILED: {} of {PHASES} phases did not show what they claim ({elapsed:.1} s)",
            demo.failed.len()
        );
        println!("{}", style.paint(&text, Color::Red));
        eprintln!("demo: {text}");
        for f in &demo.failed {
            eprintln!("demo:   {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Sends requests back to back until `stop`, recording each in the current phase.
async fn worker(
    client: Client,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    bodies: Arc<Vec<Bytes>>,
    addrs: Vec<SocketAddr>,
) {
    while !stop.load(Ordering::Relaxed) {
        let ticket = recorder.begin();
        let outcome = match client.get("/").await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(body) => {
                        let body = body.to_bytes();
                        match bodies.iter().position(|b| *b == body) {
                            Some(pod) if status.is_success() => Outcome::Ok(pod),
                            pod => Outcome::Failed {
                                pod,
                                message: format!("HTTP {status}, body {body:?}"),
                            },
                        }
                    }
                    Err(e) => Outcome::Failed {
                        pod: None,
                        message: format!("reading the body failed: {e}"),
                    },
                }
            }
            Err(e) => {
                let message = error_chain(&e);
                // The table names the pod; keep the cause.
                let message = match e.endpoint() {
                    Some(a) => message
                        .strip_prefix(&format!("endpoint {a}: "))
                        .map_or_else(|| message.clone(), str::to_owned),
                    None => message,
                };
                Outcome::Failed {
                    pod: e.endpoint().and_then(|a| pod_index(&addrs, a)),
                    message,
                }
            }
        };
        ticket.finish(outcome);
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

// ===== the phases =====

impl Demo {
    /// Phase 1: 3 equal pods share the load.
    async fn steady(&mut self) {
        sleep(self.phase_len).await;
        let (summary, _stats) = self.end_phase("steady state: 3 pods").await;
        let shares: Vec<(usize, f64)> = [0, 1, 2].map(|p| (p, summary.share(p))).to_vec();
        let (low_pod, low) = shares
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let ok = summary.total > 0 && summary.errors == 0 && low >= MIN_STEADY_SHARE;
        let text = if ok {
            format!(
                "each of the 3 pods got at least {MIN_STEADY_SHARE:.0}{NBSP}% of the \
                 requests (lowest {}, fair 33.3{NBSP}%); 0 errors",
                pct(low)
            )
        } else {
            format!(
                "want every pod ≥ {MIN_STEADY_SHARE:.0}{NBSP}% and 0 errors: {} got {}, \
                 {} errors",
                self.addrs[low_pod].ip(),
                pct(low),
                summary.errors
            )
        };
        self.verdict(ok, &text);
    }

    /// Phase 2: DNS lists 5 pods; the new ones get traffic within about a TTL.
    async fn scale_up(&mut self) {
        self.publish(&[0, 1, 2, 3, 4]);
        let changed = Instant::now();
        sleep(self.phase_len).await;
        let (summary, _stats) = self.end_phase("scale-up: 3 → 5 pods").await;
        let firsts: Vec<Option<Instant>> =
            NEW_PODS.iter().map(|&p| summary.pod(p).first_ok).collect();
        let share: f64 = NEW_PODS.iter().map(|&p| summary.share(p)).sum();
        let reached = firsts
            .iter()
            .map(|t| t.map(|t| t.saturating_duration_since(changed)))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        let names = self.names(&NEW_PODS);
        let ok = summary.errors == 0 && reached.is_some_and(|r| r <= MAX_SCALE_UP_DELAY);
        let text = match reached {
            Some(r) if ok => format!(
                "new pods {names} both answered within {} of the DNS change and \
                 got {} of the requests (fair 40{NBSP}%); 0 errors",
                ms(r),
                pct(share)
            ),
            Some(r) => format!(
                "want both new pods answering within {} and 0 errors: they took {}, \
                 {} errors",
                ms(MAX_SCALE_UP_DELAY),
                ms(r),
                summary.errors
            ),
            None => format!(
                "want both new pods {names} to get traffic: {} and {} successful \
                 requests, {} errors",
                summary.pod(NEW_PODS[0]).ok,
                summary.pod(NEW_PODS[1]).ok,
                summary.errors
            ),
        };
        self.verdict(ok, &text);
    }

    /// Phase 3: one pod answers 40 ms slower; P2C with peak EWMA avoids it.
    async fn slow_pod(&mut self) {
        let before = self.last_shares[SLOW_POD];
        self.pods[SLOW_POD].set_delay(SLOW_DELAY);
        sleep(self.phase_len).await;
        let title = format!("slow pod: +{} ms on one pod", SLOW_DELAY.as_millis());
        let (summary, _stats) = self.end_phase(&title).await;
        let share = summary.share(SLOW_POD);
        let ok = summary.total > 0 && summary.errors == 0 && share < MAX_SLOW_SHARE;
        let name = self.addrs[SLOW_POD].ip();
        let text = if ok {
            format!(
                "slow pod {name} got {} of the requests (was {}), the fast pods \
                 took the rest; 0 errors",
                pct(share),
                pct(before)
            )
        } else {
            format!(
                "want the slow pod {name} under {MAX_SLOW_SHARE:.0}{NBSP}% and 0 errors: \
                 it got {}, {} errors",
                pct(share),
                summary.errors
            )
        };
        self.verdict(ok, &text);
    }

    /// Phase 4: a pod crashes; only what was in flight on it fails, then it is skipped.
    async fn crash(&mut self) {
        let victim = CRASHED_POD;
        let addr = self.addrs[victim];
        // Let the phase's load settle before the crash.
        sleep(self.phase_len / 4).await;
        let crash = Instant::now();
        self.pods[victim].kill().await;
        let killed = Instant::now();
        // When the client stopped picking it: from then on it must get nothing.
        let left = self
            .wait_until(self.phase_len, |d| {
                d.endpoint(addr)
                    .is_none_or(|e| e.state != EndpointState::Ready)
            })
            .await;
        sleep(
            self.phase_len
                .saturating_sub(crash.elapsed() + self.phase_len / 4),
        )
        .await;
        let (summary, stats) = self.end_phase("crash: one pod killed").await;

        let on_victim = |o: &Outcome| match o {
            Outcome::Ok(p) => *p == victim,
            Outcome::Failed { pod, .. } => *pod == Some(victim),
        };
        let left_at = left.unwrap_or(killed);
        // In flight at the crash: sent to it before the client left it, not
        // finished when the kill began.
        let in_flight = summary
            .samples
            .iter()
            .filter(|s| on_victim(&s.outcome) && s.start < left_at && s.end >= crash)
            .count();
        let failed: Vec<_> = summary
            .samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed { .. }))
            .collect();
        let elsewhere = failed.iter().filter(|s| !on_victim(&s.outcome)).count();
        let not_in_flight = failed
            .iter()
            .filter(|s| on_victim(&s.outcome) && (s.start >= left_at || s.end < crash))
            .count();
        let sent_after_left = summary
            .samples
            .iter()
            .filter(|s| on_victim(&s.outcome) && s.start >= left_at)
            .count();
        let answered_after_kill = summary
            .samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Ok(p) if p == victim) && s.start > killed)
            .count();
        let state = stats
            .endpoints
            .iter()
            .find(|e| e.address == addr)
            .map(|e| e.state);

        let mut problems = Vec::new();
        if elsewhere > 0 {
            problems.push(format!("{elsewhere} requests failed on other pods"));
        }
        if not_in_flight > 0 {
            problems.push(format!(
                "{not_in_flight} failed requests were not in flight at the crash"
            ));
        }
        if failed.len() > self.concurrency {
            problems.push(format!(
                "{} requests failed, more than the {} that can be in flight",
                failed.len(),
                self.concurrency
            ));
        }
        if answered_after_kill > 0 {
            problems.push(format!(
                "it answered {answered_after_kill} requests sent after the kill"
            ));
        }
        match left {
            None => problems.push(format!(
                "the client kept it ready for {} after the crash",
                ms(self.phase_len)
            )),
            Some(_) if sent_after_left > 0 => problems.push(format!(
                "{sent_after_left} requests went to it after the client had left it"
            )),
            Some(_) if state != Some(EndpointState::Backoff) => problems.push(format!(
                "its state is {} instead of backoff",
                state_name(state)
            )),
            Some(_) => {}
        }
        if summary.total == failed.len() as u64 {
            problems.push("no request succeeded".to_owned());
        }
        let ok = problems.is_empty();
        let text = if ok {
            let failures = if failed.len() == in_flight {
                format!("all {in_flight}")
            } else {
                format!("{} of the {in_flight}", failed.len())
            };
            format!(
                "{} crashed: {failures} requests in flight on it failed, no other did; \
                 the client left it {} after the crash and sent it nothing since \
                 (state backoff)",
                addr.ip(),
                ms(left_at.saturating_duration_since(crash)),
            )
        } else {
            format!("{} crashed: {}", addr.ip(), problems.join("; "))
        };
        self.verdict(ok, &text);
    }

    /// Phase 5: the DNS server stops answering; the client keeps its pods and no request fails.
    async fn dns_outage(&mut self) {
        self.dns.set_fault(Fault::Silent);
        let silent = Instant::now();
        sleep(self.phase_len).await;
        // A silent server costs the resolver its whole timeout before the
        // lookup counts as failed: run on until the client has seen it.
        let noticed = self
            .wait_until(DNS_REACTION_DEADLINE, |d| {
                d.client.stats().discovery.consecutive_failures > 0
            })
            .await;
        let (summary, stats) = self.end_phase("DNS outage: server silent").await;
        let d = &stats.discovery;
        let ok = summary.total > 0 && summary.errors == 0 && noticed.is_some() && d.endpoints == 5;
        let text = if ok {
            format!(
                "DNS silent for {:.1}{NBSP}s: its lookups failed ({}), the client kept \
                 all {} endpoints and 0 of {} requests failed",
                silent.elapsed().as_secs_f64(),
                d.last_error.as_ref().map_or("-".into(), short_error),
                d.endpoints,
                summary.total
            )
        } else if noticed.is_none() {
            format!(
                "the client saw no failed lookup within {} s of the DNS server going silent",
                DNS_REACTION_DEADLINE.as_secs()
            )
        } else {
            format!(
                "want 0 errors and all 5 endpoints kept: {} errors, {} endpoints",
                summary.errors, d.endpoints
            )
        };
        self.verdict(ok, &text);
    }

    /// Phase 6: DNS answers again, with 2 pods; the removed ones drain without errors.
    async fn scale_down(&mut self) {
        let removed: Vec<usize> = self
            .in_dns
            .iter()
            .copied()
            .filter(|p| !KEPT_PODS.contains(p))
            .collect();
        let removed_addrs: Vec<SocketAddr> = removed.iter().map(|&p| self.addrs[p]).collect();
        self.publish(&KEPT_PODS);
        self.dns.set_fault(Fault::None);
        let changed = Instant::now();
        let applied = self
            .wait_until(DNS_REACTION_DEADLINE, |d| {
                d.client.stats().endpoints.iter().all(|e| {
                    !removed_addrs.contains(&e.address) || e.state == EndpointState::Draining
                })
            })
            .await;
        sleep(self.phase_len).await;
        let (summary, stats) = self.end_phase("scale-down: 5 → 2 pods").await;

        let on_removed = |o: &Outcome| match o {
            Outcome::Ok(p) => removed.contains(p),
            Outcome::Failed { pod, .. } => pod.is_some_and(|p| removed.contains(&p)),
        };
        let at = applied.unwrap_or(changed);
        let late = summary
            .samples
            .iter()
            .filter(|s| on_removed(&s.outcome) && s.start > at)
            .count();
        // In flight on the removed pods when the client dropped them.
        let draining = summary
            .samples
            .iter()
            .filter(|s| on_removed(&s.outcome) && s.start <= at && s.end >= at)
            .count();
        let lingering = stats
            .endpoints
            .iter()
            .filter(|e| removed_addrs.contains(&e.address))
            .count();
        let mut problems = Vec::new();
        if applied.is_none() {
            problems.push(format!(
                "the client did not drop the removed pods within {} s",
                DNS_REACTION_DEADLINE.as_secs()
            ));
        }
        if summary.errors > 0 {
            problems.push(format!("{} errors", summary.errors));
        }
        if late > 0 {
            problems.push(format!(
                "{late} requests sent to removed pods after removal"
            ));
        }
        if lingering > 0 {
            problems.push(format!("{lingering} removed pods still not drained"));
        }
        if KEPT_PODS.iter().any(|&p| summary.pod(p).ok == 0) {
            problems.push("a remaining pod got no traffic".to_owned());
        }
        let ok = problems.is_empty();
        let names = self.names(&removed);
        let text = if ok {
            let drained = match draining {
                0 => "nothing was in flight on them".to_owned(),
                1 => "the 1 request in flight on them finished".to_owned(),
                n => format!("the {n} requests in flight on them finished"),
            };
            format!(
                "DNS back with 2 pods: the client dropped {names} {} later; {drained}, \
                 none was sent to them after; 0 errors",
                ms(applied.map_or(Duration::ZERO, |t| t - changed)),
            )
        } else {
            format!("scale-down: {}", problems.join("; "))
        };
        self.verdict(ok, &text);
    }
}

// ===== helpers =====

impl Demo {
    fn header(&self, port: u16) {
        let s = self.style;
        let first = self.addrs[0].ip();
        let last = POD_OCTETS[POD_OCTETS.len() - 1];
        println!(
            "{}",
            s.paint(
                "headless-lb demo: client-side load balancing over a headless service",
                Color::Bold
            )
        );
        println!(
            "  dns     {SERVICE} on {} (TTL {TTL_SECS} s)",
            self.dns.addr()
        );
        println!("  pods    {first}-{last} port {port}: HTTP servers answering with their address");
        println!("  client  headless_lb::http::Client: DNS discovery, P2C over peak EWMA");
        println!(
            "  load    {} workers sending GET / back to back; {} s per phase, {} s timeout",
            self.concurrency,
            self.phase_len.as_secs_f64(),
            REQUEST_TIMEOUT.as_secs()
        );
        println!(
            "  {}",
            s.paint(
                "Every number is measured. Each phase checks its claim (exit 1 if not).",
                Color::Dim
            )
        );
    }

    /// Makes DNS answer with these pods.
    fn publish(&mut self, pods: &[usize]) {
        let ips: Vec<IpAddr> = pods.iter().map(|&p| self.addrs[p].ip()).collect();
        self.dns.set_ips(SERVICE, &ips, TTL_SECS);
        self.in_dns = pods.iter().copied().collect();
    }

    /// Polls `condition` every 5 ms; returns when it first held, or `None` after `deadline`.
    async fn wait_until(
        &self,
        deadline: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> Option<Instant> {
        let until = Instant::now() + deadline;
        loop {
            if condition(self) {
                return Some(Instant::now());
            }
            if Instant::now() >= until {
                return None;
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<headless_lb::EndpointStats> {
        self.client
            .stats()
            .endpoints
            .into_iter()
            .find(|e| e.address == addr)
    }

    /// Ends the phase: collects its requests and prints its heading and table.
    async fn end_phase(&mut self, title: &str) -> (Summary, Stats) {
        let stats = self.client.stats();
        let summary = self.recorder.rotate(REQUEST_TIMEOUT * 2).await;
        self.phase += 1;

        let secs = summary.elapsed.as_secs_f64();
        let right = format!(
            "{secs:.1} s · {} req · {:.0}/s",
            summary.total,
            summary.total as f64 / secs.max(1e-9)
        );
        println!();
        report::phase_heading(self.style, self.phase, PHASES, title, &right);

        let mut shown: BTreeSet<usize> = &self.in_dns_at_start | &self.in_dns;
        shown.extend(summary.per_pod.keys().copied());
        shown.extend(
            stats
                .endpoints
                .iter()
                .filter_map(|e| pod_index(&self.addrs, e.address)),
        );
        let rows: Vec<Row> = shown
            .iter()
            .map(|&p| {
                let addr = self.addrs[p];
                let pod = summary.pod(p);
                let endpoint = stats.endpoints.iter().find(|e| e.address == addr);
                let state = match endpoint {
                    Some(e) => state_name(Some(e.state)),
                    None if !self.in_dns.contains(&p) => "removed",
                    None => "-",
                };
                Row {
                    addr,
                    state,
                    requests: pod.ok + pod.errors,
                    share: summary.share(p),
                    p50: pod.percentile(50.0),
                    p99: pod.percentile(99.0),
                    ewma: endpoint.map(|e| e.rtt),
                    errors: pod.errors,
                }
            })
            .collect();
        report::table(self.style, &rows);
        if summary.unattributed_errors > 0 {
            report::note(
                self.style,
                &format!(
                    "{} errors not attributed to a pod",
                    summary.unattributed_errors
                ),
            );
        }
        let failures = summary.failure_messages();
        for (pod, message, count) in failures.iter().take(3) {
            let on = pod.map_or_else(String::new, |p| format!(" on {}", self.addrs[p].ip()));
            report::note(self.style, &format!("{count} failed{on}: {message}"));
        }
        if failures.len() > 3 {
            report::note(
                self.style,
                &format!("… {} more kinds of failure", failures.len() - 3),
            );
        }
        let d = &stats.discovery;
        let dns = match &d.last_error {
            None => format!(
                "dns: {} endpoints, generation {}, {} lookups, the last one ok",
                d.endpoints, d.generation, d.lookups
            ),
            Some(e) => format!(
                "dns: {} endpoints kept, generation {}; lookups failing: {} in a row, {}",
                d.endpoints,
                d.generation,
                d.consecutive_failures,
                short_error(e)
            ),
        };
        report::note(self.style, &dns);

        for (p, share) in self.last_shares.iter_mut().enumerate() {
            *share = summary.share(p);
        }
        self.in_dns_at_start = self.in_dns.clone();
        (summary, stats)
    }

    fn verdict(&mut self, ok: bool, text: &str) {
        report::verdict(self.style, ok, text);
        if !ok {
            let text = text.replace(NBSP, " ");
            self.failed.push(format!("phase {}: {text}", self.phase));
        }
    }

    /// `127.0.0.14, .15`
    fn names(&self, pods: &[usize]) -> String {
        pods.iter()
            .enumerate()
            .map(|(i, &p)| {
                if i == 0 {
                    self.addrs[p].ip().to_string()
                } else {
                    format!(".{}", POD_OCTETS[p])
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn state_name(state: Option<EndpointState>) -> &'static str {
    match state {
        Some(EndpointState::Ready) => "ready",
        Some(EndpointState::Connecting) => "connecting",
        Some(EndpointState::Backoff) => "backoff",
        Some(EndpointState::Draining) => "draining",
        None => "removed",
    }
}

/// The failure without the name: `timed out`, `SERVFAIL`.
fn short_error(e: &ResolveError) -> String {
    match e {
        ResolveError::Timeout { .. } => "timed out".to_owned(),
        ResolveError::ServerFailure { code, .. } => code.clone(),
        ResolveError::NoRecords { .. } => "no records".to_owned(),
        ResolveError::Other { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
