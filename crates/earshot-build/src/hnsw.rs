//! earshot's own HNSW builder: hnswlib's `addPoint`, writing straight into the served layout.
//!
//! Why not only hnsw_rs: it keeps each point as a heap object behind `Arc`s and a `HashMap`,
//! so a build chases pointers and builds 2–4× slower than hnswlib (BENCHMARKS.md, "why
//! hnsw_rs builds slowly"). Here the links live in the flat arrays the server maps (`search.rs`),
//! one `AtomicU32` per slot:
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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use rand::{RngExt, SeedableRng};

use super::graph::{BuildWalk, FlatGraph, GraphParams};
use earshot_core::distance::{dot, DistanceFn};
use earshot_core::metric::Metric;
use earshot_core::quant::PreparedQuery;
use earshot_core::search::{prefetch_range, Hit, Visited};

/// No node gets more levels than this (1M points at m = 16 reach level ~5).
const MAX_LEVEL: u32 = 16;
/// Seed of the level generator (hnswlib's default `random_seed`).
const LEVEL_SEED: u64 = 100;
/// How many neighbours ahead of the one being measured have their vectors prefetched.
const PREFETCH_AHEAD: usize = 3;

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
                let mut scratch = Scratch::default();
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
    /// `n` blocks of `[count, links ..]`, `1 + 2m` slots each.
    level0: Vec<AtomicU32>,
    /// Blocks of `1 + m` slots; node `v`'s level `l ≥ 1` is block `upper_start[v] + l - 1`.
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

