//! Gathering candidates for one or more taste probes and picking a list that obeys every
//! constraint.
//!
//! The picking itself ([`pick`]) only needs each candidate's creator and that creator's
//! popularity ([`Candidates`]): it runs on a collection's rows here, and on the pool a router
//! merges from several shards (where a "row" is a position in the merged pool).
//!
//! Candidates come from a filtered graph walk (the hard filter runs inside the walk, which
//! keeps going until it holds enough admissible items), or from an exact scan when the filter
//! admits only a few items. Shape constraints are enforced while picking; if the picked list
//! is short and the candidate pools were cut off, the pools are widened (×4) and picking
//! starts again, up to an exact scan of the whole collection.

use std::collections::{HashMap, HashSet};

use super::centroids::share_slots;
use super::constraints::{Emerging, HardFilter, Shape, QUOTA_WINDOW};
use earshot_core::delta::View;
use earshot_core::search::{with_scratch, Hit};

/// One query vector and its share of the slots.
pub struct Probe {
    pub query: Vec<f32>,
    pub weight: f32,
}

/// A picked item and why it is there.
#[derive(Debug, Clone)]
pub struct Pick {
    pub row: u32,
    pub dist: f32,
    /// Which probe (taste centroid) brought it.
    pub probe: usize,
    /// Its position among that probe's admissible candidates (0 = nearest).
    pub rank: usize,
    /// Counted toward the emerging-creators quota.
    pub emerging: bool,
    /// Its distance includes the emerging boost (`Emerging::boost`).
    pub boosted: bool,
    /// Taken in the probe's own share of slots (false: backfilled after a probe ran short).
    pub in_share: bool,
    /// Constraints that passed over nearer candidates of the same probe just before this pick.
    pub moved_by: Vec<&'static str>,
}

/// The picked list plus what the emerging quota could do.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub picks: Vec<Pick>,
    /// Slots the request asked to reserve for emerging creators.
    pub quota_requested: usize,
    /// Slots actually reserved: no more than the emerging items within reach
    /// (the `QUOTA_WINDOW × k` nearest admissible items of each probe).
    pub quota_reserved: usize,
}

/// What picking needs to know about candidate rows: who made each one, and how popular that
/// creator is. Implemented by a collection's [`View`] (its rows and the write log's items) and by a router's pool
/// merged from several shards (positions in the pool).
pub trait Candidates {
    /// A key of `row`'s creator (equal keys = the same creator), or None when unknown.
    fn creator_key(&self, row: u32) -> Option<u32>;
    /// The popularity of `row`'s creator, or None when unknown.
    fn creator_popularity_of(&self, row: u32) -> Option<f32>;
}

impl Candidates for View<'_> {
    #[inline]
    fn creator_key(&self, row: u32) -> Option<u32> {
        self.creator_index(row)
    }

    #[inline]
    fn creator_popularity_of(&self, row: u32) -> Option<f32> {
        self.creator_index(row)
            .and_then(|ci| self.creator_popularity(ci))
    }
}

/// Whether `row`'s creator is emerging under `e` ([`Emerging::eligible`] over any
/// [`Candidates`]; unknown popularity → not emerging).
#[inline]
fn eligible<C: Candidates + ?Sized>(e: &Emerging, c: &C, row: u32) -> bool {
    c.creator_popularity_of(row)
        .is_some_and(|p| p <= e.max_popularity)
}

/// How many candidates each probe's pool holds at first: `k` for a plain list, else the
/// quota window (`QUOTA_WINDOW × k`) or `ef`, whichever is larger.
pub fn initial_pool_size(shape: &Shape, ef: usize) -> usize {
    let shaped = shape.max_per_creator.is_some() || shape.emerging.is_some();
    if shaped {
        (QUOTA_WINDOW * shape.k).max(ef)
    } else {
        shape.k
    }
}

/// Each widening round multiplies the pool size by this.
pub const WIDEN: usize = 4;

/// Graph walks wider than this are replaced by an exact scan.
pub(crate) const MAX_WALK: usize = 4096;

/// Exact scans are chosen when the filter admits at most this many items.
fn scan_threshold(n: usize) -> usize {
    (n / 50).max(1_000)
}

/// The `size` nearest admissible items to `query`, nearest first. The second value says
/// whether the pool is complete (fewer admissible items exist than were asked for).
fn pool(
    c: View<'_>,
    query: &[f32],
    filter: &HardFilter,
    size: usize,
    ef: usize,
) -> (Vec<Hit>, bool) {
    let mut out = Vec::with_capacity(size);
    let complete = pool_into(c, query, filter, size, ef, &mut out);
    (out, complete)
}

