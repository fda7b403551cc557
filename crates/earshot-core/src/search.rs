//! HNSW search over the flat, memory-mapped graph (the hnswlib algorithm).
//!
//! Level 0: `n` fixed-size blocks `[count, link_0 .. link_{d0-1}]` of u32.
//! Upper levels: blocks `[count, links ..]` of `1 + d` u32; node `v`'s block for level `l ≥ 1`
//! is `upper_start[v] + l - 1`. Search state lives in a per-thread [`Scratch`] that is reused,
//! so a query allocates nothing once the thread has warmed up.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::distance::DistanceFn;
use crate::format::NONE_U32;
use crate::metric::Metric;
use crate::quant::PreparedQuery;

/// Level-0 degrees above this are cut at build time (m ≤ 128 ⇒ 2·m ≤ 256).
pub const MAX_LEVEL0_DEGREE: usize = 256;
/// How many neighbours ahead of the one being measured have their vectors prefetched.
const PREFETCH_AHEAD: usize = 3;
/// How many rows ahead the exact re-ranking prefetches f32 vectors.
const RERANK_AHEAD: usize = 2;

/// A borrowed view of one collection's graph and vectors.
#[derive(Clone, Copy)]
pub struct Graph<'a> {
    pub vectors: &'a [f32],
    pub dim: usize,
    pub level0: &'a [u32],
    pub level0_degree: usize,
    pub upper: &'a [u32],
    pub upper_degree: usize,
    pub upper_start: &'a [u32],
    pub entry_point: u32,
    pub max_level: u32,
    pub dist: DistanceFn,
    /// 8-bit codes for the walk (exact f32 re-ranking at the end), when the collection has them.
    pub quant: Option<Quantized<'a>>,
}

/// A collection's 8-bit vectors (see `quant`).
#[derive(Clone, Copy)]
pub struct Quantized<'a> {
    pub codes: &'a [i8],
    pub scale: &'a [f32],
    pub offset: &'a [f32],
    pub sqnorms: &'a [f32],
    pub metric: Metric,
}

/// One search result: internal distance (smaller is closer) and row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub dist: f32,
    pub row: u32,
}

impl Eq for Hit {}
impl Ord for Hit {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist
            .total_cmp(&o.dist)
            .then_with(|| self.row.cmp(&o.row))
    }
}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Which rows a walk has seen: one epoch tag per row, so starting a new walk is one
/// increment instead of clearing `n` flags (hnswlib's visited-list pool).
#[derive(Default)]
pub struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    /// Forgets every row, for a graph of `n` rows.
    pub fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|v| *v = 0);
            self.epoch = 1;
        }
    }

    /// Marks `row` visited; returns false if it already was.
    #[inline(always)]
    pub fn insert(&mut self, row: u32) -> bool {
        let slot = &mut self.marks[row as usize];
        if *slot == self.epoch {
            false
        } else {
            *slot = self.epoch;
            true
        }
    }
}

/// Reusable per-thread search state.
#[derive(Default)]
pub struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Reverse<Hit>>,
    top: BinaryHeap<Hit>,
    prepared: PreparedQuery,
}

impl Scratch {
    fn reset(&mut self, n: usize) {
        self.visited.reset(n);
        self.candidates.clear();
        self.top.clear();
    }

    /// Marks `row` visited; returns false if it already was.
    #[inline(always)]
    fn visit(&mut self, row: u32) -> bool {
        self.visited.insert(row)
    }
}

