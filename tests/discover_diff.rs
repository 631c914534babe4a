//! Property: the changes `SetDiff` reports always transform the old set into the new one.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use headless_lb::discover::SetDiff;
use proptest::prelude::*;

fn set() -> impl Strategy<Value = BTreeSet<SocketAddr>> {
    // A small address space, so that consecutive sets overlap a lot.
    proptest::collection::btree_set(
        (0u8..24, prop_oneof![Just(80u16), Just(8080)])
            .prop_map(|(host, port)| SocketAddr::from(([10, 0, 0, host], port))),
        0..20,
    )
}

proptest! {
    #[test]
    fn applying_the_diff_turns_each_set_into_the_next(sets in proptest::collection::vec(set(), 1..12)) {
        let mut current = BTreeSet::new();
        for next in sets {
            let diff = SetDiff::between(&current, &next);
            prop_assert_eq!(diff.is_empty(), current == next);
            for addr in &diff.removed {
                prop_assert!(current.remove(addr), "removed {} that was not there", addr);
            }
            for addr in &diff.inserted {
                prop_assert!(current.insert(*addr), "inserted {} that was there", addr);
            }
            prop_assert_eq!(&current, &next);
            // Sorted and duplicate-free, as the stream emits them.
            prop_assert!(diff.removed.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(diff.inserted.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
