//! The write log applied on top of a mapped version: a [`Delta`] (upserted items in memory,
//! base rows deleted or superseded as tombstones) and a [`View`], the one row space a query
//! walks — the base's rows `0..n`, then the delta's items `n..n + m`.
//!
//! A delta is immutable once sealed: a replica applies new segments to a copy and swaps it
//! in (queries hold an `Arc` of the one they started with), so reads never lock. Its items
//! are append-only (an update or delete marks the old item dead), so a [`FlatGraph`] built
//! off the query path over the first items stays valid for every later delta: queries walk
//! it and scan only the items appended since exactly. Deltas stay small because compaction
//! folds them into the next version (docs/format.md "Write log").

use std::collections::HashMap;
use std::sync::Arc;

use crate::collection::Collection;
use crate::distance::{normalize, DistanceFn};
use crate::format::log::{Ops, Segment};
use crate::format::NONE_U32;
use crate::metric::Metric;
use crate::search::{with_scratch, FlatGraph, Graph, Hit, Quantized};

/// Upserts and deletes applied over one version of a collection.
#[derive(Clone)]
pub struct Delta {
    /// The version (directory name) it applies over.
    pub base_version: String,
    /// The last log segment applied (the version's `log_through` when nothing is).
    pub applied: u64,
    /// When the last applied segment was acknowledged (ms since the epoch; 0: none).
    pub applied_written_at_ms: u64,
    base_rows: u32,
    base_creators: u32,
    dim: usize,
    metric: Metric,
    ids: Vec<String>,
    vectors: Vec<f32>,
    creators: Vec<u32>,
    popularity: Vec<f32>,
    by_id: HashMap<String, u32>,
    /// 8-bit codes of the items under the version's own scale and offset (empty when the
    /// version has none), and each item's exact ‖x‖²: the delta's walk reads what the
    /// version's does.
    codes: Vec<i8>,
    sqnorms: Vec<f32>,
    /// Delta items superseded or deleted since they were appended.
    dead_items: Vec<bool>,
    live_items: usize,
    graph: Option<Arc<FlatGraph>>,
    tombstones: Vec<u64>,
    dead: usize,
    new_creators: Vec<String>,
    new_creator_by_name: HashMap<String, u32>,
    // Derived by `seal`.
    creator_pop: HashMap<u32, f32>,
    creator_rows: HashMap<u32, Vec<u32>>,
}

impl Delta {
    /// An empty delta over `base` (version `base_version`), which already includes the log up
    /// to `applied`.
    pub fn new(base: &Collection, base_version: &str, applied: u64) -> Self {
        Self {
            base_version: base_version.to_string(),
            applied,
            applied_written_at_ms: 0,
            base_rows: base.len() as u32,
            base_creators: base.creator_count() as u32,
            dim: base.dim(),
            metric: base.manifest.metric,
            ids: Vec::new(),
            vectors: Vec::new(),
            creators: Vec::new(),
            popularity: Vec::new(),
            by_id: HashMap::new(),
            codes: Vec::new(),
            sqnorms: Vec::new(),
            dead_items: Vec::new(),
            live_items: 0,
            graph: None,
            tombstones: vec![0; base.len().div_ceil(64)],
            dead: 0,
            new_creators: Vec::new(),
            new_creator_by_name: HashMap::new(),
            creator_pop: HashMap::new(),
            creator_rows: HashMap::new(),
        }
    }

    /// Items held in memory (upserted and not deleted since).
    pub fn items(&self) -> usize {
        self.live_items
    }

    /// Items appended so far, dead ones included (the delta's row space).
    pub fn appended(&self) -> usize {
        self.ids.len()
    }

    /// Items appended after the graph (if any) was built: they are scanned exactly.
    pub fn unindexed(&self) -> usize {
        self.ids.len() - self.graph.as_ref().map_or(0, |g| g.len())
    }

    /// The first `n` items' vectors (prepared: unit length under cosine), to build a graph.
    pub fn vectors_prefix(&self, n: usize) -> &[f32] {
        &self.vectors[..n * self.dim]
    }

    /// Vector dimension and metric.
    pub fn shape(&self) -> (usize, Metric) {
        (self.dim, self.metric)
    }

