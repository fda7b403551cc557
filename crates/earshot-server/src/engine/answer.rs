//! An answer of the engine, and how it reads as wire results.

use std::sync::Arc;

use earshot_core::collection::Collection;
use earshot_recommend::select::Pick;

use crate::api::{Explanation, ListExplanation, ResultItem};

/// Results of one query, still borrowing from the collection until rendered.
pub struct Answer {
    pub collection: Arc<Collection>,
    pub picks: Vec<Pick>,
    /// Emerging-quota slots asked for and actually reserved.
    pub quota: (usize, usize),
    pub explain: bool,
    /// Slot-share weight of each probe (for explanations).
    pub probe_weights: Vec<f32>,
    /// Pool mode (`"pool": true`): results carry their creator's popularity.
    pub pool: bool,
}

impl Answer {
    pub fn list_explanation(&self) -> Option<ListExplanation> {
        let total: f32 = self
            .probe_weights
            .iter()
            .sum::<f32>()
            .max(f32::MIN_POSITIVE);
        self.explain.then(|| ListExplanation {
            centroid_weights: self.probe_weights.iter().map(|w| w / total).collect(),
            emerging_slots_requested: self.quota.0,
            emerging_slots_reserved: self.quota.1,
        })
    }

    pub fn items(&self) -> Vec<ResultItem<'_>> {
        let c = &self.collection;
        let dist = c.dist();
        let total: f32 = self.probe_weights.iter().sum();
        self.picks
            .iter()
            .map(|p| ResultItem {
                id: c.id(p.row),
                score: finite(dist.score(p.dist)),
                creator: c.creator(p.row),
                popularity: c.popularity(p.row),
                creator_popularity: self.pool.then(|| {
                    c.creator_index(p.row)
                        .and_then(|cr| c.creator_popularity(cr))
                }),
                explain: self.explain.then(|| Explanation {
                    similarity: finite(dist.score(p.dist)),
                    centroid: p.probe,
                    centroid_weight: self.probe_weights.get(p.probe).copied().unwrap_or(0.0)
                        / total.max(f32::MIN_POSITIVE),
                    rank: p.rank,
                    emerging_quota: p.emerging,
                    in_share: p.in_share,
                    moved_by: p.moved_by.clone(),
                }),
            })
            .collect()
    }
}

/// Scores are always JSON numbers: an overflow (only possible with extreme stored vectors)
/// saturates instead of turning into `null`.
fn finite(x: f32) -> f32 {
    if x.is_nan() {
        f32::MIN
    } else {
        x.clamp(f32::MIN, f32::MAX)
    }
}
