//! The background task: applies discovery changes and keeps endpoints connected.
//!
//! ```text
//!  Discover ──Insert──► Connecting ──ready() ok──► Ready ──request marks unhealthy──┐
//!           ──Remove──► Draining        │ err                                      │
//!                                       ▼                                          ▼
//!                                    Backoff ◄──────── sleep(backoff), ready() ◄───┘
//! ```
//!
//! Every transition happens here (a request only flips Ready to Backoff and
//! tells this task, through one channel per balancer), and every one is
//! followed by a new snapshot, so discovery and reconnections progress
//! whether or not requests flow.
//!
//! What the task keeps per endpoint is what a Ready endpoint needs: a pointer
//! in the member list, which the published snapshot shares. Connection
//! attempts (a future, its abort handle, the failure count for the backoff)
//! exist only while an endpoint is Connecting or backing off.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower::{BoxError, Service, ServiceExt};

use tokio::sync::Semaphore;

use super::backoff;
use super::builder::Config;
use super::endpoint::{Endpoint, EndpointState};
use super::snapshot::{Shared, Snapshot};
use super::subset::{ClientIdentity, Subset};
use crate::log::{WarnGate, warn_or_debug};

/// What a connection attempt ended with.
enum Readiness {
    /// `ready()` succeeded.
    Connected,
    /// `ready()` failed.
    ConnectFailed(BoxError),
}

/// A finished connection attempt.
struct Step<S> {
    endpoint: Arc<Endpoint<S>>,
    outcome: Readiness,
    /// The endpoint's failures before this attempt.
    failures: Failures,
}

/// What the task remembers of an endpoint's failures between connection
/// attempts. Both reset when it connects, so a Ready endpoint has nothing
/// to remember: the record travels with each attempt instead of living in a
/// per-endpoint entry.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    /// Failures in a row (connection attempts, or the request that marked
    /// the endpoint unhealthy), for the backoff delay.
    count: u32,
    /// A connection attempt failed since the endpoint was last Ready: the
    /// pod was gone, and may come back as a new process.
    connect_failed: bool,
}

// ===== impl Failures =====

impl Failures {
    /// The failures in a row the backoff delay counts: a run of failed
    /// requests backs off as long as failed connects would.
    fn in_a_row<S>(&self, endpoint: &Endpoint<S>) -> u32 {
        self.count.max(endpoint.load.failures_past_accrual())
    }
}

struct Task<Req, S> {
    shared: Arc<Shared<S>>,
    config: Config,
    /// The endpoints this client uses, sorted by address: every listed
    /// address, or the subset's members. The published snapshot shares this
    /// list (one pointer per endpoint for both); a change builds a new one.
    /// An endpoint removed by discovery stays here, Draining, until the
    /// members are next chosen (before the next publication).
    members: Arc<[Arc<Endpoint<S>>]>,
    /// Listed addresses outside `members` (outside the subset, or listed
    /// since the members were last chosen), with their services. Together
    /// with the members that are not Draining, every address discovery
    /// lists; a member's service lives in its endpoint only, so that the
    /// balancer holds one copy of each.
    idle: BTreeMap<SocketAddr, S>,
    /// The listed set changed since the members were last chosen.
    listed_changed: bool,
    /// The subset rule when the listed set is larger than the client may use.
    subset: Option<Subset>,
    /// The fallback subset when the listing outgrows `max_connected` without
    /// a configured subset: a random identity per balancer.
    budget_subset: Subset,
    /// Warned that the listing outgrew `max_connected`.
    budget_warned: bool,
    /// First connection attempts under way at once are bounded by its permits.
    connects: Arc<Semaphore>,
    draining: Vec<Weak<Endpoint<S>>>,
    /// Connection attempts under way (endpoints Connecting or backing off).
    steps: FuturesUnordered<Abortable<BoxFuture<'static, Step<S>>>>,
    /// Cancels a member's attempt when discovery removes it.
    aborts: BTreeMap<SocketAddr, AbortHandle>,
    /// Addresses of endpoints that requests marked unhealthy.
    unhealthy: UnboundedReceiver<SocketAddr>,
    /// Its sender, cloned into every new endpoint.
    unhealthy_tx: UnboundedSender<SocketAddr>,
    /// The peers' typical RTT, computed once per batch of inserts.
    typical_rtt: Option<Duration>,
    dirty: bool,
    /// Warnings about discovery errors: one per `warn_interval`.
    discover_warn_gate: WarnGate,
    _req: std::marker::PhantomData<fn(Req)>,
}

