//! earshot's own HNSW builder: hnswlib's `addPoint`, writing straight into the served layout.
//!
//! Why not only hnsw_rs: it keeps each point as a heap object behind `Arc`s and a `HashMap`,
//! so a build chases pointers and builds 2–4× slower than hnswlib (BENCHMARKS.md, "why
//! hnsw_rs builds slowly"). Here the links live in the flat arrays the server maps (laid out by
//! `LinkLayout`), one `AtomicU32` per slot, and the beam search is the queries' own
//! (`earshot_core::search`, reading the slots through [`LinkSource`]):
//!
//! - levels are drawn up front from a seeded RNG, so every node's upper blocks have a fixed
//!   place (`upper_start`) before any insert and the layout never moves;
//! - a node's link list is read and written under that node's mutex, and a thread never holds
//!   two node locks at once, so there is no lock order to get wrong; a new row writes all its
//!   own lists before any neighbour links back to it, so no one reaches it half-built;
//! - threads take the next row from one atomic counter (rows go in roughly in order, as in
//!   hnswlib's `ParallelFor`); one thread gives the same graph on every run;
//! - by default the beam search walks 8-bit codes of the vectors (`quant`, 4× fewer bytes per
//!   distance: the build is bound by memory, not arithmetic) and the links are then chosen
//!   from the beam with exact f32 distances, so the graph keeps its quality (BENCHMARKS.md).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use rand::{RngExt, SeedableRng};

use super::graph::{BuildWalk, FlatGraph, GraphParams};
use earshot_core::distance::{dot, DistanceFn};
use earshot_core::metric::Metric;
use earshot_core::quant::PreparedQuery;
use earshot_core::search::{
    prefetch_range, select_neighbours, Beam, CodeMeasure, ExactMeasure, Hit, LinkLayout,
    LinkSource, Measure, Quantized,
};

/// No node gets more levels than this (1M points at m = 16 reach level ~5).
const MAX_LEVEL: u32 = 16;
/// Seed of the level generator (hnswlib's default `random_seed`).
const LEVEL_SEED: u64 = 100;

/// Builds the graph over `vectors` (row-major, `dim` wide; unit length for cosine).
pub fn build(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: GraphParams,
    progress: &(dyn Fn(usize) + Sync),
) -> anyhow::Result<FlatGraph> {
    let n = vectors.len() / dim;
    let b = Inserter::new(vectors, dim, metric, params, n);
    let next = AtomicUsize::new(1);
    let done = AtomicUsize::new(1);
    progress(1);
    let threads = params.threads.clamp(1, n.max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut scratch = InsertScratch::default();
                loop {
                    let row = next.fetch_add(1, Relaxed);
                    if row >= n {
                        break;
                    }
                    b.insert(row as u32, &mut scratch);
                    let d = done.fetch_add(1, Relaxed) + 1;
                    if d.is_multiple_of(4096) || d == n {
                        progress(d);
                    }
                }
            });
        }
    });
    Ok(b.finish())
}

struct Inserter<'a> {
    vectors: &'a [f32],
    dim: usize,
    dist: DistanceFn,
    m: usize,
    ef_construction: usize,
    levels: Vec<u8>,
    /// 2·m links on level 0, m above.
    layout: LinkLayout,
    /// `n` level-0 blocks `[count, links ..]`.
    level0: Vec<AtomicU32>,
    /// Upper-level blocks; node `v`'s level `l ≥ 1` is block `upper_start[v] + l - 1`.
    upper: Vec<AtomicU32>,
    upper_start: Vec<u32>,
    locks: Vec<Mutex<()>>,
    /// (entry point, its level). Held for a whole insert only by a node that will top it.
    entry: Mutex<(u32, u32)>,
    /// 8-bit codes the beam search walks (exact distances still choose the links).
    codes: Option<Codes>,
    inner_product: bool,
}

/// Per-dimension int8 codes of the vectors being built (see `quant`).
struct Codes {
    params: earshot_core::quant::Params,
    codes: Vec<i8>,
    sqnorms: Vec<f32>,
    metric: Metric,
}

