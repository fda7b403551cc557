//! How many hits to ask each shard for: Vespa's `TopKEstimator`.
//!
//! When a collection's items are spread over `n` shards by a hash, the number of the global
//! top `k` that one shard holds is Binomial(k, 1/n), with mean `k/n` and variance
//! `k/n·(1−1/n)`. Asking every shard for `k′ = ⌈k/n + t·√(k/n·(1−1/n))⌉` (`t` the standard
//! normal quantile of `p`) gets the whole global top `k` with probability about `p` per
//! shard, for a fraction of the `n·k` hits that asking each shard for `k` would move.

/// The standard normal quantile of `p` (Acklam's rational approximation, relative error
/// below 1.2e-9), for `0 < p < 1`; `p ≥ 1` gives +∞ and `p ≤ 0` −∞.
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Hits to ask each of `shards` shards for, so that the merged top `k` is the global top `k`
/// with probability about `p` per shard: `⌈k/n + t·√(k/n·(1−1/n))⌉` with `t` the normal
/// quantile of `p`, between 1 and `k` (one shard: `k`; `p ≥ 1`: `k`).
pub fn per_shard_k(k: usize, shards: usize, p: f64) -> usize {
    if shards <= 1 || k <= 1 {
        return k;
    }
    let t = normal_quantile(p);
    if !t.is_finite() || t < 0.0 {
        return if t.is_finite() {
            (k / shards).max(1)
        } else {
            k
        };
    }
    let n = shards as f64;
    let mean = k as f64 / n;
    let kp = (mean + t * (mean * (1.0 - 1.0 / n)).sqrt()).ceil();
    (kp as usize).clamp(1, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_the_standard_normal() {
        for (p, want) in [
            (0.5, 0.0),
            (0.95, 1.644_853_626_951),
            (0.975, 1.959_963_984_540),
            (0.999, 3.090_232_306_168),
            (0.001, -3.090_232_306_168),
            (0.01, -2.326_347_874_041),
        ] {
            let got = normal_quantile(p);
            assert!((got - want).abs() < 1e-8, "p {p}: {got} vs {want}");
        }
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn per_shard_k_follows_vespa() {
        // k = 10, n = 3: 10/3 + 3.0902·√(10/3·2/3) = 3.33 + 4.61 → 8.
        assert_eq!(per_shard_k(10, 3, 0.999), 8);
        // k = 100, n = 4: 25 + 3.0902·√(18.75) = 25 + 13.38 → 39.
        assert_eq!(per_shard_k(100, 4, 0.999), 39);
        // k = 1000, n = 10: 100 + 3.0902·√90 = 129.3 → 130.
        assert_eq!(per_shard_k(1000, 10, 0.999), 130);
        // One shard, k = 1, or certainty: everything.
        assert_eq!(per_shard_k(10, 1, 0.999), 10);
        assert_eq!(per_shard_k(1, 8, 0.999), 1);
        assert_eq!(per_shard_k(10, 3, 1.0), 10);
        // Never more than k, never 0.
        assert_eq!(per_shard_k(10, 2, 0.999), 10);
        assert_eq!(per_shard_k(2, 100, 0.5), 1);
        for k in 1..200 {
            for n in 1..12 {
                let kp = per_shard_k(k, n, 0.999);
                assert!((1..=k).contains(&kp));
                assert!(kp * n >= k, "k {k} n {n}: {kp}");
            }
        }
    }
}
