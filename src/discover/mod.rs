//! From a target to a live set of endpoints, and from the set to a tower [`Discover`](tower::discover::Discover).
//!
//! ```text
//!  Resolve ──► refresh task ──watch──► Discovery ──► DnsDiscover (Change::Insert / Change::Remove)
//!              (TTL, backoff,           (sets,        (one service per endpoint,
//!               keep-last-good)          stats)        made by a MakeService)
//! ```
//!
//! The refresh task is spawned on the tokio runtime when the [`Discovery`] is
//! created, so discovery progresses whether or not anyone polls a stream: a
//! balancer that polls [`DnsDiscover`] only when requests arrive still sees
//! the newest set at once, and one that polls it from its own task (as
//! [`crate::balance`] does) applies changes while no requests flow.

mod diff;
mod dns_discover;
mod refresh;

#[doc(hidden)]
pub use self::diff::SetDiff;
pub use self::dns_discover::DnsDiscover;
#[doc(hidden)]
pub use self::dns_discover::MakeFn;
pub use self::refresh::{Discovery, DiscoveryStats, EmptyAnswer, RefreshPolicy};