/// Prefetches `data[start..start + len]` into cache: with 384-d vectors a distance reads 24
/// cache lines, and the walk is bound by those misses, not by arithmetic. Out-of-range
/// positions are harmless (a prefetch is only a hint and never faults).
#[inline(always)]
pub fn prefetch_range<T>(data: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let size = std::mem::size_of::<T>();
        let p = data.as_ptr().wrapping_add(start) as *const i8;
        let mut off = 0;
        while off < len * size {
            // SAFETY: _mm_prefetch never dereferences or faults; SSE is baseline on x86_64.
            unsafe { _mm_prefetch(p.wrapping_add(off), _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch space.
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

impl<'a> Graph<'a> {
    pub fn len(&self) -> usize {
        self.upper_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    pub fn vector(&self, row: u32) -> &'a [f32] {
        let start = row as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// Links of `row` on `level`; empty if the block is missing or damaged.
    #[inline(always)]
    fn links(&self, row: u32, level: u32) -> &'a [u32] {
        let block = if level == 0 {
            let stride = 1 + self.level0_degree;
            self.level0
                .get(row as usize * stride..(row as usize + 1) * stride)
        } else {
            let start = self.upper_start[row as usize];
            if start == NONE_U32 {
                return &[];
            }
            let stride = 1 + self.upper_degree;
            let b = start as usize + level as usize - 1;
            self.upper.get(b * stride..(b + 1) * stride)
        };
        match block {
            Some(b) => {
                let count = (b[0] as usize).min(b.len() - 1);
                &b[1..1 + count]
            }
            None => &[],
        }
    }

    /// Greedy descent through the upper levels to the best entry for level 0.
    fn descend(&self, dist: &impl Fn(u32) -> f32) -> Hit {
        let mut cur = self.entry_point;
        let mut cur_d = dist(cur);
        for level in (1..=self.max_level).rev() {
            let mut changed = true;
            while changed {
                changed = false;
                for &nb in self.links(cur, level) {
                    if nb as usize >= self.len() {
                        continue;
                    }
                    let d = dist(nb);
                    if d < cur_d {
                        cur_d = d;
                        cur = nb;
                        changed = true;
                    }
                }
            }
        }
        Hit {
            dist: cur_d,
            row: cur,
        }
    }

    /// The `k` nearest rows to `query` that `accept` lets through, best first, appended to `out`.
    ///
    /// `ef` is the beam width (raised to `k`). With a filter the search keeps walking until it
    /// holds `ef` accepted rows or runs out of graph, so restrictive filters widen the search
    /// instead of returning short lists. With 8-bit codes the walk measures approximate
    /// distances and the `ef` survivors are re-ranked with the exact f32 vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        filtered: bool,
        scratch: &mut Scratch,
        out: &mut Vec<Hit>,
    ) {
        if self.is_empty() || k == 0 {
            return;
        }
        let ef = ef.max(k);
        let start = out.len();
        match self.quant {
            Some(q8) => {
                let mut pq = std::mem::take(&mut scratch.prepared);
                pq.prepare(query, q8.scale, q8.offset);
                let dim = self.dim;
                let l2 = q8.metric == Metric::L2;
                let dist = |row: u32| {
                    let r = row as usize;
                    // Only l2 needs ‖x‖²: reading it otherwise costs a cache miss per distance.
                    let norm2 = if l2 { q8.sqnorms[r] } else { 0.0 };
                    pq.distance(q8.metric, &q8.codes[r * dim..(r + 1) * dim], norm2)
                };
                let prefetch = |row: u32| prefetch_range(q8.codes, row as usize * dim, dim);
                self.walk(&dist, &prefetch, ef, &accept, filtered, scratch);
                // Exact re-ranking of the beam's survivors. Their f32 rows are cold (the walk
                // read only codes), so each is prefetched a few rows ahead of its distance.
                out.extend(scratch.top.drain());
                let fetch = |h: &Hit| prefetch_range(self.vectors, h.row as usize * dim, dim);
                out[start..].iter().take(RERANK_AHEAD).for_each(fetch);
                for i in start..out.len() {
                    if let Some(h) = out.get(i + RERANK_AHEAD) {
                        fetch(h);
                    }
                    out[i].dist = self.dist.distance(query, self.vector(out[i].row));
                }
                scratch.prepared = pq;
            }
            None => {
                let dist = |row: u32| self.dist.distance(query, self.vector(row));
                let prefetch =
                    |row: u32| prefetch_range(self.vectors, row as usize * self.dim, self.dim);
                self.walk(&dist, &prefetch, ef, &accept, filtered, scratch);
                out.extend(scratch.top.drain());
            }
        }
        out[start..].sort_unstable();
        out.truncate(start + k);
    }

    /// The level-0 beam search (hnswlib's `searchBaseLayerST`); leaves up to `ef` accepted
    /// rows in `scratch.top`.
    fn walk(
        &self,
        dist: &impl Fn(u32) -> f32,
        prefetch: &impl Fn(u32),
        ef: usize,
        accept: &impl Fn(u32) -> bool,
        filtered: bool,
        scratch: &mut Scratch,
    ) {
        scratch.reset(self.len());
        let ep = self.descend(dist);
        scratch.visit(ep.row);
        scratch.candidates.push(Reverse(ep));
        if accept(ep.row) {
            scratch.top.push(ep);
        }
        let mut bound = scratch.top.peek().map_or(f32::INFINITY, |h| h.dist);
        while let Some(Reverse(c)) = scratch.candidates.pop() {
            if c.dist > bound && (scratch.top.len() >= ef || !filtered) {
                break;
            }
            // The next candidate's link block lives apart from its vector: fetch it now,
            // while this candidate's neighbours are measured.
            if let Some(Reverse(next)) = scratch.candidates.peek() {
                let stride = 1 + self.level0_degree;
                prefetch_range(self.level0, next.row as usize * stride, stride);
            }
            // Gather the unvisited neighbours first so their vectors can be prefetched a few
            // steps ahead of the distance computations that read them.
            let mut fresh = [0u32; MAX_LEVEL0_DEGREE];
            let mut n_fresh = 0;
            for &nb in self.links(c.row, 0) {
                if n_fresh < fresh.len() && (nb as usize) < self.len() && scratch.visit(nb) {
                    fresh[n_fresh] = nb;
                    n_fresh += 1;
                }
            }
            let fresh = &fresh[..n_fresh];
            for &nb in fresh.iter().take(PREFETCH_AHEAD) {
                prefetch(nb);
            }
            for (i, &nb) in fresh.iter().enumerate() {
                if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                    prefetch(ahead);
                }
                let d = dist(nb);
                if scratch.top.len() < ef || d < bound {
                    scratch.candidates.push(Reverse(Hit { dist: d, row: nb }));
                    if accept(nb) {
                        scratch.top.push(Hit { dist: d, row: nb });
                        if scratch.top.len() > ef {
                            scratch.top.pop();
                        }
                    }
                    if let Some(h) = scratch.top.peek() {
                        bound = h.dist;
                    }
                }
            }
        }
    }

    /// Exact search by scanning `rows` (used for small filtered sets and for ground truth).
    pub fn scan(
        &self,
        query: &[f32],
        k: usize,
        rows: impl Iterator<Item = u32>,
        scratch: &mut Scratch,
        out: &mut Vec<Hit>,
    ) {
        scratch.top.clear();
        for row in rows {
            if row as usize >= self.len() {
                continue;
            }
            let d = self.dist.distance(query, self.vector(row));
            if scratch.top.len() < k {
                scratch.top.push(Hit { dist: d, row });
            } else if scratch.top.peek().is_some_and(|w| d < w.dist) {
                scratch.top.pop();
                scratch.top.push(Hit { dist: d, row });
            }
        }
        let start = out.len();
        out.extend(scratch.top.drain());
        out[start..].sort_unstable();
    }
}
