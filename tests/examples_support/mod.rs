//! Finding and running the example binaries from integration tests.

// Each test binary that includes this module uses some of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long an example run may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of an example binary built by this cargo invocation.
///
/// `cargo test` builds the examples next to the test binaries
/// (`target/<profile>/examples/`); with a `--test` filter alone it does not:
/// run `cargo build --examples` first.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/TEST-HASH → target/<profile>/examples/NAME
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary {} is missing: `cargo test` builds it; with a --test filter run \
         `cargo build --examples` first",
        path.display()
    );
    path
}

/// Starts an example with stdout and stderr piped; killed on drop.
pub fn spawn<S: AsRef<OsStr>>(name: &str, args: &[S]) -> Child {
    Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// What an example run left.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Waits, at most [`RUN_TIMEOUT`], for a spawned example to exit.
pub async fn finish(name: &str, child: Child) -> Output {
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {RUN_TIMEOUT:?}"))
        .expect("the example's output");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The one JSON line of a run that exited 0 (`loadgen`'s report).
pub fn json_line(name: &str, out: &Output) -> serde_json::Value {
    assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {:?}", out.stdout);
    serde_json::from_str(lines[0]).expect("stdout is JSON")
}

/// An `echo_server` process (a pod); killed on drop.
pub struct EchoServer {
    addr: std::net::SocketAddr,
    child: Child,
}

impl EchoServer {
    /// Starts `echo_server --listen addr [extra…]` and waits, at most 10 s,
    /// until it accepts connections.
    ///
    /// # Panics
    /// If it exits or does not accept in time.
    pub async fn start(addr: std::net::SocketAddr, extra: &[&str]) -> EchoServer {
        let mut child = Command::new(example("echo_server"))
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn echo_server");
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait().expect("try_wait echo_server") {
                panic!("echo_server on {addr} exited: {status}");
            }
            assert!(
                tokio::time::Instant::now() < until,
                "echo_server on {addr} not accepting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        EchoServer { addr, child }
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Kills it (SIGKILL, a crash) and reaps it.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill echo_server");
    }

    /// Sends SIGTERM, as the kubelet does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("echo_server is running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits, at most 10 s, for it to exit; its status must be 0.
    pub async fn exited(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 10 s", self.addr))
            .expect("wait for echo_server");
        assert!(status.success(), "{} exited with {status}", self.addr);
    }
}

/// A port free for TCP on every one of `ips` right now.
pub fn free_port_on(ips: &[std::net::IpAddr]) -> u16 {
    loop {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind a free port");
        let port = first.local_addr().expect("local addr").port();
        drop(first);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}
