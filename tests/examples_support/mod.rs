//! Finding and running the example binaries from integration tests.

use std::path::PathBuf;

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
