//! Distance kernels: f32 (`distance::dot`, `distance::l2sq`, and each metric's `DistanceFn`)
//! and 8-bit (`quant::dot_f32_i8` and each metric's `PreparedQuery::distance`) at 64, 128,
//! 384 and 784 dimensions (Last.fm ALS, synthetic, yes-tracks MiniLM, Fashion-MNIST).
//!
//!     cargo bench --bench distance
//!     EARSHOT_NO_SIMD=1 cargo bench --bench distance   # the portable fallback kernels
//!
//! Each measurement is one call on vectors that stay in L1, so it is the arithmetic cost of
//! the kernel; in a graph walk the same call is usually bound by the cache misses that bring
//! the vector in (see benches/search.rs).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use earshot_core::distance::{self, DistanceFn};
use earshot_core::metric::Metric;
use earshot_core::quant::{self, PreparedQuery};

const DIMS: [usize; 4] = [64, 128, 384, 784];
const METRICS: [(Metric, &str); 3] = [
    (Metric::Cosine, "cosine"),
    (Metric::L2, "l2"),
    (Metric::Dot, "dot"),
];

/// Deterministic pseudo-random values in [-1, 1) (xorshift; no rand dependency needed).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    distance::normalize(&mut v);
    v
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernel");
    for dim in DIMS {
        let a = unit(values(dim, 1));
        let b = unit(values(dim, 2));
        // 64 stored vectors so the i8 side quantises over a realistic per-dimension range.
        let base: Vec<f32> = (0..64).flat_map(|i| unit(values(dim, 10 + i))).collect();
        let (params, codes) = quant::quantize(&base, dim);
        let mut pq = PreparedQuery::new();
        pq.prepare(&a, &params.scale, &params.offset);
        let code = &codes[..dim];
        g.throughput(Throughput::Elements(dim as u64));
        g.bench_with_input(BenchmarkId::new("f32_dot", dim), &dim, |bch, _| {
            bch.iter(|| distance::dot(black_box(&a), black_box(&b)))
        });
        g.bench_with_input(BenchmarkId::new("f32_l2sq", dim), &dim, |bch, _| {
            bch.iter(|| distance::l2sq(black_box(&a), black_box(&b)))
        });
        g.bench_with_input(BenchmarkId::new("i8_dot_f32_i8", dim), &dim, |bch, _| {
            bch.iter(|| quant::dot_f32_i8(black_box(&pq.folded), black_box(code)))
        });
    }
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metric");
    for dim in DIMS {
        let a = unit(values(dim, 3));
        let b = unit(values(dim, 4));
        let base: Vec<f32> = (0..64).flat_map(|i| unit(values(dim, 100 + i))).collect();
        let (params, codes) = quant::quantize(&base, dim);
        let code = &codes[..dim];
        let norm2 = distance::dot(&base[..dim], &base[..dim]);
        g.throughput(Throughput::Elements(dim as u64));
        for (metric, name) in METRICS {
            let f = DistanceFn::new(metric);
            g.bench_with_input(
                BenchmarkId::new(format!("f32_{name}"), dim),
                &dim,
                |bch, _| bch.iter(|| f.distance(black_box(&a), black_box(&b))),
            );
            let mut pq = PreparedQuery::new();
            pq.prepare(&a, &params.scale, &params.offset);
            g.bench_with_input(
                BenchmarkId::new(format!("i8_{name}"), dim),
                &dim,
                |bch, _| bch.iter(|| pq.distance(metric, black_box(code), black_box(norm2))),
            );
        }
        // The per-query cost of folding a query into the codes' space (once per search).
        let mut pq = PreparedQuery::new();
        g.bench_with_input(BenchmarkId::new("i8_prepare_query", dim), &dim, |bch, _| {
            bch.iter(|| pq.prepare(black_box(&a), &params.scale, &params.offset))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = kernels, metrics
}
criterion_main!(benches);
