//! Balancers over endpoints that answer at once: ours and tower's
//! `Buffer<Balance<PeakEwma<…>>>`, for the pick-cost and memory figures.
//! Shared by `benches/balance.rs` and `tests/memory.rs` (through `#[path]`) and the peer runner.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use headless_lb::balance::{Balancer, EndpointState};
use tower::Service;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PeakEwma};

/// An endpoint that answers with its request at once.
pub type Immediate = tower::util::BoxCloneSyncService<u32, u32, Infallible>;
/// Our balancer over immediate endpoints.
pub type Ours = Balancer<u32, Immediate>;
/// tower's P2C behind a Buffer over immediate endpoints with peak-EWMA load.
pub type Theirs =
    Buffer<u32, <Balance<ServiceList<Vec<PeakEwma<Immediate>>>, u32> as Service<u32>>::Future>;

pub fn immediate() -> Immediate {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|r: u32| async move {
        Ok::<_, Infallible>(r)
    }))
}

/// A distinct address per endpoint, 10.x.y.z.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

/// Our balancer over `n` endpoints, once they are all Ready. Call inside a runtime.
pub async fn ours(n: usize) -> Ours {
    let changes = (0..n).map(|i| Ok::<_, Infallible>(Change::Insert(addr(i), immediate())));
    let discover = stream::iter(changes.collect::<Vec<_>>()).chain(stream::pending());
    // Every endpoint connected, whatever the open-file limit: the default
    // cap (half the soft limit) would leave endpoints unconnected and this
    // wait would never end; immediate endpoints hold no descriptors.
    let lb: Ours = Balancer::builder().max_connected(n).build(discover);
    while lb.stats().len() < n || lb.stats().iter().any(|s| s.state != EndpointState::Ready) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    lb
}

/// tower's P2C behind a Buffer over `n` endpoints with peak-EWMA load
/// (30 ms default RTT, 10 s decay). Call inside a runtime.
pub fn theirs(n: usize) -> Theirs {
    let services = (0..n)
        .map(|_| {
            PeakEwma::new(
                immediate(),
                Duration::from_millis(30),
                10e9,
                CompleteOnResponse::default(),
            )
        })
        .collect::<Vec<_>>();
    Buffer::new(Balance::new(ServiceList::new(services)), 1024)
}
