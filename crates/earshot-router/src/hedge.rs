//! Hedging ("The Tail at Scale"): a second request to another replica once the first has
//! taken longer than the shard's recent p95, within a budget of extra requests.
//!
//! Both pieces are lock-free on the request path: latencies go into atomic log-scale buckets
//! (a background tick decays them and publishes the quantile), and the budget is a token
//! bucket in an atomic integer that every primary request tops up by `ratio` of a token.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per doubling of latency.
const PER_OCTAVE: f64 = 4.0;
/// 96 buckets of 2^(1/4): 1 µs … 16 s.
const BUCKETS: usize = 96;

/// Recent latencies of one shard, decayed over time.
pub struct LatencyTracker {
    buckets: [AtomicU32; BUCKETS],
    /// The published quantile in µs (0 = not enough samples).
    quantile_us: AtomicU64,
}

/// Fewer recent samples than this: no quantile, no hedging.
pub const MIN_SAMPLES: u64 = 20;

fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= 1.0 {
        return 0;
    }
    ((us.log2() * PER_OCTAVE) as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i` in µs.
fn upper_us(i: usize) -> f64 {
    2f64.powf((i + 1) as f64 / PER_OCTAVE)
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            quantile_us: AtomicU64::new(0),
        }
    }
}

impl LatencyTracker {
    pub fn record(&self, d: Duration) {
        let b = &self.buckets[bucket_of(d)];
        // Saturating: a stuck tick must not wrap counts around.
        let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1));
    }

    /// The published quantile, or None with too few recent samples.
    pub fn quantile(&self) -> Option<Duration> {
        match self.quantile_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Recomputes the `q` quantile from the buckets, publishes it, then decays every count
    /// by `keep` (e.g. 0.75 per tick), so the quantile follows the shard's recent latency.
    pub fn tick(&self, q: f64, keep: f64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed) as u64)
            .collect();
        let total: u64 = counts.iter().sum();
        let published = if total < MIN_SAMPLES {
            0
        } else {
            let want = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            let mut at = BUCKETS - 1;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    at = i;
                    break;
                }
            }
            upper_us(at).ceil().max(1.0) as u64
        };
        self.quantile_us.store(published, Ordering::Relaxed);
        for (b, c) in self.buckets.iter().zip(counts) {
            let keep_n = (c as f64 * keep) as u32;
            let drop = (c as u32).saturating_sub(keep_n);
            let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_sub(drop))
            });
        }
    }
}

/// Extra requests allowed as a share of primary requests, with a small burst.
pub struct HedgeBudget {
    /// Thousandths of a token.
    milli: AtomicI64,
    per_request: i64,
    cap: i64,
}

impl HedgeBudget {
    /// `ratio`: hedges per primary request in the long run (0.05 = 5 % extra load);
    /// `burst`: hedges that may be sent back to back after a quiet period.
    pub fn new(ratio: f64, burst: f64) -> Self {
        Self {
            milli: AtomicI64::new(0),
            per_request: (ratio.clamp(0.0, 1.0) * 1000.0).round() as i64,
            cap: (burst.max(1.0) * 1000.0) as i64,
        }
    }

    /// A primary request earns `ratio` of a token.
    pub fn earn(&self) {
        let (add, cap) = (self.per_request, self.cap);
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < cap).then(|| (m + add).min(cap))
            });
    }

    /// Takes one token for a hedge; false when the budget is spent.
    pub fn try_spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_extra_load() {
        let b = HedgeBudget::new(0.05, 5.0);
        assert!(!b.try_spend(), "no tokens before any request");
        let mut hedges = 0;
        for _ in 0..10_000 {
            b.earn();
            if b.try_spend() {
                hedges += 1;
            }
        }
        // 5 % of 10,000 requests, even if every one of them wanted a hedge.
        assert_eq!(hedges, 500);
        // A quiet period saves up at most the burst.
        for _ in 0..10_000 {
            b.earn();
        }
        let burst = (0..100).filter(|_| b.try_spend()).count();
        assert_eq!(burst, 5);
        let none = HedgeBudget::new(0.0, 1.0);
        none.earn();
        assert!(!none.try_spend());
    }

    #[test]
    fn the_quantile_follows_recent_latency() {
        let t = LatencyTracker::default();
        for _ in 0..10 {
            t.record(Duration::from_millis(1));
        }
        t.tick(0.95, 0.5);
        assert_eq!(t.quantile(), None, "too few samples");
        for i in 0..100 {
            t.record(Duration::from_micros(if i < 96 { 1000 } else { 50_000 }));
        }
        t.tick(0.95, 0.5);
        let q = t.quantile().unwrap();
        // 95 % of the samples are ~1 ms: the p95 bucket's upper bound is within 2^(1/4).
        assert!(
            q >= Duration::from_micros(1000) && q < Duration::from_micros(1200),
            "{q:?}"
        );
        // The shard slows down: after a few ticks the quantile follows.
        for _ in 0..6 {
            for _ in 0..100 {
                t.record(Duration::from_millis(50));
            }
            t.tick(0.95, 0.5);
        }
        let q = t.quantile().unwrap();
        assert!(
            q >= Duration::from_millis(50) && q < Duration::from_millis(60),
            "{q:?}"
        );
    }
}
