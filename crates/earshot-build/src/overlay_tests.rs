//! The write log's [`Overlay`] (earshot_core::search) against a full build: items linked into
//! a built version's graph are found as well as if the version had been built with them, and
//! the version's own arrays are never written.

use rand::{RngExt, SeedableRng};

use crate::graph::{build, BuildWalk, FlatGraph, GraphBuilder, GraphParams};
use earshot_core::distance::{dot, normalize, DistanceFn};
use earshot_core::metric::Metric;
use earshot_core::quant::{self, Params};
use earshot_core::search::{Graph, Hit, InsertScratch, NewRows, Overlay, Quantized, Scratch};

const DIM: usize = 24;

/// `n` unit vectors around 40 centres (clustered like embeddings, not uniform noise).
fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..40 * DIM).map(|_| rng.random::<f32>() - 0.5).collect();
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let c = rng.random_range(0..40);
        let mut v: Vec<f32> = (0..DIM)
            .map(|d| centres[c * DIM + d] + 0.25 * (rng.random::<f32>() - 0.5))
            .collect();
        normalize(&mut v);
        out.extend(v);
    }
    out
}

fn built(vectors: &[f32]) -> FlatGraph {
    let params = GraphParams {
        m: 8,
        ef_construction: 64,
        threads: 1,
        builder: GraphBuilder::Native,
        walk: BuildWalk::Int8,
    };
    build(vectors, DIM, Metric::Cosine, params, &|_| {}).unwrap()
}

/// A served view of `g` over `vectors`, walked on 8-bit codes under `q`.
fn graph<'a>(
    g: &'a FlatGraph,
    vectors: &'a [f32],
    q: &'a (Params, Vec<i8>, Vec<f32>),
) -> Graph<'a> {
    Graph {
        vectors,
        dim: DIM,
        level0: &g.level0,
        level0_degree: g.level0_degree,
        upper: &g.upper,
        upper_degree: g.upper_degree,
        upper_start: &g.upper_start,
        entry_point: g.entry_point,
        max_level: g.max_level,
        dist: DistanceFn::new(Metric::Cosine),
        quant: Some(Quantized {
            codes: &q.1,
            scale: &q.0.scale,
            offset: &q.0.offset,
            sqnorms: &q.2,
            metric: Metric::Cosine,
        }),
    }
}

fn codes(vectors: &[f32], params: Option<Params>) -> (Params, Vec<i8>, Vec<f32>) {
    let params = params.unwrap_or_else(|| quant::quantize(vectors, DIM).0);
    let mut codes = Vec::new();
    for v in vectors.chunks_exact(DIM) {
        quant::encode_into(v, &params.scale, &params.offset, &mut codes);
    }
    let sqnorms = vectors.chunks_exact(DIM).map(|v| dot(v, v)).collect();
    (params, codes, sqnorms)
}

fn exact_top(all: &[f32], query: &[f32], k: usize) -> Vec<u32> {
    let mut d: Vec<Hit> = all
        .chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| Hit {
            dist: 1.0 - dot(query, v),
            row: i as u32,
        })
        .collect();
    d.sort_unstable();
    d.iter().take(k).map(|h| h.row).collect()
}

