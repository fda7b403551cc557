//! Exact top-k over a whole collection that reads the 8-bit codes (a quarter of the f32
//! rows' bytes) and then the f32 rows of only the few rows the codes cannot rule out.
//!
//! A code reconstructs each coordinate to within half its dimension's step (`quant`: the
//! codes are fitted to the rows' own range), so for every row the code distance `d̂` and the
//! f32 distance `d` differ by at most `b = m · Σ_d |q_d| · scale_d / 2` (m = 2 for l2, whose
//! distance holds `−2 q·x`; 1 otherwise), plus a margin for both sums' f32 rounding. Let `U`
//! be the k-th smallest `d̂ + b`: k rows lie within `U`, so every row of the exact top-k has
//! `d ≤ U` and hence `d̂ − b ≤ U`; any row with `d̂ − b > U` is skipped unread. `U` only falls
//! as the scan goes on, so a row above the running `U` is dropped at once and the list
//! kept for the second pass stays short.
//!
//! Used by the live recall check, which scans every row of a collection for each sampled
//! query: the f32 scan of yes-tracks (75k × 384) read 115 MB per sample and evicted the
//! walk's working set from the cache; the codes are 29 MB.

use std::collections::BinaryHeap;

use super::{CodeMeasure, Graph, Hit, Measure, Scratch};
use crate::metric::Metric;

/// Below this many rows the plain f32 scan is as cheap.
const CODED_SCAN_MIN: usize = 4096;