/// Runs until `shutdown` fires or its sender is dropped.
pub(crate) async fn run<D, Req, S>(
    shared: Arc<Shared<S>>,
    config: Config,
    discover: D,
    mut shutdown: oneshot::Receiver<()>,
) where
    D: Discover<Key = SocketAddr, Service = S>,
    D::Error: Into<BoxError>,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    let mut discover = pin!(discover);
    let mut metrics_tick = crate::metrics::Ticker::new();
    let mut discovering = true;
    let subset = config.subset();
    let budget_subset = Subset::new(config.max_connected.max(1)).identity(ClientIdentity::Name(
        format!("budget-{:016x}", fastrand::u64(..)),
    ));
    let connects = Arc::new(Semaphore::new(
        config.connect_concurrency.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (unhealthy_tx, unhealthy) = mpsc::unbounded_channel();
    let mut task = Task::<Req, S> {
        shared,
        config,
        members: Arc::new([]),
        idle: BTreeMap::new(),
        listed_changed: false,
        subset,
        budget_subset,
        budget_warned: false,
        connects,
        draining: Vec::new(),
        steps: FuturesUnordered::new(),
        aborts: BTreeMap::new(),
        unhealthy,
        unhealthy_tx,
        typical_rtt: None,
        dirty: false,
        discover_warn_gate: WarnGate::new(),
        _req: std::marker::PhantomData,
    };

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            change = poll_fn(|cx| discover.as_mut().poll_discover(cx)), if discovering => {
                discovering = task.on_discover(change);
            }
            Some(step) = task.steps.next(), if !task.steps.is_empty() => {
                task.on_step(step);
            }
            // Never None: the task holds a sender.
            Some(addr) = task.unhealthy.recv() => task.on_unhealthy(addr),
            () = metrics_tick.tick() => task.sample_metrics(),
        }
        // Apply whatever else is ready before publishing once.
        while discovering {
            match poll_fn(|cx| discover.as_mut().poll_discover(cx)).now_or_never() {
                Some(change) => discovering = task.on_discover(change),
                None => break,
            }
        }
        while let Some(Some(step)) = task.steps.next().now_or_never() {
            task.on_step(step);
        }
        while let Ok(addr) = task.unhealthy.try_recv() {
            task.on_unhealthy(addr);
        }
        task.choose_members();
        task.publish();
    }
    tracing::debug!(target_name = %task.config.target, "balancer stopped");
}

// ===== impl Task =====

