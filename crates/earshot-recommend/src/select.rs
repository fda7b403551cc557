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
mod tests {
    use super::*;
    use crate::constraints::Emerging;
    use crate::testing::{at, collection};
    use earshot_core::metric::Metric;

    fn probe(x: f32, weight: f32) -> Probe {
        Probe {
            query: vec![x, 1.0],
            weight,
        }
    }

    fn shape(k: usize) -> Shape {
        Shape {
            k,
            ..Default::default()
        }
    }

    fn rows(s: &Selection) -> Vec<u32> {
        s.picks.iter().map(|p| p.row).collect()
    }

    #[test]
    fn nearest_first_without_constraints() {
        let (_dir, c) = collection(
            Metric::L2,
            (0..20).map(|x| at(x as f32, "a", 1.0)).collect(),
        );
        let s = recommend(
            (&c).into(),
            &[probe(0.0, 1.0)],
            &HardFilter::default(),
            &shape(5),
            16,
        );
        assert_eq!(rows(&s), [0, 1, 2, 3, 4]);
        for (i, p) in s.picks.iter().enumerate() {
            assert_eq!((p.probe, p.rank), (0, i));
            assert!(p.in_share && !p.emerging && p.moved_by.is_empty());
        }
        assert_eq!((s.quota_requested, s.quota_reserved), (0, 0));
    }

    #[test]
    fn one_unconstrained_pool_is_picked_as_the_picker_would() {
        let (_dir, c) = collection(
            Metric::L2,
            (0..20).map(|x| at(x as f32, "a", 1.0)).collect(),
        );
        let v: View<'_> = (&c).into();
        let key = |s: &Selection| -> Vec<(u32, u32, usize, usize, bool, bool, bool)> {
            s.picks
                .iter()
                .map(|p| {
                    let f = (p.emerging, p.boosted, p.in_share);
                    (p.row, p.dist.to_bits(), p.probe, p.rank, f.0, f.1, f.2)
                })
                .collect()
        };
        // Ties, a repeated row, fewer candidates than k, none at all.
        let pools: [Vec<Hit>; 4] = [
            (0..16)
                .map(|r| Hit {
                    dist: (r / 3) as f32,
                    row: 15 - r,
                })
                .collect(),
            [3, 7, 3, 1, 9]
                .map(|r| Hit {
                    dist: r as f32,
                    row: r,
                })
                .to_vec(),
            vec![Hit { dist: 0.5, row: 2 }],
            Vec::new(),
        ];
        for pool in pools {
            for k in [1, 4, 10] {
                let fast = pick(&v, &[1.0], std::slice::from_ref(&pool), &shape(k));
                let slow = pick_constrained(&v, &[1.0], std::slice::from_ref(&pool), &shape(k));
                assert_eq!(key(&fast), key(&slow), "k {k}, pool {pool:?}");
                assert_eq!(fast.quota_requested + fast.quota_reserved, 0);
            }
        }
    }

    #[test]
    fn max_per_creator_passes_over_nearer_items() {
        // x = 0…5 by "a", then "b" and "c" in turn.
        let items = (0..21)
            .map(|x| {
                at(
                    x as f32,
                    ["a", "b", "c"][(x >= 6) as usize * (1 + x % 2)],
                    1.0,
                )
            })
            .collect();
        let (_dir, c) = collection(Metric::L2, items);
        let shape = Shape {
            k: 4,
            max_per_creator: Some(2),
            emerging: None,
        };
        let s = recommend(
            (&c).into(),
            &[probe(0.0, 1.0)],
            &HardFilter::default(),
            &shape,
            16,
        );
        assert_eq!(rows(&s), [0, 1, 6, 7]);
        assert_eq!(s.picks[2].moved_by, ["max_per_creator"]);
        assert!(s.picks[3].moved_by.is_empty());
    }