impl Codes {
    fn view(&self) -> Quantized<'_> {
        Quantized {
            codes: &self.codes,
            scale: &self.params.scale,
            offset: &self.params.offset,
            sqnorms: &self.sqnorms,
            metric: self.metric,
        }
    }
}

/// Per-thread insert state, reused across inserts.
#[derive(Default)]
struct InsertScratch {
    beam: Beam,
    /// The inserted row, prepared for the codes.
    query: PreparedQuery,
    sorted: Vec<Hit>,
    selected: Vec<Hit>,
    prune_in: Vec<Hit>,
    prune_out: Vec<Hit>,
    /// (level, neighbour) links of the row being inserted, back-linked once all are chosen.
    chosen: Vec<(u32, Hit)>,
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The guarded data is the link slots, which a panicking holder cannot leave torn in a
    // way that matters more than a lost link; poisoning would only turn that into a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn atomics(len: usize) -> Vec<AtomicU32> {
    (0..len).map(|_| AtomicU32::new(0)).collect()
}

impl<'a> Inserter<'a> {
    fn new(vectors: &'a [f32], dim: usize, metric: Metric, p: GraphParams, n: usize) -> Self {
        // hnswlib's level distribution: floor(-ln(U) / ln(m)).
        let mut rng = rand::rngs::StdRng::seed_from_u64(LEVEL_SEED);
        let mult = 1.0 / (p.m as f64).ln();
        let levels: Vec<u8> = (0..n)
            .map(|_| {
                let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                ((-u.ln() * mult) as u32).min(MAX_LEVEL) as u8
            })
            .collect();
        let mut upper_start = vec![earshot_core::format::NONE_U32; n];
        let mut blocks = 0u32;
        for (v, &l) in levels.iter().enumerate() {
            if l > 0 {
                upper_start[v] = blocks;
                blocks += l as u32;
            }
        }
        let layout = LinkLayout::for_m(p.m);
        Self {
            vectors,
            dim,
            dist: DistanceFn::new(metric),
            m: p.m,
            ef_construction: p.ef_construction,
            layout,
            level0: atomics(layout.level0_len(n)),
            upper: atomics(layout.upper_len(blocks as usize)),
            upper_start,
            locks: (0..n).map(|_| Mutex::new(())).collect(),
            entry: Mutex::new((0, levels[0] as u32)),
            levels,
            inner_product: metric == Metric::Dot,
            codes: (p.walk == BuildWalk::Int8).then(|| {
                let (params, codes) = earshot_core::quant::quantize(vectors, dim);
                let sqnorms = vectors.chunks_exact(dim).map(|v| dot(v, v)).collect();
                Codes {
                    params,
                    codes,
                    sqnorms,
                    metric,
                }
            }),
        }
    }