    /// Uses `g`, a graph over this delta's first `g.len()` items (built from
    /// [`vectors_prefix`](Self::vectors_prefix) of this or an earlier delta over the same
    /// version). Ignored when it covers more items than exist or fewer than the current one.
    pub fn attach_graph(&mut self, g: Arc<FlatGraph>) {
        let current = self.graph.as_ref().map_or(0, |c| c.len());
        if g.len() <= self.ids.len() && g.len() > current {
            self.graph = Some(g);
        }
    }

    /// Base rows hidden (deleted or superseded).
    pub fn tombstones(&self) -> usize {
        self.dead
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.live_items == 0 && self.dead == 0
    }

    /// Bytes it holds in memory, roughly (for metrics).
    pub fn heap_bytes(&self) -> usize {
        self.vectors.len() * 4
            + self.ids.iter().map(|s| 2 * s.len() + 64).sum::<usize>()
            + self.codes.len()
            + self.sqnorms.len() * 4
            + self.tombstones.len() * 8
            + self.creators.len() * 8
    }

    fn kill(&mut self, row: u32) {
        let (w, b) = (row as usize / 64, row % 64);
        if self.tombstones[w] & (1 << b) == 0 {
            self.tombstones[w] |= 1 << b;
            self.dead += 1;
        }
    }

    fn creator_key(&mut self, base: &Collection, name: &Option<String>) -> u32 {
        let Some(name) = name else {
            return NONE_U32;
        };
        if let Some(c) = base.creators.find(name) {
            return c;
        }
        if let Some(&c) = self.new_creator_by_name.get(name) {
            return c;
        }
        let c = self.base_creators + self.new_creators.len() as u32;
        self.new_creators.push(name.clone());
        self.new_creator_by_name.insert(name.clone(), c);
        c
    }

    /// Applies `segment` (the next one: `applied + 1`). Call [`seal`](Self::seal) after the
    /// last of a run. An upsert of the wrong dimension or a zero vector under cosine is
    /// refused whole (the delta is unchanged), naming the item.
    pub fn apply(&mut self, base: &Collection, segment: &Segment) -> Result<(), String> {
        if segment.seq != self.applied + 1 {
            return Err(format!(
                "segment {} does not follow the applied position {}",
                segment.seq, self.applied
            ));
        }
        match &segment.ops {
            Ops::Upsert { dim, items } => {
                if *dim != self.dim {
                    return Err(format!(
                        "segment {} holds {dim}-d vectors; the collection is {}-d",
                        segment.seq, self.dim
                    ));
                }
                let mut prepared = Vec::with_capacity(items.len());
                for it in items {
                    let mut v = it.vector.clone();
                    if self.metric == Metric::Cosine && !normalize(&mut v) {
                        return Err(format!(
                            "segment {}: item {:?} has a zero vector under cosine",
                            segment.seq, it.id
                        ));
                    }
                    prepared.push(v);
                }
                for (it, v) in items.iter().zip(prepared) {
                    let creator = self.creator_key(base, &it.creator);
                    let pop = it.popularity.unwrap_or(f32::NAN);
                    // Items are append-only: an update retires the old item.
                    if let Some(i) = self.by_id.remove(&it.id) {
                        self.retire(i as usize);
                    } else if let Some(row) = base.row_of(&it.id) {
                        self.kill(row);
                    }
                    self.by_id.insert(it.id.clone(), self.ids.len() as u32);
                    self.ids.push(it.id.clone());
                    if let Some(q) = base.graph().quant {
                        crate::quant::encode_into(&v, q.scale, q.offset, &mut self.codes);
                    }
                    self.sqnorms.push(crate::distance::dot(&v, &v));
                    self.vectors.extend_from_slice(&v);
                    self.creators.push(creator);
                    self.popularity.push(pop);
                    self.dead_items.push(false);
                    self.live_items += 1;
                }
            }
            Ops::Delete { ids } => {
                for id in ids {
                    if let Some(i) = self.by_id.remove(id) {
                        self.retire(i as usize);
                    }
                    if let Some(row) = base.row_of(id) {
                        self.kill(row);
                    }
                }
            }
        }
        self.applied = segment.seq;
        self.applied_written_at_ms = segment.written_at_ms;
        Ok(())
    }

    fn retire(&mut self, i: usize) {
        if !self.dead_items[i] {
            self.dead_items[i] = true;
            self.live_items -= 1;
        }
    }

