//! Builds the HNSW graph in the served layout (`earshot_core::search::LinkLayout`,
//! docs/format.md), either with earshot's own builder (`hnsw.rs`, the default) or with
//! hnsw_rs, flattened afterwards.

use hnsw_rs::prelude::{Distance, Hnsw};

use earshot_core::distance;
use earshot_core::format::NONE_U32;
use earshot_core::metric::Metric;
pub use earshot_core::search::FlatGraph;
use earshot_core::search::{LinkLayout, MAX_LEVEL0_DEGREE};

/// The largest `--m`: level 0 keeps 2·m links, and a search follows at most
/// [`MAX_LEVEL0_DEGREE`] of them.
pub const MAX_M: usize = MAX_LEVEL0_DEGREE / 2;

/// How to build the graph.
#[derive(Debug, Clone, Copy)]
pub struct GraphParams {
    /// Links per node on the upper levels (level 0 keeps 2·m), 2 ..= [`MAX_M`].
    pub m: usize,
    /// Beam width while inserting (≥ m).
    pub ef_construction: usize,
    /// Build threads.
    pub threads: usize,
    /// Which implementation builds it.
    pub builder: GraphBuilder,
    /// What the native builder's beam search measures.
    pub walk: BuildWalk,
}

/// What the native builder's beam search measures distances on. The links are always chosen
/// with exact distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildWalk {
    /// Temporary 8-bit codes: 4× fewer bytes per distance, about 1.5× faster on 384-d.
    #[default]
    Int8,
    /// The f32 vectors (as hnswlib does).
    F32,
}

/// Which implementation builds the graph. Both produce the same layout and the same kind of
/// graph (hnswlib's algorithm and neighbour heuristic); `native` is 2.7–4.8× faster (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphBuilder {
    /// earshot's builder, writing the served layout directly.
    #[default]
    Native,
    /// The hnsw_rs crate, flattened into the served layout afterwards.
    HnswRs,
}

impl GraphBuilder {
    /// The name the manifest's `builder` field and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            GraphBuilder::Native => "native",
            GraphBuilder::HnswRs => "hnsw_rs",
        }
    }
}

/// The distance hnsw_rs builds with. hnsw_rs requires distances ≥ 0, so inner product is
/// shifted by the largest squared norm: `C - a·b` orders every pair exactly as `-a·b` does
/// (the graph is the one hnswlib's "ip" space builds) and is ≥ 0 for data points.
struct BuildDistance {
    metric: Metric,
    dot_offset: f32,
}

impl Distance<f32> for BuildDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::Cosine => (1.0 - distance::dot(a, b)).max(0.0),
            Metric::L2 => distance::l2sq(a, b),
            Metric::Dot => (self.dot_offset - distance::dot(a, b)).max(0.0),
        }
    }
}

/// Builds the graph over `vectors` (row-major, `dim` wide; unit length for cosine).
/// `progress` is called with the number of rows inserted so far.
pub fn build(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: GraphParams,
    progress: &(dyn Fn(usize) + Sync),
) -> anyhow::Result<FlatGraph> {
    let n = vectors.len() / dim;
    anyhow::ensure!(n > 0, "no vectors to index");
    anyhow::ensure!(
        (2..=MAX_M).contains(&params.m),
        "--m must be between 2 and {MAX_M} (got {})",
        params.m
    );
    anyhow::ensure!(
        params.ef_construction >= params.m,
        "--ef-construction must be at least --m"
    );
    match params.builder {
        GraphBuilder::Native => super::hnsw::build(vectors, dim, metric, params, progress),
        GraphBuilder::HnswRs => build_hnsw_rs(vectors, dim, metric, params, progress),
    }
}

fn build_hnsw_rs(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: GraphParams,
    progress: &(dyn Fn(usize) + Sync),
) -> anyhow::Result<FlatGraph> {
    let n = vectors.len() / dim;
    let max_sq_norm = vectors
        .chunks_exact(dim)
        .map(|v| distance::dot(v, v))
        .fold(0f32, f32::max);
    let dist = BuildDistance {
        metric,
        dot_offset: max_sq_norm * 1.0001 + 1e-6,
    };
    let hnsw = Hnsw::<f32, BuildDistance>::new(params.m, n, 16, params.ef_construction, dist);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads.max(1))
        .build()?;
    let rows: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..n).collect();
    // Insert in slices so progress can be reported; the first point goes alone so the
    // graph has an entry point before the parallel inserts start.
    hnsw.insert_slice(rows[0]);
    progress(1);
    let chunk = (n / 200).clamp(1_000, 50_000);
    let mut done = 1;
    pool.install(|| {
        for slice in rows[1..].chunks(chunk) {
            hnsw.parallel_insert_slice(&slice.to_vec());
            done += slice.len();
            progress(done);
        }
    });
    Ok(flatten(&hnsw, n, params.m))
}

fn flatten(hnsw: &Hnsw<f32, BuildDistance>, n: usize, m: usize) -> FlatGraph {
    let layout = LinkLayout::for_m(m);
    let mut level0 = vec![0u32; layout.level0_len(n)];
    let mut upper_start = vec![NONE_U32; n];
    let mut upper = Vec::new();
    let mut entry_point: Option<u32> = None;
    let mut max_level = 0u32;
    let copy_links = |dst: &mut [u32], links: &[hnsw_rs::prelude::Neighbour]| {
        let count = links.len().min(dst.len() - 1);
        dst[0] = count as u32;
        for (slot, nb) in dst[1..].iter_mut().zip(&links[..count]) {
            *slot = nb.d_id as u32;
        }
    };
    for point in hnsw.get_point_indexation() {
        let row = point.get_origin_id();
        let level = point.get_point_id().0 as u32;
        let neighbourhood = point.get_neighborhood_id();
        copy_links(
            &mut level0[layout.level0_block(row as u32)],
            &neighbourhood[0],
        );
        if level > 0 {
            let first = layout.upper_blocks(upper.len()) as u32;
            upper_start[row] = first;
            upper.resize(layout.upper_len(first as usize + level as usize), 0);
            for (l, links) in (1..=level).zip(&neighbourhood[1..]) {
                copy_links(&mut upper[layout.upper_block(first, l)], links);
            }
        }
        if entry_point.is_none() || level > max_level {
            max_level = level;
            entry_point = Some(row as u32);
        }
    }
    FlatGraph {
        level0,
        level0_degree: layout.level0_degree,
        upper,
        upper_degree: layout.upper_degree,
        upper_start,
        entry_point: entry_point.unwrap_or(0),
        max_level,
    }
}
