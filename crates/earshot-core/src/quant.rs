//! 8-bit vectors for the graph walk, with exact f32 re-ranking of the final candidates.
//!
//! Each dimension `d` is quantised affinely over its own range in the data:
//! `x ≈ offset_d + scale_d · code_d`, `code_d ∈ [-127, 127]` — so un-normalised vectors and
//! skewed dimensions keep their resolution (no clipping). A query is folded into the codes'
//! space once per query: `q·x ≈ Σ (q_d·scale_d)·code_d + Σ q_d·offset_d`, so a distance
//! reads `dim` bytes instead of `4·dim`. Squared L2 uses the stored exact `‖x‖²`:
//! `‖q−x‖² = ‖q‖² − 2 q·x + ‖x‖²`.

use crate::distance;
use crate::metric::Metric;
use crate::simd;

/// Per-dimension scale and offset.
#[derive(Clone, Debug)]
pub struct Params {
    /// `scale_d = (max_d − min_d) / 254` (1 where that is zero or not finite).
    pub scale: Vec<f32>,
    /// `offset_d = (max_d + min_d) / 2`.
    pub offset: Vec<f32>,
}

/// Fits the per-dimension ranges of `vectors` and encodes them.
pub fn quantize(vectors: &[f32], dim: usize) -> (Params, Vec<i8>) {
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    for v in vectors.chunks_exact(dim) {
        for d in 0..dim {
            lo[d] = lo[d].min(v[d]);
            hi[d] = hi[d].max(v[d]);
        }
    }
    let offset: Vec<f32> = (0..dim).map(|d| (lo[d] + hi[d]) * 0.5).collect();
    let scale: Vec<f32> = (0..dim)
        .map(|d| {
            let s = (hi[d] - lo[d]) / 254.0;
            if s > 0.0 && s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect();
    let codes = vectors
        .chunks_exact(dim)
        .flat_map(|v| {
            (0..dim).map(|d| ((v[d] - offset[d]) / scale[d]).round().clamp(-127.0, 127.0) as i8)
        })
        .collect::<Vec<_>>();
    (Params { scale, offset }, codes)
}

/// Appends the codes of `v` under fitted `scale` and `offset` (values outside the fitted
/// range clamp to ±127: the walk's distance is approximate anyway, and re-ranking is exact).
pub fn encode_into(v: &[f32], scale: &[f32], offset: &[f32], out: &mut Vec<i8>) {
    out.extend(
        v.iter()
            .zip(scale.iter().zip(offset))
            .map(|(x, (s, o))| ((x - o) / s).round().clamp(-127.0, 127.0) as i8),
    );
}

/// A query prepared for one collection's codes.
pub struct PreparedQuery {
    /// `q_d · scale_d`
    pub folded: Vec<f32>,
    /// `Σ q_d · offset_d`
    pub constant: f32,
    /// `‖q‖²`
    pub norm2: f32,
    /// This CPU's `Σ folded_d · code_d`, resolved once rather than on every distance.
    dot_f32_i8: fn(&[f32], &[i8]) -> f32,
}

impl PreparedQuery {
    /// An empty query (fill it with [`prepare`](Self::prepare)).
    pub fn new() -> Self {
        Self {
            folded: Vec::new(),
            constant: 0.0,
            norm2: 0.0,
            dot_f32_i8: simd::kernels().dot_f32_i8,
        }
    }

    /// Refills `self` for `q` (reuses the buffer: no allocation once warmed up).
    pub fn prepare(&mut self, q: &[f32], scale: &[f32], offset: &[f32]) {
        self.folded.clear();
        self.folded.extend(q.iter().zip(scale).map(|(a, s)| a * s));
        self.constant = distance::dot(q, offset);
        self.norm2 = distance::dot(q, q);
    }

    /// Approximate internal distance (smaller is closer) to the item with `codes`.
    #[inline(always)]
    pub fn distance(&self, metric: Metric, codes: &[i8], item_norm2: f32) -> f32 {
        let dot = (self.dot_f32_i8)(&self.folded, codes) + self.constant;
        match metric {
            Metric::Cosine => 1.0 - dot,
            Metric::Dot => -dot,
            Metric::L2 => (self.norm2 - 2.0 * dot + item_norm2).max(0.0),
        }
    }
}

impl Default for PreparedQuery {
    fn default() -> Self {
        Self::new()
    }
}

/// `Σ a_d · b_d` for f32 `a` and i8 `b`, over the shorter length.
pub fn dot_f32_i8(a: &[f32], b: &[i8]) -> f32 {
    (simd::kernels().dot_f32_i8)(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_and_quantisation_is_close() {
        for n in [1usize, 7, 16, 33, 64, 100, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<i8> = (0..n)
                .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                .collect();
            let exact: f32 = a.iter().zip(&b).map(|(x, &c)| x * c as f32).sum();
            assert!(
                (dot_f32_i8(&a, &b) - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                "n={n}"
            );
        }
        // Un-normalised data with a skewed dimension keeps its resolution.
        let dim = 4;
        let data: Vec<f32> = (0..400)
            .map(|i| match i % dim {
                0 => 1000.0 + (i as f32).sin(),
                1 => (i as f32 * 0.1).cos() * 0.001,
                _ => (i as f32 * 0.3).sin() * 5.0,
            })
            .collect();
        let (p, codes) = quantize(&data, dim);
        let q = [0.5f32, 100.0, -1.0, 2.0];
        let mut pq = PreparedQuery::new();
        pq.prepare(&q, &p.scale, &p.offset);
        for (v, c) in data.chunks_exact(dim).zip(codes.chunks_exact(dim)) {
            let exact = distance::dot(&q, v);
            let approx = -pq.distance(Metric::Dot, c, 0.0);
            assert!(
                (exact - approx).abs() < 0.05 * (1.0 + exact.abs()),
                "{exact} vs {approx}"
            );
        }
    }
}
