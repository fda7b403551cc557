//! Taste strategies beyond the averaged vector: item-based neighbours and Qdrant-like best
//! score. Both start from the history items themselves ("seeds"): each seed's own nearest
//! items are found by one walk per seed, and the candidates' scores are aggregated from
//! those lists here.
//!
//! - **neighbours** (item-based kNN): a candidate's score is
//!   `Σ_seed w_seed · sim(seed, candidate)` over the seeds whose list holds it; negative
//!   seeds (skips, dislikes) carry negative weights, so they subtract. With
//!   `damping = α > 0` a positive score is divided by `max(1, creator popularity)^α`.
//! - **best score**: a candidate's score is its best similarity to any positive seed whose
//!   list holds it, minus its best similarity to any negative seed whose list holds it
//!   (a candidate in no negative list loses nothing).
//!
//! Candidates are the items of the positive seeds' lists only. The similarity of a hit is
//! [`similarity`]: the dot product under dot, `1 − distance` under cosine and
//! `1 / (1 + ‖a − b‖)` under l2 (so that a sum of similarities grows with support under
//! every metric). The aggregated pool is a list of [`Hit`]s with `dist = −score`, nearest
//! (best) first, so [`crate::select::pick`] picks from it like from any other pool.
//!
//! Everything here is generic over [`Candidates`] (for the creator popularity of `damping`):
//! the same code runs on a collection's rows and on a router's merged pool.

use std::collections::HashMap;

use earshot_core::metric::Metric;
use earshot_core::search::Hit;

use crate::select::Candidates;

/// How a history becomes a ranked list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// The evidence-weighted mean of the history vectors (one probe per taste centroid).
    Mean,
    /// Item-based kNN: sum of the seeds' weighted similarities.
    Neighbours(FanOut),
    /// Best similarity to a positive seed minus the best to a negative one.
    BestScore(FanOut),
}

/// Names accepted for `strategy`, in the order the documentation lists them.
pub const STRATEGIES: &str = "mean, neighbours, best_score";

/// The bounded fan-out of the seed-based strategies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FanOut {
    /// Seeds: the heaviest positive history items (ties → earlier row), and as many of the
    /// heaviest negative ones.
    pub items: usize,
    /// Nearest items asked for per seed (k′).
    pub per_item: usize,
    /// Popularity damping exponent α (neighbours only; 0 = none).
    pub damping: f32,
}

/// Defaults of the fan-out, chosen on the Last.fm validation split (EVALUATION.md).
pub const DEFAULT_FAN_OUT: FanOut = FanOut {
    items: 50,
    per_item: 100,
    damping: 0.0,
};

/// Upper bounds of the fan-out a request may ask for.
pub const MAX_SEED_ITEMS: usize = 256;
pub const MAX_PER_ITEM: usize = 1024;
pub const MAX_DAMPING: f32 = 4.0;

impl Strategy {
    /// The strategy called `name` with `fan_out` (ignored by `mean`).
    pub fn parse(name: &str, fan_out: FanOut) -> Option<Self> {
        Some(match name {
            "mean" => Strategy::Mean,
            "neighbours" => Strategy::Neighbours(fan_out),
            "best_score" => Strategy::BestScore(fan_out),
            _ => return None,
        })
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Mean => "mean",
            Strategy::Neighbours(_) => "neighbours",
            Strategy::BestScore(_) => "best_score",
        }
    }

    pub fn fan_out(&self) -> Option<FanOut> {
        match *self {
            Strategy::Mean => None,
            Strategy::Neighbours(f) | Strategy::BestScore(f) => Some(f),
        }
    }
}

/// Higher is more similar; see the module documentation.
#[inline]
pub fn similarity(metric: Metric, dist: f32) -> f32 {
    match metric {
        Metric::Dot => -dist,
        Metric::Cosine => 1.0 - dist,
        Metric::L2 => 1.0 / (1.0 + dist.max(0.0).sqrt()),
    }
}

