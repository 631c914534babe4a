//! Client-side load balancing across the pods of a Kubernetes headless service.
//!
//! A headless service (`clusterIP: None`) resolves to the address of every
//! ready pod. This crate resolves that name with hickory, re-resolves when the
//! answer's TTL runs out, turns each change of the set into a
//! [`tower::discover::Discover`] stream, and spreads requests with a
//! power-of-two-choices balancer weighted by peak-EWMA latency.
//!
//! ```text
//! Target ──► Resolve ──► Refresh loop ──► endpoint set ──► DnsDiscover ──► Balancer ──► endpoint service
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod balance;
pub mod client;
pub mod discover;
mod endpoint;
pub mod error;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod http;
mod log;
pub mod metrics;
mod not_sent;
pub mod resolve;
pub mod stats;
mod sync;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use balance::{Balancer, EndpointState, EndpointStats, PendingGuard};
pub use client::{HedgePolicy, HedgePolicyError, HedgeStats, Idempotent};
pub use discover::{Discovery, DiscoveryStats, DnsDiscover, EmptyAnswer, RefreshPolicy};
pub use endpoint::{Endpoint, Layered, MakeEndpoint, MakeEndpointFn, make_endpoint_fn};
pub use error::{BalanceError, BuildError, RequestError, ResolveError, TargetError};
pub use not_sent::NotSent;
pub use resolve::{Resolution, Resolve};
pub use stats::Stats;
pub use target::{Host, Target};

/// The README's code examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
