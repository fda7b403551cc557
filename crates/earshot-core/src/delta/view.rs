//! [`View`]: a version and its delta as one row space.

use super::Delta;
use crate::collection::Collection;
use crate::distance::DistanceFn;
use crate::format::NONE_U32;
use crate::search::{with_scratch, Hit};

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

    /// Whether rows are hidden (deleted or superseded: walks must then filter).
    pub fn has_tombstones(&self) -> bool {
        self.delta
            .is_some_and(|d| d.dead > 0 || d.live_items < d.ids.len())
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

    /// [`Collection::prefetch_rows`] for the version's rows among `rows` (the write log's
    /// items are in memory already).
    pub fn prefetch_rows(&self, rows: impl Iterator<Item = u32> + Clone) {
        let n = self.base.len() as u32;
        self.base.prefetch_rows(rows.filter(move |&r| r < n));
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

    /// The `size` nearest rows to `query` that `accept` (given view rows) lets through,
    /// nearest first, appended to `out`: one walk of beam `ef` over the version's graph and
    /// the delta items its overlay links in, then an exact scan of the items appended since.
    /// `filtered` as for [`Graph::search`](crate::search::Graph::search) (hidden rows always
    /// filter).
    pub fn search(
        &self,
        query: &[f32],
        size: usize,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        filtered: bool,
        out: &mut Vec<Hit>,
    ) {
        let start = out.len();
        let g = self.base.graph();
        let joined = self
            .delta
            .and_then(|d| Some((d.links.as_deref()?, d.new_rows())));
        let filtered = filtered || self.has_tombstones();
        with_scratch(|s| g.search_joined(joined, query, size, ef, &accept, filtered, s, out));
        let linked = self.delta.map_or(0, |d| d.linked());
        self.scan_delta(query, size, linked, accept, start, out);
    }

    /// Merges the `size` nearest delta items from the `from`-th on that `accept` lets through
    /// (measured exactly; a long run of them preselected on their codes) into `out[start..]`,
    /// nearest first, cut to `size`.
    pub fn scan_delta(
        &self,
        query: &[f32],
        size: usize,
        from: usize,
        accept: impl Fn(u32) -> bool,
        start: usize,
        out: &mut Vec<Hit>,
    ) {
        let Some(d) = self.delta else { return };
        if d.ids.len() <= from {
            return;
        }
        let g = self.base.graph();
        with_scratch(|s| g.scan_new(d.new_rows(), from, query, size, accept, s, out));
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