/// Per-thread search state, reused across inserts.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    candidates: BinaryHeap<Reverse<Hit>>,
    top: BinaryHeap<Hit>,
    links: Vec<u32>,
    sorted: Vec<Hit>,
    selected: Vec<Hit>,
    prune_in: Vec<Hit>,
    prune_out: Vec<Hit>,
    /// (level, neighbour) links of the row being inserted, back-linked once all are chosen.
    chosen: Vec<(u32, Hit)>,
    query: PreparedQuery,
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
        Self {
            vectors,
            dim,
            dist: DistanceFn::new(metric),
            m: p.m,
            ef_construction: p.ef_construction,
            level0: atomics(n * (1 + 2 * p.m)),
            upper: atomics(blocks as usize * (1 + p.m)),
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

    fn distance(&self, a: u32, b: u32) -> f32 {
        self.dist.distance(self.vector(a), self.vector(b))
    }

    /// The slots of `row`'s block on `level`: `[count, links ..]`.
    fn block(&self, row: u32, level: u32) -> &[AtomicU32] {
        if level == 0 {
            let stride = 1 + 2 * self.m;
            &self.level0[row as usize * stride..(row as usize + 1) * stride]
        } else {
            let stride = 1 + self.m;
            let b = self.upper_start[row as usize] as usize + level as usize - 1;
            &self.upper[b * stride..(b + 1) * stride]
        }
    }

    /// Copies `row`'s links on `level` into `out`.
    fn read_links(&self, row: u32, level: u32, out: &mut Vec<u32>) {
        out.clear();
        let block = self.block(row, level);
        let _g = lock(&self.locks[row as usize]);
        let count = block[0].load(Relaxed) as usize;
        out.extend(block[1..1 + count].iter().map(|s| s.load(Relaxed)));
    }

    /// Writes `links` as `row`'s list on `level`; the caller holds `row`'s lock.
    fn write_links(&self, row: u32, level: u32, links: impl ExactSizeIterator<Item = u32>) {
        let block = self.block(row, level);
        block[0].store(links.len() as u32, Relaxed);
        for (slot, l) in block[1..].iter().zip(links) {
            slot.store(l, Relaxed);
        }
    }

    fn insert(&self, row: u32, s: &mut Scratch) {
        let level = self.levels[row as usize] as u32;
        let guard = lock_entry(&self.entry);
        let (entry, top_level) = *guard;
        // A node that will become the new entry point keeps the lock for its whole insert, so
        // nobody starts from an entry point whose upper levels are still being linked.
        let held = (level > top_level).then_some(guard);
        let mut cur = Hit {
            dist: self.distance(row, entry),
            row: entry,
        };
        for l in (level + 1..=top_level).rev() {
            cur = self.greedy(row, cur, l, &mut s.links);
        }
        s.chosen.clear();
        for l in (0..=level.min(top_level)).rev() {
            self.search_layer(row, cur.row, l, s);
            s.sorted.clear();
            match self.codes {
                // The walk measured approximate distances: the links are chosen on exact ones.
                Some(_) => {
                    let q = self.vector(row);
                    s.sorted.extend(s.top.drain().map(|h| Hit {
                        dist: self.dist.distance(q, self.vector(h.row)),
                        row: h.row,
                    }))
                }
                None => s.sorted.extend(s.top.drain()),
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
            let max_links = if l == 0 { 2 * self.m } else { self.m };
            self.link_back(nb.row, Hit { dist: nb.dist, row }, l, max_links, s);
        }
        if let Some(mut g) = held {
            *g = (row, level);
        }
    }

    /// Greedy walk on one upper level towards `row`.
    fn greedy(&self, row: u32, mut cur: Hit, level: u32, links: &mut Vec<u32>) -> Hit {
        let q = self.vector(row);
        loop {
            self.read_links(cur.row, level, links);
            let mut moved = false;
            for &nb in links.iter() {
                let d = self.dist.distance(q, self.vector(nb));
                if d < cur.dist {
                    cur = Hit { dist: d, row: nb };
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Beam search of width ef_construction on `level` from `entry`; leaves the beam in
    /// `s.top`, with distances measured on the codes when the builder has them.
    fn search_layer(&self, row: u32, entry: u32, level: u32, s: &mut Scratch) {
        match &self.codes {
            Some(c) => {
                let mut pq = std::mem::take(&mut s.query);
                pq.prepare(self.vector(row), &c.params.scale, &c.params.offset);
                let dim = self.dim;
                let l2 = c.metric == Metric::L2;
                let dist = |nb: u32| {
                    let r = nb as usize;
                    let norm2 = if l2 { c.sqnorms[r] } else { 0.0 };
                    pq.distance(c.metric, &c.codes[r * dim..(r + 1) * dim], norm2)
                };
                let prefetch = |nb: u32| prefetch_range(&c.codes, nb as usize * dim, dim);
                self.beam(row, entry, level, &dist, &prefetch, s);
                s.query = pq;
            }
            None => {
                let q = self.vector(row);
                let dist = |nb: u32| self.dist.distance(q, self.vector(nb));
                let prefetch =
                    |nb: u32| prefetch_range(self.vectors, nb as usize * self.dim, self.dim);
                self.beam(row, entry, level, &dist, &prefetch, s);
            }
        }
    }

    fn beam(
        &self,
        row: u32,
        entry: u32,
        level: u32,
        dist: &impl Fn(u32) -> f32,
        prefetch: &impl Fn(u32),
        s: &mut Scratch,
    ) {
        s.visited.reset(self.levels.len());
        s.candidates.clear();
        s.top.clear();
        s.visited.insert(entry);
        s.visited.insert(row);
        let entry = Hit {
            dist: dist(entry),
            row: entry,
        };
        s.candidates.push(Reverse(entry));
        s.top.push(entry);
        let mut bound = entry.dist;
        while let Some(Reverse(c)) = s.candidates.pop() {
            if c.dist > bound {
                break;
            }
            if let Some(Reverse(next)) = s.candidates.peek() {
                let block = self.block(next.row, level);
                prefetch_range(block, 0, block.len());
            }
            self.read_links(c.row, level, &mut s.links);
            // Keep only unvisited neighbours, then prefetch their vectors a few ahead of the
            // one being measured: the build, like a query, waits on cache misses.
            s.links.retain(|&nb| s.visited.insert(nb));
            s.links
                .iter()
                .take(PREFETCH_AHEAD)
                .for_each(|&nb| prefetch(nb));
            for (i, &nb) in s.links.iter().enumerate() {
                if let Some(&ahead) = s.links.get(i + PREFETCH_AHEAD) {
                    prefetch(ahead);
                }
                let d = dist(nb);
                if s.top.len() < self.ef_construction || d < bound {
                    s.candidates.push(Reverse(Hit { dist: d, row: nb }));
                    s.top.push(Hit { dist: d, row: nb });
                    if s.top.len() > self.ef_construction {
                        s.top.pop();
                    }
                    bound = s.top.peek().map_or(f32::INFINITY, |h| h.dist);
                }
            }
        }
    }

    /// hnswlib's `getNeighborsByHeuristic2`: from `sorted` (closest first, distances to the
    /// base point) keep a candidate only if it is closer to the base than to every one kept
    /// so far, up to `max` — links that spread in different directions. Pruned candidates are
    /// not used to fill the list up (tried under inner product: Last.fm recall then stalled
    /// at 0.993 for every ef ≥ 64, against 1.000 without).
    fn select(&self, sorted: &[Hit], max: usize, out: &mut Vec<Hit>) {
        out.clear();
        if sorted.len() <= max {
            out.extend_from_slice(sorted);
            return;
        }
        for &c in sorted {
            if out.len() >= max {
                break;
            }
            let v = self.vector(c.row);
            if out
                .iter()
                .all(|k| self.dist.distance(v, self.vector(k.row)) >= c.dist)
            {
                out.push(c);
            }
        }
    }

    /// Adds `new` to `nb`'s links on `level`; a full list is re-pruned with the heuristic.
    fn link_back(&self, nb: u32, new: Hit, level: u32, max: usize, s: &mut Scratch) {
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
        let stride = 1 + 2 * self.m;
        let mut in_degree = vec![0u32; n];
        for b in self.level0.chunks_exact(stride) {
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
            if c < 2 * self.m {
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
            level0_degree: 2 * self.m,
            upper: unwrap(self.upper),
            upper_degree: self.m,
            upper_start: self.upper_start,
            entry_point,
            max_level,
        }
    }
}

fn lock_entry(m: &Mutex<(u32, u32)>) -> MutexGuard<'_, (u32, u32)> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
