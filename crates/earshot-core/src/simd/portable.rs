//! Kernels in plain Rust, for CPUs without AVX2+FMA (and `EARSHOT_NO_SIMD=1`). Eight
//! independent lanes let the compiler vectorise them without fast-math.

use super::Kernels;

pub(super) const KERNELS: Kernels = Kernels {
    dot,
    l2sq,
    dot_f32_i8,
    name: "portable",
};

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

pub(super) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
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

pub(super) fn dot_f32_i8(a: &[f32], b: &[i8]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks..n {
        s += a[i] * b[i] as f32;
    }
    s
}
