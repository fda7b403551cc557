//! New rows joined to a mapped graph without rewriting it: the write log's items
//! (`crate::delta`) are inserted into the version's own level 0, so one walk at the query's
//! `ef` finds version rows and new rows alike — no second graph, no second walk, and a new
//! item's own `similar` is an in-sample query (BENCHMARKS.md §11 measured the two-graph merge
//! this replaced).
//!
//! An [`Overlay`] holds level-0 blocks in the served layout (`[count, links ..]`, 2·m slots):
//! one per new row, and a copy of each version row whose list gained a link to a new row
//! (`rewritten`, one u32 per version row: the walk's only extra read). New rows live on level 0
//! only: the descent through the version's upper levels is unchanged, and at ≤ 10 % of the
//! catalogue (compaction folds the rest in) the extra level-0 hop costs nothing measurable.
//!
//! Insertion is hnswlib's `addPoint` on level 0 (the builder's heuristic, `select_neighbours`),
//! single-threaded on a private copy; readers get an immutable clone, so queries never lock.

use super::links::{block_links, LinkLayout, LinkSource};
use super::measure::{CodeMeasure, ExactMeasure, Measure};
use super::walk::{select_neighbours, Beam, Hit};
use super::{prefetch_range, Graph, Quantized};
use crate::format::NONE_U32;
use crate::quant::PreparedQuery;

/// Level-0 links joining new rows `n..n + len` to a graph of `n` rows.
#[derive(Clone)]
pub struct Overlay {
    base_rows: u32,
    layout: LinkLayout,
    /// Per version row: its rewritten block in `blocks`, `NONE_U32` while it keeps the mapped one.
    rewritten: Vec<u32>,
    /// Per new row: its block in `blocks`.
    own: Vec<u32>,
    /// Level-0 blocks, `layout.level0_stride()` u32s each.
    blocks: Vec<u32>,
}

/// The new rows' data, under the graph's metric (unit length under cosine) and its 8-bit
/// scale: row `n + i` is item `i`.
#[derive(Clone, Copy)]
pub struct NewRows<'a> {
    /// f32 vectors, row-major.
    pub vectors: &'a [f32],
    /// 8-bit codes under the graph's scale and offset (empty when it has none).
    pub codes: &'a [i8],
    /// Exact ‖x‖² of each.
    pub sqnorms: &'a [f32],
}

/// Distances to version rows with one measure and to new rows with another.
pub(super) struct Split<M> {
    pub n: u32,
    pub base: M,
    pub new: M,
}

impl<M: Measure> Measure for Split<M> {
    #[inline(always)]
    fn distance(&self, row: u32) -> f32 {
        if row < self.n {
            self.base.distance(row)
        } else {
            self.new.distance(row - self.n)
        }
    }

    #[inline(always)]
    fn prefetch(&self, row: u32) {
        if row < self.n {
            self.base.prefetch(row)
        } else {
            self.new.prefetch(row - self.n)
        }
    }
}

/// A graph's links with an overlay's over them.
pub(super) struct Joined<'g, 'a> {
    pub graph: &'g Graph<'a>,
    pub overlay: &'g Overlay,
}

impl Joined<'_, '_> {
    #[inline(always)]
    fn block(&self, row: u32) -> Option<usize> {
        let o = self.overlay;
        let b = if row < o.base_rows {
            *o.rewritten.get(row as usize)?
        } else {
            *o.own.get((row - o.base_rows) as usize)?
        };
        (b != NONE_U32).then(|| b as usize * o.layout.level0_stride())
    }
}

impl LinkSource for Joined<'_, '_> {
    #[inline(always)]
    fn node_count(&self) -> usize {
        self.overlay.base_rows as usize + self.overlay.own.len()
    }

    #[inline(always)]
    fn for_each_link(&self, row: u32, level: u32, mut f: impl FnMut(u32)) {
        if level > 0 {
            // New rows live on level 0 only.
            if row < self.overlay.base_rows {
                self.graph.for_each_link(row, level, f);
            }
            return;
        }
        match self.block(row) {
            Some(at) => {
                let stride = self.overlay.layout.level0_stride();
                for &nb in block_links(&self.overlay.blocks[at..at + stride]) {
                    f(nb);
                }
            }
            None if row < self.overlay.base_rows => self.graph.for_each_link(row, 0, f),
            None => {}
        }
    }

    #[inline(always)]
    fn prefetch_links(&self, row: u32, level: u32) {
        match self.block(row) {
            Some(at) if level == 0 => prefetch_range(
                &self.overlay.blocks,
                at,
                self.overlay.layout.level0_stride(),
            ),
            _ => self.graph.prefetch_links(row, level),
        }
    }
}

/// Reusable state for [`Overlay::insert`].
#[derive(Default)]
pub struct InsertScratch {
    beam: Beam,
    query: PreparedQuery,
    sorted: Vec<Hit>,
    selected: Vec<Hit>,
    prune: Vec<Hit>,
    pruned: Vec<Hit>,
}

