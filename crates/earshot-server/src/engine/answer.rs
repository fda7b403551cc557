//! An answer of the engine, and how it reads as wire results.

use std::sync::Arc;

use earshot_core::collection::Collection;
use earshot_core::delta::{Delta, View};
use earshot_recommend::select::Pick;

use crate::api::{Explanation, Item, ListExplanation, ResultItem};

/// Results of one query, still borrowing from the collection until rendered.
pub struct Answer {
    pub collection: Arc<Collection>,
    /// The write log's changes the answer was computed over (None: none).
    pub delta: Option<Arc<Delta>>,
    pub picks: Vec<Pick>,
    /// Emerging-quota slots asked for and actually reserved.
    pub quota: (usize, usize),
    pub explain: bool,
    /// Slot-share weight of each probe (for explanations).
    pub probe_weights: Vec<f32>,
    /// Pool mode (`"pool": true`): results carry their creator's popularity.
    pub pool: bool,
    /// A pool-mode `similar`: the queried item's row, returned beside the results.
    pub item: Option<u32>,
    /// A seed-based strategy's list (`neighbours`, `best_score`): picks' distances are
    /// negated aggregated scores.
    pub seeded: Option<Seeded>,
}

/// What a seed-based list adds to explanations.
pub struct Seeded {
    pub strategy: &'static str,
    /// Seeds walked.
    pub seeds: usize,
    /// Per pick (with `explain` only): positive seeds whose lists hold it, and the history
    /// ID contributing most to its score.
    pub support: Vec<(usize, Option<String>)>,
}

impl Answer {
    /// The rows the picks index: the version, with the write log's items after its own.
    pub fn view(&self) -> View<'_> {
        View::new(&self.collection, self.delta.as_deref())
    }

    /// The queried item as stored, for a pool-mode `similar`.
    pub fn query_item(&self) -> Option<Item<'_>> {
        self.item.map(|row| super::item(self.view(), row))
    }

    pub fn list_explanation(&self) -> Option<ListExplanation> {
        self.explain.then(|| {
            let mut e = list_explanation(&self.probe_weights, self.quota);
            if let Some(s) = &self.seeded {
                e.strategy = Some(s.strategy);
                e.seeds = Some(s.seeds);
            }
            e
        })
    }

    pub fn items(&self) -> Vec<ResultItem<'_>> {
        self.item_iter().collect()
    }

    /// The results one by one, read from the mapping as the iterator goes.
    pub fn item_iter(&self) -> impl Iterator<Item = ResultItem<'_>> {
        let c = self.view();
        let dist = *c.dist();
        c.prefetch_rows(self.picks.iter().map(|p| p.row));
        self.picks.iter().enumerate().map(move |(i, p)| {
            let score = match self.seeded {
                Some(_) => finite(-p.dist),
                None => finite(dist.score(p.dist)),
            };
            ResultItem {
                id: c.id(p.row),
                score,
                creator: c.creator(p.row),
                popularity: c.popularity(p.row),
                creator_popularity: self.pool.then(|| {
                    c.creator_index(p.row)
                        .and_then(|cr| c.creator_popularity(cr))
                }),
                explain: self.explain.then(|| {
                    let mut e = explanation(p, score, &self.probe_weights);
                    if let Some((n, because)) = self.seeded.as_ref().and_then(|s| s.support.get(i))
                    {
                        e.support = Some(*n);
                        e.because = because.clone();
                    }
                    e
                }),
            }
        })
    }

    /// Whether the answer is its results alone: no explanation, emerging slots or query item.
    pub fn is_plain_list(&self) -> bool {
        !self.explain && self.quota.0 == 0 && self.item.is_none()
    }
}

/// The list's explanation: each probe's share of the weights, and the emerging-quota slots
/// asked for and reserved.
pub fn list_explanation(probe_weights: &[f32], quota: (usize, usize)) -> ListExplanation {
    let total: f32 = probe_weights.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    ListExplanation {
        strategy: None,
        seeds: None,
        centroid_weights: probe_weights.iter().map(|w| w / total).collect(),
        emerging_slots_requested: quota.0,
        emerging_slots_reserved: quota.1,
    }
}

/// Why `p` (scored `similarity`) is in the list, its probe's weight as a share of
/// `probe_weights`.
pub fn explanation(p: &Pick, similarity: f32, probe_weights: &[f32]) -> Explanation {
    let total: f32 = probe_weights.iter().sum();
    Explanation {
        similarity,
        centroid: p.probe,
        centroid_weight: probe_weights.get(p.probe).copied().unwrap_or(0.0)
            / total.max(f32::MIN_POSITIVE),
        rank: p.rank,
        emerging_quota: p.emerging,
        emerging_boost: p.boosted,
        in_share: p.in_share,
        moved_by: p.moved_by.clone(),
        support: None,
        because: None,
    }
}

/// The emerging slots (requested, reserved) as the top level of a list answers them: only
/// when the request asked for an emerging quota, so a client sees without `explain` when
/// fewer slots could be reserved than it asked for.
pub fn emerging_slots(quota: (usize, usize)) -> (Option<usize>, Option<usize>) {
    if quota.0 == 0 {
        (None, None)
    } else {
        (Some(quota.0), Some(quota.1))
    }
}

/// Scores are always JSON numbers: an overflow (only possible with extreme stored vectors)
/// saturates instead of turning into `null`.
pub fn finite(x: f32) -> f32 {
    if x.is_nan() {
        f32::MIN
    } else {
        x.clamp(f32::MIN, f32::MAX)
    }
}