/// [`similarity`] from a result's score (`ResultItem.score`: the dot product, the cosine
/// similarity, or the negative Euclidean distance): how a router, which sees shards' scores
/// rather than internal distances, measures the same similarity.
#[inline]
pub fn similarity_of_score(metric: Metric, score: f32) -> f32 {
    match metric {
        Metric::Dot | Metric::Cosine => score,
        Metric::L2 => 1.0 / (1.0 + (-score).max(0.0)),
    }
}

/// One candidate's running score.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    sum: f32,
    best_pos: Option<f32>,
    best_neg: Option<f32>,
}

/// Reusable state of [`aggregate`] (one per thread or per request).
#[derive(Default)]
pub struct Aggregator {
    acc: HashMap<u32, Acc>,
}

impl Aggregator {
    /// Aggregates the seeds' lists into one pool, best first, into `out` (cleared first).
    /// `lists[i]` holds seed `i`'s hits (rows of `c`), `weights[i]` its signed evidence
    /// (> 0 positive, < 0 negative); `sim` turns a hit's `dist` into its similarity
    /// ([`similarity`] for a collection's own hits).
    pub fn aggregate<C: Candidates + ?Sized>(
        &mut self,
        c: &C,
        sim: impl Fn(f32) -> f32,
        strategy: Strategy,
        weights: &[f32],
        lists: &[&[Hit]],
        out: &mut Vec<Hit>,
    ) {
        self.acc.clear();
        out.clear();
        let best = matches!(strategy, Strategy::BestScore(_));
        let damping = match strategy {
            Strategy::Neighbours(f) => f.damping,
            _ => 0.0,
        };
        // Positive lists first: they decide the candidates.
        for (&w, hits) in weights.iter().zip(lists).filter(|(w, _)| **w > 0.0) {
            for h in hits.iter() {
                let s = sim(h.dist);
                let a = self.acc.entry(h.row).or_default();
                a.sum += w * s;
                a.best_pos = Some(a.best_pos.map_or(s, |b| b.max(s)));
            }
        }
        for (&w, hits) in weights.iter().zip(lists).filter(|(w, _)| **w < 0.0) {
            for h in hits.iter() {
                if let Some(a) = self.acc.get_mut(&h.row) {
                    let s = sim(h.dist);
                    a.sum += w * s;
                    a.best_neg = Some(a.best_neg.map_or(s, |b| b.max(s)));
                }
            }
        }
        out.extend(self.acc.iter().map(|(&row, a)| {
            let score = if best {
                a.best_pos.unwrap_or(0.0) - a.best_neg.unwrap_or(0.0)
            } else if damping > 0.0 {
                damp(a.sum, c.creator_popularity_of(row), damping)
            } else {
                a.sum
            };
            Hit { dist: -score, row }
        }));
        out.sort_unstable();
    }
}