impl<Req, S> Task<Req, S>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    /// Applies one item of the `Discover` stream; returns whether to keep polling it.
    fn on_discover<E: Into<BoxError>>(
        &mut self,
        change: Option<Result<Change<SocketAddr, S>, E>>,
    ) -> bool {
        match change {
            Some(Ok(Change::Insert(addr, service))) => {
                // tower's contract: an Insert for a known key replaces its
                // service. The old endpoint drains; the new one is added
                // when members are chosen, if it is one.
                if let Some(endpoint) = self.member(addr).cloned() {
                    self.drain(&endpoint);
                }
                self.idle.insert(addr, service);
                self.listed_changed = true;
            }
            Some(Ok(Change::Remove(addr))) => {
                let member = self.member(addr).cloned();
                if let Some(endpoint) = &member {
                    self.drain(endpoint);
                }
                if self.idle.remove(&addr).is_none() && member.is_none() {
                    tracing::debug!(endpoint = %addr, "remove of an unknown endpoint ignored");
                }
                self.listed_changed = true;
            }
            Some(Err(error)) => {
                let error = error.into();
                let allowed = self
                    .discover_warn_gate
                    .allow(Instant::now(), self.config.warn_interval);
                warn_or_debug!(allowed, target_name = %self.config.target, %error, "discovery failed");
                self.shared.set_discover_error(error.to_string());
            }
            None => {
                tracing::debug!(target_name = %self.config.target, "discovery ended; keeping the endpoints");
                return false;
            }
        }
        true
    }

    /// The member at `addr`, unless discovery removed it (it is Draining
    /// until the members are next chosen).
    fn member(&self, addr: SocketAddr) -> Option<&Arc<Endpoint<S>>> {
        let i = self.members.binary_search_by_key(&addr, |e| e.addr).ok()?;
        Some(&self.members[i]).filter(|e| e.state() != EndpointState::Draining)
    }

    /// `endpoint` is a member that discovery has not removed, not one it
    /// removed or replaced.
    fn is_member(&self, endpoint: &Arc<Endpoint<S>>) -> bool {
        self.member(endpoint.addr)
            .is_some_and(|e| Arc::ptr_eq(e, endpoint))
    }

    /// Brings the members in line with the listed set: every listed address,
    /// or the subset's members when a subset applies. Runs once per batch of
    /// discovery changes, before the snapshot is published.
    fn choose_members(&mut self) {
        if !self.listed_changed {
            return;
        }
        self.listed_changed = false;
        // Every listed address, sorted: the members discovery still lists
        // and the idle addresses (the two are disjoint).
        let mut listed: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|e| e.state() != EndpointState::Draining)
            .map(|e| e.addr)
            .chain(self.idle.keys().copied())
            .collect();
        listed.sort_unstable();
        let subset = match &self.subset {
            Some(subset) => Some(subset),
            None if listed.len() > self.config.max_connected => {
                if !self.budget_warned {
                    self.budget_warned = true;
                    tracing::warn!(
                        target_name = %self.config.target,
                        listed = listed.len(),
                        max_connected = self.config.max_connected,
                        "more pods than this client may connect to: using a random subset of them; set subset_size for a deterministic one"
                    );
                }
                Some(&self.budget_subset)
            }
            None => None,
        };
        let chosen = match subset {
            Some(subset) => subset.members(&listed),
            None => listed,
        };
        let leaving: Vec<Arc<Endpoint<S>>> = self
            .members
            .iter()
            .filter(|e| e.state() != EndpointState::Draining)
            .filter(|e| chosen.binary_search(&e.addr).is_err())
            .cloned()
            .collect();
        for endpoint in leaving {
            tracing::debug!(endpoint = %endpoint.addr, "endpoint left this client's subset");
            self.idle.insert(endpoint.addr, endpoint.service.clone());
            self.drain(&endpoint);
        }
        let mut members = Vec::with_capacity(chosen.len());
        for addr in chosen {
            if let Some(endpoint) = self.member(addr) {
                members.push(endpoint.clone());
            } else if let Some(service) = self.idle.remove(&addr) {
                members.push(self.insert(addr, service));
            }
        }
        // Into an exactly sized shared slice; the Draining endpoints drop
        // out here (`draining` tracks them).
        self.members = members.into();
        self.dirty = true;
    }

    /// A new, Connecting endpoint, its first connection attempt started.
    fn insert(&mut self, addr: SocketAddr, service: S) -> Arc<Endpoint<S>> {
        let initial_rtt = self.typical_rtt();
        let endpoint = Arc::new(Endpoint::new(
            addr,
            service,
            initial_rtt,
            self.config.decay,
            self.config.failure_accrual,
            crate::metrics::EndpointMetrics::new(&self.config.metrics, addr),
            self.unhealthy_tx.clone(),
        ));
        tracing::debug!(endpoint = %addr, state = ?EndpointState::Connecting, initial_rtt = ?initial_rtt, "endpoint added");
        let step = first_connect::<Req, S>(endpoint.clone(), self.connects.clone());
        self.spawn_step(addr, step);
        endpoint
    }

    /// Discovery removed `endpoint` (or replaced its service, or it left the
    /// subset): it drains, and leaves the members when they are next chosen.
    fn drain(&mut self, endpoint: &Arc<Endpoint<S>>) {
        if let Some(abort) = self.aborts.remove(&endpoint.addr) {
            abort.abort();
        }
        endpoint.set_state(EndpointState::Draining);
        self.draining.push(Arc::downgrade(endpoint));
        self.dirty = true;
    }

    fn on_step(&mut self, step: Result<Step<S>, futures::future::Aborted>) {
        let Ok(Step {
            endpoint,
            outcome,
            failures,
        }) = step
        else {
            return; // Removed or replaced.
        };
        // A step of a removed or replaced endpoint that finished before its abort is ignored.
        if !self.is_member(&endpoint) {
            return;
        }
        let addr = endpoint.addr;
        self.aborts.remove(&addr);
        match outcome {
            Readiness::Connected => {
                if failures.connect_failed {
                    // What it measured before it failed says nothing about
                    // the pod it is now (often a restarted process): start
                    // afresh, as a new endpoint does.
                    let prior = self.typical_rtt();
                    endpoint.load.rtt.reset(prior, Instant::now());
                }
                // Nothing runs for a Ready endpoint: a request that finds it
                // unhealthy reports it (`on_unhealthy`).
                endpoint.set_state(EndpointState::Ready);
            }
            Readiness::ConnectFailed(error) => {
                endpoint.set_state(EndpointState::Backoff);
                if let Some(hook) = &self.config.on_endpoint_failure {
                    hook(addr);
                }
                let failures = Failures {
                    count: failures.count.saturating_add(1),
                    connect_failed: true,
                };
                let in_a_row = failures.in_a_row(&endpoint);
                let delay = self.backoff(in_a_row);
                let allowed = endpoint
                    .load
                    .warn_allowed(Instant::now(), self.config.warn_interval);
                warn_or_debug!(allowed, endpoint = %addr, %error, failures = in_a_row, retry_in = ?delay, "endpoint connection failed");
                self.spawn_step(addr, connect::<Req, S>(endpoint, delay, failures));
            }
        }
        self.dirty = true;
    }

    /// A request marked the endpoint at `addr` unhealthy (Ready to Backoff):
    /// reconnect it after a backoff. A report about an endpoint since
    /// removed, or one already reconnecting, is stale and ignored.
    fn on_unhealthy(&mut self, addr: SocketAddr) {
        let Some(endpoint) = self.member(addr) else {
            return;
        };
        if endpoint.state() != EndpointState::Backoff || self.aborts.contains_key(&addr) {
            return;
        }
        let endpoint = endpoint.clone();
        // It was Ready, so its record was clear: this is its first failure.
        let failures = Failures {
            count: 1,
            connect_failed: false,
        };
        let in_a_row = failures.in_a_row(&endpoint);
        let delay = self.backoff(in_a_row);
        tracing::debug!(endpoint = %addr, failures = in_a_row, retry_in = ?delay, "reconnecting an endpoint a request found unhealthy");
        self.spawn_step(addr, connect::<Req, S>(endpoint, delay, failures));
        self.dirty = true;
    }

    /// The reconnect delay after `failures` in a row.
    fn backoff(&self, failures: u32) -> Duration {
        backoff::delay(
            failures,
            self.config.backoff_base,
            self.config.backoff_max,
            fastrand::f64(),
        )
    }

    /// Runs a connection attempt of the member at `addr`, abortable by `drain`.
    fn spawn_step(&mut self, addr: SocketAddr, step: BoxFuture<'static, Step<S>>) {
        let (abort, registration) = AbortHandle::new_pair();
        self.steps.push(Abortable::new(step, registration));
        self.aborts.insert(addr, abort);
    }

    /// The starting RTT estimate of a new endpoint: the median of its peers'
    /// estimates (Ready peers when there are any), the default when it is the first.
    fn typical_rtt(&mut self) -> Duration {
        if let Some(rtt) = self.typical_rtt {
            return rtt;
        }
        let mut estimates = self.shared.peer_estimates(Instant::now());
        let rtt = if estimates.is_empty() {
            self.config.default_rtt
        } else {
            let mid = estimates.len() / 2;
            let (_, median, _) = estimates.select_nth_unstable_by(mid, f64::total_cmp);
            Duration::from_secs_f64(median.max(0.0) / 1e9)
        };
        self.typical_rtt = Some(rtt);
        rtt
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.typical_rtt = None;
        self.draining.retain(|e| e.strong_count() > 0);
        let snapshot = Snapshot::new(self.members.clone(), self.draining.clone());
        self.config.metrics.panic_mode(snapshot.is_panic());
        self.shared.publish(snapshot);
    }

    /// Samples every endpoint's gauges, listed and draining, and keeps
    /// their series fresh (see `crate::metrics`).
    fn sample_metrics(&self) {
        let now = Instant::now();
        for e in self.members.iter() {
            e.load.metrics.sample(&e.load, e.state(), now);
        }
        for e in self.draining.iter().filter_map(Weak::upgrade) {
            e.load.metrics.sample(&e.load, e.state(), now);
        }
        self.config.metrics.sample();
    }
}

/// Connects `endpoint` after `delay`: `ready()` on a clone of its service.
fn connect<Req, S>(
    endpoint: Arc<Endpoint<S>>,
    delay: Duration,
    failures: Failures,
) -> BoxFuture<'static, Step<S>>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut service = endpoint.service.clone();
        let outcome = match ServiceExt::<Req>::ready(&mut service).await {
            Ok(_) => Readiness::Connected,
            Err(error) => Readiness::ConnectFailed(error.into()),
        };
        drop(service);
        Step {
            endpoint,
            outcome,
            failures,
        }
    }
    .boxed()
}

/// The first connection attempt of a new endpoint: waits for one of the
/// `permits`, so that a large listing (thousands of pods at start-up) opens
/// its sockets a bounded number at a time, in listing order, rather than all
/// at once. Reconnects do not wait: backoff already spaces them.
fn first_connect<Req, S>(
    endpoint: Arc<Endpoint<S>>,
    permits: Arc<Semaphore>,
) -> BoxFuture<'static, Step<S>>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    async move {
        // The semaphore is never closed; without a permit, connect anyway.
        let _permit = permits.acquire_owned().await.ok();
        connect::<Req, S>(endpoint, Duration::ZERO, Failures::default()).await
    }
    .boxed()
}
