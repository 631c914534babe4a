//! [`Builder`]: the balancer's configuration, with every default in one place.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower::discover::Discover;

use super::completion::{CompleteOnResponse, Completion};
use super::handle::Balancer;
use super::subset::{ClientIdentity, Subset};

/// How long a request waits for an available endpoint [3 s].
pub const DEFAULT_FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);
/// The RTT estimate of the first endpoint, before anything was measured [30 ms].
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The peak-EWMA decay period [10 s].
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// The first reconnect delay of a failed endpoint [100 ms].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest reconnect delay [10 s].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Failed requests in a row that take an endpoint out of picks \[5\].
pub const DEFAULT_FAILURE_ACCRUAL: u32 = 5;
/// How many times a request that was never sent may go back to an endpoint
/// it already tried, once no other is pickable \[2\]; see [`Builder::max_retries`].
pub const DEFAULT_MAX_RETRIES: usize = 2;
/// How many new endpoints make their first connection attempt at once \[64\].
pub const DEFAULT_CONNECT_CONCURRENCY: usize = 64;
/// The shortest interval between two warnings about the same endpoint [5 s].
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// A source of the last discovery error, for [`BalanceError::NoEndpoints`](crate::error::BalanceError::NoEndpoints).
pub(crate) type LastErrorSource = Arc<dyn Fn() -> Option<String> + Send + Sync + 'static>;

/// Configures and starts a [`Balancer`].
///
/// ```no_run
/// # use std::{convert::Infallible, net::SocketAddr, time::Duration};
/// # use tower::discover::Change;
/// use headless_lb::balance::Balancer;
///
/// # async fn demo() {
/// # let (_tx, discover) = futures::channel::mpsc::unbounded::<Result<Change<SocketAddr, tower::util::BoxCloneSyncService<(), (), Infallible>>, Infallible>>();
/// let balancer = Balancer::builder()
///     .target_name("dns:///echo.default.svc.cluster.local:8080")
///     .failfast_timeout(Duration::from_secs(1))
///     .build(discover);
/// # let _: Balancer<(), _> = balancer;
/// # }
/// ```
#[derive(Clone)]
pub struct Builder {
    config: Config,
}

/// The settled configuration, shared by the handle and the background task.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) target: String,
    pub(crate) failfast_timeout: Duration,
    pub(crate) default_rtt: Duration,
    pub(crate) decay: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_retries: usize,
    pub(crate) failure_accrual: u32,
    pub(crate) warn_interval: Duration,
    pub(crate) last_error_source: Option<LastErrorSource>,
    /// Called when a pod fails in a way that says discovery may be stale.
    pub(crate) on_endpoint_failure: Option<FailureHook>,
    /// The per-target series, registered when the balancer starts.
    pub(crate) metrics: crate::metrics::BalancerMetrics,
    /// The subset's size; 0: every listed endpoint.
    pub(crate) subset_size: usize,
    /// Who this client is for the subset; `None`: the hostname.
    pub(crate) subset_identity: Option<ClientIdentity>,
    /// The most endpoints used without a subset (see [`Builder::max_connected`]).
    pub(crate) max_connected: usize,
    /// First connection attempts under way at once.
    pub(crate) connect_concurrency: usize,
}

/// What [`Builder::on_endpoint_failure`] calls.
pub(crate) type FailureHook = Arc<dyn Fn(SocketAddr) + Send + Sync + 'static>;

// ===== impl Builder =====

impl Builder {
    /// A builder with the defaults listed on each setter.
    pub fn new() -> Self {
        Self {
            config: Config::default(),
        }
    }

    /// The name errors and logs use for what is balanced, e.g. the target
    /// string the user wrote ["(unnamed)"].
    pub fn target_name(mut self, name: impl Into<String>) -> Self {
        self.config.target = name.into();
        self
    }

    /// How long a request waits in total for an available endpoint before it
    /// fails with `NoEndpoints` [3 s].
    ///
    /// It is also the budget of a request that was never sent: from its
    /// first wait or first failed attempt, its waits and retries together
    /// end after this long (see [`max_retries`](Self::max_retries)).
    pub fn failfast_timeout(mut self, timeout: Duration) -> Self {
        self.config.failfast_timeout = timeout;
        self
    }