    #[test]
    fn emerging_boost_moves_emerging_items_up_by_a_share_of_the_spread() {
        let mut items: Vec<_> = (0..16).map(|x| at(x as f32, "big", 100.0)).collect();
        items.push(at(16.0, "new1", 1.0));
        items.push(at(17.0, "new2", 1.0));
        let (_dir, c) = collection(Metric::L2, items);
        let shape = |boost| Shape {
            k: 4,
            max_per_creator: None,
            emerging: Some(Emerging {
                max_popularity: 10.0,
                min_share: 0.0,
                boost,
            }),
        };
        let run = |boost| {
            recommend(
                (&c).into(),
                &[probe(0.0, 1.0)],
                &HardFilter::default(),
                &shape(boost),
                16,
            )
        };
        // Squared distances 0 … 289: spread 289. A boost of 0.1 (28.9) is not enough.
        let s = run(0.1);
        assert_eq!(rows(&s), [0, 1, 2, 3]);
        assert_eq!(s.quota_requested, 0);
        // 0.9 (260.1): row 16 goes first (256 − 260.1), row 17 (28.9) sits after 5² = 25.
        let s = run(0.9);
        assert_eq!(rows(&s), [16, 0, 1, 2]);
        assert!(s.picks[0].boosted && !s.picks[0].emerging && !s.picks[1].boosted);
        assert!((s.picks[0].dist + 4.1).abs() < 1e-3);
    }

    #[test]
    fn emerging_quota_reserves_slots_within_reach() {
        // "big" (popularity 16 × 100) is nearest; two emerging creators further out.
        let mut items: Vec<_> = (0..16).map(|x| at(x as f32, "big", 100.0)).collect();
        items.push(at(16.0, "new1", 1.0));
        items.push(at(17.0, "new2", 1.0));
        let (_dir, c) = collection(Metric::L2, items);
        let shape = |min_share| Shape {
            k: 4,
            max_per_creator: None,
            emerging: Some(Emerging {
                max_popularity: 10.0,
                min_share,
                boost: 0.0,
            }),
        };
        let s = recommend(
            (&c).into(),
            &[probe(0.0, 1.0)],
            &HardFilter::default(),
            &shape(0.5),
            16,
        );
        assert_eq!(rows(&s), [0, 1, 16, 17]);
        assert_eq!((s.quota_requested, s.quota_reserved), (2, 2));
        assert!(s.picks[2].emerging && s.picks[3].emerging);
        assert_eq!(s.picks[2].moved_by, ["emerging_quota"]);
        // Three slots asked for, two emerging items exist: two reserved, the rest nearest.
        let s = recommend(
            (&c).into(),
            &[probe(0.0, 1.0)],
            &HardFilter::default(),
            &shape(0.75),
            16,
        );
        assert_eq!(rows(&s), [0, 1, 16, 17]);
        assert_eq!((s.quota_requested, s.quota_reserved), (3, 2));
    }

    #[test]
    fn probes_share_the_slots_by_weight() {
        let items = (0..10)
            .map(|x| at(x as f32, "a", 1.0))
            .chain((0..10).map(|x| at(100.0 + x as f32, "b", 1.0)))
            .collect();
        let (_dir, c) = collection(Metric::L2, items);
        let probes = [probe(0.0, 3.0), probe(100.0, 1.0)];
        let s = recommend((&c).into(), &probes, &HardFilter::default(), &shape(4), 16);
        // Sorted by distance to their own probe, ties by row.
        assert_eq!(rows(&s), [0, 10, 1, 2]);
        let probe_of: Vec<usize> = s.picks.iter().map(|p| p.probe).collect();
        assert_eq!(probe_of, [0, 1, 0, 0]);
        assert!(s.picks.iter().all(|p| p.in_share));
    }

    #[test]
    fn a_probe_that_runs_short_is_backfilled() {
        // Near 0: x = 0 and 1 by "c0" and "c1", 2…12 each by a creator of its own, 13…49
        // by "c0" and "c1" again. Near 1000: three items by "z". Probe 1's pool (the 40
        // nearest to 1000) holds "z" and the capped "c0" / "c1" only: it takes one item,
        // and the list is backfilled from probe 0's candidates.
        const OWN: [&str; 11] = [
            "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d10", "d11", "d12",
        ];
        let items = (0..50)
            .map(|x| {
                let creator = match x {
                    2..=12 => OWN[x - 2],
                    _ => ["c0", "c1"][x % 2],
                };
                at(x as f32, creator, 1.0)
            })
            .chain((0..3).map(|x| at(1000.0 + x as f32, "z", 1.0)))
            .collect();
        let (_dir, c) = collection(Metric::L2, items);
        let shape = Shape {
            k: 4,
            max_per_creator: Some(1),
            emerging: None,
        };
        let probes = [probe(0.0, 1.0), probe(1000.0, 1.0)];
        let s = recommend((&c).into(), &probes, &HardFilter::default(), &shape, 16);
        let taken: Vec<(u32, usize, bool)> = s
            .picks
            .iter()
            .map(|p| (p.row, p.probe, p.in_share))
            .collect();
        assert_eq!(
            taken,
            [(0, 0, true), (50, 1, true), (1, 0, true), (2, 0, false)]
        );
    }

