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
//! wakes this task), and every one is followed by a new snapshot, so discovery
//! and reconnections progress whether or not requests flow.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
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

/// What one step of an endpoint's connection driver ended with.
enum Readiness {
    /// `ready()` succeeded.
    Connected,
    /// `ready()` failed.
    ConnectFailed(BoxError),
    /// A request found the endpoint unhealthy (it is Backoff already).
    Unhealthy,
}

struct Step<S> {
    endpoint: Arc<Endpoint<S>>,
    outcome: Readiness,
}

/// One listed endpoint, as the task tracks it.
struct Entry<S> {
    endpoint: Arc<Endpoint<S>>,
    /// Cancels the endpoint's current step when discovery removes it.
    step: AbortHandle,
    /// Connection failures in a row, for the backoff delay.
    failures: u32,
    /// A connection attempt failed since the endpoint was last Ready: the
    /// pod was gone, and may come back as a new process.
    connect_failed: bool,
}

struct Task<Req, S> {
    shared: Arc<Shared<S>>,
    config: Config,
    /// Every address discovery lists, with its service while it is not in
    /// `endpoints` (outside the subset); a member's service lives in its
    /// endpoint only, so that the balancer holds one copy of each.
    listed: BTreeMap<SocketAddr, Option<S>>,
    /// `listed` changed since the members were last chosen.
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
    /// The listed endpoints this client uses (all of `listed`, or its subset).
    endpoints: BTreeMap<SocketAddr, Entry<S>>,
    draining: Vec<Weak<Endpoint<S>>>,
    steps: FuturesUnordered<Abortable<BoxFuture<'static, Step<S>>>>,
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
    let mut task = Task::<Req, S> {
        shared,
        config,
        listed: BTreeMap::new(),
        listed_changed: false,
        subset,
        budget_subset,
        budget_warned: false,
        connects,
        endpoints: BTreeMap::new(),
        draining: Vec::new(),
        steps: FuturesUnordered::new(),
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
                if self.endpoints.contains_key(&addr) {
                    self.remove(addr);
                }
                self.listed.insert(addr, Some(service));
                self.listed_changed = true;
            }
            Some(Ok(Change::Remove(addr))) => {
                if self.listed.remove(&addr).is_none() {
                    tracing::debug!(endpoint = %addr, "remove of an unknown endpoint ignored");
                }
                if self.endpoints.contains_key(&addr) {
                    self.remove(addr);
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

    /// Brings `endpoints` in line with the members of `listed`: every listed
    /// endpoint, or the subset's members when a subset applies. Runs once
    /// per batch of discovery changes, before the snapshot is published.
    fn choose_members(&mut self) {
        if !self.listed_changed {
            return;
        }
        self.listed_changed = false;
        let subset = match &self.subset {
            Some(subset) => Some(subset),
            None if self.listed.len() > self.config.max_connected => {
                if !self.budget_warned {
                    self.budget_warned = true;
                    tracing::warn!(
                        target_name = %self.config.target,
                        listed = self.listed.len(),
                        max_connected = self.config.max_connected,
                        "more pods than this client may connect to: using a random subset of them; set subset_size for a deterministic one"
                    );
                }
                Some(&self.budget_subset)
            }
            None => None,
        };
        let members: Vec<SocketAddr> = match subset {
            Some(subset) => {
                let listed: Vec<SocketAddr> = self.listed.keys().copied().collect();
                subset.members(&listed)
            }
            None => self.listed.keys().copied().collect(),
        };
        let leaving: Vec<SocketAddr> = self
            .endpoints
            .keys()
            .filter(|a| members.binary_search(a).is_err())
            .copied()
            .collect();
        for addr in leaving {
            tracing::debug!(endpoint = %addr, "endpoint left this client's subset");
            if let (Some(slot), Some(entry)) =
                (self.listed.get_mut(&addr), self.endpoints.get(&addr))
            {
                *slot = Some(entry.endpoint.service.clone());
            }
            self.remove(addr);
        }
        for addr in members {
            if self.endpoints.contains_key(&addr) {
                continue;
            }
            if let Some(service) = self.listed.get_mut(&addr).and_then(Option::take) {
                self.insert(addr, service);
            }
        }
    }

    fn insert(&mut self, addr: SocketAddr, service: S) {
        let initial_rtt = self.typical_rtt();
        let endpoint = Arc::new(Endpoint::new(
            addr,
            service,
            initial_rtt,
            self.config.decay,
            self.config.failure_accrual,
            crate::metrics::EndpointMetrics::new(&self.config.target, addr),
        ));
        tracing::debug!(endpoint = %addr, state = ?EndpointState::Connecting, initial_rtt = ?initial_rtt, "endpoint added");
        let step = self.spawn_step(first_connect::<Req, S>(
            endpoint.clone(),
            self.connects.clone(),
        ));
        self.endpoints.insert(
            addr,
            Entry {
                endpoint,
                step,
                failures: 0,
                connect_failed: false,
            },
        );
        self.dirty = true;
    }

    fn remove(&mut self, addr: SocketAddr) {
        let Some(entry) = self.endpoints.remove(&addr) else {
            return;
        };
        entry.step.abort();
        entry.endpoint.set_state(EndpointState::Draining);
        self.draining.push(Arc::downgrade(&entry.endpoint));
        self.dirty = true;
    }

    fn on_step(&mut self, step: Result<Step<S>, futures::future::Aborted>) {
        let Ok(Step { endpoint, outcome }) = step else {
            return; // Removed or replaced.
        };
        let addr = endpoint.addr;
        let (failures, connect_failed) = match self.endpoints.get_mut(&addr) {
            // A step of a replaced endpoint that finished before its abort is ignored.
            Some(entry) if Arc::ptr_eq(&entry.endpoint, &endpoint) => {
                let connect_failed = entry.connect_failed;
                (entry.failures, entry.connect_failed) = match outcome {
                    Readiness::Connected => (0, false),
                    Readiness::ConnectFailed(_) => (entry.failures.saturating_add(1), true),
                    Readiness::Unhealthy => (entry.failures.saturating_add(1), connect_failed),
                };
                // A run of failed requests backs off as long as failed connects would.
                let past = endpoint.load.failures_past_accrual();
                (entry.failures.max(past), connect_failed)
            }
            _ => return,
        };
        let next = match outcome {
            Readiness::Connected => {
                if connect_failed {
                    // What it measured before it failed says nothing about
                    // the pod it is now (often a restarted process): start
                    // afresh, as a new endpoint does.
                    let prior = self.typical_rtt();
                    endpoint.load.rtt.reset(prior, Instant::now());
                }
                endpoint.set_state(EndpointState::Ready);
                watch(endpoint)
            }
            Readiness::ConnectFailed(error) => {
                endpoint.set_state(EndpointState::Backoff);
                if let Some(hook) = &self.config.on_endpoint_failure {
                    hook(addr);
                }
                let delay = self.backoff(failures);
                let allowed = endpoint
                    .load
                    .warn_allowed(Instant::now(), self.config.warn_interval);
                warn_or_debug!(allowed, endpoint = %addr, %error, failures, retry_in = ?delay, "endpoint connection failed");
                connect::<Req, S>(endpoint, delay)
            }
            Readiness::Unhealthy => {
                let delay = self.backoff(failures);
                tracing::debug!(endpoint = %addr, failures, retry_in = ?delay, "reconnecting an endpoint a request found unhealthy");
                connect::<Req, S>(endpoint, delay)
            }
        };
        let handle = self.spawn_step(next);
        if let Some(entry) = self.endpoints.get_mut(&addr) {
            entry.step = handle;
        }
        self.dirty = true;
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff::delay(
            failures,
            self.config.backoff_base,
            self.config.backoff_max,
            fastrand::f64(),
        )
    }

    fn spawn_step(&mut self, step: BoxFuture<'static, Step<S>>) -> AbortHandle {
        let (handle, registration) = AbortHandle::new_pair();
        self.steps.push(Abortable::new(step, registration));
        handle
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
        let all = self
            .endpoints
            .values()
            .map(|e| e.endpoint.clone())
            .collect();
        let snapshot = Snapshot::new(all, self.draining.clone());
        self.config.metrics.panic_mode(snapshot.is_panic());
        self.shared.publish(snapshot);
    }

    /// Samples every endpoint's gauges, listed and draining, and keeps
    /// their series fresh (see `crate::metrics`).
    fn sample_metrics(&self) {
        let now = Instant::now();
        for entry in self.endpoints.values() {
            let e = &entry.endpoint;
            e.load.metrics.sample(&e.load, e.state(), now);
        }
        for e in self.draining.iter().filter_map(Weak::upgrade) {
            e.load.metrics.sample(&e.load, e.state(), now);
        }
        self.config.metrics.sample();
    }
}

/// Connects `endpoint` after `delay`: `ready()` on a clone of its service.
fn connect<Req, S>(endpoint: Arc<Endpoint<S>>, delay: Duration) -> BoxFuture<'static, Step<S>>
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
        Step { endpoint, outcome }
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
        connect::<Req, S>(endpoint, Duration::ZERO).await
    }
    .boxed()
}

/// Waits until a request marks `endpoint` unhealthy.
fn watch<S: Send + Sync + 'static>(endpoint: Arc<Endpoint<S>>) -> BoxFuture<'static, Step<S>> {
    async move {
        endpoint.unhealthy.notified().await;
        Step {
            endpoint,
            outcome: Readiness::Unhealthy,
        }
    }
    .boxed()
}
