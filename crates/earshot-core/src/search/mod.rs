//! HNSW search over the flat, memory-mapped graph (the hnswlib algorithm), and the walk the
//! builder shares with it:
//!
//! - `links.rs`: where each node's link lists sit ([`LinkLayout`]) and how a walk reads them
//!   ([`LinkSource`]);
//! - `walk.rs`: the greedy descent through the upper levels and the beam search ([`Beam`]);
//! - `measure.rs`: exact f32 or 8-bit distances from the query to a row ([`Measure`]);
//! - `visited.rs`: the epoch-tagged set of rows a walk has seen;
//! - `overlay.rs`: new rows (the write log's items) joined to the mapped level 0 ([`Overlay`]);
//! - `scan.rs`: exact top-k over a whole collection, through the 8-bit codes first;
//! - this file: [`Graph`], a served collection's view, and the query entry points.
//!
//! Search state lives in a per-thread [`Scratch`] that is reused, so a query allocates
//! nothing once the thread has warmed up.

mod links;
mod measure;
mod overlay;
mod scan;
mod visited;
mod walk;

#[cfg(test)]
mod tests;

use std::cell::RefCell;

pub use links::{FlatGraph, LinkLayout, LinkSource, MAX_LEVEL0_DEGREE};
pub use measure::{CodeMeasure, ExactMeasure, Measure};
pub use overlay::{InsertScratch, NewRows, Overlay};
pub use walk::{select_neighbours, Beam, Hit};

use crate::distance::DistanceFn;
use crate::format::NONE_U32;
use crate::metric::Metric;
use crate::quant::PreparedQuery;
use links::block_links;
use overlay::{Joined, Split};

/// New rows past this many are scanned on their 8-bit codes first (see `scan_new`).
const CODE_SCAN_MIN: usize = 64;

/// How many rows ahead the exact re-ranking prefetches f32 vectors.
const RERANK_AHEAD: usize = 2;

/// A borrowed view of one collection's graph and vectors.
#[derive(Clone, Copy)]
pub struct Graph<'a> {
    /// Every row's vector, row-major, `dim` wide.
    pub vectors: &'a [f32],
    /// Vector width.
    pub dim: usize,
    /// Level-0 link blocks, one per row (see [`LinkLayout`]).
    pub level0: &'a [u32],
    /// Link slots per level-0 block.
    pub level0_degree: usize,
    /// Upper-level link blocks.
    pub upper: &'a [u32],
    /// Link slots per upper-level block.
    pub upper_degree: usize,
    /// Each row's first upper block, `NONE_U32` for rows only on level 0.
    pub upper_start: &'a [u32],
    /// Where every search starts (a node on the top level).
    pub entry_point: u32,
    /// The top level.
    pub max_level: u32,
    /// The metric's exact distance.
    pub dist: DistanceFn,
    /// 8-bit codes for the walk (exact f32 re-ranking at the end), when the collection has them.
    pub quant: Option<Quantized<'a>>,
}

/// A collection's 8-bit vectors (see `quant`).
#[derive(Clone, Copy)]
pub struct Quantized<'a> {
    /// Every row's codes, row-major, `dim` wide.
    pub codes: &'a [i8],
    /// Per-dimension scale of the codes.
    pub scale: &'a [f32],
    /// Per-dimension offset of the codes.
    pub offset: &'a [f32],
    /// Exact `‖x‖²` of every row (for l2).
    pub sqnorms: &'a [f32],
    /// The metric the codes are measured with.
    pub metric: Metric,
}