    /// A pool merged elsewhere (e.g. by a router): creators and their popularity by position.
    struct Merged {
        creators: Vec<Option<u32>>,
        popularity: Vec<Option<f32>>,
    }

    impl Candidates for Merged {
        fn creator_key(&self, row: u32) -> Option<u32> {
            self.creators[row as usize]
        }
        fn creator_popularity_of(&self, row: u32) -> Option<f32> {
            self.popularity[row as usize]
        }
    }

    #[test]
    fn pick_over_a_merged_pool_matches_the_collection() {
        // The fixture of `emerging_quota_reserves_slots_within_reach` plus a creator cap,
        // picked once from the collection and once from a pool that only knows creators.
        let mut items: Vec<_> = (0..16)
            .map(|x| at(x as f32, ["big", "big2"][x % 2], 100.0))
            .collect();
        items.push(at(16.0, "new1", 1.0));
        items.push(at(17.0, "new2", 1.0));
        let (_dir, c) = collection(Metric::L2, items);
        let shape = Shape {
            k: 5,
            max_per_creator: Some(2),
            emerging: Some(Emerging {
                max_popularity: 10.0,
                min_share: 0.4,
                boost: 0.0,
            }),
        };
        let want = recommend(
            (&c).into(),
            &[probe(0.0, 1.0)],
            &HardFilter::default(),
            &shape,
            16,
        );
        let hits: Vec<Hit> = (0..18)
            .map(|r| Hit {
                row: r,
                dist: (r * r) as f32,
            })
            .collect();
        let merged = Merged {
            creators: (0..18).map(|r| c.creator_index(r)).collect(),
            popularity: (0..18)
                .map(|r| c.creator_index(r).and_then(|ci| c.creator_popularity(ci)))
                .collect(),
        };
        let got = pick(&merged, &[1.0], &[hits], &shape);
        assert_eq!(rows(&got), rows(&want));
        assert_eq!(rows(&got), [0, 1, 2, 16, 17]);
        assert_eq!(
            (got.quota_requested, got.quota_reserved),
            (want.quota_requested, want.quota_reserved)
        );
        let flags = |s: &Selection| -> Vec<(bool, Vec<&str>)> {
            s.picks
                .iter()
                .map(|p| (p.emerging, p.moved_by.clone()))
                .collect()
        };
        assert_eq!(flags(&got), flags(&want));
    }

    #[test]
    fn hard_filter_runs_inside_the_walk() {
        // Even x by "a", odd by "b"; popularity = x.
        let items = (0..30)
            .map(|x| at(x as f32, ["a", "b"][x % 2], x as f32))
            .collect();
        let (_dir, c) = collection(Metric::L2, items);
        let b = c.creators.find("b").unwrap();
        let filter = HardFilter {
            exclude: vec![10],
            deny_creators: vec![b],
            min_popularity: Some(8.0),
            ..Default::default()
        };
        let s = recommend((&c).into(), &[probe(0.0, 1.0)], &filter, &shape(3), 16);
        assert_eq!(rows(&s), [8, 12, 14]);
    }

    #[test]
    fn fewer_admissible_items_than_k_give_a_short_list() {
        let items = (0..40)
            .map(|x| at(x as f32, if x % 20 == 7 { "rare" } else { "common" }, 1.0))
            .collect();
        let (_dir, c) = collection(Metric::L2, items);
        let filter = HardFilter {
            allow_creators: Some(vec![c.creators.find("rare").unwrap()]),
            ..Default::default()
        };
        let s = recommend((&c).into(), &[probe(0.0, 1.0)], &filter, &shape(5), 16);
        assert_eq!(rows(&s), [7, 27]);
    }
}
