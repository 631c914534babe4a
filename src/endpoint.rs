//! [`Endpoint`]: one pod of a service, as a per-pod maker and a connector see it; [`MakeEndpoint`]: the maker.
//!
//! ```text
//!  DnsDiscover ──addr──► Endpoint { addr, server_name, protocol } ──► MakeEndpoint::make_endpoint ──► per-pod service
//!                                                                        (HttpEndpointBuilder, wrapped by
//!                                                                         every `endpoint_layer`)
//! ```
//!
//! The clients ([`http::Client`](crate::http::Client),
//! [`grpc::Channel`](crate::grpc::Channel)) build one service per pod with a
//! [`MakeEndpoint`]. The default maker is an
//! [`HttpEndpointBuilder`](crate::http::HttpEndpointBuilder); `endpoint_layer`
//! on the builders wraps its services in any [`tower::Layer`], and a maker of
//! your own replaces it outright.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tower::Layer;

use crate::http::Protocol;

/// One pod of a service: its address, the name its certificate carries and
/// the protocol its connections speak.
///
/// A maker gets one to build the pod's service, and a connector one to open
/// a connection: the `server_name` is the service's DNS name from the
/// target (`web.default.svc.cluster.local`), not the pod's IP, because every
/// pod of a headless service presents the service's name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: SocketAddr,
    server_name: Arc<str>,
    protocol: Protocol,
}

// ===== impl Endpoint =====

impl Endpoint {
    /// The pod at `addr` of the service named `server_name`, spoken to with
    /// `protocol`.
    pub fn new(addr: SocketAddr, server_name: impl Into<Arc<str>>, protocol: Protocol) -> Self {
        Self {
            addr,
            server_name: server_name.into(),
            protocol,
        }
    }

    /// The pod's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service's name, for TLS (certificate check and SNI): the target's
    /// host without port or trailing dot, or the pod's IP where the target
    /// names no host.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The protocol the pod's connections speak (TLS offers it by ALPN).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The same pod with another protocol.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("server_name", &&*self.server_name)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.server_name)
    }
}

/// Makes the service that sends requests of type `Req` to one pod.
///
/// Called once per pod, when discovery first lists it; the service is then
/// cloned per request, so it should share its connections between clones.
/// The balancer sees the service's `poll_ready` errors as connect failures
/// (the pod backs off and the request goes elsewhere) and finds a
/// [`NotSent`](crate::NotSent) anywhere in a `call` error's source chain, so
/// a wrapping layer keeps retries of requests that were never written.
///
/// Implemented by [`HttpEndpointBuilder`](crate::http::HttpEndpointBuilder),
/// by [`Layered`] and by [`MakeEndpointFn`]; implement it for a service of
/// your own.
pub trait MakeEndpoint<Req>: Clone + Send + Sync + 'static {
    /// The per-pod service.
    type Service: tower::Service<Req> + Clone + Send + Sync + 'static;

    /// The service for `endpoint`. Must be cheap and must not block: connect
    /// in the service's `poll_ready`, not here.
    fn make_endpoint(&self, endpoint: &Endpoint) -> Self::Service;
}

/// A maker whose services are wrapped in a [`tower::Layer`]: what
/// `endpoint_layer` on the builders produces.
#[derive(Clone, Debug)]
pub struct Layered<M, L> {
    inner: M,
    layer: L,
}

/// A [`MakeEndpoint`] from a function or closure; see [`make_endpoint_fn`].
#[derive(Clone, Copy)]
pub struct MakeEndpointFn<F>(F);

/// A [`MakeEndpoint`] that calls `f` for every pod.
pub fn make_endpoint_fn<F>(f: F) -> MakeEndpointFn<F> {
    MakeEndpointFn(f)
}

// ===== impl Layered =====

impl<M, L> Layered<M, L> {
    /// Services of `inner`, wrapped in `layer`.
    pub fn new(inner: M, layer: L) -> Self {
        Self { inner, layer }
    }
}

impl<Req, M, L> MakeEndpoint<Req> for Layered<M, L>
where
    M: MakeEndpoint<Req>,
    L: Layer<M::Service> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Req> + Clone + Send + Sync + 'static,
{
    type Service = L::Service;

    fn make_endpoint(&self, endpoint: &Endpoint) -> L::Service {
        self.layer.layer(self.inner.make_endpoint(endpoint))
    }
}

// ===== impl MakeEndpointFn =====

impl<Req, F, S> MakeEndpoint<Req> for MakeEndpointFn<F>
where
    F: Fn(&Endpoint) -> S + Clone + Send + Sync + 'static,
    S: tower::Service<Req> + Clone + Send + Sync + 'static,
{
    type Service = S;

    fn make_endpoint(&self, endpoint: &Endpoint) -> S {
        (self.0)(endpoint)
    }
}

impl<F> fmt::Debug for MakeEndpointFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeEndpointFn")
    }
}
