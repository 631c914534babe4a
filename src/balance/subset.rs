//! Deterministic subsetting: which of a service's pods one client balances over.
//!
//! A client of a headless service connects to every pod. With many clients
//! and many pods that is clients × pods connections; [`Subset`] bounds it to
//! clients × `size`. Two rules, chosen by what the client knows about itself:
//!
//! - **By name** ([`ClientIdentity::Name`], the default: the `HOSTNAME`
//!   environment variable Kubernetes sets to the pod's name). Rendezvous
//!   hashing (highest random weight: D. Thaler and C. Ravishankar, "Using
//!   name-based mappings to increase hit rates", IEEE/ACM ToN 1998), the rule
//!   of gRPC's `random_subsetting` (gRFC A68): every pod gets a score
//!   `hash(client, pod)` and the client takes the `size` highest. A pod that
//!   joins or leaves changes only the subsets it enters or leaves, by one
//!   member each. Clients choose independently, so a pod's number of clients
//!   is binomial: at 1 000 clients × 1 000 pods × 20 the busiest pod has
//!   about 1.7 × the mean.
//! - **By ordinal** ([`ClientIdentity::Ordinal`]: this client is number `i`
//!   of `n`, e.g. a StatefulSet's ordinal and replica count). A Maglev table
//!   (D. Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//!   Balancer", NSDI 2016, section 3.4) with one entry per slot, `n × size`
//!   rounded up to a prime `m`: pods take turns claiming the next free entry
//!   of their own permutation of the table, so every pod holds ⌊m/pods⌋ or
//!   ⌈m/pods⌉ entries, and client `i` takes the pods of entries `i`,
//!   `i + n`, `i + 2n`, … Every client computes the same table, so the
//!   number of clients per pod is within one of the mean (a pod twice in a
//!   row is used once: the row is one shorter). A pod joining or leaving
//!   moves the entries it gains or loses and, through the turn order, a
//!   few more. The cost is one table per change of the pod set (`m` entries,
//!   a few milliseconds at 20 000); past 4 Mi entries the rule falls back to
//!   rendezvous on the ordinal.
//!
//! Bounded-load rendezvous (V. Mirrokni, M. Thorup, M. Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", SODA 2018) balanced as well but
//! moved about three times as many members per scale event and cost
//! `O(n × pods)` per change; `BENCHMARKS.md` has the simulation
//! (`examples/simulate.rs`) that measured the three.
//!
//! The hash is fixed (FNV-1a over the identity, then a SplitMix64 finaliser
//! mixed with the pod's address bytes), so clients built from different
//! versions of Rust agree on every subset.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// How a client identifies itself for [`Subset`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ClientIdentity {
    /// A name unique to this client (its pod's name by default): subsets by
    /// rendezvous hashing, independent of the other clients.
    Name(String),
    /// This client is number `index` of `count` clients that share the
    /// service: coordinated subsets, every pod within one client of the
    /// mean. Build with [`ClientIdentity::ordinal`].
    Ordinal {
        /// This client's number, `0..count`.
        index: u32,
        /// How many clients there are.
        count: u32,
    },
}

/// A [`ClientIdentity::ordinal`] whose index is not below its count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subset client ordinal {index} is not below the client count {count}")]
pub struct OrdinalError {
    /// The index given.
    pub index: u32,
    /// The count given.
    pub count: u32,
}

/// Which pods a client balances over: at most `size` of them, chosen
/// deterministically from the client's [`ClientIdentity`] and the pod set
/// (see the module documentation for the two rules).
///
/// ```
/// use std::net::SocketAddr;
/// use headless_lb::balance::{ClientIdentity, Subset};
///
/// let pods: Vec<SocketAddr> = (1..=100).map(|i| format!("10.0.0.{i}:80").parse().unwrap()).collect();
/// let subset = Subset::new(10).identity(ClientIdentity::ordinal(3, 50).unwrap());
/// let members = subset.members(&pods);
/// assert_eq!(members.len(), 10);
/// assert_eq!(members, subset.members(&pods)); // the same answer every time
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Subset {
    size: usize,
    identity: ClientIdentity,
}

// ===== impl ClientIdentity =====

impl ClientIdentity {
    /// Client `index` of `count`; fails unless `index < count`.
    pub fn ordinal(index: u32, count: u32) -> Result<Self, OrdinalError> {
        if index >= count {
            return Err(OrdinalError { index, count });
        }
        Ok(Self::Ordinal { index, count })
    }

    /// This process's name: `$HOSTNAME` (a pod's name in Kubernetes), else
    /// `/etc/hostname`, else a random name (subsets are then random per process).
    pub fn hostname() -> Self {
        let from_env = std::env::var("HOSTNAME").ok();
        let from_file = || {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        };
        match from_env.filter(|s| !s.is_empty()).or_else(from_file) {
            Some(name) if !name.is_empty() => Self::Name(name),
            _ => Self::Name(format!("random-{:016x}", fastrand::u64(..))),
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "Name({name:?})"),
            Self::Ordinal { index, count } => write!(f, "Ordinal({index} of {count})"),
        }
    }
}