/// [`pool`] appended to `out` (which may already hold other pools): the buffer of a batch
/// of walks. Returns whether this pool is complete.
pub(crate) fn pool_into(
    c: View<'_>,
    query: &[f32],
    filter: &HardFilter,
    size: usize,
    ef: usize,
    out: &mut Vec<Hit>,
) -> bool {
    let g = c.base.graph();
    let start = out.len();
    let accept = |r| filter.accepts(c, r);
    let small = filter.small_candidate_set(c, scan_threshold(c.base.len()));
    // A scan covers the version's rows here and the write log's items below; a walk covers
    // both (the items appended since its overlay was extended are scanned).
    match small {
        Some(rows) => with_scratch(|s| g.scan(query, size, rows.into_iter(), s, out)),
        None if size > MAX_WALK => with_scratch(|s| {
            let rows = (0..c.base.len() as u32).filter(|&r| accept(r));
            g.scan(query, size, rows, s, out)
        }),
        None => {
            c.search(query, size, ef.max(size), accept, !filter.is_trivial(), out);
            return out.len() - start < size;
        }
    }
    c.scan_delta(query, size, 0, accept, start, out);
    out.len() - start < size
}

/// Picks up to `shape.k` items for `probes` under `filter` and `shape`.
pub fn recommend(
    c: View<'_>,
    probes: &[Probe],
    filter: &HardFilter,
    shape: &Shape,
    ef: usize,
) -> Selection {
    let k = shape.k;
    let mut size = initial_pool_size(shape, ef);
    let weights: Vec<f32> = probes.iter().map(|p| p.weight).collect();
    loop {
        let mut complete = true;
        let pools: Vec<Vec<Hit>> = probes
            .iter()
            .map(|p| {
                let (hits, done) = pool(c, &p.query, filter, size, ef);
                complete &= done;
                hits
            })
            .collect();
        let selection = pick(&c, &weights, &pools, shape);
        let exhausted = complete || size >= c.len();
        if selection.picks.len() >= k || exhausted {
            return selection;
        }
        size = (size * WIDEN).min(c.len());
    }
}

/// `pool` (nearest first) with every emerging item's distance lowered by
/// `boost × spread`, re-sorted; `spread` is the distance from the first to the last of the
/// pool's `QUOTA_WINDOW × k` nearest items. The boost is thus relative to how far apart the
/// candidates are: 1 lifts an emerging item from the bottom of that window to its top, 0.1
/// by a tenth of it, under any metric and any scale of scores.
fn boost_pool<C: Candidates + ?Sized>(c: &C, e: &Emerging, pool: &[Hit], k: usize) -> Vec<Hit> {
    let window = &pool[..pool.len().min(QUOTA_WINDOW * k)];
    let spread = match (window.first(), window.last()) {
        (Some(a), Some(b)) => (b.dist - a.dist).max(0.0),
        _ => 0.0,
    };
    let mut out: Vec<Hit> = pool
        .iter()
        .map(|&h| {
            if eligible(e, c, h.row) {
                Hit {
                    dist: h.dist - e.boost * spread,
                    row: h.row,
                }
            } else {
                h
            }
        })
        .collect();
    out.sort_unstable();
    out
}

struct Picker<'a, C: ?Sized> {
    c: &'a C,
    shape: &'a Shape,
    chosen: Vec<Pick>,
    seen: HashSet<u32>,
    per_creator: HashMap<u32, usize>,
    non_quota_limit: usize,
    non_quota_taken: usize,
    quota: usize,
    boost: f32,
}

impl<C: Candidates + ?Sized> Picker<'_, C> {
    /// Takes `h` if every constraint allows it; otherwise says which one refused.
    fn try_take(
        &mut self,
        h: Hit,
        probe: usize,
        rank: usize,
        in_share: bool,
        moved_by: &mut Vec<&'static str>,
    ) -> bool {
        if self.seen.contains(&h.row) {
            return false; // already picked for another probe
        }
        let creator = self.c.creator_key(h.row);
        if let (Some(cap), Some(cr)) = (self.shape.max_per_creator, creator) {
            if self.per_creator.get(&cr).copied().unwrap_or(0) >= cap {
                push_once(moved_by, "max_per_creator");
                return false;
            }
        }
        // Only a quota counts items toward it (a boost alone reserves nothing).
        let emerging = self.quota > 0
            && self
                .shape
                .emerging
                .is_some_and(|e| rank < QUOTA_WINDOW * self.shape.k && eligible(&e, self.c, h.row));
        if !emerging && self.non_quota_taken >= self.non_quota_limit {
            push_once(moved_by, "emerging_quota");
            return false;
        }
        if let Some(cr) = creator {
            *self.per_creator.entry(cr).or_default() += 1;
        }
        if !emerging {
            self.non_quota_taken += 1;
        }
        self.seen.insert(h.row);
        self.chosen.push(Pick {
            row: h.row,
            dist: h.dist,
            probe,
            rank,
            emerging,
            boosted: self.boost > 0.0
                && self
                    .shape
                    .emerging
                    .is_some_and(|e| eligible(&e, self.c, h.row)),
            in_share,
            moved_by: std::mem::take(moved_by),
        });
        true
    }
}

