//! The tonic side (cargo feature `tonic`): a balanced gRPC [`Channel`] for tonic's generated clients.
//!
//! ```text
//!  HealthClient::new(channel) ──► Channel ──► Balancer (P2C, peak-EWMA × pending) ──► HttpEndpoint (h2c, one per pod)
//!        ▲                                                                                   │
//!        └──── ResponseBody: holds the RPC's PendingGuard until the stream ends ◄────────────┘
//!              (counts UNAVAILABLE and broken streams as the pod's failures)
//! ```
//!
//! The channel is the crate's HTTP stack (discovery, balancer, per-pod HTTP/2
//! connections) with a gRPC response body; tonic's own `Channel` and
//! `Endpoint` are not involved. What it adds for gRPC:
//!
//! - **Streams count as load.** An RPC is pending on its pod until its
//!   response stream ends, not only until the response headers arrived.
//! - **gRPC-aware health.** `grpc-status: 14` (`UNAVAILABLE`, in headers or
//!   trailers) and a broken connection count as failures of that pod in
//!   [`Channel::stats`]. RPCs that may have reached a server are never
//!   retried; RPCs that never left (a refused connect) are tried on another pod.
//! - **Failing fast.** With no pod available for `failfast_timeout`, an RPC
//!   fails with `UNAVAILABLE` naming the target and the last DNS error,
//!   rather than hanging.
//!
//! # Keeping tonic's own balancer
//!
//! Users who prefer `tonic::transport::Channel::balance_channel` can take
//! only the discovery half: map each discovered address to a tonic
//! `Endpoint` and forward the changes. tonic then picks among the pods (at
//! random, without a load signal) and connects with its own settings:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//!
//! use futures::StreamExt;
//! use headless_lb::{Discovery, DnsDiscover, resolve::HickoryResolver};
//! use tonic::transport::channel::Change;
//! use tonic::transport::{Channel, Endpoint};
//!
//! let target = "web.default.svc.cluster.local:50051";
//! let resolver = Arc::new(HickoryResolver::builder().build()?);
//! let discovery = Discovery::spawn(target.parse()?, resolver);
//! let origin: http::Uri = format!("http://{target}").parse()?;
//! let mut changes = DnsDiscover::from_fn(discovery, move |addr: SocketAddr| {
//!     Endpoint::from_shared(format!("http://{addr}"))
//!         .expect("a socket address makes a valid URI")
//!         .origin(origin.clone()) // `:authority` is the service, not the pod
//! });
//! let (channel, sender) = Channel::balance_channel::<SocketAddr>(64);
//! tokio::spawn(async move {
//!     while let Some(Ok(change)) = changes.next().await {
//!         // tonic takes its own `Change`, not tower's.
//!         let change = match change {
//!             tower::discover::Change::Insert(addr, endpoint) => Change::Insert(addr, endpoint),
//!             tower::discover::Change::Remove(addr) => Change::Remove(addr),
//!         };
//!         if sender.send(change).await.is_err() {
//!             break; // the channel is gone
//!         }
//!     }
//! });
//! let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
//! # let _ = &mut health; Ok(()) }
//! ```

mod body;
mod channel;
mod deadline;
mod replay;
mod status;

pub use self::body::{CompleteOnStreamEnd, ResponseBody};
pub use self::channel::{Channel, ChannelBuilder, ResponseFuture};
