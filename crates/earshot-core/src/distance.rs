//! SIMD distance kernels, picked once at run time for the CPU at hand.
//!
//! Internally every metric is a *distance* (smaller is closer):
//! cosine `1 - a·b` on unit vectors, l2 the squared Euclidean distance, dot `-a·b`.

use std::sync::OnceLock;

use crate::metric::Metric;

type Kernel = fn(&[f32], &[f32]) -> f32;

#[derive(Clone, Copy)]
struct Kernels {
    dot: Kernel,
    l2sq: Kernel,
    name: &'static str,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("EARSHOT_NO_SIMD").is_none() {
                if is_x86_feature_detected!("avx512f") {
                    return Kernels {
                        dot: x86::dot_avx512,
                        l2sq: x86::l2sq_avx512,
                        name: "avx512",
                    };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Kernels {
                        dot: x86::dot_avx2,
                        l2sq: x86::l2sq_avx2,
                        name: "avx2+fma",
                    };
                }
            }
        }
        Kernels {
            dot: portable::dot,
            l2sq: portable::l2sq,
            name: "portable",
        }
    })
}

/// Which kernel set this process uses (reported by `/v1/collections` and `bench`).
pub fn kernel_name() -> &'static str {
    kernels().name
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot)(a, b)
}

pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    (kernels().l2sq)(a, b)
}

/// A metric's distance function, resolved once so the hot loop does a single indirect call.
#[derive(Clone, Copy)]
pub struct DistanceFn {
    metric: Metric,
    dot: Kernel,
    l2sq: Kernel,
}

impl DistanceFn {
    pub fn new(metric: Metric) -> Self {
        let k = kernels();
        Self {
            metric,
            dot: k.dot,
            l2sq: k.l2sq,
        }
    }

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

mod portable {
    // Eight independent lanes let the compiler vectorise without fast-math.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; 8];
        let chunks = n / 8 * 8;
        for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += ca[i] * cb[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in chunks..n {
            s += a[i] * b[i];
        }
        s
    }

    pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; 8];
        let chunks = n / 8 * 8;
        for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
            for i in 0..8 {
                let d = ca[i] - cb[i];
                acc[i] += d * d;
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in chunks..n {
            let d = a[i] - b[i];
            s += d * d;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    // Safe wrappers: only handed out after the features were detected.
    pub fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot_avx2_impl(a, b) }
    }
    pub fn l2sq_avx2(a: &[f32], b: &[f32]) -> f32 {
        unsafe { l2sq_avx2_impl(a, b) }
    }
    pub fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot_avx512_impl(a, b) }
    }
    pub fn l2sq_avx512(a: &[f32], b: &[f32]) -> f32 {
        unsafe { l2sq_avx512_impl(a, b) }
    }

    /// Horizontal sum of eight lanes (also used by the 8-bit kernels in `quant`).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            i += 8;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            let d = *pa.add(i) - *pb.add(i);
            s += d * d;
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                acc1,
            );
            i += 32;
        }
        if i + 16 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            i += 16;
        }
        if i < n {
            // Masked tail: no scalar loop for odd dimensions.
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            acc1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                acc1,
            );
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn l2sq_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            let d1 = _mm512_sub_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
            );
            acc0 = _mm512_fmadd_ps(d0, d0, acc0);
            acc1 = _mm512_fmadd_ps(d1, d1, acc1);
            i += 32;
        }
        if i + 16 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            acc0 = _mm512_fmadd_ps(d0, d0, acc0);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
            );
            acc1 = _mm512_fmadd_ps(d, d, acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_portable_for_every_length() {
        for n in [1usize, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 384, 784] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.37).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.21).collect();
            let (d0, l0) = (portable::dot(&a, &b), portable::l2sq(&a, &b));
            let tol = 1e-4 * (1.0 + d0.abs().max(l0));
            assert!((dot(&a, &b) - d0).abs() < tol, "dot n={n}");
            assert!((l2sq(&a, &b) - l0).abs() < tol, "l2 n={n}");
        }
    }

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
