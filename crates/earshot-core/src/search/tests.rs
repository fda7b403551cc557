//! The descent, the beam walk and the filtered walk on a hand-built 8-node graph.
//!
//! Nodes sit on a line, node `i` at `(i, 0)`, under l2 (squared distances). Level 0 is the
//! chain `0 – 1 – … – 7` plus a long link `1 – 6`; level 1 holds nodes 0, 4, 7 (`0 – 4 – 7`);
//! level 2 holds 0 and 7 (`0 – 7`). The entry point is node 0.
//!
//! ```text
//! level 2:  0 ─────────────────────── 7
//! level 1:  0 ─────────── 4 ───────── 7
//! level 0:  0 ─ 1 ─ 2 ─ 3 ─ 4 ─ 5 ─ 6 ─ 7
//!               └───────────────────┘
//! ```

use super::*;
use crate::distance::dot;

const N: usize = 8;
const DIM: usize = 2;

/// The graph's arrays, owned so tests can damage them.
struct Arrays {
    vectors: Vec<f32>,
    level0: Vec<u32>,
    upper: Vec<u32>,
    upper_start: Vec<u32>,
}

fn arrays() -> Arrays {
    let vectors = (0..N).flat_map(|i| [i as f32, 0.0]).collect();
    // Degree 4 on level 0, 2 above (m = 2); unused slots 0.
    #[rustfmt::skip]
    let level0 = vec![
        1, 1, 0, 0, 0, // 0
        3, 0, 2, 6, 0, // 1
        2, 1, 3, 0, 0, // 2
        2, 2, 4, 0, 0, // 3
        2, 3, 5, 0, 0, // 4
        2, 4, 6, 0, 0, // 5
        3, 5, 7, 1, 0, // 6
        1, 6, 0, 0, 0, // 7
    ];
    #[rustfmt::skip]
    let upper = vec![
        1, 4, 0, // block 0: node 0, level 1
        1, 7, 0, // block 1: node 0, level 2
        2, 0, 7, // block 2: node 4, level 1
        1, 4, 0, // block 3: node 7, level 1
        1, 0, 0, // block 4: node 7, level 2
    ];
    let upper_start = vec![0, NONE_U32, NONE_U32, NONE_U32, 2, NONE_U32, NONE_U32, 3];
    Arrays {
        vectors,
        level0,
        upper,
        upper_start,
    }
}

impl Arrays {
    fn graph(&self) -> Graph<'_> {
        Graph {
            vectors: &self.vectors,
            dim: DIM,
            level0: &self.level0,
            level0_degree: 4,
            upper: &self.upper,
            upper_degree: 2,
            upper_start: &self.upper_start,
            entry_point: 0,
            max_level: 2,
            dist: DistanceFn::new(Metric::L2),
            quant: None,
        }
    }
}

fn exact<'a>(g: &Graph<'a>, query: &'a [f32]) -> ExactMeasure<'a> {
    ExactMeasure {
        query,
        vectors: g.vectors,
        dim: g.dim,
        dist: g.dist,
    }
}

fn entry(g: &Graph, query: &[f32]) -> Hit {
    Hit {
        dist: exact(g, query).distance(g.entry_point),
        row: g.entry_point,
    }
}

fn rows(hits: &[Hit]) -> Vec<u32> {
    hits.iter().map(|h| h.row).collect()
}

fn search(g: &Graph, q: &[f32], k: usize, ef: usize) -> Vec<Hit> {
    let mut out = Vec::new();
    with_scratch(|s| g.search(q, k, ef, |_| true, false, s, &mut out));
    out
}

fn search_filtered(
    g: &Graph,
    q: &[f32],
    k: usize,
    ef: usize,
    accept: impl Fn(u32) -> bool,
) -> Vec<Hit> {
    let mut out = Vec::new();
    with_scratch(|s| g.search(q, k, ef, accept, true, s, &mut out));
    out
}

/// Ground truth: the `k` nearest of the rows `accept` lets through.
fn scan(g: &Graph, q: &[f32], k: usize, accept: impl Fn(u32) -> bool) -> Vec<Hit> {
    let mut out = Vec::new();
    let rows = (0..g.len() as u32).filter(|&r| accept(r));
    with_scratch(|s| g.scan(q, k, rows, s, &mut out));
    out
}

/// Queries along and beside the line, between and past the nodes.
fn queries() -> impl Iterator<Item = [f32; DIM]> {
    (0..20).flat_map(|i| [[-1.3 + 0.55 * i as f32, 0.0], [0.45 * i as f32 - 0.7, 1.5]])
}

