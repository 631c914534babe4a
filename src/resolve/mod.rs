//! One DNS lookup of a [`Target`]: the [`Resolve`] trait and its hickory implementation.
//!
//! The refresh loop in [`crate::discover`] calls [`Resolve::resolve`] once per
//! refresh and schedules the next one from [`Resolution::ttl`]. Tests of timer
//! logic inject a fake through this trait; everything else uses
//! [`HickoryResolver`].

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use crate::error::ResolveError;
use crate::target::Target;

mod addresses;
mod classify;
mod config;
mod hickory;
mod search;
mod srv;
mod vet;

pub use self::hickory::{HickoryResolver, HickoryResolverBuilder, ResolverConfigError};
#[doc(hidden)]
#[cfg(fuzzing)]
pub use self::vet::endpoints_from_answer_message;

/// The outcome of one successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Every usable pod address, with the port from the target or the SRV record.
    pub endpoints: BTreeSet<SocketAddr>,
    /// The shortest TTL among the records the endpoints came from.
    pub ttl: Duration,
}

/// The future [`Resolve::resolve`] returns.
pub type ResolveFuture = Pin<Box<dyn Future<Output = Result<Resolution, ResolveError>> + Send>>;

/// Looks a target up once.
///
/// Implementations must not cache: the caller schedules lookups itself from
/// the TTL, and a cached answer would hide changes. An empty set of endpoints
/// must be reported as [`ResolveError::NoRecords`], never as an `Ok` with no
/// endpoints.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `target` to its current endpoints.
    fn resolve(&self, target: &Target) -> ResolveFuture;
}