/// Reusable per-thread search state.
#[derive(Default)]
pub struct Scratch {
    beam: Beam,
    prepared: PreparedQuery,
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
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.upper_start.len()
    }

    /// Whether the graph has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of the link blocks.
    #[inline(always)]
    pub fn layout(&self) -> LinkLayout {
        LinkLayout {
            level0_degree: self.level0_degree,
            upper_degree: self.upper_degree,
        }
    }

    /// The f32 vector of `row`.
    #[inline(always)]
    pub fn vector(&self, row: u32) -> &'a [f32] {
        let start = row as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// Links of `row` on `level`; empty if the block is missing or damaged.
    #[inline(always)]
    fn links(&self, row: u32, level: u32) -> &'a [u32] {
        let block = if level == 0 {
            self.level0.get(self.layout().level0_block(row))
        } else {
            let first = self.upper_start[row as usize];
            if first == NONE_U32 {
                return &[];
            }
            self.upper.get(self.layout().upper_block(first, level))
        };
        block.map_or(&[], block_links)
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
        self.search_joined(None, query, k, ef, accept, filtered, scratch, out)
    }

    /// [`search`](Self::search) over this graph's rows and, with `joined`, the new rows an
    /// [`Overlay`] links into it (rows `len()..`, `NewRows` covering at least the overlay's):
    /// one walk over both.
    #[allow(clippy::too_many_arguments)]
    pub fn search_joined(
        &self,
        joined: Option<(&Overlay, NewRows<'a>)>,
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
        let Scratch { beam, prepared } = scratch;
        let n = self.len() as u32;
        match self.quant {
            Some(q8) => {
                prepared.prepare(query, q8.scale, q8.offset);
                let measure = CodeMeasure::new(prepared, q8, self.dim);
                match joined {
                    None => self.walk(self, &measure, ef, &accept, filtered, beam),
                    Some((overlay, rows)) => {
                        let new = Quantized {
                            codes: rows.codes,
                            sqnorms: rows.sqnorms,
                            ..q8
                        };
                        let split = Split {
                            n,
                            base: measure,
                            new: CodeMeasure::new(prepared, new, self.dim),
                        };
                        let links = Joined {
                            graph: self,
                            overlay,
                        };
                        self.walk(&links, &split, ef, &accept, filtered, beam);
                    }
                }
                // Exact re-ranking of the beam's survivors. Their f32 rows are cold (the walk
                // read only codes), so each is prefetched a few rows ahead of its distance.
                out.extend(beam.drain());
                let dim = self.dim;
                let new_rows = joined.map_or(&[][..], |(_, r)| r.vectors);
                let row_of = |row: u32| -> &[f32] {
                    if row < n {
                        self.vector(row)
                    } else {
                        let j = (row - n) as usize * dim;
                        &new_rows[j..j + dim]
                    }
                };
                let fetch = |h: &Hit| {
                    if h.row < n {
                        prefetch_range(self.vectors, h.row as usize * dim, dim)
                    }
                };
                out[start..].iter().take(RERANK_AHEAD).for_each(fetch);
                for i in start..out.len() {
                    if let Some(h) = out.get(i + RERANK_AHEAD) {
                        fetch(h);
                    }
                    out[i].dist = self.dist.distance(query, row_of(out[i].row));
                }
            }
            None => {
                let measure = ExactMeasure {
                    query,
                    vectors: self.vectors,
                    dim: self.dim,
                    dist: self.dist,
                };
                match joined {
                    None => self.walk(self, &measure, ef, &accept, filtered, beam),
                    Some((overlay, rows)) => {
                        let split = Split {
                            n,
                            base: measure,
                            new: ExactMeasure {
                                vectors: rows.vectors,
                                ..measure
                            },
                        };
                        let links = Joined {
                            graph: self,
                            overlay,
                        };
                        self.walk(&links, &split, ef, &accept, filtered, beam);
                    }
                }
                out.extend(beam.drain());
            }
        }
        out[start..].sort_unstable();
        out.truncate(start + k);
    }

    /// Descends from the entry point through the upper levels and walks level 0 as `level0`
    /// links it (this graph's own, or joined to new rows); leaves up to `ef` accepted rows in
    /// `beam`.
    fn walk(
        &self,
        level0: &impl LinkSource,
        measure: &impl Measure,
        ef: usize,
        accept: &impl Fn(u32) -> bool,
        filtered: bool,
        beam: &mut Beam,
    ) {
        beam.reset(level0.node_count());
        let entry = Hit {
            dist: measure.distance(self.entry_point),
            row: self.entry_point,
        };
        let entry = beam.descend(self, entry, (1..=self.max_level).rev(), measure);
        beam.walk(level0, 0, entry, ef, measure, accept, filtered);
    }

    /// The `k` nearest of `rows`' items from the `from`-th on (rows `len() + i`) that
    /// `accept` lets through, appended to `out` nearest first, with exact distances. With 8-bit
    /// codes a long tail is measured on its codes and only the best `2·k + 16` exactly: the
    /// write log's items not linked yet cost every query a quarter of an f32 scan.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_new(
        &self,
        rows: NewRows<'a>,
        from: usize,
        query: &[f32],
        k: usize,
        accept: impl Fn(u32) -> bool,
        scratch: &mut Scratch,
        out: &mut Vec<Hit>,
    ) {
        let (n, dim) = (self.len() as u32, self.dim);
        let count = rows.vectors.len() / dim.max(1);
        if k == 0 || from >= count {
            return;
        }
        let start = out.len();
        let Scratch { beam, prepared } = scratch;
        let top = &mut beam.top;
        top.clear();
        let mut keep = |keep: usize, h: Hit| {
            if top.len() < keep {
                top.push(h);
            } else if top.peek().is_some_and(|w| h.dist < w.dist) {
                top.pop();
                top.push(h);
            }
        };
        let exact = |row: u32| {
            let j = (row - n) as usize * dim;
            self.dist.distance(query, &rows.vectors[j..j + dim])
        };
        match self.quant {
            Some(q8) if count - from > CODE_SCAN_MIN && rows.codes.len() >= count * dim => {
                prepared.prepare(query, q8.scale, q8.offset);
                let new = Quantized {
                    codes: rows.codes,
                    sqnorms: rows.sqnorms,
                    ..q8
                };
                let codes = CodeMeasure::new(prepared, new, dim);
                for i in from..count {
                    let row = n + i as u32;
                    if accept(row) {
                        let dist = codes.distance(i as u32);
                        keep(2 * k + 16, Hit { dist, row });
                    }
                }
                out.extend(top.drain().map(|h| Hit {
                    dist: exact(h.row),
                    row: h.row,
                }));
            }
            _ => {
                for i in from..count {
                    let row = n + i as u32;
                    if accept(row) {
                        keep(
                            k,
                            Hit {
                                dist: exact(row),
                                row,
                            },
                        );
                    }
                }
                out.extend(top.drain());
            }
        }
        out[start..].sort_unstable();
        out.truncate(start + k);
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
        let top = &mut scratch.beam.top;
        top.clear();
        for row in rows {
            if row as usize >= self.len() {
                continue;
            }
            let d = self.dist.distance(query, self.vector(row));
            if top.len() < k {
                top.push(Hit { dist: d, row });
            } else if top.peek().is_some_and(|w| d < w.dist) {
                top.pop();
                top.push(Hit { dist: d, row });
            }
        }
        let start = out.len();
        out.extend(top.drain());
        out[start..].sort_unstable();
    }
}

/// The served graph: links read in place from the mapped arrays, bounds-checked.
impl LinkSource for Graph<'_> {
    #[inline(always)]
    fn node_count(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn for_each_link(&self, row: u32, level: u32, mut f: impl FnMut(u32)) {
        for &nb in self.links(row, level) {
            f(nb);
        }
    }

    #[inline(always)]
    fn prefetch_links(&self, row: u32, level: u32) {
        let layout = self.layout();
        if level == 0 {
            prefetch_range(
                self.level0,
                layout.level0_block(row).start,
                layout.level0_stride(),
            );
        } else if let Some(&first) = self.upper_start.get(row as usize) {
            if first != NONE_U32 {
                let block = layout.upper_block(first, level);
                prefetch_range(self.upper, block.start, layout.upper_stride());
            }
        }
    }
}