/// `score / max(1, popularity)^α` for a positive score (`× …^α` for a negative one, so
/// damping always moves popular items down); unknown popularity counts as 1.
#[inline]
fn damp(score: f32, popularity: Option<f32>, alpha: f32) -> f32 {
    let p = popularity.unwrap_or(1.0).max(1.0).powf(alpha);
    if score >= 0.0 {
        score / p
    } else {
        score * p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows' creator popularity = the row number (row 0 unknown).
    struct Pop;
    impl Candidates for Pop {
        fn creator_key(&self, row: u32) -> Option<u32> {
            Some(row)
        }
        fn creator_popularity_of(&self, row: u32) -> Option<f32> {
            (row > 0).then_some(row as f32)
        }
    }

    fn hits(v: &[(u32, f32)]) -> Vec<Hit> {
        // Under dot the internal distance is the negated dot product.
        v.iter().map(|&(row, s)| Hit { dist: -s, row }).collect()
    }

    fn scores(out: &[Hit]) -> Vec<(u32, f32)> {
        out.iter().map(|h| (h.row, -h.dist)).collect()
    }

    const F: FanOut = DEFAULT_FAN_OUT;

    fn dot_sim(d: f32) -> f32 {
        similarity(Metric::Dot, d)
    }
    const DOT: fn(f32) -> f32 = dot_sim;

    #[test]
    fn neighbours_sum_weighted_similarities_and_negatives_subtract() {
        let a = hits(&[(1, 0.9), (2, 0.5)]);
        let b = hits(&[(2, 0.6), (3, 0.4)]);
        let n = hits(&[(2, 1.0), (4, 2.0)]);
        let mut agg = Aggregator::default();
        let mut out = Vec::new();
        agg.aggregate(
            &Pop,
            DOT,
            Strategy::Neighbours(F),
            &[1.0, 0.5],
            &[&a, &b],
            &mut out,
        );
        // 2: 0.5 + 0.5·0.6 = 0.8; 1: 0.9; 3: 0.2.
        assert_eq!(scores(&out), [(1, 0.9), (2, 0.8), (3, 0.2)]);
        agg.aggregate(
            &Pop,
            DOT,
            Strategy::Neighbours(F),
            &[1.0, 0.5, -0.5],
            &[&a, &b, &n],
            &mut out,
        );
        // 2 loses 0.5·1.0 (0.8 → 0.3); 4 is only in the negative list: no candidate.
        let s = scores(&out);
        assert_eq!(s[0], (1, 0.9));
        assert_eq!(s[1].0, 2);
        assert!((s[1].1 - 0.3).abs() < 1e-6);
        assert_eq!(s[2], (3, 0.2));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn damping_moves_popular_items_down() {
        let a = hits(&[(9, 1.0), (2, 0.6)]);
        let mut out = Vec::new();
        let damped = Strategy::Neighbours(FanOut { damping: 1.0, ..F });
        Aggregator::default().aggregate(&Pop, DOT, damped, &[1.0], &[&a], &mut out);
        // 9: 1/9; 2: 0.6/2.
        assert_eq!(out[0].row, 2);
        assert!((out[1].dist + 1.0 / 9.0).abs() < 1e-6);
    }

    #[test]
    fn best_score_takes_the_best_positive_minus_the_best_negative() {
        let a = hits(&[(1, 0.9), (2, 0.5)]);
        let b = hits(&[(2, 0.8), (3, 0.4)]);
        let n = hits(&[(1, 0.7), (1, 0.2)]);
        let mut out = Vec::new();
        Aggregator::default().aggregate(
            &Pop,
            DOT,
            Strategy::BestScore(F),
            // Weights only give the sign.
            &[0.1, 1.0, -3.0],
            &[&a, &b, &n],
            &mut out,
        );
        let s = scores(&out);
        assert_eq!(s[0], (2, 0.8));
        assert_eq!(s[1], (3, 0.4));
        assert_eq!(s[2].0, 1);
        assert!((s[2].1 - 0.2).abs() < 1e-6);
    }

    #[test]
    fn similarities_grow_with_closeness_under_every_metric() {
        for m in [Metric::Dot, Metric::Cosine, Metric::L2] {
            assert!(similarity(m, 0.1) > similarity(m, 0.4), "{m:?}");
        }
        assert_eq!(similarity(Metric::L2, 0.0), 1.0);
        assert!(similarity(Metric::L2, 1e6) > 0.0);
        // A router sees scores (negated distances; the Euclidean distance itself under l2).
        for (m, d, score) in [
            (Metric::Dot, -3.0, 3.0),
            (Metric::Cosine, 0.25, 0.75),
            (Metric::L2, 4.0, -2.0),
        ] {
            assert_eq!(similarity(m, d), similarity_of_score(m, score), "{m:?}");
        }
        assert_eq!(Strategy::parse("nope", F), None);
        assert_eq!(
            Strategy::parse("best_score", F).unwrap().name(),
            "best_score"
        );
    }
}
