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
