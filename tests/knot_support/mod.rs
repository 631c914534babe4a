//! A Knot DNS server of the test's own (`knotd` driven with RFC 2136
//! updates through `knsupdate`), shared by the tests that use one.
//!
//! Each test starts its own `knotd` in the foreground on a free loopback
//! port, with a temporary directory for its config, zone file, journal and
//! control socket, and kills it when the test ends (the [`Knot`] guard).
//! `.ci/run` installs Debian's `knot` and `knot-dnsutils`; without them the
//! tests fail when `CI=true`, and otherwise print why and pass.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use headless_lb::resolve::HickoryResolver;
use headless_lb::{Resolve, Target};
use tokio::io::AsyncWriteExt;

/// Fresh ports to try when `knotd` cannot bind the one picked.
const START_ATTEMPTS: usize = 5;
/// How long a started `knotd` may take to answer for its zone.
const READY_DEADLINE: Duration = Duration::from_secs(10);

// ===== finding the binaries =====

pub struct Binaries {
    knotd: PathBuf,
    knsupdate: PathBuf,
}

/// Finds `name` at `fixed` or on `PATH`.
fn find(fixed: &str, name: &str) -> Option<PathBuf> {
    let fixed = PathBuf::from(fixed);
    if fixed.is_file() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The Knot binaries, or `None` when a developer's machine lacks them.
///
/// # Panics
/// When they are missing and `CI=true`: CI must run these tests, not skip them.
pub fn binaries(test: &str) -> Option<Binaries> {
    let knotd = find("/usr/sbin/knotd", "knotd");
    let knsupdate = find("/usr/bin/knsupdate", "knsupdate");
    match (knotd, knsupdate) {
        (Some(knotd), Some(knsupdate)) => Some(Binaries { knotd, knsupdate }),
        (knotd, knsupdate) => {
            let msg = format!(
                "Knot DNS not found (knotd: {knotd:?}, knsupdate: {knsupdate:?}); \
                 install it with `apt-get install knot knot-dnsutils` (.ci/run does)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {msg}");
            }
            eprintln!("SKIPPED {test}: {msg}");
            None
        }
    }
}

// ===== a knotd of our own =====

/// A running `knotd` serving `cluster.local` from a temporary directory;
/// killed, and its directory removed, on drop.
pub struct Knot {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    knotd: PathBuf,
    knsupdate: PathBuf,
}

impl Knot {
    /// Starts `knotd` with the zone `cluster.local` holding `records` (zone
    /// file lines, absolute names) on a free port of 127.0.0.1, and waits until
    /// it answers. Retries on a fresh port if `knotd` exits (e.g. the port was
    /// taken between picking and binding).
    pub async fn start(bins: Binaries, records: &str) -> Knot {
        Self::start_with_ttl(bins, records, 1).await
    }

