//! One sample's check: the exact top-k by a full scan, and the served rows' recall@k.

use earshot_core::search::with_scratch;

use super::Sample;

/// Recall@k of the served rows against an exact scan of the sample's version under its
/// filter: the share of the exact top-k (or of every admissible row, when fewer) matched by
/// an admissible served row no farther than the exact k-th neighbour, so ties at the k-th distance are
/// not held against the walk. `None` when no row is admissible (nothing to measure).
///
/// The scan (`Graph::scan_all`: the 8-bit codes first, then the f32 rows the codes cannot
/// rule out) measures with the same kernels the walk re-ranks with, so a served row and its
/// exact twin have bit-identical distances.
pub(super) fn recall(s: &Sample) -> Option<f64> {
    let c = &*s.collection;
    let g = c.graph();
    let n = c.len() as u32;
    let mut exact = Vec::with_capacity(s.k);
    with_scratch(|scratch| {
        if s.filter.is_trivial() {
            g.scan_all(&s.query, s.k, |_| true, scratch, &mut exact)
        } else {
            g.scan_all(
                &s.query,
                s.k,
                |r| s.filter.accepts(c.into(), r),
                scratch,
                &mut exact,
            )
        }
    });
    let kth = exact.last()?.dist;
    let found = s
        .served
        .iter()
        .take(s.k)
        .filter(|&&r| r < n && s.filter.accepts(c.into(), r))
        .filter(|&&r| g.dist.distance(&s.query, g.vector(r)) <= kth)
        .count();
    Some(found.min(exact.len()) as f64 / exact.len() as f64)
}