// ===== impl Subset =====

impl Subset {
    /// At most `size` pods (at least 1), identified by
    /// [`ClientIdentity::hostname`].
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            identity: ClientIdentity::hostname(),
        }
    }

    /// Identifies this client by `identity` [the hostname].
    pub fn identity(mut self, identity: ClientIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// The most pods a client balances over.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The client's identity.
    pub fn client_identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// This client's members of `pods`, sorted by address: all of them when
    /// there are at most [`size`](Self::size). Duplicates in `pods` count once;
    /// the order of `pods` does not matter.
    pub fn members(&self, pods: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut pods = pods.to_vec();
        pods.sort_unstable();
        pods.dedup();
        if pods.len() <= self.size {
            return pods;
        }
        let keys: Vec<u64> = pods.iter().map(pod_key).collect();
        let chosen = match &self.identity {
            ClientIdentity::Name(name) => top_by_score(name_key(name), &keys, self.size),
            ClientIdentity::Ordinal { index, count }
                if (*count as usize).saturating_mul(self.size) > MAX_TABLE =>
            {
                // A table this large would cost more memory and time than
                // the subset saves: choose by rendezvous on the ordinal.
                top_by_score(name_key(&format!("ordinal-{index}")), &keys, self.size)
            }
            ClientIdentity::Ordinal { index, count } => {
                Maglev::shared(&keys, *count, self.size).row(*index)
            }
        };
        let mut members: Vec<_> = chosen.into_iter().map(|i| pods[i]).collect();
        members.sort_unstable();
        members
    }
}

impl fmt::Debug for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subset")
            .field("size", &self.size)
            .field("identity", &self.identity)
            .finish()
    }
}

/// The ordinal rule's table: one entry per (client, member) slot, filled
/// by Maglev's rule, so that every pod holds ⌊m/N⌋ or ⌈m/N⌉ entries.
struct Maglev {
    /// Pod index per entry.
    entry: Vec<usize>,
    /// How many pods the table was built over.
    pods: usize,
    clients: usize,
    size: usize,
}

/// The last table built in this process, by a digest of what built it:
/// clients of one service in one process (tests, simulations, one client
/// per tenant) then build each table once rather than once each.
static LAST_TABLE: Mutex<Option<(u64, Arc<Maglev>)>> = Mutex::new(None);

impl Maglev {
    fn shared(keys: &[u64], clients: u32, size: usize) -> Arc<Self> {
        let digest = keys.iter().fold(
            splitmix64(u64::from(clients) ^ splitmix64(size as u64)),
            |d, &k| splitmix64(d ^ k),
        );
        if let Some((d, table)) = &*lock(&LAST_TABLE)
            && *d == digest
            && table.pods == keys.len()
        {
            return table.clone();
        }
        let table = Arc::new(Self::new(keys, clients, size));
        *lock(&LAST_TABLE) = Some((digest, table.clone()));
        table
    }

