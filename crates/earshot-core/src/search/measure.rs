//! How a walk measures its query against rows: exact f32 distances or approximate ones on
//! 8-bit codes. Queries and the builder use the same two.

use super::{prefetch_range, Quantized};
use crate::distance::DistanceFn;
use crate::metric::Metric;
use crate::quant::PreparedQuery;

/// The walk's distance from its query to a row (smaller is closer).
pub trait Measure {
    /// Distance from the query to `row`.
    fn distance(&self, row: u32) -> f32;

    /// Starts loading the bytes `distance(row)` will read.
    fn prefetch(&self, row: u32);
}

/// Exact distances to the f32 vectors.
#[derive(Clone, Copy)]
pub struct ExactMeasure<'a> {
    /// The query vector.
    pub query: &'a [f32],
    /// Every row's vector, row-major, `dim` wide.
    pub vectors: &'a [f32],
    /// Vector width.
    pub dim: usize,
    /// The metric's distance.
    pub dist: DistanceFn,
}

impl Measure for ExactMeasure<'_> {
    #[inline(always)]
    fn distance(&self, row: u32) -> f32 {
        let start = row as usize * self.dim;
        self.dist
            .distance(self.query, &self.vectors[start..start + self.dim])
    }

    #[inline(always)]
    fn prefetch(&self, row: u32) {
        prefetch_range(self.vectors, row as usize * self.dim, self.dim);
    }
}

/// Approximate distances on the 8-bit codes (`quant`): 4× fewer bytes per distance.
#[derive(Clone, Copy)]
pub struct CodeMeasure<'a> {
    query: &'a PreparedQuery,
    q8: Quantized<'a>,
    dim: usize,
    /// Only l2 needs ‖x‖²: reading it otherwise costs a cache miss per distance.
    l2: bool,
}

impl<'a> CodeMeasure<'a> {
    /// Measures `query` (prepared for `q8`'s scale and offset) against `q8`'s `dim`-wide codes.
    pub fn new(query: &'a PreparedQuery, q8: Quantized<'a>, dim: usize) -> Self {
        Self {
            query,
            q8,
            dim,
            l2: q8.metric == Metric::L2,
        }
    }
}

impl Measure for CodeMeasure<'_> {
    #[inline(always)]
    fn distance(&self, row: u32) -> f32 {
        let r = row as usize;
        let norm2 = if self.l2 { self.q8.sqnorms[r] } else { 0.0 };
        let codes = &self.q8.codes[r * self.dim..(r + 1) * self.dim];
        self.query.distance(self.q8.metric, codes, norm2)
    }

    #[inline(always)]
    fn prefetch(&self, row: u32) {
        prefetch_range(self.q8.codes, row as usize * self.dim, self.dim);
    }
}
