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

#[global_allocator]
static ALLOC: peers_core::memory::Counting = peers_core::memory::Counting;

#[test]
fn count_mode_counts_the_client_thread_per_request() {
    let kinds = [Kind::HttpOurs, Kind::HttpRoundRobin];
    let costs = peers_core::count::run(&kinds, 4, 2_000, 41);
    assert_eq!(
        costs.len(),
        kinds.len(),
        "one cost per contender: {costs:#?}"
    );
    for cost in &costs {
        assert_eq!(cost.failed, 0, "{}: requests failed", cost.kind.name());
        // A request allocates on the client's thread (hyper's head, the
        // response channel); the pods' allocations are left out of that.
        assert!(
            cost.allocations >= 1.0 && cost.allocations < cost.process_allocations,
            "{}: {} allocations per request on the client's thread, {} in the process",
            cost.kind.name(),
            cost.allocations,
            cost.process_allocations
        );
        assert!(cost.cpu_us.is_some_and(|us| us > 0.0), "{cost:?}");
    }
    let table = peers_core::count::markdown(&costs, 4);
    assert!(
        table.contains("headless-lb p2c") && table.contains("round-robin"),
        "{table}"
    );
}
