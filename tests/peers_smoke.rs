//! Smoke test of the peer comparison runner (`benches/peers.rs`): its
//! quickest form of scenario 1 on two pods builds and measures every
//! contender, and the JSON and Markdown name each of them without an error.
#![cfg(feature = "tonic")]

#[path = "../benches/peers_core/mod.rs"]
mod peers_core;

use peers_core::Options;
use peers_core::contenders::Kind;

#[test]
fn quick_healthy_run_measures_every_contender() {
    let opts = Options {
        scenarios: vec![1],
        concurrencies: vec![2],
        pods: 2,
        ..Options::new(true)
    };
    let report = peers_core::run(&opts);

    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    let rows = json["healthy"].as_array().expect("scenario 1 rows");
    assert_eq!(
        rows.len(),
        Kind::ALL.len(),
        "one row per contender: {rows:#?}"
    );
    let markdown = report.markdown();
    for kind in Kind::ALL {
        let row = rows
            .iter()
            .find(|r| r["contender"] == kind.name())
            .unwrap_or_else(|| panic!("no row for {}", kind.name()));
        assert!(row["error"].is_null(), "{}: {}", kind.name(), row["error"]);
        let requests = row["summary"]["requests"].as_u64().unwrap();
        let errors = row["summary"]["errors"].as_u64().unwrap();
        assert!(requests > 0, "{} sent nothing", kind.name());
        assert_eq!(errors, 0, "{} failed requests to healthy pods", kind.name());
        assert!(
            markdown.contains(kind.name()),
            "{} missing from the table",
            kind.name()
        );
    }
}
