//! The peer comparison behind `benches/peers.rs`: the same pods, the same
//! workload, one contender after another, in one process run.
//!
//! ```text
//!  pods runtime (2 threads)            client runtime (2 threads)
//!  ┌──────────────────────────┐        ┌──────────────────────────────┐
//!  │ DnsServer (UDP+TCP)      │◄─DNS───│ contender under test         │
//!  │ Pod / GrpcPod on         │◄─HTTP──│ (ours, a baseline or a peer) │
//!  │ 127.0.0.x, same port     │        │ N workers, fixed duration    │
//!  └──────────────────────────┘        └──────────────────────────────┘
//!              ▲ kill / delay / DNS change from the main thread
//! ```
//!
//! Pods and the DNS server run on a runtime of their own so that they never
//! compete with the client under test for the client's worker threads. Shares
//! of traffic are counted at the pods, so every contender is measured the same
//! way. Also compiled into `tests/peers_smoke.rs` (through `#[path]`), which
//! runs the quickest form of scenario 1.

#![allow(dead_code)]

pub mod cluster;
pub mod contenders;
pub mod count;
#[path = "../../examples/common/follow.rs"]
pub mod follow;
pub mod immediate;
pub mod load;
pub mod memory;
pub mod plots;
pub mod report;
pub mod scenarios;

pub use self::scenarios::{Options, run};
