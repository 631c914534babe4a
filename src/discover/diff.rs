//! The difference between two endpoint sets, as the changes a `Discover` emits.

use std::collections::BTreeSet;
use std::net::SocketAddr;

/// What changed between two endpoint sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDiff {
    /// Endpoints in the old set and not in the new one, in address order.
    pub removed: Vec<SocketAddr>,
    /// Endpoints in the new set and not in the old one, in address order.
    pub inserted: Vec<SocketAddr>,
}

// ===== impl SetDiff =====

impl SetDiff {
    /// Compares `old` with `new`.
    ///
    /// Costs one merge walk over both sorted sets: O(old + new), no allocation
    /// beyond the two result vectors.
    pub fn between(old: &BTreeSet<SocketAddr>, new: &BTreeSet<SocketAddr>) -> SetDiff {
        let mut diff = SetDiff::default();
        let mut olds = old.iter().peekable();
        let mut news = new.iter().peekable();
        loop {
            match (olds.peek(), news.peek()) {
                (Some(o), Some(n)) => match o.cmp(n) {
                    std::cmp::Ordering::Less => diff.removed.push(*olds.next().expect("peeked")),
                    std::cmp::Ordering::Greater => {
                        diff.inserted.push(*news.next().expect("peeked"))
                    }
                    std::cmp::Ordering::Equal => {
                        olds.next();
                        news.next();
                    }
                },
                (Some(_), None) => diff.removed.extend(olds.by_ref().copied()),
                (None, Some(_)) => diff.inserted.extend(news.by_ref().copied()),
                (None, None) => return diff,
            }
        }
    }

    /// True when the sets were equal.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.inserted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn reports_removed_and_inserted_in_order() {
        let d = SetDiff::between(&set(&[1, 2, 3, 5]), &set(&[2, 4, 5, 6]));
        assert_eq!(d.removed, set(&[1, 3]).into_iter().collect::<Vec<_>>());
        assert_eq!(d.inserted, set(&[4, 6]).into_iter().collect::<Vec<_>>());
        assert!(SetDiff::between(&set(&[1, 2]), &set(&[1, 2])).is_empty());
    }
}
