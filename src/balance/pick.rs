//! The power-of-two-choices pick: a pure pair generator and the load comparison.

use std::sync::Arc;

use tokio::time::Instant;

use super::endpoint::Endpoint;

/// How many random pairs a pick draws before it scans for a pickable endpoint.
///
/// A pair can hit an endpoint that a request marked unhealthy after the
/// snapshot was published; the next snapshot drops it, meanwhile a few more
/// draws almost always find a good one.
const DRAWS: usize = 4;

/// Two distinct random indices in `0..len`, in random order.
///
/// Cost: two calls to the RNG, whatever `len` is. This is linkerd2-proxy's
/// `gen_pair`: draw `a` from `0..len` and `b` from the `len - 1` others.
///
/// # Panics
///
/// If `len < 2`.
pub(crate) fn pick_pair(len: usize, rng: &mut fastrand::Rng) -> (usize, usize) {
    assert!(
        len >= 2,
        "pick_pair needs at least two candidates, got {len}"
    );
    let a = rng.usize(..len);
    let mut b = rng.usize(..len - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Picks the less loaded of two random endpoints among `candidates` that
/// `pickable` accepts (by state, and for a hedge by address), their loads
/// read at `now`; O(1) unless most candidates went stale or are excluded.
///
/// `pickable` is a generic closure, not a function pointer, so that the
/// common pick (by state alone) compiles to the same code as a plain state
/// check.
pub(crate) fn p2c<S>(
    candidates: &[Arc<Endpoint<S>>],
    pickable: impl Fn(&Endpoint<S>) -> bool,
    now: Instant,
) -> Option<&Arc<Endpoint<S>>> {
    let ok = |e: &Arc<Endpoint<S>>| pickable(e);
    match candidates.len() {
        0 => None,
        1 => candidates.first().filter(|e| ok(e)),
        len => {
            let mut rng = fastrand::Rng::new();
            for _ in 0..DRAWS {
                let (a, b) = pick_pair(len, &mut rng);
                let (ea, eb) = (&candidates[a], &candidates[b]);
                match (ok(ea), ok(eb)) {
                    (true, true) => {
                        let (chosen, ca, cb) = Endpoint::choose(ea, eb, now);
                        let chosen = if std::ptr::eq(chosen, &**ea) { ea } else { eb };
                        tracing::trace!(
                            a.endpoint = %ea.addr,
                            a.cost = ca,
                            b.endpoint = %eb.addr,
                            b.cost = cb,
                            chosen = %chosen.addr,
                            "p2c",
                        );
                        return Some(chosen);
                    }
                    (true, false) => return Some(ea),
                    (false, true) => return Some(eb),
                    (false, false) => {}
                }
            }
            candidates.iter().find(|e| ok(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick_pair;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pick_pair_is_two_distinct_indices_in_range(len in 2usize..100_000, seed: u64) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (a, b) = pick_pair(len, &mut rng);
            prop_assert!(a < len && b < len && a != b);
        }
    }

    #[test]
    fn pick_pair_covers_both_orders_of_two() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pairs: std::collections::HashSet<_> =
            (0..100).map(|_| pick_pair(2, &mut rng)).collect();
        assert_eq!(pairs.len(), 2, "{pairs:?}");
    }
}
