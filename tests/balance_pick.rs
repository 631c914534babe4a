//! The random pair behind every pick.

use headless_lb::balance::pick_pair;
use proptest::prelude::*;

proptest! {
    #[test]
    fn pick_pair_is_two_distinct_indices_in_range(len in 2usize..100_000, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (a, b) = pick_pair(len, &mut rng);
        prop_assert_ne!(a, b);
        prop_assert!(a < len && b < len);
    }
}

#[test]
fn pick_pair_covers_both_orders_of_two() {
    let mut rng = fastrand::Rng::with_seed(7);
    let pairs: std::collections::HashSet<_> = (0..100).map(|_| pick_pair(2, &mut rng)).collect();
    assert_eq!(pairs.len(), 2, "{pairs:?}");
}
