//! From a target to a live set of endpoints, and from the set to a tower [`Discover`](tower::discover::Discover).
//!
//! ```text
//!  Resolve ──► refresh task ──watch──► Discovery ──► DnsDiscover (Change::Insert / Change::Remove)
//!              (TTL, backoff,           (sets,        (one service per endpoint,
//!               keep-last-good)          stats)        made by a MakeService)
//! ```
//!
//! The refresh task is spawned on the tokio runtime when the [`Discovery`] is
//! created, so discovery progresses whether or not anyone polls the stream.

mod dns_discover;
mod refresh;

pub use self::dns_discover::DnsDiscover;
pub use self::refresh::{Discovery, DiscoveryStats, EmptyAnswer, EndpointSet, RefreshPolicy};
