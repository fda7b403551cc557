//! f32 distances, on the kernels `simd` picks once for the CPU at hand.
//!
//! Internally every metric is a *distance* (smaller is closer):
//! cosine `1 - a·b` on unit vectors, l2 the squared Euclidean distance, dot `-a·b`.

use crate::metric::Metric;
use crate::simd;

type Kernel = fn(&[f32], &[f32]) -> f32;

/// Which kernel set this process uses (reported by `/v1/collections` and `bench`).
pub fn kernel_name() -> &'static str {
    simd::kernels().name
}

/// `Σ a_d · b_d` over the shorter length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (simd::kernels().dot)(a, b)
}

/// Squared Euclidean distance over the shorter length.
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    (simd::kernels().l2sq)(a, b)
}

/// A metric's distance function, resolved once so the hot loop does a single indirect call.
#[derive(Clone, Copy)]
pub struct DistanceFn {
    metric: Metric,
    dot: Kernel,
    l2sq: Kernel,
}

impl DistanceFn {
    /// `metric`'s distance with this CPU's kernels.
    pub fn new(metric: Metric) -> Self {
        let k = simd::kernels();
        Self {
            metric,
            dot: k.dot,
            l2sq: k.l2sq,
        }
    }

    /// Internal distance between `a` and `b` (smaller is closer).
    #[inline(always)]
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::Cosine => 1.0 - (self.dot)(a, b),
            Metric::L2 => (self.l2sq)(a, b),
            Metric::Dot => -(self.dot)(a, b),
        }
    }

    /// The user-facing score for an internal distance: higher is closer.
    /// cosine → cosine similarity, l2 → −Euclidean distance, dot → inner product.
    pub fn score(&self, distance: f32) -> f32 {
        match self.metric {
            Metric::Cosine => 1.0 - distance,
            Metric::L2 => -distance.max(0.0).sqrt(),
            Metric::Dot => -distance,
        }
    }
}

/// Scales `v` to unit length; returns false (leaving it unchanged) if its norm is 0 or not finite.
pub fn normalize(v: &mut [f32]) -> bool {
    // In f64: the norm of finite f32 components such as 1e20 overflows f32 but not f64.
    let norm = norm_f64(v);
    if !(norm.is_finite() && norm > 0.0) {
        return false;
    }
    v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    true
}

/// Euclidean norm computed in f64.
pub fn norm_f64(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_higher_when_closer() {
        let f = DistanceFn::new(Metric::L2);
        assert!(f.score(1.0) > f.score(4.0));
        assert_eq!(f.score(4.0), -2.0);
        let c = DistanceFn::new(Metric::Cosine);
        assert_eq!(c.score(c.distance(&[1.0, 0.0], &[1.0, 0.0])), 1.0);
        let d = DistanceFn::new(Metric::Dot);
        assert_eq!(d.score(d.distance(&[2.0, 1.0], &[3.0, 1.0])), 7.0);
    }
}
