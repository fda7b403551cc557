//! From a history's evidence to taste probes (the model is in [`crate::history`]): repeated
//! items are merged, the positive ones clustered into taste centroids, and each centroid is
//! pulled away from the negative evidence and becomes one query of the recommended-from
//! collection.
//!
//! The history's vectors come from any [`HistoryVectors`]: a served collection's rows, or
//! vectors a router fetched from the shards that own the history's items.

use std::collections::BTreeMap;

use earshot_core::collection::Collection;
use earshot_core::delta::View;
use earshot_core::metric::Metric;

use crate::centroids::{self, Cluster};
use crate::history::{self, Evidence};
use crate::query;
use crate::select::Probe;

/// Why a history gives no taste to search for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TasteError {
    /// Only negative evidence (skips, dislikes): nothing says what to recommend.
    NoPositiveEvidence,
    /// More centroids asked for than there are distinct positively weighted items.
    TooManyCentroids { asked: usize, available: usize },
    /// A centroid is no usable query: the history's vectors cancel out.
    Degenerate,
}

/// Where the vectors of a history's rows come from.
pub trait HistoryVectors {
    /// The vector of `row` (the row an [`Evidence`] names).
    fn history_vector(&self, row: u32) -> &[f32];
}

impl HistoryVectors for Collection {
    #[inline]
    fn history_vector(&self, row: u32) -> &[f32] {
        self.vector(row)
    }
}

impl HistoryVectors for View<'_> {
    #[inline]
    fn history_vector(&self, row: u32) -> &[f32] {
        self.vector(row)
    }
}

/// The evidence of one history, merged per item and split by sign.
pub struct Taste<'a> {
    /// (vector, weight > 0), one per distinct item, by row.
    positives: Vec<(&'a [f32], f32)>,
    /// (vector, weight < 0), one per distinct item, by row.
    negatives: Vec<(&'a [f32], f32)>,
    /// The rows of `positives` and `negatives`, in the same order.
    positive_rows: Vec<u32>,
    negative_rows: Vec<u32>,
}

/// A history item as a seed of the seed-based strategies ([`crate::strategy`]).
#[derive(Debug, Clone, Copy)]
pub struct Seed<'a> {
    /// Its row in the history's source.
    pub row: u32,
    pub vector: &'a [f32],
    /// Signed evidence, scaled so the largest magnitude is 1.
    pub weight: f32,
}

impl<'a> Taste<'a> {
    /// Merges `evidence` (rows of `source`): one point per distinct row with its evidence
    /// summed in f64, then scaled so the largest magnitude is 1 (weights are relative, and
    /// sums near f32::MAX must not overflow).
    pub fn new<S: HistoryVectors + ?Sized>(
        source: &'a S,
        evidence: &[Evidence],
    ) -> Result<Self, TasteError> {
        let mut sums: BTreeMap<u32, f64> = BTreeMap::new();
        for e in evidence {
            *sums.entry(e.row).or_default() += e.weight;
        }
        let largest = sums.values().fold(0f64, |m, w| m.max(w.abs()));
        let mut positives = Vec::new();
        let mut negatives = Vec::new();
        let mut positive_rows = Vec::new();
        let mut negative_rows = Vec::new();
        for (row, w) in sums {
            let w = if largest > 0.0 {
                (w / largest) as f32
            } else {
                0.0
            };
            if w > 0.0 {
                positives.push((source.history_vector(row), w));
                positive_rows.push(row);
            } else if w < 0.0 {
                negatives.push((source.history_vector(row), w));
                negative_rows.push(row);
            }
        }
        if positives.is_empty() {
            return Err(TasteError::NoPositiveEvidence);
        }
        Ok(Self {
            positives,
            negatives,
            positive_rows,
            negative_rows,
        })
    }

    /// The seeds of the seed-based strategies ([`crate::strategy`]): the `items` heaviest
    /// positive items, then the `items` heaviest negative ones. Ties go to the earlier row.
    /// `out` is cleared first.
    pub fn seeds(&self, items: usize, out: &mut Vec<Seed<'a>>) {
        out.clear();
        for (side, rows) in [
            (&self.positives, &self.positive_rows),
            (&self.negatives, &self.negative_rows),
        ] {
            let start = out.len();
            out.extend(side.iter().zip(rows).map(|(&(vector, weight), &row)| Seed {
                row,
                vector,
                weight,
            }));
            // Stable: equal weights keep row order.
            out[start..].sort_by(|a, b| b.weight.abs().total_cmp(&a.weight.abs()));
            out.truncate(start + items.min(side.len()));
        }
    }