    /// Recomputes what queries read about creators: each touched creator's popularity (base
    /// sum − hidden rows + delta items) and its delta rows.
    pub fn seal(&mut self, base: &Collection) {
        let mut pop: HashMap<u32, f32> = HashMap::new();
        let mut rows: HashMap<u32, Vec<u32>> = HashMap::new();
        for (w, &bits) in self.tombstones.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                let row = (w * 64) as u32 + b.trailing_zeros();
                b &= b - 1;
                if let Some(c) = base.creator_index(row) {
                    let p = pop
                        .entry(c)
                        .or_insert_with(|| base.creator_popularity(c).unwrap_or(0.0));
                    *p -= base.popularity(row).unwrap_or(0.0);
                }
            }
        }
        for (i, &c) in self.creators.iter().enumerate() {
            if c == NONE_U32 || self.dead_items[i] {
                continue;
            }
            let p = pop.entry(c).or_insert_with(|| {
                if c < self.base_creators {
                    base.creator_popularity(c).unwrap_or(0.0)
                } else {
                    0.0
                }
            });
            let item = self.popularity[i];
            if !item.is_nan() {
                *p += item;
            }
            rows.entry(c).or_default().push(self.base_rows + i as u32);
        }
        for p in pop.values_mut() {
            *p = p.max(0.0);
        }
        self.creator_pop = pop;
        self.creator_rows = rows;
    }
}

/// A collection as queries see it: a mapped version and, when the write log has changed
/// it, the delta over it.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The mapped version.
    pub base: &'a Collection,
    /// What the log changed (None: nothing).
    pub delta: Option<&'a Delta>,
}

impl<'a> View<'a> {
    /// `base` with `delta` over it (an empty delta is none).
    pub fn new(base: &'a Collection, delta: Option<&'a Delta>) -> Self {
        Self {
            base,
            delta: delta.filter(|d| !d.is_empty()),
        }
    }

    /// The size of the row space (hidden base rows included).
    pub fn len(&self) -> usize {
        self.base.len() + self.delta.map_or(0, |d| d.ids.len())
    }

    /// Whether the row space is empty (never, for an opened collection).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items a query can return.
    pub fn live_len(&self) -> usize {
        self.base.len() + self.delta.map_or(0, |d| d.live_items) - self.delta.map_or(0, |d| d.dead)
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.base.dim()
    }

    /// The distance function.
    pub fn dist(&self) -> &DistanceFn {
        self.base.dist()
    }

    /// Whether base rows are hidden (walks must then filter).
    pub fn has_tombstones(&self) -> bool {
        self.delta.is_some_and(|d| d.dead > 0)
    }

    #[inline]
    fn split(&self, row: u32) -> Result<u32, (&'a Delta, usize)> {
        let n = self.base.len() as u32;
        match self.delta {
            Some(d) if row >= n => Err((d, (row - n) as usize)),
            _ => Ok(row),
        }
    }

    /// Whether `row` is an item (not a hidden base row).
    #[inline]
    pub fn is_live(&self, row: u32) -> bool {
        match self.delta {
            Some(d) if row < d.base_rows => {
                d.tombstones[row as usize / 64] & (1 << (row % 64)) == 0
            }
            Some(d) => d
                .dead_items
                .get((row - d.base_rows) as usize)
                .is_some_and(|dead| !dead),
            None => (row as usize) < self.base.len(),
        }
    }

    /// The row of the item with ID `id`.
    pub fn row_of(&self, id: &str) -> Option<u32> {
        if let Some(d) = self.delta {
            if let Some(&i) = d.by_id.get(id) {
                return Some(d.base_rows + i);
            }
        }
        self.base.row_of(id).filter(|&r| self.is_live(r))
    }