    fn vector(&self, row: u32) -> &'a [f32] {
        let s = row as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    /// Exact distances from `row`'s vector.
    fn exact_from(&self, row: u32) -> ExactMeasure<'a> {
        ExactMeasure {
            query: self.vector(row),
            vectors: self.vectors,
            dim: self.dim,
            dist: self.dist,
        }
    }

    /// The slots of `row`'s block on `level`: `[count, links ..]`.
    fn block(&self, row: u32, level: u32) -> &[AtomicU32] {
        if level == 0 {
            &self.level0[self.layout.level0_block(row)]
        } else {
            let first = self.upper_start[row as usize];
            &self.upper[self.layout.upper_block(first, level)]
        }
    }

    /// Writes `links` as `row`'s list on `level`; the caller holds `row`'s lock.
    fn write_links(&self, row: u32, level: u32, links: impl ExactSizeIterator<Item = u32>) {
        let block = self.block(row, level);
        block[0].store(links.len() as u32, Relaxed);
        for (slot, l) in block[1..].iter().zip(links) {
            slot.store(l, Relaxed);
        }
    }

    fn insert(&self, row: u32, s: &mut InsertScratch) {
        let level = self.levels[row as usize] as u32;
        let guard = lock_entry(&self.entry);
        let (entry, top_level) = *guard;
        // A node that will become the new entry point keeps the lock for its whole insert, so
        // nobody starts from an entry point whose upper levels are still being linked.
        let held = (level > top_level).then_some(guard);
        let exact = self.exact_from(row);
        let entry = Hit {
            dist: exact.distance(entry),
            row: entry,
        };
        let mut cur = s
            .beam
            .descend(self, entry, (level + 1..=top_level).rev(), &exact);
        s.chosen.clear();
        for l in (0..=level.min(top_level)).rev() {
            self.search_layer(row, cur.row, l, s);
            s.sorted.clear();
            match self.codes {
                // The walk measured approximate distances: the links are chosen on exact ones.
                Some(_) => s.sorted.extend(s.beam.drain().map(|h| Hit {
                    dist: exact.distance(h.row),
                    row: h.row,
                })),
                None => s.sorted.extend(s.beam.drain()),
            }
            s.sorted.sort_unstable();
            self.select(&s.sorted, self.m, &mut s.selected);
            {
                let _g = lock(&self.locks[row as usize]);
                self.write_links(row, l, s.selected.iter().map(|h| h.row));
            }
            s.chosen.extend(s.selected.iter().map(|&h| (l, h)));
            if let Some(&best) = s.sorted.first() {
                cur = best;
            }
        }
        // Only now is `row` linked from its neighbours: nobody reaches it before all its own
        // lists are written, and nobody adds to a list of it that it then overwrites.
        for i in 0..s.chosen.len() {
            let (l, nb) = s.chosen[i];
            let max_links = self.layout.degree(l);
            self.link_back(nb.row, Hit { dist: nb.dist, row }, l, max_links, s);
        }
        if let Some(mut g) = held {
            *g = (row, level);
        }
    }

    /// Beam search of width ef_construction on `level` from `entry` towards `row`; leaves
    /// the beam in `s.beam`, with distances measured on the codes when the builder has them.
    fn search_layer(&self, row: u32, entry: u32, level: u32, s: &mut InsertScratch) {
        s.beam.reset(self.levels.len());
        // Nobody links to `row` yet; marking it anyway keeps it out of its own list.
        s.beam.visit(row);
        match &self.codes {
            Some(c) => {
                s.query
                    .prepare(self.vector(row), &c.params.scale, &c.params.offset);
                let codes = CodeMeasure::new(&s.query, c.view(), self.dim);
                self.walk(entry, level, &codes, &mut s.beam);
            }
            None => self.walk(entry, level, &self.exact_from(row), &mut s.beam),
        }
    }

    fn walk(&self, entry: u32, level: u32, measure: &impl Measure, beam: &mut Beam) {
        let entry = Hit {
            dist: measure.distance(entry),
            row: entry,
        };
        let ef = self.ef_construction;
        beam.walk(self, level, entry, ef, measure, &|_| true, false);
    }

    /// The builder's neighbour heuristic (`select_neighbours`) on exact distances.
    fn select(&self, sorted: &[Hit], max: usize, out: &mut Vec<Hit>) {
        select_neighbours(sorted, max, out, |a, b| {
            self.dist.distance(self.vector(a), self.vector(b))
        });
    }

    /// Adds `new` to `nb`'s links on `level`; a full list is re-pruned with the heuristic.
    fn link_back(&self, nb: u32, new: Hit, level: u32, max: usize, s: &mut InsertScratch) {
        let _g = lock(&self.locks[nb as usize]);
        let block = self.block(nb, level);
        let count = block[0].load(Relaxed) as usize;
        if count < max {
            block[1 + count].store(new.row, Relaxed);
            block[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let base = self.vector(nb);
        s.prune_in.clear();
        s.prune_in.push(new);
        s.prune_in.extend(block[1..1 + count].iter().map(|slot| {
            let r = slot.load(Relaxed);
            Hit {
                dist: self.dist.distance(base, self.vector(r)),
                row: r,
            }
        }));
        s.prune_in.sort_unstable();
        self.select(&s.prune_in, max, &mut s.prune_out);
        self.write_links(nb, level, s.prune_out.iter().map(|h| h.row));
    }

    /// Gives every level-0 node at least one in-link. The heuristic can prune a node out of
    /// all its neighbours' lists, leaving it unreachable: a search could never return it. Such a node is added to the
    /// list of its closest neighbour, replacing that list's farthest link whose target keeps
    /// another in-link.
    fn link_orphans(&self, entry_point: u32) {
        let n = self.levels.len();
        let mut in_degree = vec![0u32; n];
        for b in self.level0.chunks_exact(self.layout.level0_stride()) {
            let count = b[0].load(Relaxed) as usize;
            for l in &b[1..1 + count] {
                in_degree[l.load(Relaxed) as usize] += 1;
            }
        }
        for row in 0..n as u32 {
            if in_degree[row as usize] > 0 || row == entry_point {
                continue;
            }
            let v = self.vector(row);
            let own = self.block(row, 0);
            let count = own[0].load(Relaxed) as usize;
            let Some(nb) = own[1..1 + count]
                .iter()
                .map(|l| l.load(Relaxed))
                .min_by(|&a, &b| {
                    let (da, db) = (
                        self.dist.distance(v, self.vector(a)),
                        self.dist.distance(v, self.vector(b)),
                    );
                    da.total_cmp(&db)
                })
            else {
                continue;
            };
            let block = self.block(nb, 0);
            let c = block[0].load(Relaxed) as usize;
            if c < self.layout.level0_degree {
                block[1 + c].store(row, Relaxed);
                block[0].store(c as u32 + 1, Relaxed);
                in_degree[row as usize] += 1;
                continue;
            }
            let base = self.vector(nb);
            let farthest = (1..1 + c)
                .filter(|&i| in_degree[block[i].load(Relaxed) as usize] > 1)
                .max_by(|&i, &j| {
                    let d = |i: usize| {
                        self.dist
                            .distance(base, self.vector(block[i].load(Relaxed)))
                    };
                    d(i).total_cmp(&d(j))
                });
            if let Some(i) = farthest {
                in_degree[block[i].load(Relaxed) as usize] -= 1;
                block[i].store(row, Relaxed);
                in_degree[row as usize] += 1;
            }
        }
    }

    fn finish(self) -> FlatGraph {
        let (entry_point, max_level) = *lock_entry(&self.entry);
        // Not under inner product: there many items are no one's nearest (they lie inside the
        // hull) and wiring them into the hubs' lists wrecks the hubs (Last.fm-like data: recall
        // 0.999 → 0.69); queries there rarely need them.
        if !self.inner_product {
            self.link_orphans(entry_point);
        }
        let unwrap = |v: Vec<AtomicU32>| v.into_iter().map(AtomicU32::into_inner).collect();
        FlatGraph {
            level0: unwrap(self.level0),
            level0_degree: self.layout.level0_degree,
            upper: unwrap(self.upper),
            upper_degree: self.layout.upper_degree,
            upper_start: self.upper_start,
            entry_point,
            max_level,
        }
    }
}

fn lock_entry(m: &Mutex<(u32, u32)>) -> MutexGuard<'_, (u32, u32)> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The links as the shared walk reads them, under the node's lock: another thread may be
/// rewriting the list. The walk only gathers unvisited neighbours under it; it measures them
/// after the lock is released.
impl LinkSource for Inserter<'_> {
    fn node_count(&self) -> usize {
        self.levels.len()
    }

    #[inline]
    fn for_each_link(&self, row: u32, level: u32, mut f: impl FnMut(u32)) {
        let block = self.block(row, level);
        let _g = lock(&self.locks[row as usize]);
        let count = block[0].load(Relaxed) as usize;
        for slot in &block[1..1 + count] {
            f(slot.load(Relaxed));
        }
    }

    #[inline]
    fn prefetch_links(&self, row: u32, level: u32) {
        let block = self.block(row, level);
        prefetch_range(block, 0, block.len());
    }
}
