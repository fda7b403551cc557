//! Constraints on a result list.
//!
//! *Hard* constraints decide whether an item may appear at all (excluded IDs, creator
//! allow/deny lists, popularity range); they run inside the graph walk as its filter.
//! *Shape* constraints depend on what else is in the list (at most N per creator, a share of
//! slots for emerging creators); `select` enforces them while it picks from candidates it
//! keeps widening until the list is full or the collection is exhausted.

use earshot_core::delta::View;
use earshot_core::format::NONE_U32;

/// Per-item admission test.
#[derive(Debug, Default, Clone)]
pub struct HardFilter {
    /// Rows never to return (sorted, deduplicated).
    pub exclude: Vec<u32>,
    /// Only items of these creators (creator indices, sorted) when set.
    pub allow_creators: Option<Vec<u32>>,
    /// Never items of these creators (sorted).
    pub deny_creators: Vec<u32>,
    pub min_popularity: Option<f32>,
    pub max_popularity: Option<f32>,
}

impl HardFilter {
    pub fn is_trivial(&self) -> bool {
        self.exclude.is_empty()
            && self.allow_creators.is_none()
            && self.deny_creators.is_empty()
            && self.min_popularity.is_none()
            && self.max_popularity.is_none()
    }

    #[inline]
    pub fn accepts(&self, c: View<'_>, row: u32) -> bool {
        if !c.is_live(row) {
            return false;
        }
        if !self.exclude.is_empty() && self.exclude.binary_search(&row).is_ok() {
            return false;
        }
        if self.allow_creators.is_some() || !self.deny_creators.is_empty() {
            let creator = c.creator_index(row).unwrap_or(NONE_U32);
            if let Some(allow) = &self.allow_creators {
                if allow.binary_search(&creator).is_err() {
                    return false;
                }
            }
            if self.deny_creators.binary_search(&creator).is_ok() {
                return false;
            }
        }
        if self.min_popularity.is_some() || self.max_popularity.is_some() {
            // Items of unknown popularity fail any popularity bound.
            let Some(p) = c.popularity(row) else {
                return false;
            };
            if self.min_popularity.is_some_and(|m| p < m)
                || self.max_popularity.is_some_and(|m| p > m)
            {
                return false;
            }
        }
        true
    }

    /// Base rows worth scanning exhaustively when the filter lets few through, or None when
    /// a graph walk is the better plan (a delta's items are always scanned). An allow-list is counted exactly from the creators'
    /// postings; other filters are estimated on an even sample of 1,024 rows.
    pub fn small_candidate_set(&self, c: View<'_>, threshold: usize) -> Option<Vec<u32>> {
        if let Some(allow) = &self.allow_creators {
            let total: usize = allow.iter().map(|&a| c.base.creator_items(a).len()).sum();
            if total <= threshold {
                let mut rows: Vec<u32> = allow
                    .iter()
                    .flat_map(|&a| c.base.creator_items(a).iter().copied())
                    .filter(|&r| self.accepts(c, r))
                    .collect();
                rows.sort_unstable();
                return Some(rows);
            }
        }
        if self.is_trivial() {
            return None;
        }
        let n = c.base.len();
        if self.allow_creators.is_none()
            && self.deny_creators.is_empty()
            && self.min_popularity.is_none()
            && self.max_popularity.is_none()
        {
            // Exclusions alone (e.g. `similar` leaving out its own item): the count is exact,
            // no need to sample.
            return (n.saturating_sub(self.exclude.len()) <= threshold)
                .then(|| (0..n as u32).filter(|&r| self.accepts(c, r)).collect());
        }
        let sample = n.min(1024);
        let step = n / sample;
        let passing = (0..sample)
            .filter(|&i| self.accepts(c, (i * step) as u32))
            .count();
        let estimate = passing * n / sample.max(1);
        if estimate <= threshold {
            Some((0..n as u32).filter(|&r| self.accepts(c, r)).collect())
        } else {
            None
        }
    }
}

/// "Emerging creators" quota.
#[derive(Debug, Clone, Copy)]
pub struct Emerging {
    /// A creator is emerging when its popularity is at most this.
    pub max_popularity: f32,
    /// Share of the k slots reserved for items of emerging creators (0 … 1).
    pub min_share: f32,
    /// Score boost of emerging items, relative to the spread of the candidates' distances
    /// (0 = none; see `select::pick`).
    pub boost: f32,
}

impl Emerging {
    pub fn slots(&self, k: usize) -> usize {
        ((self.min_share * k as f32).ceil() as usize).min(k)
    }

    /// Whether `row`'s creator is emerging (unknown popularity → not emerging).
    pub fn eligible(&self, c: View<'_>, row: u32) -> bool {
        c.creator_index(row)
            .and_then(|ci| c.creator_popularity(ci))
            .is_some_and(|p| p <= self.max_popularity)
    }
}

/// Constraints that depend on the whole list.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub k: usize,
    pub max_per_creator: Option<usize>,
    pub emerging: Option<Emerging>,
}