    /// The ID of `row`.
    pub fn id(&self, row: u32) -> &'a str {
        match self.split(row) {
            Ok(r) => self.base.id(r),
            Err((d, i)) => &d.ids[i],
        }
    }

    /// The vector of `row` (unit length under cosine).
    pub fn vector(&self, row: u32) -> &'a [f32] {
        match self.split(row) {
            Ok(r) => self.base.vector(r),
            Err((d, i)) => &d.vectors[i * d.dim..(i + 1) * d.dim],
        }
    }

    /// The creator key of `row` (base creators keep their index; new ones follow).
    pub fn creator_index(&self, row: u32) -> Option<u32> {
        match self.split(row) {
            Ok(r) => self.base.creator_index(r),
            Err((d, i)) => (d.creators[i] != NONE_U32).then_some(d.creators[i]),
        }
    }

    /// The creator name of `row`.
    pub fn creator(&self, row: u32) -> Option<&'a str> {
        match self.split(row) {
            Ok(r) => self.base.creator(r),
            Err((d, i)) => match d.creators[i] {
                NONE_U32 => None,
                c if c < d.base_creators => Some(self.base.creators.get(c)),
                c => Some(&d.new_creators[(c - d.base_creators) as usize]),
            },
        }
    }

    /// The popularity of `row`.
    pub fn popularity(&self, row: u32) -> Option<f32> {
        match self.split(row) {
            Ok(r) => self.base.popularity(r),
            Err((d, i)) => (!d.popularity[i].is_nan()).then_some(d.popularity[i]),
        }
    }

    /// The popularity of creator `c` (sum over its live items).
    pub fn creator_popularity(&self, c: u32) -> Option<f32> {
        if let Some(&p) = self.delta.and_then(|d| d.creator_pop.get(&c)) {
            return Some(p);
        }
        self.base.creator_popularity(c)
    }

    /// The creator key of a creator name.
    pub fn creator_named(&self, name: &str) -> Option<u32> {
        self.base.creators.find(name).or_else(|| {
            self.delta
                .and_then(|d| d.new_creator_by_name.get(name).copied())
        })
    }

    /// Live rows of creator `c`.
    pub fn creator_items(&self, c: u32) -> impl Iterator<Item = u32> + '_ {
        let base = self.base.creator_items(c).iter().copied();
        let delta = self
            .delta
            .and_then(|d| d.creator_rows.get(&c))
            .into_iter()
            .flatten()
            .copied();
        base.filter(|&r| self.is_live(r)).chain(delta)
    }

    /// The delta's `size` nearest items that `accept` (given view rows) lets through —
    /// walked in its graph with beam `ef`, the items appended since scanned exactly — merged
    /// with what `out[start..]` already holds, nearest first, cut to `size`.
    pub fn merge_delta(
        &self,
        query: &[f32],
        size: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        start: usize,
        out: &mut Vec<Hit>,
    ) {
        let Some(d) = self.delta else { return };
        if d.live_items == 0 {
            return;
        }
        let dist = *self.base.dist();
        let n = d.base_rows;
        let covered = d.graph.as_ref().map_or(0, |g| g.len());
        // The version's walk with beam `ef` examines about the `ef` nearest rows of the whole
        // catalogue, of which about the delta's share are delta items: a beam of four times
        // that share (at least `size`) keeps the merged list's recall at the version's, at a
        // fraction of a full walk's cost (measured: BENCHMARKS.md §11).
        let share = d.live_items as f64 / self.live_len().max(1) as f64;
        let ef = size.max((ef as f64 * share * 4.0).ceil() as usize);
        if let Some(g) = &d.graph {
            let graph = Graph {
                vectors: &d.vectors[..covered * d.dim],
                dim: d.dim,
                level0: &g.level0,
                level0_degree: g.level0_degree,
                upper: &g.upper,
                upper_degree: g.upper_degree,
                upper_start: &g.upper_start,
                entry_point: g.entry_point,
                max_level: g.max_level,
                dist,
                // The version's codes and scale: a walk over 8-bit codes, re-ranked exactly.
                quant: self.base.graph().quant.map(|q| Quantized {
                    codes: &d.codes[..covered * d.dim],
                    sqnorms: &d.sqnorms[..covered],
                    ..q
                }),
            };
            let from = out.len();
            with_scratch(|s| graph.search(query, size, ef, |i| accept(n + i), true, s, out));
            out[from..].iter_mut().for_each(|h| h.row += n);
        }
        for (i, v) in d.vectors.chunks_exact(d.dim).enumerate().skip(covered) {
            let row = n + i as u32;
            if accept(row) {
                out.push(Hit {
                    dist: dist.distance(query, v),
                    row,
                });
            }
        }
        out[start..].sort_unstable();
        out.truncate(start + size);
    }
}

impl<'a> From<&'a Collection> for View<'a> {
    /// The version alone (no write log applied).
    fn from(base: &'a Collection) -> Self {
        Self { base, delta: None }
    }
}
