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
