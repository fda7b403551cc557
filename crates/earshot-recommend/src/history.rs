//! From a listening history to taste vectors.
//!
//! Each history item carries evidence `w = weight × event_weight × recency`:
//! - `event_weight`: play 1, like 2, save 2, share 1.5 (positive); skip −0.5, dislike −2
//!   (negative);
//! - `recency = 0.5^(age / half_life)` when a `half_life` is given and the item has a
//!   `played_at` (items without a timestamp are not decayed).
//!
//! The taste is the "average vector" strategy with a negative pull:
//! `t = P − β·N`, where `P` is the weighted mean of the positive items' vectors, `N` that of
//! the negative ones, and `β = Σ|w⁻| / (Σw⁺ + Σ|w⁻|)` the share of negative evidence. With no
//! negatives it is the plain weighted mean; with as much negative as positive evidence the
//! taste moves half a negative-mean away from the positives. Negative evidence alone cannot
//! say what to recommend and is refused.

use std::time::Duration;

/// Evidence weight of each supported event.
pub fn event_weight(event: &str) -> Option<f32> {
    Some(match event {
        "play" => 1.0,
        "like" => 2.0,
        "save" => 2.0,
        "share" => 1.5,
        "skip" => -0.5,
        "dislike" => -2.0,
        _ => return None,
    })
}

pub const EVENTS: &str = "play, like, save, share, skip, dislike";

/// `0.5^(age/half_life)`; future timestamps count as now.
pub fn recency(played_at: jiff::Timestamp, now: jiff::Timestamp, half_life: Duration) -> f32 {
    let age = now.duration_since(played_at).as_secs_f64().max(0.0);
    0.5f64.powf(age / half_life.as_secs_f64()) as f32
}

/// One history item resolved to a row of the history collection and its signed evidence.
#[derive(Debug, Clone, Copy)]
pub struct Evidence {
    pub row: u32,
    /// f64: a client weight near f32::MAX times an event weight must not overflow.
    pub weight: f64,
}

/// Weighted mean of the rows' vectors, or None if the weights sum to zero.
pub fn weighted_mean<'a>(
    items: impl Iterator<Item = (&'a [f32], f32)>,
    dim: usize,
) -> Option<Vec<f32>> {
    let mut sum = vec![0f32; dim];
    let mut total = 0f32;
    for (v, w) in items {
        for (s, x) in sum.iter_mut().zip(v) {
            *s += w * x;
        }
        total += w;
    }
    (total > 0.0).then(|| {
        sum.iter_mut().for_each(|s| *s /= total);
        sum
    })
}

/// `t = P − β·N` for positives `P` (already averaged) and the negative evidence.
pub fn pull_away(positive_mean: &mut [f32], positive_total: f32, negatives: &[(&[f32], f32)]) {
    let neg_total: f32 = negatives.iter().map(|(_, w)| w.abs()).sum();
    if neg_total <= 0.0 {
        return;
    }
    let beta = neg_total / (positive_total + neg_total);
    let Some(n) = weighted_mean(
        negatives.iter().map(|(v, w)| (*v, w.abs())),
        positive_mean.len(),
    ) else {
        return; // the same sum as `neg_total`: not reached
    };
    for (t, x) in positive_mean.iter_mut().zip(&n) {
        *t -= beta * x;
    }
}