    /// Fills a table of `m` entries (the first prime ≥ clients × size):
    /// pods take turns (in an order of their own hash, not their address),
    /// each taking the next free entry of its own permutation of the table
    /// (`offset + j × skip mod m`), until every entry is taken.
    fn new(keys: &[u64], clients: u32, size: usize) -> Self {
        let clients = clients as usize;
        let m = next_prime(clients.saturating_mul(size).max(2));
        let m64 = m as u64;
        const FREE: usize = usize::MAX;
        let mut entry = vec![FREE; m];
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| (splitmix64(keys[i] ^ TURN), i));
        let perm: Vec<(u64, u64)> = keys
            .iter()
            .map(|&k| {
                let offset = splitmix64(k ^ OFFSET) % m64;
                let skip = splitmix64(k ^ SKIP) % (m64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; keys.len()];
        let mut filled = 0;
        // m is prime and 0 < skip < m, so a pod's permutation visits every
        // entry: each turn ends, and the table fills.
        'fill: loop {
            for &p in &order {
                let (offset, skip) = perm[p];
                loop {
                    let c = ((offset + next[p] % m64 * skip) % m64) as usize;
                    next[p] += 1;
                    if entry[c] == FREE {
                        entry[c] = p;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self {
            entry,
            pods: keys.len(),
            clients,
            size,
        }
    }

    /// Client `index`'s pods: the distinct pods of entries `index`,
    /// `index + clients`, …, `size` entries in all. A pod twice in the row
    /// counts once (the row is then shorter) rather than taking an entry of
    /// another client's, which would give that pod one client too many.
    fn row(&self, index: u32) -> Vec<usize> {
        let mut row = Vec::with_capacity(self.size);
        for j in 0..self.size {
            let pod = self.entry[(index as usize + j * self.clients) % self.entry.len()];
            if !row.contains(&pod) {
                row.push(pod);
            }
        }
        row
    }
}

/// The most entries an ordinal table may have (32 MiB of indices); past it
/// the ordinal rule falls back to rendezvous hashing.
const MAX_TABLE: usize = 1 << 22;

const TURN: u64 = 0x7475_726e;
const OFFSET: u64 = 0x6f66_6673;
const SKIP: u64 = 0x736b_6970;

fn next_prime(mut n: usize) -> usize {
    let is_prime = |n: usize| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// The `size` highest-scored of `keys` for a client (indices).
fn top_by_score(seed: u64, keys: &[u64], size: usize) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (score(seed, k), i))
        .collect();
    if size < scored.len() {
        scored.select_nth_unstable_by(size - 1, |a, b| b.cmp(a));
        scored.truncate(size);
    }
    scored.into_iter().map(|(_, i)| i).collect()
}

/// A pod's rendezvous weight for a client.
fn score(client: u64, pod: u64) -> u64 {
    splitmix64(client ^ splitmix64(pod))
}

fn name_key(name: &str) -> u64 {
    splitmix64(fnv1a(name.as_bytes()))
}

fn pod_key(addr: &SocketAddr) -> u64 {
    let mut bytes = [0u8; 18];
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    bytes[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    fnv1a(&bytes[..len + 2])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn small_sets_are_whole_and_order_free() {
        let p = pods(5);
        let s = Subset::new(10).identity(ClientIdentity::Name("a".into()));
        assert_eq!(s.members(&p), p);
        let s = Subset::new(3).identity(ClientIdentity::Name("a".into()));
        let mut reversed = p.clone();
        reversed.reverse();
        reversed.push(p[0]);
        assert_eq!(s.members(&p), s.members(&reversed));
        assert_eq!(s.members(&p).len(), 3);
    }

    #[test]
    fn ordinal_error_names_both_numbers() {
        let e = ClientIdentity::ordinal(5, 5).unwrap_err();
        assert_eq!(e, OrdinalError { index: 5, count: 5 });
        assert!(e.to_string().contains("5 is not below the client count 5"));
        assert!(ClientIdentity::ordinal(4, 5).is_ok());
    }

    fn ordinal_counts(clients: u32, size: usize, p: &[SocketAddr]) -> Vec<u32> {
        let mut counts = vec![0u32; p.len()];
        for c in 0..clients {
            let members = Subset::new(size)
                .identity(ClientIdentity::ordinal(c, clients).unwrap())
                .members(p);
            assert!(
                members.len() <= size && members.len() >= size - 2,
                "{members:?}"
            );
            for m in members {
                counts[p.binary_search(&m).unwrap()] += 1;
            }
        }
        counts
    }

    #[test]
    fn ordinal_subsets_give_every_pod_its_share_of_table_entries() {
        // 200 × 10 = 2 000 slots; the table has 2 003 (prime) entries over
        // 400 pods: 5 or 6 each.
        let p = pods(400);
        let counts = ordinal_counts(200, 10, &p);
        let max = *counts.iter().max().unwrap();
        assert!(max <= 6, "max {max}");
        let mean = f64::from(counts.iter().sum::<u32>()) / 400.0;
        assert!(mean > 4.8, "mean {mean}");
    }

    #[test]
    fn ordinal_subsets_with_fewer_slots_than_pods_never_share_a_pod() {
        let p = pods(500);
        let counts = ordinal_counts(20, 10, &p);
        assert!(counts.iter().all(|&c| c <= 1));
        assert!(counts.iter().sum::<u32>() >= 190);
    }

    #[test]
    fn huge_ordinal_tables_fall_back_to_rendezvous() {
        let p = pods(1000);
        let s = Subset::new(500).identity(ClientIdentity::ordinal(3, 100_000).unwrap());
        let named = Subset::new(500).identity(ClientIdentity::Name("ordinal-3".into()));
        assert_eq!(s.members(&p), named.members(&p));
    }

    #[test]
    fn names_spread_like_random_choices() {
        let p = pods(1000);
        let mut counts = vec![0u32; p.len()];
        for c in 0..1000 {
            let s = Subset::new(20).identity(ClientIdentity::Name(format!("client-{c}")));
            for m in s.members(&p) {
                counts[p.binary_search(&m).unwrap()] += 1;
            }
        }
        let max = *counts.iter().max().unwrap();
        // Binomial(1000, 0.02): mean 20; the busiest of 1000 pods lies near 34.
        assert!((28..=45).contains(&max), "max {max}");
    }

    #[test]
    fn a_leaving_pod_moves_only_its_own_members_by_name() {
        let p = pods(200);
        let gone = p[77];
        let rest: Vec<_> = p.iter().copied().filter(|&a| a != gone).collect();
        for c in 0..100 {
            let s = Subset::new(10).identity(ClientIdentity::Name(format!("c{c}")));
            let before = s.members(&p);
            let after = s.members(&rest);
            let kept = before.iter().filter(|a| after.contains(a)).count();
            if before.contains(&gone) {
                assert_eq!(kept, 9);
            } else {
                assert_eq!(before, after);
            }
        }
    }
}