impl Overlay {
    /// No new rows yet, over `graph`.
    pub fn new(graph: &Graph) -> Self {
        Self {
            base_rows: graph.len() as u32,
            layout: graph.layout(),
            rewritten: vec![NONE_U32; graph.len()],
            own: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// New rows linked in so far.
    pub fn len(&self) -> usize {
        self.own.len()
    }

    /// Whether no new row is linked yet.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty()
    }

    /// The version rows it was made for.
    pub fn base_rows(&self) -> usize {
        self.base_rows as usize
    }

    /// Version rows whose level-0 list it rewrote.
    pub fn rewritten_rows(&self) -> usize {
        self.blocks.len() / self.layout.level0_stride() - self.own.len()
    }

    /// Bytes it holds.
    pub fn heap_bytes(&self) -> usize {
        (self.rewritten.len() + self.own.len() + self.blocks.len()) * 4
    }

    fn new_block(&mut self) -> u32 {
        let b = (self.blocks.len() / self.layout.level0_stride()) as u32;
        self.blocks
            .resize(self.blocks.len() + self.layout.level0_stride(), 0);
        b
    }

    /// `row`'s level-0 list as a writable block, copying the mapped one on first write.
    fn block_mut(&mut self, graph: &Graph, row: u32) -> &mut [u32] {
        let stride = self.layout.level0_stride();
        let b = if row < self.base_rows {
            match self.rewritten[row as usize] {
                NONE_U32 => {
                    let b = self.new_block();
                    self.rewritten[row as usize] = b;
                    let mapped = graph.links(row, 0);
                    let block = &mut self.blocks[b as usize * stride..(b as usize + 1) * stride];
                    let count = mapped.len().min(stride - 1);
                    block[0] = count as u32;
                    block[1..1 + count].copy_from_slice(&mapped[..count]);
                    b
                }
                b => b,
            }
        } else {
            self.own[(row - self.base_rows) as usize]
        };
        &mut self.blocks[b as usize * stride..(b as usize + 1) * stride]
    }

    /// Links the next new row (`n + self.len()`, `rows`' item `self.len()`) into level 0:
    /// a beam search of width `ef_construction` over the version and the rows linked so far,
    /// `m` neighbours chosen by the builder's heuristic on exact distances, and a link back
    /// from each (a full list re-pruned by the same heuristic). Dead rows stay in the graph as
    /// waypoints, as in the version.
    pub fn insert(
        &mut self,
        graph: &Graph,
        rows: NewRows,
        ef_construction: usize,
        s: &mut InsertScratch,
    ) {
        let (n, dim, i) = (self.base_rows, graph.dim, self.own.len());
        let row = n + i as u32;
        let vector = &rows.vectors[i * dim..(i + 1) * dim];
        let vec_of = |r: u32| -> &[f32] {
            if r < n {
                graph.vector(r)
            } else {
                let j = (r - n) as usize;
                &rows.vectors[j * dim..(j + 1) * dim]
            }
        };
        let exact = Split {
            n,
            base: ExactMeasure {
                query: vector,
                vectors: graph.vectors,
                dim,
                dist: graph.dist,
            },
            new: ExactMeasure {
                query: vector,
                vectors: rows.vectors,
                dim,
                dist: graph.dist,
            },
        };
        s.beam.reset(row as usize + 1);
        s.beam.visit(row);
        match graph.quant {
            Some(q8) => {
                s.query.prepare(vector, q8.scale, q8.offset);
                let codes = Split {
                    n,
                    base: CodeMeasure::new(&s.query, q8, dim),
                    new: CodeMeasure::new(
                        &s.query,
                        Quantized {
                            codes: rows.codes,
                            sqnorms: rows.sqnorms,
                            ..q8
                        },
                        dim,
                    ),
                };
                self.walk(graph, &codes, ef_construction, &mut s.beam);
            }
            None => self.walk(graph, &exact, ef_construction, &mut s.beam),
        }
        // The walk may have measured codes: the links are chosen on exact distances.
        s.sorted.clear();
        s.sorted.extend(s.beam.drain().map(|h| Hit {
            dist: exact.distance(h.row),
            row: h.row,
        }));
        s.sorted.sort_unstable();
        let between = |a: u32, b: u32| graph.dist.distance(vec_of(a), vec_of(b));
        select_neighbours(
            &s.sorted,
            self.layout.upper_degree,
            &mut s.selected,
            between,
        );
        let own = self.new_block();
        self.own.push(own);
        let block = self.block_mut(graph, row);
        block[0] = s.selected.len() as u32;
        for (slot, h) in block[1..].iter_mut().zip(&s.selected) {
            *slot = h.row;
        }
        // Only now is the row linked from its neighbours (as the builder does).
        let max = self.layout.level0_degree;
        for k in 0..s.selected.len() {
            let nb = s.selected[k];
            let block = self.block_mut(graph, nb.row);
            let count = (block[0] as usize).min(max);
            if count < max {
                block[1 + count] = row;
                block[0] = count as u32 + 1;
                continue;
            }
            let from = vec_of(nb.row);
            s.prune.clear();
            s.prune.push(Hit { dist: nb.dist, row });
            s.prune.extend(block[1..1 + count].iter().map(|&r| Hit {
                dist: graph.dist.distance(from, vec_of(r)),
                row: r,
            }));
            s.prune.sort_unstable();
            select_neighbours(&s.prune, max, &mut s.pruned, between);
            let block = self.block_mut(graph, nb.row);
            block[0] = s.pruned.len() as u32;
            for (slot, h) in block[1..].iter_mut().zip(&s.pruned) {
                *slot = h.row;
            }
        }
    }

    /// The descent through the version's upper levels, then the beam on the joined level 0.
    fn walk(&self, graph: &Graph, measure: &impl Measure, ef: usize, beam: &mut Beam) {
        let entry = Hit {
            dist: measure.distance(graph.entry_point),
            row: graph.entry_point,
        };
        let entry = beam.descend(graph, entry, (1..=graph.max_level).rev(), measure);
        let joined = Joined {
            graph,
            overlay: self,
        };
        beam.walk(&joined, 0, entry, ef, measure, &|_| true, false);
    }
}
