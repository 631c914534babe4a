//! Following discovery's endpoint set with one value per address: shared by
//! `loadgen`'s round-robin and random baselines and by `benches/peers.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use headless_lb::Discovery;

/// Runs until discovery ends: keeps one value per listed address, made by
/// `make` when the address appears and reused (with its connections) while it
/// stays, and hands every new set of them to `publish`.
pub async fn follow<V>(
    discovery: Discovery,
    mut make: impl FnMut(SocketAddr) -> V,
    mut publish: impl FnMut(&BTreeMap<SocketAddr, V>),
) {
    let mut sets = discovery.watch();
    let mut current: BTreeMap<SocketAddr, V> = BTreeMap::new();
    loop {
        let set = sets.borrow_and_update().clone();
        current.retain(|addr, _| set.contains(addr));
        for addr in set.iter() {
            current.entry(*addr).or_insert_with(|| make(*addr));
        }
        publish(&current);
        if sets.changed().await.is_err() {
            return;
        }
    }
}