impl Graph<'_> {
    /// The exact top `k` of every row `accept` admits, closest first, appended to `out`:
    /// the rows [`scan`](Self::scan) would find (ties at the k-th distance aside), read
    /// through the 8-bit codes when the collection has them (see the module's comment).
    /// Returns how many f32 rows it read.
    pub fn scan_all(
        &self,
        query: &[f32],
        k: usize,
        accept: impl Fn(u32) -> bool,
        scratch: &mut Scratch,
        out: &mut Vec<Hit>,
    ) -> usize {
        let (n, dim) = (self.len(), self.dim);
        let l2 = self.quant.is_some_and(|q| q.metric == Metric::L2);
        let q8 = self.quant.filter(|q| {
            n >= CODED_SCAN_MIN
                && query.len() == dim
                && q.codes.len() >= n * dim
                && q.scale.len() == dim
                && q.offset.len() == dim
                && (!l2 || q.sqnorms.len() >= n)
        });
        let Some(q8) = q8 else {
            let rows = (0..n as u32).filter(|&r| accept(r));
            let read = std::cell::Cell::new(0);
            let counted = rows.inspect(|_| read.set(read.get() + 1));
            self.scan(query, k, counted, scratch, out);
            return read.get();
        };
        if k == 0 {
            return 0;
        }
        let Scratch { beam, prepared } = scratch;
        prepared.prepare(query, q8.scale, q8.offset);
        // `half_step`: Σ|q_d|·scale_d/2, the most a dot product moves between a row and its
        // codes. `size`: Σ|q_d|·max|x_d|, which bounds every term's magnitude, for rounding.
        let (mut half_step, mut size) = (0f32, 0f32);
        for ((q, s), o) in query.iter().zip(q8.scale).zip(q8.offset) {
            half_step += q.abs() * s * 0.5;
            size += q.abs() * (o.abs() + 127.5 * s);
        }
        let m = if l2 { 2.0 } else { 1.0 };
        // Two sums of `dim` terms, each off by at most dim·ε/2 of its terms' magnitudes,
        // with a factor 2 to spare; the 1.001 covers the rounding of `half_step` itself.
        let gamma = 2.0 * dim as f32 * f32::EPSILON;
        let norm2 = if l2 { prepared.norm2 } else { 0.0 };
        let margin = |sq: f32| m * half_step * 1.001 + 2.0 * gamma * (m * size + norm2 + sq + 1.0);
        let codes = CodeMeasure::new(prepared, q8, dim);

        let upper = &mut beam.top;
        upper.clear();
        let mut lower: Vec<Hit> = Vec::new();
        for row in 0..n as u32 {
            if !accept(row) {
                continue;
            }
            let approx = codes.distance(row);
            let b = margin(if l2 { q8.sqnorms[row as usize] } else { 0.0 });
            let (lo, hi) = (approx - b, approx + b);
            if upper.len() < k {
                upper.push(Hit { dist: hi, row });
            } else if upper.peek().is_some_and(|w| hi < w.dist) {
                upper.pop();
                upper.push(Hit { dist: hi, row });
            }
            if upper.len() < k || upper.peek().is_some_and(|w| lo <= w.dist) {
                lower.push(Hit { dist: lo, row });
            }
        }
        let bound = match upper.peek() {
            Some(w) if upper.len() == k => w.dist,
            _ => f32::INFINITY,
        };
        let mut top = BinaryHeap::with_capacity(k + 1);
        let mut read = 0;
        for h in lower.into_iter().filter(|h| h.dist <= bound) {
            read += 1;
            let d = self.dist.distance(query, self.vector(h.row));
            if top.len() < k {
                top.push(Hit {
                    dist: d,
                    row: h.row,
                });
            } else if top.peek().is_some_and(|w: &Hit| d < w.dist) {
                top.pop();
                top.push(Hit {
                    dist: d,
                    row: h.row,
                });
            }
        }
        let start = out.len();
        out.extend(top.into_vec());
        out[start..].sort_unstable();
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::DistanceFn;
    use crate::format::NONE_U32;
    use crate::quant::quantize;
    use crate::search::Quantized;

    /// Clustered rows (near neighbours are close, as in real embeddings) with one skewed
    /// dimension, from a fixed xorshift stream.
    fn rows(n: usize, dim: usize, seed: u64, unit: bool) -> Vec<f32> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<f32> = (0..16 * dim).map(|_| next()).collect();
        let mut v = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = &centres[(i % 16) * dim..(i % 16 + 1) * dim];
            let row: Vec<f32> = (0..dim)
                .map(|d| c[d] + 0.1 * next() + if d == 0 { 40.0 } else { 0.0 })
                .collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.extend(row.iter().map(|x| if unit { x / norm } else { *x }));
        }
        v
    }

    /// A graph without links over `data`, with `q8`'s codes: the scans read nothing else.
    fn unlinked<'a>(
        data: &'a [f32],
        dim: usize,
        upper_start: &'a [u32],
        q8: Quantized<'a>,
    ) -> Graph<'a> {
        Graph {
            vectors: data,
            dim,
            level0: &[],
            level0_degree: 4,
            upper: &[],
            upper_degree: 2,
            upper_start,
            entry_point: 0,
            max_level: 0,
            dist: DistanceFn::new(q8.metric),
            quant: Some(q8),
        }
    }

    #[test]
    fn coded_scan_finds_the_f32_scans_rows_and_reads_few() {
        let (n, dim, k) = (6000, 24, 10);
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let data = rows(n, dim, 7, metric == Metric::Cosine);
            let (p, codes) = quantize(&data, dim);
            let sqnorms: Vec<f32> = data
                .chunks_exact(dim)
                .map(|r| r.iter().map(|x| x * x).sum())
                .collect();
            let upper_start = vec![NONE_U32; n];
            let coded = unlinked(
                &data,
                dim,
                &upper_start,
                Quantized {
                    codes: &codes,
                    scale: &p.scale,
                    offset: &p.offset,
                    sqnorms: &sqnorms,
                    metric,
                },
            );
            let plain = Graph {
                quant: None,
                ..coded
            };
            let queries = rows(50, dim, 99, metric == Metric::Cosine);
            let mut s = Scratch::default();
            let mut read = 0;
            for (i, q) in queries.chunks_exact(dim).enumerate() {
                // Every other query under a filter that admits two rows in three.
                let accept = |r: u32| i.is_multiple_of(2) || !r.is_multiple_of(3);
                let (mut want, mut got) = (Vec::new(), Vec::new());
                let f32_read = plain.scan_all(q, k, accept, &mut s, &mut want);
                read += coded.scan_all(q, k, accept, &mut s, &mut got);
                assert_eq!(f32_read, if i % 2 == 0 { n } else { n - n.div_ceil(3) });
                assert_eq!(got.len(), k, "{metric:?}");
                assert_eq!(got, want, "{metric:?} query {i}");
            }
            // The codes rule out most rows unread.
            assert!(read < 50 * n / 10, "{metric:?}: read {read} f32 rows");
        }
    }

    #[test]
    fn k_past_the_admitted_rows_returns_them_all_and_a_wrong_width_query_falls_back() {
        let (n, dim) = (CODED_SCAN_MIN + 1, 4);
        let data = rows(n, dim, 3, false);
        let (p, codes) = quantize(&data, dim);
        let upper_start = vec![NONE_U32; n];
        let g = unlinked(
            &data,
            dim,
            &upper_start,
            Quantized {
                codes: &codes,
                scale: &p.scale,
                offset: &p.offset,
                sqnorms: &[],
                metric: Metric::Dot,
            },
        );
        let mut s = Scratch::default();
        let (mut want, mut got) = (Vec::new(), Vec::new());
        // Only 5 rows admitted, k = 8: all five, closest first.
        let few = |r: u32| r % 1000 == 1;
        g.scan(
            &data[..dim],
            8,
            (0..n as u32).filter(|&r| few(r)),
            &mut s,
            &mut want,
        );
        g.scan_all(&data[..dim], 8, few, &mut s, &mut got);
        assert_eq!(got.len(), 5);
        assert_eq!(got, want);
        // A query of the wrong width takes the plain scan (which measures what it can).
        assert_eq!(g.scan_all(&data[..2], 3, |_| true, &mut s, &mut got), n);
    }
}
