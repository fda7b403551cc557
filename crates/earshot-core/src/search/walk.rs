//! The HNSW walk, one for queries and for the builder (hnswlib's `searchBaseLayerST` and the
//! greedy descent above it). Generic over where the links come from ([`LinkSource`]) and how
//! rows are measured ([`Measure`]), so each use is compiled for its own pair.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::Drain;
use std::collections::BinaryHeap;

use super::links::{LinkSource, MAX_LEVEL0_DEGREE};
use super::measure::Measure;
use super::visited::Visited;

/// How many neighbours ahead of the one being measured have their vectors prefetched.
const PREFETCH_AHEAD: usize = 3;

/// One search result: internal distance (smaller is closer) and row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Internal distance to the query (smaller is closer).
    pub dist: f32,
    /// The row.
    pub row: u32,
}

impl Eq for Hit {}
impl Ord for Hit {
    #[inline]
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist
            .total_cmp(&o.dist)
            .then_with(|| self.row.cmp(&o.row))
    }
}
impl PartialOrd for Hit {
    #[inline]
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// The walk's state, reused from walk to walk: after warm-up a walk allocates nothing.
pub struct Beam {
    visited: Visited,
    /// Rows still to expand, closest first.
    candidates: BinaryHeap<Reverse<Hit>>,
    /// The best accepted rows so far, farthest on top.
    pub(super) top: BinaryHeap<Hit>,
    /// The expanded node's unvisited neighbours. Kept here rather than on the stack, where
    /// zeroing it cost a 1 KiB memset per expansion (3.5 % of a query's instructions at
    /// ef = 256, callgrind).
    fresh: Box<[u32]>,
    /// The links the descent is measuring, copied out first so that a builder's node lock
    /// is not held while they are measured.
    hop: Vec<u32>,
}

impl Default for Beam {
    fn default() -> Self {
        Self {
            visited: Visited::default(),
            candidates: BinaryHeap::new(),
            top: BinaryHeap::new(),
            fresh: vec![0; MAX_LEVEL0_DEGREE].into_boxed_slice(),
            hop: Vec::new(),
        }
    }
}

impl Beam {
    /// Starts afresh for a graph of `n` nodes: nothing visited, nothing found.
    pub fn reset(&mut self, n: usize) {
        self.visited.reset(n);
        self.candidates.clear();
        self.top.clear();
    }

    /// Marks `row` visited, so the walk never measures or returns it; false if it already was.
    #[inline(always)]
    pub fn visit(&mut self, row: u32) -> bool {
        self.visited.insert(row)
    }

    /// Greedy descent: on each of `levels` in turn (top first), moves from `from` to the
    /// closest neighbour until no neighbour is closer; returns where it stops.
    pub fn descend(
        &mut self,
        links: &impl LinkSource,
        from: Hit,
        levels: impl Iterator<Item = u32>,
        measure: &impl Measure,
    ) -> Hit {
        let n = links.node_count();
        let mut cur = from;
        for level in levels {
            loop {
                self.hop.clear();
                links.for_each_link(cur.row, level, |nb| self.hop.push(nb));
                let mut moved = false;
                for &nb in &self.hop {
                    if nb as usize >= n {
                        continue;
                    }
                    let d = measure.distance(nb);
                    if d < cur.dist {
                        cur = Hit { dist: d, row: nb };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        cur
    }

    /// Takes the rows the last walk found, in no particular order.
    pub fn drain(&mut self) -> Drain<'_, Hit> {
        self.top.drain()
    }

    /// The beam search of width `ef` on `level` from `entry` (call [`reset`](Self::reset)
    /// first); leaves up to `ef` rows that `accept` lets through for [`drain`](Self::drain).
    ///
    /// With `filtered` the walk keeps going past its distance bound until it holds `ef`
    /// accepted rows or runs out of graph, so a restrictive filter widens the search instead
    /// of returning a short list.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn walk(
        &mut self,
        links: &impl LinkSource,
        level: u32,
        entry: Hit,
        ef: usize,
        measure: &impl Measure,
        accept: &impl Fn(u32) -> bool,
        filtered: bool,
    ) {
        let n = links.node_count();
        self.visit(entry.row);
        self.candidates.push(Reverse(entry));
        if accept(entry.row) {
            self.top.push(entry);
        }
        let mut bound = self.top.peek().map_or(f32::INFINITY, |h| h.dist);
        while let Some(Reverse(c)) = self.candidates.pop() {
            if c.dist > bound && (self.top.len() >= ef || !filtered) {
                break;
            }
            // The next candidate's link block lives apart from its vector: fetch it now,
            // while this candidate's neighbours are measured.
            if let Some(Reverse(next)) = self.candidates.peek() {
                links.prefetch_links(next.row, level);
            }
            // Gather the unvisited neighbours first so their vectors can be prefetched a few
            // steps ahead of the distance computations that read them.
            let (fresh, mut visited) = (&mut self.fresh, self.visited.marker());
            let mut n_fresh = 0;
            links.for_each_link(c.row, level, |nb| {
                if n_fresh < fresh.len() && (nb as usize) < n && visited.insert(nb) {
                    fresh[n_fresh] = nb;
                    n_fresh += 1;
                }
            });
            let fresh = &self.fresh[..n_fresh];
            for &nb in fresh.iter().take(PREFETCH_AHEAD) {
                measure.prefetch(nb);
            }
            for (i, &nb) in fresh.iter().enumerate() {
                if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                    measure.prefetch(ahead);
                }
                let d = measure.distance(nb);
                if self.top.len() < ef || d < bound {
                    self.candidates.push(Reverse(Hit { dist: d, row: nb }));
                    if accept(nb) {
                        self.top.push(Hit { dist: d, row: nb });
                        if self.top.len() > ef {
                            self.top.pop();
                        }
                    }
                    if let Some(h) = self.top.peek() {
                        bound = h.dist;
                    }
                }
            }
        }
    }
}

/// hnswlib's `getNeighborsByHeuristic2`, shared by the builder and the write log's
/// [`Overlay`](super::Overlay): from `sorted` (closest first, distances to the base point)
/// keep a candidate only if it is closer to the base than to every one kept so far, up to
/// `max` — links that spread in different directions. Pruned candidates are not used to fill
/// the list up (tried under inner product: Last.fm recall then stalled at 0.993 for every
/// ef ≥ 64, against 1.000 without). `between(a, b)` is the exact distance of two rows.
pub fn select_neighbours(
    sorted: &[Hit],
    max: usize,
    out: &mut Vec<Hit>,
    between: impl Fn(u32, u32) -> f32,
) {
    out.clear();
    if sorted.len() <= max {
        out.extend_from_slice(sorted);
        return;
    }
    for &c in sorted {
        if out.len() >= max {
            break;
        }
        if out.iter().all(|k| between(c.row, k.row) >= c.dist) {
            out.push(c);
        }
    }
}
