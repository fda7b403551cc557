//! The merged pool of a query: every candidate any shard returned, each once, with its
//! creator as one key across shards — what `earshot_recommend::select::pick` picks from, as
//! `serve` picks from a collection.

use std::collections::HashMap;

use earshot_core::search::Hit;
use earshot_recommend::select::Candidates;
use serde::Deserialize;

/// One hit of a shard's pool-mode answer.
#[derive(Deserialize)]
pub(crate) struct PoolHit {
    id: String,
    score: f32,
    creator: Option<String>,
    popularity: Option<f32>,
    #[serde(default)]
    creator_popularity: Option<f32>,
}

#[derive(Deserialize)]
pub(crate) struct PoolAnswer {
    pub(crate) results: Vec<PoolHit>,
}

/// An item of the merged pool.
pub struct PoolItem {
    pub id: String,
    pub creator: Option<String>,
    pub popularity: Option<f32>,
    creator_popularity: Option<f32>,
}

/// Every candidate any shard returned for a query, each once; "rows" are positions here.
#[derive(Default)]
pub struct Pool {
    pub items: Vec<PoolItem>,
    by_id: HashMap<String, u32>,
    creator_keys: Vec<Option<u32>>,
    creators: HashMap<String, u32>,
}

impl Pool {
    pub(crate) fn intern(&mut self, h: PoolHit) -> u32 {
        if let Some(&row) = self.by_id.get(&h.id) {
            return row;
        }
        let row = self.items.len() as u32;
        let key = h.creator.as_ref().map(|c| {
            let next = self.creators.len() as u32;
            *self.creators.entry(c.clone()).or_insert(next)
        });
        self.by_id.insert(h.id.clone(), row);
        self.creator_keys.push(key);
        self.items.push(PoolItem {
            id: h.id,
            creator: h.creator,
            popularity: h.popularity,
            creator_popularity: h.creator_popularity,
        });
        row
    }
}

impl Candidates for Pool {
    fn creator_key(&self, row: u32) -> Option<u32> {
        self.creator_keys[row as usize]
    }

    fn creator_popularity_of(&self, row: u32) -> Option<f32> {
        self.items[row as usize].creator_popularity
    }
}

/// One probe's pool from the shards' answers (each asked for `kp`): the `size` nearest,
/// nearest first (ties by pool position), and whether it is complete — every shard had
/// fewer than `kp` and together fewer than `size`, so no admissible item is left out.
pub(crate) fn merge(
    pool: &mut Pool,
    answers: Vec<Vec<PoolHit>>,
    kp: usize,
    size: usize,
) -> (Vec<Hit>, bool) {
    let mut hits = Vec::with_capacity(answers.iter().map(Vec::len).sum());
    let mut exhausted = true;
    for results in answers {
        exhausted &= results.len() < kp;
        for h in results {
            let dist = -h.score;
            let row = pool.intern(h);
            hits.push(Hit { dist, row });
        }
    }
    hits.sort_unstable();
    hits.dedup_by_key(|h| h.row);
    let complete = exhausted && hits.len() < size;
    hits.truncate(size);
    (hits, complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_recommend::constraints::{Emerging, Shape};
    use earshot_recommend::select::pick;

    fn hit(id: &str, score: f32, creator: &str, creator_popularity: f32) -> PoolHit {
        PoolHit {
            id: id.into(),
            score,
            creator: Some(creator.into()),
            popularity: Some(1.0),
            creator_popularity: Some(creator_popularity),
        }
    }

    #[test]
    fn merge_orders_by_score_and_knows_when_it_is_complete() {
        let mut pool = Pool::default();
        let a = vec![hit("a1", 0.9, "x", 5.0), hit("a2", 0.5, "y", 5.0)];
        let b = vec![hit("b1", 0.8, "x", 5.0), hit("b2", 0.7, "z", 5.0)];
        let (hits, complete) = merge(&mut pool, vec![a, b], 2, 3);
        let ids: Vec<&str> = hits
            .iter()
            .map(|h| pool.items[h.row as usize].id.as_str())
            .collect();
        assert_eq!(ids, ["a1", "b1", "b2"]);
        assert_eq!(hits[0].dist, -0.9);
        // Both shards returned all 2 asked for: they may have more.
        assert!(!complete);
        // Creators are one key across shards.
        assert_eq!(pool.creator_key(0), pool.creator_key(2));
        assert_ne!(pool.creator_key(0), pool.creator_key(1));
        // Shards with fewer than asked and fewer than the pool size: complete.
        let mut pool = Pool::default();
        let (hits, complete) = merge(&mut pool, vec![vec![hit("a", 0.1, "x", 1.0)], vec![]], 3, 4);
        assert_eq!(hits.len(), 1);
        assert!(complete);
        // The same item seen again (another probe) keeps its position.
        let (hits, _) = merge(&mut pool, vec![vec![hit("a", 0.3, "x", 1.0)]], 3, 4);
        assert_eq!(hits[0].row, 0);
        assert_eq!(pool.items.len(), 1);
    }

    #[test]
    fn the_merged_pool_is_picked_with_the_shared_selection_code() {
        // Two shards: "big" (popular) items are nearest; emerging "new" ones further out.
        let mut pool = Pool::default();
        let s0 = (0..6)
            .map(|i| hit(&format!("s0-{i}"), 1.0 - i as f32 * 0.1, "big", 100.0))
            .collect();
        let s1 = vec![
            hit("s1-0", 0.95, "big", 100.0),
            hit("s1-1", 0.2, "new", 1.0),
            hit("s1-2", 0.1, "new2", 1.0),
        ];
        let (hits, _) = merge(&mut pool, vec![s0, s1], 10, 100);
        let shape = Shape {
            k: 4,
            max_per_creator: Some(3),
            emerging: Some(Emerging {
                max_popularity: 10.0,
                min_share: 0.25,
                boost: 0.0,
            }),
        };
        let sel = pick(&pool, &[1.0], &[hits], &shape);
        let ids: Vec<&str> = sel
            .picks
            .iter()
            .map(|p| pool.items[p.row as usize].id.as_str())
            .collect();
        // Three by "big" (the cap), then the nearest emerging item fills its quota slot.
        assert_eq!(ids, ["s0-0", "s1-0", "s0-1", "s1-1"]);
        assert_eq!((sel.quota_requested, sel.quota_reserved), (1, 1));
        assert!(sel.picks[3].emerging);
    }
}