    /// Distinct positively weighted items: the most centroids the taste can have.
    pub fn positive_items(&self) -> usize {
        self.positives.len()
    }

    /// One probe per taste centroid, as queries of `c` (which must share the source
    /// collection's dimension). Zero centroids give no probes.
    pub fn probes(&self, c: View<'_>, centroids: usize) -> Result<Vec<Probe>, TasteError> {
        self.probes_in(c.base.manifest.metric, c.dim(), centroids)
    }

    /// [`Taste::probes`] for a collection known only by its metric and dimension (a router's
    /// view of a sharded collection).
    pub fn probes_in(
        &self,
        metric: Metric,
        dim: usize,
        centroids: usize,
    ) -> Result<Vec<Probe>, TasteError> {
        if centroids > self.positives.len() {
            return Err(TasteError::TooManyCentroids {
                asked: centroids,
                available: self.positives.len(),
            });
        }
        let clusters = if centroids == 1 {
            let total: f32 = self.positives.iter().map(|(_, w)| w).sum();
            let centre = history::weighted_mean(self.positives.iter().copied(), dim)
                .ok_or(TasteError::Degenerate)?;
            vec![Cluster {
                centre,
                weight: total,
            }]
        } else {
            centroids::kmeans(&self.positives, centroids, dim)
        };
        clusters
            .into_iter()
            .map(|cl| {
                let mut t = cl.centre;
                history::pull_away(&mut t, cl.weight, &self.negatives);
                // A zero taste is no direction under any metric (under l2 it would rank by
                // norm alone), so it is refused everywhere, not only where `prepare` must.
                if t.iter().all(|&x| x == 0.0) {
                    return Err(TasteError::Degenerate);
                }
                let mut query =
                    query::prepare_in(metric, dim, &t).map_err(|_| TasteError::Degenerate)?;
                // Under dot a centroid's scores scale with its norm, so the lists of several
                // centroids would not be comparable when merged: each centroid searches with
                // its unit direction instead (the same ranking; scores are projections).
                if metric == Metric::Dot && centroids > 1 {
                    earshot_core::distance::normalize(&mut query);
                }
                Ok(Probe {
                    query,
                    weight: cl.weight,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{collection, Item};
    use earshot_core::metric::Metric;

    /// Under dot, vectors are stored as given: rows [1,0], [2,0], [0,1], [0,2].
    fn fixture() -> (tempfile::TempDir, Collection) {
        let items = [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 2.0]]
            .into_iter()
            .map(|v| Item {
                vector: v.to_vec(),
                creator: None,
                popularity: None,
            })
            .collect();
        collection(Metric::Dot, items)
    }

    fn ev(row: u32, weight: f64) -> Evidence {
        Evidence { row, weight }
    }

    #[test]
    fn repeated_items_merge_and_signs_split() {
        let (_dir, c) = fixture();
        let t = Taste::new(&c, &[ev(0, 1.0), ev(0, 1.0), ev(2, 1.0), ev(3, -0.5)]).unwrap();
        assert_eq!(t.positive_items(), 2);
        // An item whose evidence sums to zero counts for nothing.
        let t = Taste::new(&c, &[ev(0, 1.0), ev(2, 1.0), ev(2, -1.0)]).unwrap();
        assert_eq!(t.positive_items(), 1);
        assert_eq!(
            Taste::new(&c, &[ev(1, -2.0)]).err(),
            Some(TasteError::NoPositiveEvidence)
        );
        assert_eq!(
            Taste::new(&c, &[ev(0, 1.0), ev(0, -1.0)]).err(),
            Some(TasteError::NoPositiveEvidence)
        );
    }

    #[test]
    fn one_centroid_is_the_weighted_mean() {
        let (_dir, c) = fixture();
        // Scaled to 1/3 and 1: the mean is (1/3·[1,0] + [0,1]) / (4/3).
        let t = Taste::new(&c, &[ev(0, 1.0), ev(2, 3.0)]).unwrap();
        let p = t.probes((&c).into(), 1).unwrap();
        assert_eq!(p.len(), 1);
        assert!((p[0].query[0] - 0.25).abs() < 1e-6 && (p[0].query[1] - 0.75).abs() < 1e-6);
        assert!((p[0].weight - 4.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn centroids_split_the_positive_items() {
        let (_dir, c) = fixture();
        let t = Taste::new(&c, &[ev(0, 1.0), ev(2, 1.0)]).unwrap();
        let p = t.probes((&c).into(), 2).unwrap();
        let queries: Vec<&[f32]> = p.iter().map(|p| p.query.as_slice()).collect();
        assert_eq!(queries, [[1.0, 0.0], [0.0, 1.0]]);
        assert_eq!(
            t.probes((&c).into(), 3).err(),
            Some(TasteError::TooManyCentroids {
                asked: 3,
                available: 2
            })
        );
        assert!(t.probes((&c).into(), 0).unwrap().is_empty());
    }

    #[test]
    fn negative_evidence_pulls_the_taste_away() {
        let (_dir, c) = fixture();
        // t = P − β·N with β = 1/(1+1): [1,0] − ½·[0,2] = [1,−1].
        let t = Taste::new(&c, &[ev(0, 1.0), ev(3, -1.0)]).unwrap();
        assert_eq!(t.probes((&c).into(), 1).unwrap()[0].query, [1.0, -1.0]);
        // [1,0] − ½·[2,0] = 0: no direction left to search under dot.
        let t = Taste::new(&c, &[ev(0, 1.0), ev(1, -1.0)]).unwrap();
        assert_eq!(t.probes((&c).into(), 1).err(), Some(TasteError::Degenerate));
    }

    #[test]
    fn seeds_are_the_heaviest_items_of_each_sign() {
        let (_dir, c) = fixture();
        let t = Taste::new(&c, &[ev(0, 1.0), ev(1, 3.0), ev(2, 3.0), ev(3, -0.5)]).unwrap();
        let mut seeds = Vec::new();
        t.seeds(2, &mut seeds);
        let got: Vec<(u32, &[f32], f32)> =
            seeds.iter().map(|s| (s.row, s.vector, s.weight)).collect();
        // Rows 1 and 2 tie at weight 1 (scaled): row order; then the one negative.
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[0].1), (1, &[2.0, 0.0][..]));
        assert_eq!((got[1].0, got[1].1), (2, &[0.0, 1.0][..]));
        assert_eq!((got[2].0, got[2].1), (3, &[0.0, 2.0][..]));
        assert!(got[2].2 < 0.0);
        t.seeds(1, &mut seeds);
        assert_eq!(seeds.len(), 2);
    }

    #[test]
    fn a_zero_taste_is_degenerate_under_every_metric() {
        // (Cosine collections cannot hold a zero vector: the build normalises.)
        for metric in [Metric::L2, Metric::Dot] {
            let items = [[1.0, 0.0], [0.0, 0.0]]
                .into_iter()
                .map(|v| Item {
                    vector: v.to_vec(),
                    creator: None,
                    popularity: None,
                })
                .collect();
            let (_dir, c) = collection(metric, items);
            let t = Taste::new(&c, &[ev(1, 1.0)]).unwrap();
            assert_eq!(
                t.probes((&c).into(), 1).err(),
                Some(TasteError::Degenerate),
                "{metric:?}"
            );
            // A repeated item is one point, still a taste.
            let t = Taste::new(&c, &[ev(0, 1.0), ev(0, 1.0)]).unwrap();
            assert!(t.probes((&c).into(), 1).is_ok());
        }
    }

    #[test]
    fn dot_centroids_search_with_unit_directions() {
        let (_dir, c) = fixture();
        // Rows [2,0] and [0,2]: two centroids of norm 2, each searched as a unit vector.
        let t = Taste::new(&c, &[ev(1, 1.0), ev(3, 1.0)]).unwrap();
        let p = t.probes((&c).into(), 2).unwrap();
        assert_eq!(p[0].query, [1.0, 0.0]);
        assert_eq!(p[1].query, [0.0, 1.0]);
        // One centroid keeps the mean as it is (today's scores).
        assert_eq!(t.probes((&c).into(), 1).unwrap()[0].query, [1.0, 1.0]);
    }
}
