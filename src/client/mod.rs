//! The open core of the clients: one [`Builder`] for every setting, one [`Balanced`] service.
//!
//! ```text
//!  Builder<Http | Grpc, Connector, Layer>        every setting once, same name everywhere
//!     │ build / build_with(maker, completion)
//!     ▼
//!  Discovery ──► DnsDiscover ──► Balancer ──► per-pod service = layer(maker(Endpoint))
//!     └────────────── Balanced<Req, S, K> ─────────────┘
//! ```
//!
//! [`http::Client`](crate::http::Client) and
//! [`grpc::Channel`](crate::grpc::Channel) are presets of this core: the
//! same builder type ([`http::ClientBuilder`](crate::http::ClientBuilder) is
//! `Builder<Http>`, [`grpc::ChannelBuilder`](crate::grpc::ChannelBuilder) is
//! `Builder<Grpc>`) with a per-pod [`HttpEndpoint`](crate::http::HttpEndpoint)
//! and a completion rule of their own (the response body's end, the gRPC
//! stream's end). [`Builder::build_with`] takes any
//! [`MakeEndpoint`](crate::MakeEndpoint) and
//! [`Completion`](crate::balance::Completion), for a per-pod service of your
//! own behind the same discovery and balancer.
//!
//! Hedging ([`HedgePolicy`], set with [`Builder::hedge`]) lives here too:
//! the race between a slow request and its copy, the budget and the delay
//! estimate; the balancer only picks the copy's pod away from the pods
//! already tried.

mod balanced;
mod builder;
mod hedge;

pub use self::balanced::Balanced;
pub(crate) use self::builder::start as builder_start;
pub use self::builder::{Builder, Grpc, Http};
pub use self::hedge::{
    DEFAULT_HEDGE_BUDGET, DEFAULT_HEDGE_BURST, DEFAULT_HEDGE_MIN_DELAY, DEFAULT_HEDGE_PERCENTILE,
    DEFAULT_MAX_HEDGES, HedgePolicy, HedgePolicyError, HedgeStats, Idempotent, MAX_HEDGE_BODY,
    MAX_HEDGES_LIMIT,
};
#[cfg(feature = "tonic")]
pub(crate) use self::hedge::{Hedging, race};
pub(crate) use self::hedge::{copy_body, send as send_hedged};