fn push_once(v: &mut Vec<&'static str>, s: &'static str) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// Picks up to `shape.k` items from the candidate pools (one per probe, nearest first, with
/// the probes' slot-share `weights`) under the shape constraints. The same code picks from a
/// collection's pools ([`recommend`]) and from pools merged across shards.
pub fn pick<C: Candidates + ?Sized>(
    c: &C,
    weights: &[f32],
    pools: &[Vec<Hit>],
    shape: &Shape,
) -> Selection {
    match pools {
        [pool] if shape.max_per_creator.is_none() && shape.emerging.is_none() => {
            nearest(pool, shape.k)
        }
        _ => pick_constrained(c, weights, pools, shape),
    }
}

/// What [`pick_constrained`] picks from one pool when no shape constraint can refuse an
/// item: its first `k` rows. Most `similar` and `search` queries; this skips the picker's
/// hash sets (measured: 2.7 % of a server's CPU under single `similar` queries).
fn nearest(pool: &[Hit], k: usize) -> Selection {
    let mut picks: Vec<Pick> = Vec::with_capacity(k.min(pool.len()));
    for (rank, &h) in pool.iter().enumerate() {
        if picks.len() == k {
            break;
        }
        if picks.iter().any(|p| p.row == h.row) {
            continue;
        }
        picks.push(Pick {
            row: h.row,
            dist: h.dist,
            probe: 0,
            rank,
            emerging: false,
            boosted: false,
            in_share: true,
            moved_by: Vec::new(),
        });
    }
    picks.sort_by(|a, b| a.dist.total_cmp(&b.dist).then(a.row.cmp(&b.row)));
    Selection {
        picks,
        quota_requested: 0,
        quota_reserved: 0,
    }
}

fn pick_constrained<C: Candidates + ?Sized>(
    c: &C,
    weights: &[f32],
    pools: &[Vec<Hit>],
    shape: &Shape,
) -> Selection {
    let k = shape.k;
    // The boost moves emerging items up each pool before anything is picked (a copy of the
    // pools, only when a boost is asked for).
    let boost = shape.emerging.map_or(0.0, |e| e.boost);
    let boosted: Option<Vec<Vec<Hit>>> = shape
        .emerging
        .filter(|e| e.boost > 0.0)
        .map(|e| pools.iter().map(|p| boost_pool(c, &e, p, k)).collect());
    let pools: &[Vec<Hit>] = boosted.as_deref().unwrap_or(pools);
    // Emerging slots are reserved only as far as emerging items are within reach — and,
    // under a per-creator cap, as far as the cap lets their creators contribute.
    let quota = shape.emerging.map_or(0, |e| {
        let reachable: HashSet<u32> = pools
            .iter()
            .flat_map(|p| p.iter().take(QUOTA_WINDOW * k))
            .filter(|h| eligible(&e, c, h.row))
            .map(|h| h.row)
            .collect();
        let usable = match shape.max_per_creator {
            None => reachable.len(),
            Some(cap) => {
                let mut per: HashMap<u32, usize> = HashMap::new();
                for &r in &reachable {
                    *per.entry(c.creator_key(r).unwrap_or(u32::MAX - r))
                        .or_default() += 1;
                }
                per.values().map(|&n| n.min(cap)).sum()
            }
        };
        e.slots(k).min(usable)
    });
    let mut p = Picker {
        c,
        shape,
        chosen: Vec::with_capacity(k),
        seen: HashSet::with_capacity(k),
        per_creator: HashMap::new(),
        non_quota_limit: k - quota,
        non_quota_taken: 0,
        quota,
        boost,
    };
    // Pass 1: each probe fills its share of the slots from its own candidates.
    let slots = share_slots(k, weights);
    for (j, hits) in pools.iter().enumerate() {
        let mut taken = 0;
        let mut moved = Vec::new();
        for (rank, &h) in hits.iter().enumerate() {
            if taken == slots[j] {
                break;
            }
            if p.try_take(h, j, rank, true, &mut moved) {
                taken += 1;
            }
        }
    }
    // Pass 2: backfill from all candidates, nearest first, when a probe ran short.
    // Pass 3: if the quota still cannot be met (e.g. capped creators), fill without it.
    for relax_quota in [false, true] {
        if p.chosen.len() >= k {
            break;
        }
        if relax_quota {
            p.non_quota_limit = k;
        }
        let mut all: Vec<(Hit, usize, usize)> = pools
            .iter()
            .enumerate()
            .flat_map(|(j, hits)| hits.iter().enumerate().map(move |(r, &h)| (h, j, r)))
            .collect();
        all.sort_by_key(|a| a.0);
        let mut moved = Vec::new();
        for (h, j, r) in all {
            if p.chosen.len() >= k {
                break;
            }
            p.try_take(h, j, r, false, &mut moved);
        }
    }
    let mut chosen = p.chosen;
    chosen.sort_by(|a, b| a.dist.total_cmp(&b.dist).then(a.row.cmp(&b.row)));
    Selection {
        picks: chosen,
        quota_requested: shape.emerging.map_or(0, |e| e.slots(k)),
        quota_reserved: quota,
    }
}

#[cfg(test)]
mod tests;