#[test]
fn linked_items_are_found_as_well_as_in_a_full_build() {
    let (n_base, n_new, k, ef) = (3_600, 400, 10, 10);
    let all = clustered(n_base + n_new, 7);
    let (base_v, new_v) = all.split_at(n_base * DIM);

    let base_g = built(base_v);
    let base_q = codes(base_v, None);
    let version = graph(&base_g, base_v, &base_q);
    let level0_before = base_g.level0.clone();
    let new_q = codes(new_v, Some(base_q.0.clone()));
    let rows = NewRows {
        vectors: new_v,
        codes: &new_q.1,
        sqnorms: &new_q.2,
    };
    let mut overlay = Overlay::new(&version);
    let mut s = InsertScratch::default();
    for _ in 0..n_new {
        overlay.insert(&version, rows, 64, &mut s);
    }
    assert_eq!(overlay.len(), n_new);
    assert!(overlay.rewritten_rows() > 0 && overlay.rewritten_rows() < n_base);
    assert_eq!(
        base_g.level0, level0_before,
        "the version's links were written"
    );

    let full_g = built(&all);
    let full_q = codes(&all, None);
    let full = graph(&full_g, &all, &full_q);

    // Queries: every new item's own vector (in-sample), and as many base items'.
    let queries: Vec<u32> = (n_base as u32..(n_base + n_new) as u32)
        .chain((0..n_new as u32).map(|i| i * 9))
        .collect();
    let (mut joined_hits, mut full_hits, mut own_first) = (0, 0, 0);
    let mut scratch = Scratch::default();
    for &qr in &queries {
        let q = &all[qr as usize * DIM..(qr as usize + 1) * DIM];
        let truth = exact_top(&all, q, k);
        let mut out = Vec::new();
        version.search_joined(
            Some((&overlay, rows)),
            q,
            k,
            ef,
            |_| true,
            false,
            &mut scratch,
            &mut out,
        );
        joined_hits += out.iter().filter(|h| truth.contains(&h.row)).count();
        own_first += usize::from(out.first().map(|h| h.row) == Some(qr));
        out.clear();
        full.search(q, k, ef, |_| true, false, &mut scratch, &mut out);
        full_hits += out.iter().filter(|h| truth.contains(&h.row)).count();
    }
    let total = (queries.len() * k) as f64;
    let (joined, full) = (joined_hits as f64 / total, full_hits as f64 / total);
    assert!(
        joined >= full - 0.01,
        "recall@{k} at ef {ef}: joined {joined:.4}, full build {full:.4}"
    );
    assert!(
        own_first >= queries.len() * 99 / 100,
        "{own_first} of {} queries found their own item first",
        queries.len()
    );

    // The filter sees new rows too: refusing every new row leaves only version rows.
    let q = &new_v[..DIM];
    let mut out = Vec::new();
    let base_only = |r: u32| (r as usize) < n_base;
    version.search_joined(
        Some((&overlay, rows)),
        q,
        k,
        ef,
        base_only,
        true,
        &mut scratch,
        &mut out,
    );
    assert_eq!(out.len(), k);
    assert!(out.iter().all(|h| (h.row as usize) < n_base));
}

/// Items not linked yet are scanned: on their codes first when there are many, then exactly.
#[test]
fn a_long_unlinked_tail_is_scanned_on_codes_without_losing_neighbours() {
    let (n_base, n_new, k) = (1_000, 2_000, 10);
    let all = clustered(n_base + n_new, 11);
    let (base_v, new_v) = all.split_at(n_base * DIM);
    let base_g = built(base_v);
    let base_q = codes(base_v, None);
    let version = graph(&base_g, base_v, &base_q);
    let new_q = codes(new_v, Some(base_q.0.clone()));
    let rows = NewRows {
        vectors: new_v,
        codes: &new_q.1,
        sqnorms: &new_q.2,
    };
    let mut scratch = Scratch::default();
    let (mut found, mut total) = (0, 0);
    for qi in (0..n_new).step_by(20) {
        let q = &new_v[qi * DIM..(qi + 1) * DIM];
        let truth: Vec<u32> = exact_top(new_v, q, k)
            .into_iter()
            .map(|i| i + n_base as u32)
            .collect();
        let mut out = Vec::new();
        let odd = |r: u32| r % 2 == 1 || truth.contains(&r);
        version.scan_new(rows, 0, q, k, odd, &mut scratch, &mut out);
        out.sort_unstable();
        assert_eq!(out.len(), k);
        assert!(out.iter().all(|h| odd(h.row)), "the filter holds");
        assert_eq!(
            out[0].row,
            qi as u32 + n_base as u32,
            "an item is its own nearest"
        );
        let d = 1.0 - dot(q, &new_v[(out[1].row as usize - n_base) * DIM..][..DIM]);
        assert!((out[1].dist - d).abs() < 1e-5, "distances are exact");
        found += out.iter().filter(|h| truth.contains(&h.row)).count();
        total += k;
    }
    assert!(
        found * 100 >= total * 99,
        "{found} of {total} exact neighbours"
    );
    // Past `from` only.
    let mut out = Vec::new();
    version.scan_new(
        rows,
        n_new - 5,
        &new_v[..DIM],
        k,
        |_| true,
        &mut scratch,
        &mut out,
    );
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|h| h.row as usize >= n_base + n_new - 5));
}
