//! [`DnsDiscover`]: endpoint set changes as a tower `Discover` stream.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::stream::{BoxStream, Stream, StreamExt};
use tower::Service;
use tower::discover::Change;

use super::diff::SetDiff;
use super::refresh::{Discovery, EndpointSet};

/// A tower [`Discover`](tower::discover::Discover) over the endpoints of a target.
///
/// Yields `Change::Remove(addr)` and `Change::Insert(addr, service)` for every
/// difference between published endpoint sets; the service for a new endpoint
/// comes from the maker `M`, a `tower::Service<SocketAddr>` (or a closure, see
/// [`DnsDiscover::from_fn`]). An endpoint that stays in the set keeps the
/// service it was given. Removes are emitted before inserts.
///
/// The lookups run in the [`Discovery`]'s own task, so nothing is lost when
/// this stream is polled rarely: a consumer that falls behind skips straight
/// to the newest set. Works with `tower::balance::p2c::Balance`, with tonic's
/// `Channel::balance_channel` (map the changes to `Endpoint`s) and with this
/// crate's balancer.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use headless_lb::{Discovery, DnsDiscover, resolve::HickoryResolver};
///
/// let resolver = Arc::new(HickoryResolver::builder().build()?);
/// let discovery = Discovery::spawn("web.default.svc.cluster.local:8080".parse()?, resolver);
/// let discover = DnsDiscover::from_fn(discovery, |addr| format!("a service for {addr}"));
/// # let _ = discover; Ok(()) }
/// ```
pub struct DnsDiscover<M>
where
    M: Service<SocketAddr>,
{
    discovery: Discovery,
    sets: BoxStream<'static, EndpointSet>,
    announced: BTreeSet<SocketAddr>,
    queued: VecDeque<Change<SocketAddr, ()>>,
    maker: M,
    making: Option<(SocketAddr, Pin<Box<M::Future>>)>,
}

/// A maker built from a closure, for [`DnsDiscover::from_fn`].
#[derive(Clone, Debug)]
pub struct MakeFn<F>(F);

// ===== impl DnsDiscover =====

impl<M> DnsDiscover<M>
where
    M: Service<SocketAddr>,
{
    /// Emits the changes of `discovery`, making each endpoint's service with `maker`.
    pub fn new(discovery: Discovery, maker: M) -> Self {
        let sets = futures::stream::unfold(discovery.watch(), |mut rx| async move {
            rx.changed().await.ok()?;
            let set = rx.borrow_and_update().clone();
            Some((set, rx))
        });
        // The set published before we subscribed is the first one to diff.
        let current = discovery.endpoints();
        let sets = futures::stream::once(async move { current })
            .chain(sets)
            .boxed();
        DnsDiscover {
            discovery,
            sets,
            announced: BTreeSet::new(),
            queued: VecDeque::new(),
            maker,
            making: None,
        }
    }

    /// The discovery behind this stream: its current set and stats.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }
}

impl<F, S> DnsDiscover<MakeFn<F>>
where
    F: FnMut(SocketAddr) -> S,
{
    /// Emits the changes of `discovery`, making each endpoint's service with `make`.
    pub fn from_fn(discovery: Discovery, make: F) -> Self {
        Self::new(discovery, MakeFn(make))
    }
}

// The maker is never pinned (only `&mut` is taken of it) and the future in
// flight is boxed, so the stream can move freely whatever `M` is.
impl<M> Unpin for DnsDiscover<M> where M: Service<SocketAddr> {}

impl<M> Stream for DnsDiscover<M>
where
    M: Service<SocketAddr>,
{
    type Item = Result<Change<SocketAddr, M::Response>, M::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some((addr, making)) = this.making.as_mut() {
                let addr = *addr;
                let result = ready!(making.as_mut().poll(cx));
                this.making = None;
                return Poll::Ready(Some(result.map(|svc| {
                    this.announced.insert(addr);
                    Change::Insert(addr, svc)
                })));
            }
            match this.queued.front() {
                Some(Change::Remove(addr)) => {
                    let addr = *addr;
                    this.queued.pop_front();
                    this.announced.remove(&addr);
                    return Poll::Ready(Some(Ok(Change::Remove(addr))));
                }
                Some(Change::Insert(addr, ())) => {
                    let addr = *addr;
                    if let Err(e) = ready!(this.maker.poll_ready(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.queued.pop_front();
                    this.making = Some((addr, Box::pin(this.maker.call(addr))));
                }
                None => {
                    let Some(set) = ready!(this.sets.poll_next_unpin(cx)) else {
                        return Poll::Ready(None);
                    };
                    let diff = SetDiff::between(&this.announced, &set);
                    this.queued
                        .extend(diff.removed.into_iter().map(Change::Remove));
                    this.queued
                        .extend(diff.inserted.into_iter().map(|a| Change::Insert(a, ())));
                }
            }
        }
    }
}

impl<M> fmt::Debug for DnsDiscover<M>
where
    M: Service<SocketAddr>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("target", &self.discovery.target().to_string())
            .field("announced", &self.announced.len())
            .field("queued", &self.queued.len())
            .finish()
    }
}

// ===== impl MakeFn =====

impl<F, S> Service<SocketAddr> for MakeFn<F>
where
    F: FnMut(SocketAddr) -> S,
{
    type Response = S;
    type Error = Infallible;
    type Future = Ready<Result<S, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        std::future::ready(Ok((self.0)(addr)))
    }
}
