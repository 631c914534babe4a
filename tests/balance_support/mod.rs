//! Test pods and a channel-backed `Discover` for the balancer's tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use headless_lb::NotSent;
use headless_lb::balance::{Balancer, Builder, EndpointState, EndpointStats};
use tower::BoxError;
use tower::discover::Change;

/// What a pod's `call` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer with its address after its latency.
    Ok,
    /// Fail after the request may have reached it.
    Fail,
    /// Fail with `NotSent`, giving the request back.
    NotSent,
    /// Never answer.
    Hang,
}

/// A fake endpoint service. Clones share state; `Arc::strong_count(&pod.0)`
/// tells how many copies are alive.
#[derive(Clone)]
pub struct Pod(pub Arc<PodState>);

pub struct PodState {
    pub addr: SocketAddr,
    pub latency: Mutex<Duration>,
    pub mode: Mutex<Mode>,
    /// `poll_ready` fails ("connection refused") while set.
    pub refuse: AtomicBool,
    /// `poll_ready` stays pending (connecting forever) while set.
    pub stall: AtomicBool,
    pub calls: AtomicUsize,
    pub ready_errors: AtomicUsize,
    /// Until then every request is held (a GC pause), then answered.
    pub paused_until: Mutex<Option<tokio::time::Instant>>,
}

pub type Request = u32;
pub type Tx = mpsc::UnboundedSender<Result<Change<SocketAddr, Pod>, Infallible>>;
pub type Lb = Balancer<Request, Pod>;

pub fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

impl Pod {
    pub fn new(i: u8, latency: Duration) -> Self {
        Pod(Arc::new(PodState {
            addr: addr(i),
            latency: Mutex::new(latency),
            mode: Mutex::new(Mode::Ok),
            refuse: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            ready_errors: AtomicUsize::new(0),
            paused_until: Mutex::new(None),
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.0.mode.lock().unwrap() = mode;
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.0.latency.lock().unwrap() = latency;
    }

    /// Holds every request, those in flight and those that arrive, for
    /// `pause`: each is answered at the end of the pause, or after its
    /// latency, whichever comes later.
    pub fn pause(&self, pause: Duration) {
        *self.0.paused_until.lock().unwrap() = Some(tokio::time::Instant::now() + pause);
    }

    pub fn refuse(&self, refuse: bool) {
        self.0.refuse.store(refuse, Ordering::SeqCst);
    }

    pub fn stall(&self, stall: bool) {
        self.0.stall.store(stall, Ordering::SeqCst);
    }

    /// Copies of this pod's service alive, besides this one.
    pub fn copies(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

impl tower::Service<Request> for Pod {
    type Response = SocketAddr;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SocketAddr, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.0.stall.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        if self.0.refuse.load(Ordering::SeqCst) {
            self.0.ready_errors.fetch_add(1, Ordering::SeqCst);
            return Poll::Ready(Err("connection refused".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let addr = self.0.addr;
        let latency = *self.0.latency.lock().unwrap();
        match *self.0.mode.lock().unwrap() {
            Mode::Ok => {
                let state = self.0.clone();
                Box::pin(async move {
                    tokio::time::sleep(latency).await;
                    // A pause that began meanwhile holds the answer too.
                    let until = *state.paused_until.lock().unwrap();
                    if let Some(until) = until {
                        tokio::time::sleep_until(until).await;
                    }
                    Ok(addr)
                })
            }
            Mode::Fail => Box::pin(async move { Err("500 internal server error".into()) }),
            Mode::NotSent => Box::pin(async move {
                Err(
                    NotSent::new(request, "connection closed before the request was written")
                        .into(),
                )
            }),
            Mode::Hang => Box::pin(futures::future::pending()),
        }
    }
}

/// A balancer over a channel-backed `Discover`.
pub fn balancer(builder: Builder) -> (Lb, Tx) {
    let (tx, rx) = mpsc::unbounded();
    (builder.build(rx), tx)
}

pub fn insert(tx: &Tx, pod: &Pod) {
    tx.unbounded_send(Ok(Change::Insert(pod.addr(), pod.clone())))
        .unwrap();
}

pub fn remove(tx: &Tx, pod: &Pod) {
    tx.unbounded_send(Ok(Change::Remove(pod.addr()))).unwrap();
}

/// Lets the background task catch up, without moving the clock.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

pub fn stats_of(lb: &Lb, pod: &Pod) -> EndpointStats {
    lb.stats()
        .into_iter()
        .find(|s| s.address == pod.addr())
        .unwrap_or_else(|| panic!("{} not in stats", pod.addr()))
}

pub fn state_of(lb: &Lb, pod: &Pod) -> EndpointState {
    stats_of(lb, pod).state
}

/// Runs `workers` concurrent callers, each sending `per_worker` requests in a row.
pub async fn drive(lb: &Lb, workers: usize, per_worker: usize) {
    use tower::ServiceExt;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let lb = lb.clone();
            tokio::spawn(async move {
                for i in 0..per_worker {
                    lb.clone()
                        .oneshot((w * per_worker + i) as u32)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
