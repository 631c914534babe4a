//! The power-of-two-choices balancer: endpoint state (load, health, drain), the pick, the handle.
//!
//! ```text
//!                 ┌────────────── background task (one per Balancer) ─────────────┐
//!  Discover ────► │ Insert → Connecting → ready() → Ready / Backoff → reconnect…   │
//!                 │ Remove → Draining (in-flight requests finish, then dropped)   │
//!                 └──────────────────┬────────────────────────────────────────────┘
//!                                    │ publishes after every change
//!                                    ▼
//!                    ArcSwap<Snapshot> (ready endpoints, atomic load counters)
//!                                    ▲
//!   Balancer (clone per caller) ─────┘ pick two at random, send to the less loaded:
//!                                      cost = peak-EWMA RTT × (pending + 1)
//! ```
//!
//! Why not tower's `Balance` behind a `Buffer`: every request would hop through
//! one task's channel; discovery would be polled only when requests arrive; an
//! endpoint whose `poll_ready` fails would be dropped for good; zero endpoints
//! would leave requests pending forever. Here requests pick from a shared
//! snapshot and wait at most `failfast_timeout`; failed endpoints back off and
//! reconnect; only discovery removes endpoints.
//!
//! What the request path does, in order:
//!
//! 1. **Pick.** P2C over the Ready endpoints (`pick_pair` draws the pair).
//!    When every endpoint is backing off, over all of them (panic mode, as in
//!    Envoy: a wrong health signal must not become an outage). When nothing is
//!    pickable, wait for the next snapshot, at most `failfast_timeout` in
//!    total, then fail with [`BalanceError::NoEndpoints`](crate::BalanceError::NoEndpoints).
//! 2. **Ready.** `ready()` on a clone of the endpoint's service. If it fails,
//!    the request was never sent: the endpoint goes to Backoff (the background
//!    task reconnects it) and the request is tried on an endpoint it has not
//!    tried yet, as long as there is one, then on at most `max_retries` that
//!    it tried (each after the next snapshot), all within `failfast_timeout`;
//!    then it fails as not sent, with the last endpoint's error.
//! 3. **Call.** If the endpoint service fails with a [`NotSent`](crate::NotSent) (anywhere in
//!    the error's source chain) that gives the request back, likewise. Any
//!    other error is returned ([`BalanceError::Endpoint`](crate::BalanceError::Endpoint)) and never retried:
//!    the request may have reached a server.
//! 4. **Complete.** The RTT from dispatch to response feeds the endpoint's
//!    peak-EWMA. The request counts as pending until its [`PendingGuard`]
//!    drops: with the response by default ([`CompleteOnResponse`]), or when a
//!    response stream ends with a custom [`Completion`].
//!
//! An endpoint's estimate is evidence, not a guess: until its first response
//! P2C compares it by pending requests alone (as fast as the endpoint it is
//! paired with), and the first RTT replaces the starting value outright. The
//! starting value (shown in stats) is the median estimate of the Ready
//! endpoints, or the default RTT for the first. A lower RTT moves the
//! estimate down by at least a tenth of the gap, so that a busy endpoint
//! forgets a one-off peak within a few dozen responses rather than after
//! seconds of the decay period.
//!
//! Needs a tokio runtime: [`Builder::build`] spawns the background task.

mod backoff;
mod builder;
mod completion;
mod dispatch;
mod endpoint;
mod guarded_body;
mod handle;
mod peak_ewma;
mod pick;
mod snapshot;
mod subset;
mod task;

pub(crate) use self::builder::Config;
pub use self::builder::{
    Builder, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_CONCURRENCY, DEFAULT_DECAY,
    DEFAULT_FAILFAST_TIMEOUT, DEFAULT_FAILURE_ACCRUAL, DEFAULT_MAX_RETRIES, DEFAULT_RTT,
};
pub use self::completion::{CompleteOnResponse, Completion, PendingGuard};
pub(crate) use self::dispatch::{Route, Tried};
pub(crate) use self::endpoint::Load;
pub use self::endpoint::{EndpointState, EndpointStats};
pub(crate) use self::guarded_body::GuardedBody;
pub use self::handle::{Balancer, ResponseFuture};
pub use self::subset::{ClientIdentity, OrdinalError, Subset};