    /// Like [`start`](Self::start), with `ttl` as the zone's default TTL.
    pub async fn start_with_ttl(bins: Binaries, records: &str, ttl: u32) -> Knot {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = temp_dir(port);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            write_config(&dir, port, records, ttl);
            let child = spawn_knotd(&bins.knotd, &dir);
            let mut knot = Knot {
                child,
                dir,
                addr,
                knotd: bins.knotd.clone(),
                knsupdate: bins.knsupdate.clone(),
            };
            match knot.wait_ready().await {
                Ok(()) => return knot,
                Err(e) => last_failure = e, // dropping `knot` kills it and removes its directory
            }
        }
        panic!("knotd did not start in {START_ATTEMPTS} attempts; last: {last_failure}");
    }

    /// Polls until `knotd` answers for the zone's `ready` marker, whose address
    /// encodes the port: an answer proves it is this instance that answers.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let resolver = HickoryResolver::builder()
            .nameserver(self.addr)
            .timeout(Duration::from_millis(200))
            .attempts(1)
            .build()
            .expect("resolver");
        let marker: Target = "ready.cluster.local:1".parse().expect("marker target");
        let want = BTreeSet::from([SocketAddr::new(marker_ip(self.addr.port()), 1)]);
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait knotd") {
                return Err(format!("knotd exited with {status}:\n{}", self.log()));
            }
            if let Ok(r) = resolver.resolve(&marker).await {
                if r.endpoints == want {
                    return Ok(());
                }
                return Err(format!("{} answers someone else's zone: {r:?}", self.addr));
            }
            if Instant::now() >= until {
                return Err(format!(
                    "knotd not answering after {READY_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knotd.log")).unwrap_or_default()
    }

    /// Applies one RFC 2136 update (`update add …` / `update delete …` lines)
    /// in a single transaction with `knsupdate`; returns once Knot committed it.
    pub async fn update(&self, lines: &[String]) {
        let script = format!(
            "server {} {}\nzone cluster.local.\n{}\nsend\nquit\n",
            self.addr.ip(),
            self.addr.port(),
            lines.join("\n")
        );
        let mut child = tokio::process::Command::new(&self.knsupdate)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn knsupdate");
        let mut stdin = child.stdin.take().expect("knsupdate stdin");
        stdin
            .write_all(script.as_bytes())
            .await
            .expect("write knsupdate script");
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("knsupdate finishes within 10 s")
            .expect("knsupdate output");
        assert!(
            out.status.success(),
            "knsupdate failed ({}):\nscript:\n{script}\nstdout: {}\nstderr: {}\nknotd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to `knotd`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} knotd: {status}");
    }

    /// Kills `knotd` (SIGKILL) and reaps it; the directory stays until drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Like [`start`](Self::start) on the same port and directory, so that the
    /// journal keeps every update made before.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_knotd(&self.knotd, &self.dir);
        if let Err(e) = self.wait_ready().await {
            panic!("knotd did not restart on {}: {e}", self.addr);
        }
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_knotd(knotd: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("knotd.log"))
        .expect("knotd log file");
    Command::new(knotd)
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log file"))
        .stderr(log)
        .spawn()
        .expect("spawn knotd")
}

/// A port free for both UDP and TCP on 127.0.0.1 right now. Both sockets are
/// released before returning; `Knot::start` retries if another process takes
/// the port before `knotd` binds it.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().expect("UDP local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A new, empty directory under the system temp dir, unique in this machine.
fn temp_dir(port: u16) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "headless-lb-knot-{}-{}-{port}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["db", "zones", "run"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create knot temp dir");
    }
    dir
}

/// 127.P.P.1 with the port's two bytes, the `ready` marker's address.
fn marker_ip(port: u16) -> IpAddr {
    let [hi, lo] = port.to_be_bytes();
    IpAddr::from([127, hi, lo, 1])
}

/// Writes `knot.conf` (listen on 127.0.0.1@port, state in `dir`, dynamic
/// updates allowed from 127.0.0.1 without TSIG) and the zone file.
fn write_config(dir: &Path, port: u16, records: &str, ttl: u32) {
    let d = dir.display();
    let conf = format!(
        r#"server:
    rundir: "{d}/run"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{d}/run/knot.sock"
log:
  - target: stderr
    any: info
database:
    storage: "{d}/db"
acl:
  - id: loopback_update
    address: 127.0.0.1
    action: update
zone:
  - domain: cluster.local
    storage: "{d}/zones"
    file: "cluster.local.zone"
    acl: loopback_update
"#
    );
    std::fs::write(dir.join("knot.conf"), conf).expect("write knot.conf");
    let zone = format!(
        "$ORIGIN cluster.local.\n\
         $TTL {ttl}\n\
         @ SOA ns.cluster.local. hostmaster.cluster.local. 1 60 60 3600 1\n\
         @ NS ns.cluster.local.\n\
         ns A 127.0.0.53\n\
         ready A {}\n\
         {records}\n",
        marker_ip(port)
    );
    std::fs::write(dir.join("zones/cluster.local.zone"), zone).expect("write zone file");
}
