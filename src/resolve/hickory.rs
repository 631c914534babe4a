//! The hickory-backed [`Resolve`](super::Resolve).

/// Resolves targets with hickory-resolver.
#[derive(Debug, Clone)]
pub struct HickoryResolver {}

/// Builds a [`HickoryResolver`].
#[derive(Debug, Clone, Default)]
pub struct HickoryResolverBuilder {}
