//! [`Stats`]: what a balanced client reports about its endpoints and its discovery.

use crate::balance::EndpointStats;
use crate::client::HedgeStats;
use crate::discover::DiscoveryStats;

/// A snapshot of a balanced client: every endpoint and the discovery behind them.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per endpoint, sorted by address: state, pending, EWMA RTT, requests, failures.
    pub endpoints: Vec<EndpointStats>,
    /// The DNS side: last and next refresh, TTL, last error, generation.
    pub discovery: DiscoveryStats,
    /// Hedged requests sent, won and refused by the budget, and the current
    /// hedge delay; `None` when the client does not hedge (no
    /// [`HedgePolicy`](crate::HedgePolicy)).
    pub hedging: Option<HedgeStats>,
}
