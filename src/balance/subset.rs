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
//!   of `n`, e.g. a StatefulSet's ordinal and replica count). The same
//!   scores with bounded loads (V. Mirrokni, M. Thorup, M. Zadimoghaddam,
//!   "Consistent Hashing with Bounded Loads", SODA 2018): clients `0..n`
//!   take their pods in turn, each its highest-scored pods that have fewer
//!   than `cap = ⌈1.1 × n × size / pods⌉` clients so far (at least one more
//!   than the mean). Every client computes the same table, so no pod has
//!   more than `cap` clients, and a pod joining or leaving moves few
//!   members (most pods stay under their cap, so a change rarely cascades).
//!   Computing it costs `O(i × pods)` score evaluations per change of the
//!   pod set (about 10⁶ at 1 000 × 1 000).
//!
//! The hash is fixed (FNV-1a over the identity, then a SplitMix64 finaliser
//! mixed with the pod's address bytes), so clients built from different
//! versions of Rust agree on every subset. `BENCHMARKS.md` has the
//! simulation (`examples/simulate.rs`) that measured the rules.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// How a client identifies itself for [`Subset`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ClientIdentity {
    /// A name unique to this client (its pod's name by default): subsets by
    /// rendezvous hashing, independent of the other clients.
    Name(String),
    /// This client is number `index` of `count` clients that share the
    /// service: coordinated subsets, every pod within 10 % of the mean
    /// number of clients. Build with [`ClientIdentity::ordinal`].
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

/// How far above the mean a pod's number of clients may go under
/// [`ClientIdentity::Ordinal`]: a tenth.
const ORDINAL_SLACK: f64 = 1.1;

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
            ClientIdentity::Ordinal { index, count } => {
                let mut table = Ordinal::new(&keys, *count, self.size);
                for client in 0..*index {
                    table.assign(client);
                }
                table.assign(*index)
            }
        };
        let mut members: Vec<_> = chosen.into_iter().map(|i| pods[i]).collect();
        members.sort_unstable();
        members
    }

    /// Every client's members of `pods` under the ordinal rule, as indices
    /// into `pods` sorted and deduplicated: the whole table that
    /// [`members`](Self::members) computes part of. For the simulation and
    /// for checking a deployment's spread; the identity is ignored.
    #[doc(hidden)]
    pub fn ordinal_table(size: usize, clients: u32, pods: &[SocketAddr]) -> Vec<Vec<usize>> {
        let size = size.max(1);
        let mut pods = pods.to_vec();
        pods.sort_unstable();
        pods.dedup();
        if pods.len() <= size {
            return (0..clients).map(|_| (0..pods.len()).collect()).collect();
        }
        let keys: Vec<u64> = pods.iter().map(pod_key).collect();
        let mut table = Ordinal::new(&keys, clients, size);
        (0..clients).map(|c| table.assign(c)).collect()
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

/// The bounded-load table of the ordinal rule, filled client by client.
struct Ordinal<'a> {
    keys: &'a [u64],
    size: usize,
    cap: u32,
    loads: Vec<u32>,
    scored: Vec<(u64, usize)>,
}

impl<'a> Ordinal<'a> {
    fn new(keys: &'a [u64], clients: u32, size: usize) -> Self {
        let mean = f64::from(clients) * size as f64 / keys.len() as f64;
        // At least one above the mean: with a cap at the mean itself every
        // pod fills up and a change cascades through every later client.
        let cap = ((mean * ORDINAL_SLACK).ceil() as u32).max(mean.floor() as u32 + 1);
        Self {
            keys,
            size,
            cap,
            loads: vec![0; keys.len()],
            scored: Vec::with_capacity(keys.len()),
        }
    }

    /// Client `client`'s pods (indices): its highest-scored pods under the cap.
    fn assign(&mut self, client: u32) -> Vec<usize> {
        let seed = ordinal_key(client);
        self.scored.clear();
        self.scored.extend(
            self.keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (score(seed, k), i)),
        );
        let mut chosen = Vec::with_capacity(self.size);
        // Rank lazily: the top few usually suffice, the whole list only when
        // most of the top pods are full.
        let mut ranked = 0;
        let mut window = (self.size * 2).min(self.scored.len());
        while chosen.len() < self.size && ranked < self.scored.len() {
            let rest = &mut self.scored[ranked..];
            let take = window.min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, |a, b| b.cmp(a));
            }
            rest[..take].sort_unstable_by(|a, b| b.cmp(a));
            for &(_, i) in &rest[..take] {
                if chosen.len() < self.size && self.loads[i] < self.cap {
                    chosen.push(i);
                }
            }
            ranked += take;
            window *= 2;
        }
        // Every pod full (possible only with rounding at tiny sizes): take the
        // highest-scored regardless, so that the subset is never short.
        if chosen.len() < self.size {
            self.scored.sort_unstable_by(|a, b| b.cmp(a));
            for &(_, i) in &self.scored {
                if chosen.len() == self.size {
                    break;
                }
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
        }
        for &i in &chosen {
            self.loads[i] += 1;
        }
        chosen
    }
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

fn ordinal_key(index: u32) -> u64 {
    // A different stream than names, so that "0" and ordinal 0 differ.
    splitmix64(fnv1a(&index.to_be_bytes()) ^ 0x6f72_6469_6e61_6c00)
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

    fn loads(table: &[Vec<usize>], pods: usize) -> Vec<u32> {
        let mut loads = vec![0; pods];
        for row in table {
            for &i in row {
                loads[i] += 1;
            }
        }
        loads
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

    #[test]
    fn ordinal_members_are_rows_of_the_table() {
        let p = pods(300);
        let table = Subset::ordinal_table(7, 40, &p);
        for index in [0, 1, 17, 39] {
            let s = Subset::new(7).identity(ClientIdentity::ordinal(index, 40).unwrap());
            let mut row: Vec<_> = table[index as usize].iter().map(|&i| p[i]).collect();
            row.sort_unstable();
            assert_eq!(s.members(&p), row);
        }
    }

    #[test]
    fn ordinal_loads_stay_under_the_cap() {
        let p = pods(1000);
        let table = Subset::ordinal_table(20, 1000, &p);
        assert!(table.iter().all(|row| row.len() == 20));
        let loads = loads(&table, p.len());
        let max = *loads.iter().max().unwrap();
        // mean 20, cap ⌈22⌉.
        assert!(max <= 22, "max {max}");
        assert!(loads.iter().all(|&l| l > 0));
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