/// How far down the unconstrained ranking an emerging item may sit and still take a quota
/// slot ("reasonably close"): the `QUOTA_WINDOW × k` nearest admissible items.
pub const QUOTA_WINDOW: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{at, collection, Item};
    use earshot_core::collection::Collection;
    use earshot_core::metric::Metric;

    /// Rows 0…9: creators "a" (even) and "b" (odd), popularity = row; row 10: no creator,
    /// no popularity.
    fn fixture() -> (tempfile::TempDir, Collection) {
        let mut items: Vec<Item> = (0..10)
            .map(|x| at(x as f32, ["a", "b"][x % 2], x as f32))
            .collect();
        items.push(Item {
            vector: vec![10.0, 1.0],
            creator: None,
            popularity: None,
        });
        collection(Metric::L2, items)
    }

    fn admitted(f: &HardFilter, c: &Collection) -> Vec<u32> {
        (0..c.len() as u32)
            .filter(|&r| f.accepts(c.into(), r))
            .collect()
    }

    #[test]
    fn hard_filters_admit_what_they_say() {
        let (_dir, c) = fixture();
        let (a, b) = (c.creators.find("a").unwrap(), c.creators.find("b").unwrap());
        let all: Vec<u32> = (0..11).collect();
        assert!(HardFilter::default().is_trivial());
        assert_eq!(admitted(&HardFilter::default(), &c), all);
        let f = HardFilter {
            exclude: vec![0, 5],
            ..Default::default()
        };
        assert!(!f.is_trivial());
        assert_eq!(admitted(&f, &c), [1, 2, 3, 4, 6, 7, 8, 9, 10]);
        // An allow-list leaves out items without a creator; a deny-list keeps them.
        let f = HardFilter {
            allow_creators: Some(vec![a]),
            ..Default::default()
        };
        assert_eq!(admitted(&f, &c), [0, 2, 4, 6, 8]);
        let f = HardFilter {
            deny_creators: vec![a],
            ..Default::default()
        };
        assert_eq!(admitted(&f, &c), [1, 3, 5, 7, 9, 10]);
        let f = HardFilter {
            allow_creators: Some(vec![a, b]),
            deny_creators: vec![b],
            ..Default::default()
        };
        assert_eq!(admitted(&f, &c), [0, 2, 4, 6, 8]);
        // Bounds are inclusive; unknown popularity fails any bound.
        let f = HardFilter {
            min_popularity: Some(3.0),
            max_popularity: Some(5.0),
            ..Default::default()
        };
        assert_eq!(admitted(&f, &c), [3, 4, 5]);
        let f = HardFilter {
            max_popularity: Some(f32::MAX),
            ..Default::default()
        };
        assert_eq!(admitted(&f, &c), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn small_candidate_sets_are_exact() {
        let (_dir, c) = fixture();
        let a = c.creators.find("a").unwrap();
        assert_eq!(
            HardFilter::default().small_candidate_set((&c).into(), 100),
            None
        );
        // An allow-list counts its creators' items.
        let f = HardFilter {
            allow_creators: Some(vec![a]),
            exclude: vec![2],
            ..Default::default()
        };
        assert_eq!(
            f.small_candidate_set((&c).into(), 5),
            Some(vec![0, 4, 6, 8])
        );
        // Exclusions alone: 11 − 2 rows left.
        let f = HardFilter {
            exclude: vec![0, 1],
            ..Default::default()
        };
        assert_eq!(f.small_candidate_set((&c).into(), 8), None);
        assert_eq!(
            f.small_candidate_set((&c).into(), 9),
            Some((2..11).collect())
        );
        // Other filters are estimated; on 11 rows the sample is every row.
        let f = HardFilter {
            min_popularity: Some(8.0),
            ..Default::default()
        };
        assert_eq!(f.small_candidate_set((&c).into(), 2), Some(vec![8, 9]));
        assert_eq!(f.small_candidate_set((&c).into(), 1), None);
    }

    #[test]
    fn emerging_creators_and_their_slots() {
        // Creator popularity is the sum over its items: a = 0+2+…+8 = 20, b = 25.
        let (_dir, c) = fixture();
        let e = Emerging {
            max_popularity: 22.0,
            min_share: 0.3,
            boost: 0.0,
        };
        assert!(e.eligible((&c).into(), 0));
        assert!(!e.eligible((&c).into(), 1));
        assert!(!e.eligible((&c).into(), 10), "no creator: not emerging");
        assert_eq!(e.slots(10), 3);
        assert_eq!(e.slots(4), 2, "rounded up");
        let all = Emerging {
            max_popularity: 22.0,
            min_share: 1.0,
            boost: 0.0,
        };
        assert_eq!(all.slots(7), 7);
        let none = Emerging {
            max_popularity: 22.0,
            min_share: 0.0,
            boost: 0.0,
        };
        assert_eq!(none.slots(7), 0);
    }
}