    /// The RTT estimate of an endpoint when no other endpoint has one [30 ms].
    ///
    /// Later endpoints start from the median estimate of the ready ones, so
    /// that a new pod gets about its fair share instead of being flooded (a
    /// default below its peers' estimates) or starved (above them).
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.config.default_rtt = rtt;
        self
    }

    /// The peak-EWMA decay period: how fast an estimate forgets a peak [10 s].
    ///
    /// It also paces probes: an endpoint that no request went to for
    /// `decay / 10` (1 s), because of an old peak, gets one request whose
    /// RTT replaces its estimate, so that a pod that recovered from a stall
    /// competes again at once. Each probe doubles the wait for the next, up
    /// to `4 × decay`, until the endpoint wins picks on its estimate again.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.config.decay = decay;
        self
    }

    /// Reconnect backoff of a failed endpoint: the first delay after a
    /// connection failure is `base`, doubled on every further failure up to
    /// `max` \[100 ms, 10 s\].
    pub fn endpoint_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max;
        self
    }

    /// How many times a request that was never sent may be retried on an
    /// endpoint it already tried \[2\]; 0: on each endpoint at most once.
    ///
    /// A request was never sent when its endpoint's `ready()` failed (a
    /// refused or timed-out connect) or `call()` returned
    /// [`NotSent`](crate::NotSent): it is safe to send anywhere. So it goes
    /// on to an endpoint it has not tried yet (P2C among those), as many
    /// times as there are such endpoints: pods that die together (a
    /// scale-down, several members of a subset) fail no request while a
    /// listed pod is alive. Listed endpoints it has not tried that are still
    /// connecting or backing off are waited for. When none is left, it may
    /// go back to one it tried, up to `retries` times (the one pod of a
    /// service, whose connection closed and reconnects), each time after
    /// the balancer's next change (a reconnect attempt, a discovery update),
    /// never in a loop. All its waits and retries together end within
    /// [`failfast_timeout`](Self::failfast_timeout).
    ///
    /// It then fails with [`BalanceError::Endpoint`](crate::BalanceError::Endpoint),
    /// `not_sent: true`, carrying the last endpoint's error;
    /// [`BalanceError::NoEndpoints`](crate::BalanceError::NoEndpoints) is
    /// for a request that found no endpoint to try at all. A request that
    /// may have reached a server is never retried.
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.config.max_retries = retries;
        self
    }

    /// How many failed requests in a row take an endpoint out of picks, as a
    /// failed connection does \[5\]; 0 turns this off.
    ///
    /// Without this, a pod that fails fast (a 503 on everything) looks like
    /// the fastest pod and draws more traffic than any. Out of picks, it
    /// waits out a backoff that grows with the run (`backoff_base` doubling
    /// to `backoff_max`), then gets a few requests again: one more failure
    /// puts it back, one success ends the run. If every endpoint is out,
    /// panic mode picks among all of them.
    ///
    /// A failure is an error from the endpoint's service, or what the
    /// [`Completion`] records (the HTTP client: 5xx and broken bodies; the
    /// gRPC channel: `UNAVAILABLE` and broken streams); any other completed
    /// request ends the run. A request the caller abandoned (its own
    /// timeout, a hedged request that won elsewhere) does neither: it counts
    /// in the stats and raises the RTT estimate, which already steers P2C
    /// away from a hung pod, but a caller's deadline must not take pods out.
    pub fn failure_accrual(mut self, failures: u32) -> Self {
        self.config.failure_accrual = failures;
        self
    }

    /// Where `NoEndpoints` errors get the last discovery error from, e.g. the
    /// DNS refresh loop's stats [the last error the `Discover` stream yielded].
    pub fn last_error_source(
        mut self,
        source: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.last_error_source = Some(Arc::new(source));
        self
    }

    /// Called with the pod's address whenever a pod fails in a way that
    /// suggests it is gone: a connect fails (refused, timed out, a server
    /// that sent GOAWAY and closed its listener) or a connection breaks
    /// under a request \[nothing\]. The clients use it to ask discovery for
    /// an early lookup ([`Discovery::resolve_now`](crate::Discovery::resolve_now)),
    /// so that a pod deleted from DNS leaves the set within about a second
    /// rather than at the end of the record's TTL. Must be cheap and must
    /// not block: it runs on the request path.
    pub fn on_endpoint_failure(
        mut self,
        hook: impl Fn(SocketAddr) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_endpoint_failure = Some(Arc::new(hook));
        self
    }

    /// Balances over at most `size` of the listed pods, chosen by
    /// [`Subset`]'s deterministic rule from this client's identity (see
    /// [`subset_identity`](Self::subset_identity)) \[off: every pod\]; 0
    /// turns it off.
    ///
    /// Turn it on when clients × pods connections is more than the pods
    /// or the clients should hold (hundreds of clients of hundreds of
    /// pods): each client then holds `size` pods' connections, and a pod
    /// joining or leaving changes only the subsets it enters or leaves. The
    /// cost: a client's load spreads over `size` pods instead of all, so a
    /// slow pod weighs more on the clients that have it, and clients with
    /// different request rates load their pods unevenly. Pods outside the
    /// subset are not connected and not in [`stats`](Balancer::stats).
    pub fn subset_size(mut self, size: usize) -> Self {
        self.config.subset_size = size;
        self
    }

    /// How this client identifies itself for [`subset_size`](Self::subset_size)
    /// \[[`ClientIdentity::hostname`]: `$HOSTNAME`, the pod's name in
    /// Kubernetes\]. [`ClientIdentity::ordinal`] (this client's number and
    /// the number of clients, e.g. a StatefulSet's ordinal and replicas)
    /// spreads clients evenly over the pods; a name spreads them like random
    /// choices. Has no effect without a subset size.
    pub fn subset_identity(mut self, identity: ClientIdentity) -> Self {
        self.config.subset_identity = Some(identity);
        self
    }

    /// The most listed endpoints this client connects to without
    /// [`subset_size`](Self::subset_size) \[half the process's open-file
    /// limit, at least 64: 512 under the common 1 024\].
    ///
    /// A listing larger than this (a service with thousands of pods) would
    /// run the process out of file descriptors (`EMFILE`), which breaks far
    /// more than this client. Past it the balancer uses a random subset of
    /// this size, warns once, and asks for `subset_size`.
    pub fn max_connected(mut self, max: usize) -> Self {
        self.config.max_connected = max.max(1);
        self
    }

    /// How many new endpoints make their first connection attempt at once
    /// \[64\]: the others wait their turn, so that a listing of thousands of
    /// pods does not open thousands of sockets in one burst. The first
    /// endpoint to connect serves requests at once.
    pub fn connect_concurrency(mut self, concurrency: usize) -> Self {
        self.config.connect_concurrency = concurrency.max(1);
        self
    }

    /// Starts the balancer over `discover` and returns its handle.
    ///
    /// Spawns one background task that polls `discover`, connects new
    /// endpoints and reconnects failed ones; it ends when the last clone of
    /// the handle (and the last response future) is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build<D, Req>(self, discover: D) -> Balancer<Req, D::Service>
    where
        D: Discover<Key = SocketAddr> + Send + 'static,
        D::Error: Into<BoxError>,
        D::Service: tower::Service<Req> + Clone + Send + Sync + 'static,
        <D::Service as tower::Service<Req>>::Error: Into<BoxError>,
        <D::Service as tower::Service<Req>>::Future: Send,
        Req: Send + 'static,
    {
        self.build_with_completion(discover, CompleteOnResponse)
    }

    /// Like [`build`](Self::build), with a [`Completion`] that decides when a
    /// request stops counting as pending (e.g. when a response stream ends).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build_with_completion<D, Req, C>(
        self,
        discover: D,
        completion: C,
    ) -> Balancer<Req, D::Service, C>
    where
        D: Discover<Key = SocketAddr> + Send + 'static,
        D::Error: Into<BoxError>,
        D::Service: tower::Service<Req> + Clone + Send + Sync + 'static,
        <D::Service as tower::Service<Req>>::Error: Into<BoxError>,
        <D::Service as tower::Service<Req>>::Future: Send,
        Req: Send + 'static,
        C: Completion<<D::Service as tower::Service<Req>>::Response>,
    {
        Balancer::spawn(self.config, discover, completion)
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

// ===== impl Config =====

impl Config {
    /// The subset rule, when a size is set.
    pub(crate) fn subset(&self) -> Option<Subset> {
        if self.subset_size == 0 {
            return None;
        }
        let subset = Subset::new(self.subset_size);
        Some(match &self.subset_identity {
            Some(identity) => subset.identity(identity.clone()),
            None => subset,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target: String::from("(unnamed)"),
            failfast_timeout: DEFAULT_FAILFAST_TIMEOUT,
            default_rtt: DEFAULT_RTT,
            decay: DEFAULT_DECAY,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_retries: DEFAULT_MAX_RETRIES,
            failure_accrual: DEFAULT_FAILURE_ACCRUAL,
            warn_interval: WARN_INTERVAL,
            last_error_source: None,
            on_endpoint_failure: None,
            metrics: Default::default(),
            subset_size: 0,
            subset_identity: None,
            max_connected: default_max_connected(),
            connect_concurrency: DEFAULT_CONNECT_CONCURRENCY,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("target", &self.target)
            .field("failfast_timeout", &self.failfast_timeout)
            .field("default_rtt", &self.default_rtt)
            .field("decay", &self.decay)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_retries", &self.max_retries)
            .field("failure_accrual", &self.failure_accrual)
            .field("warn_interval", &self.warn_interval)
            .field("last_error_source", &self.last_error_source.is_some())
            .field("on_endpoint_failure", &self.on_endpoint_failure.is_some())
            .field("subset_size", &self.subset_size)
            .field("subset_identity", &self.subset_identity)
            .field("max_connected", &self.max_connected)
            .field("connect_concurrency", &self.connect_concurrency)
            .finish()
    }
}

/// Half the process's soft open-file limit, at least 64; 4 096 where the
/// limit cannot be read (it is read from `/proc/self/limits`, Linux only).
fn default_max_connected() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_files(&limits))
        .map_or(4096, |soft| (soft / 2).max(64))
}

/// The soft limit in the "Max open files" line of `/proc/self/limits`;
/// `None` when absent or "unlimited".
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::soft_open_files;

    #[test]
    fn reads_the_soft_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95464                95464                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_open_files(limits), Some(1024));
        assert_eq!(
            soft_open_files("Max open files  unlimited  unlimited  files"),
            None
        );
        assert_eq!(soft_open_files("nothing here"), None);
    }
}
