//! The write log applied on top of a mapped version: a [`Delta`] (upserted items in memory,
//! base rows deleted or superseded as tombstones) and a [`View`], the one row space a query
//! walks — the base's rows `0..n`, then the delta's items `n..n + m`.
//!
//! A delta is immutable once sealed: a replica applies new segments to a copy and swaps it
//! in (queries hold an `Arc` of the one they started with), so reads never lock. Its items
//! are append-only (an update or delete marks the old item dead), so an [`Overlay`] that
//! links the first items into the version's graph, extended off the query path, stays valid
//! for every later delta: queries walk version and linked items in one walk and scan only the
//! items appended since exactly. Deltas stay small because compaction folds them into the
//! next version (docs/format.md "Write log").

mod view;

use std::collections::HashMap;
use std::sync::Arc;

pub use view::View;

use crate::collection::Collection;
use crate::distance::normalize;
use crate::format::log::{Ops, Segment};
use crate::format::NONE_U32;
use crate::metric::Metric;
use crate::search::{NewRows, Overlay};

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
    /// Links the first `links.len()` items into the version's graph.
    links: Option<Arc<Overlay>>,
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
            links: None,
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

    /// Items appended after the overlay (if any) was extended: they are scanned exactly.
    pub fn unindexed(&self) -> usize {
        self.ids.len() - self.linked()
    }

    /// Items the overlay links into the version's graph.
    pub fn linked(&self) -> usize {
        self.links.as_ref().map_or(0, |o| o.len())
    }

    /// Every item appended so far as the overlay reads them (vectors prepared: unit length
    /// under cosine; codes under the version's scale).
    pub fn new_rows(&self) -> NewRows<'_> {
        NewRows {
            vectors: &self.vectors,
            codes: &self.codes,
            sqnorms: &self.sqnorms,
        }
    }

    /// The overlay queries walk (None: every item is scanned).
    pub fn links(&self) -> Option<&Arc<Overlay>> {
        self.links.as_ref()
    }

    /// Uses `o`, an overlay of this delta's first `o.len()` items over its version (extended
    /// from [`new_rows`](Self::new_rows) of this or an earlier delta over the same version).
    /// Ignored when it covers more items than exist, fewer than the current one, or another
    /// version's rows.
    pub fn attach_links(&mut self, o: Arc<Overlay>) {
        if o.base_rows() == self.base_rows as usize
            && o.len() <= self.ids.len()
            && o.len() > self.linked()
        {
            self.links = Some(o);
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

    /// Bytes it holds in memory, roughly (for metrics; the overlay counted on its own).
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