#[test]
fn descent_moves_greedily_down_every_upper_level() {
    let a = arrays();
    let g = a.graph();
    let q = [4.1, 0.0];
    let m = exact(&g, &q);
    // Level 2 alone: 0 → 7, the closer of the two.
    assert_eq!(
        Beam::default()
            .descend(&g, entry(&g, &q), [2].into_iter(), &m)
            .row,
        7
    );
    // Then level 1: 7 → 4, and 4's neighbours (0, 7) are farther.
    let end = Beam::default().descend(&g, entry(&g, &q), (1..=2).rev(), &m);
    assert_eq!(end.row, 4);
    assert_eq!(end.dist, m.distance(4));
    // A query next to the entry point stays there.
    let q = [0.3, 0.0];
    assert_eq!(
        Beam::default()
            .descend(&g, entry(&g, &q), (1..=2).rev(), &exact(&g, &q))
            .row,
        0
    );
}

#[test]
fn the_walk_finds_the_exact_top_k() {
    let a = arrays();
    let g = a.graph();
    let hits = search(&g, &[4.1, 0.0], 3, 3);
    assert_eq!(rows(&hits), [4, 5, 3]);
    for q in queries() {
        for k in [1, 3, N] {
            let hits = search(&g, &q, k, N);
            assert_eq!(hits, scan(&g, &q, k, |_| true), "query {q:?}, k {k}");
        }
    }
}

#[test]
fn the_walk_on_an_upper_level_stays_on_it() {
    // The builder walks upper levels with the same beam: only nodes 0, 4, 7 are there.
    let a = arrays();
    let g = a.graph();
    let q = [4.1, 0.0];
    let mut beam = Beam::default();
    beam.reset(N);
    beam.walk(&g, 1, entry(&g, &q), N, &exact(&g, &q), &|_| true, false);
    let mut hits: Vec<Hit> = beam.drain().collect();
    hits.sort_unstable();
    assert_eq!(rows(&hits), [4, 7, 0]);
}

#[test]
fn a_visited_row_is_never_returned() {
    // The builder marks the row it inserts, so the walk cannot link a row to itself.
    let a = arrays();
    let g = a.graph();
    let q = [4.0, 0.0];
    let mut beam = Beam::default();
    beam.reset(N);
    beam.visit(4);
    beam.walk(&g, 0, entry(&g, &q), N, &exact(&g, &q), &|_| true, false);
    let mut found: Vec<u32> = beam.drain().map(|h| h.row).collect();
    found.sort_unstable();
    assert_eq!(found, [0, 1, 2, 3, 5, 6, 7]);
}

#[test]
fn a_filtered_walk_returns_only_accepted_rows_and_walks_past_the_rest() {
    let a = arrays();
    let g = a.graph();
    // The three nearest rows are excluded: the walk must cross them to reach 6 and 2.
    let not_middle = |r: u32| !(3..=5).contains(&r);
    assert_eq!(
        rows(&search_filtered(&g, &[4.1, 0.0], 2, 2, not_middle)),
        [6, 2]
    );
    // One far row allowed: the walk keeps going until it finds it.
    assert_eq!(
        rows(&search_filtered(&g, &[7.0, 0.0], 1, 1, |r| r == 0)),
        [0]
    );
    // Nothing allowed: an empty list, not a wrong one.
    assert!(search_filtered(&g, &[7.0, 0.0], 3, 3, |_| false).is_empty());
    let even = |r: u32| r.is_multiple_of(2);
    for q in queries() {
        for k in [1, 3] {
            let hits = search_filtered(&g, &q, k, N, even);
            assert!(hits.iter().all(|h| even(h.row)), "query {q:?}: {hits:?}");
            assert_eq!(hits, scan(&g, &q, k, even), "query {q:?}, k {k}");
        }
    }
}

#[test]
fn a_walk_on_codes_reranks_with_exact_distances() {
    let a = arrays();
    let (params, codes) = crate::quant::quantize(&a.vectors, DIM);
    let sqnorms: Vec<f32> = a.vectors.chunks_exact(DIM).map(|v| dot(v, v)).collect();
    let g = Graph {
        quant: Some(Quantized {
            codes: &codes,
            scale: &params.scale,
            offset: &params.offset,
            sqnorms: &sqnorms,
            metric: Metric::L2,
        }),
        ..a.graph()
    };
    for q in queries() {
        assert_eq!(search(&g, &q, 3, N), scan(&g, &q, 3, |_| true));
    }
}

#[test]
fn damaged_links_are_skipped_not_followed() {
    let mut a = arrays();
    // Node 2: a count past its block and a link past the last node; node 7's level-1 block
    // points at a node that does not exist, and node 4's first upper block past the end.
    a.level0[2 * 5..3 * 5].copy_from_slice(&[9, 1, 99, 3, 0]);
    a.upper[3 * 3..4 * 3].copy_from_slice(&[2, 99, 4]);
    a.upper_start[4] = 1000;
    let g = a.graph();
    for q in queries() {
        let hits = search(&g, &q, 3, N);
        assert_eq!(hits, scan(&g, &q, 3, |_| true), "query {q:?}");
    }
}
