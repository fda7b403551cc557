//! `earshot bench`: recall@k and queries/s of a built collection, one JSON line per ef.
//!
//! Recall counts a result as a hit when its exact distance is no worse than the k-th true
//! neighbour's (+1e-6), so duplicate vectors in the data do not undercount.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::search::{with_scratch, Graph, Hit};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Collection directory.
    pub index: PathBuf,
    /// Query vectors (.npy float32, 2-D). Not needed with --query-rows.
    pub queries: Option<PathBuf>,
    /// Ground truth: int32/int64 row numbers into the collection, one row per query, best
    /// first. Without it, exact neighbours are computed by brute force first.
    pub gt: Option<PathBuf>,
    /// Queries are these rows of the collection itself (.npy of row numbers).
    pub query_rows: Option<PathBuf>,
    /// With --query-rows: leave the query item out of its results (as `similar` does) and
    /// compare with ground-truth ranks 1..=k, since rank 0 is the item itself.
    pub skip_self: bool,
    pub k: usize,
    pub ef: Vec<usize>,
    /// Query threads; each runs its share of the queries.
    pub threads: usize,
    /// Repeat the query set this many times per ef (steadier timings).
    pub repeat: usize,
    /// Open without checksum verification.
    pub lazy: bool,
    /// Walk the graph with the exact f32 vectors even if the collection has 8-bit codes.
    pub exact_walk: bool,
    /// Also draw the recall–QPS curve into this SVG file.
    pub plot: Option<PathBuf>,
}

struct Query {
    vector: Vec<f32>,
    /// Row to leave out (the query item itself), or u32::MAX.
    skip: u32,
    /// Internal distance of the k-th true neighbour.
    threshold: f32,
}

pub fn run(a: &BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.k > 0 && a.threads > 0 && a.repeat > 0,
        "--k, --threads and --repeat must be positive"
    );
    let rss_before = rss_mb();
    let started = Instant::now();
    let verify = if a.lazy { Verify::Lazy } else { Verify::Full };
    let c = Collection::open(&a.index, verify)?;
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "index": a.index.display().to_string(),
            "count": c.len(), "dim": c.dim(), "metric": c.manifest.metric,
            "open_ms": round3(open_ms), "verify": !a.lazy,
            "rss_mb_before_open": rss_before, "rss_mb_after_open": rss_mb(),
            "kernels": earshot_core::distance::kernel_name(),
            "walk": if c.manifest.quantization.is_some() && !a.exact_walk { "int8" } else { "f32" },
        })
    );
    let queries = load_queries(a, &c)?;
    let g = c.graph_with(!a.exact_walk);
    // One untimed pass first, so the first ef measured does not pay for cold caches.
    run_chunk(&g, &queries, a.k, a.ef.first().copied().unwrap_or(64), 1);
    let mut curve = Vec::new();
    for &ef in &a.ef {
        let started = Instant::now();
        let per_thread = queries.len().div_ceil(a.threads);
        let hits: usize = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per_thread.max(1))
                .map(|chunk| s.spawn(move || run_chunk(&g, chunk, a.k, ef, a.repeat)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .sum()
        });
        let secs = started.elapsed().as_secs_f64();
        let total = (queries.len() * a.repeat) as f64;
        let recall = hits as f64 / (total * a.k as f64);
        curve.push((recall, total / secs));
        println!(
            "{}",
            serde_json::json!({
                "ef": ef, "k": a.k, "threads": a.threads,
                "recall": round4(recall),
                "qps": (total / secs).round(),
                "mean_us": round3(secs * 1e6 * a.threads as f64 / total),
            })
        );
    }
    println!("{}", serde_json::json!({"rss_mb_end": rss_mb()}));
    if let Some(path) = &a.plot {
        let walk = if g.quant.is_some() {
            "int8 walk"
        } else {
            "f32 walk"
        };
        let name = a.index.file_name().map_or_else(
            || a.index.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let series = crate::plot::Series {
            label: format!("earshot {walk}, {} thread(s), ef {:?}", a.threads, a.ef),
            points: curve,
        };
        let title = format!("{name}: recall@{} vs queries/s", a.k);
        crate::plot::recall_qps(path, &title, &[series])?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

fn run_chunk(g: &Graph, queries: &[Query], k: usize, ef: usize, repeat: usize) -> usize {
    let mut out: Vec<Hit> = Vec::with_capacity(k);
    let mut hits = 0;
    with_scratch(|scratch| {
        for _ in 0..repeat {
            for q in queries {
                out.clear();
                let skip = q.skip;
                g.search(
                    &q.vector,
                    k,
                    ef,
                    |r| r != skip,
                    skip != u32::MAX,
                    scratch,
                    &mut out,
                );
                hits += out.iter().filter(|h| h.dist <= q.threshold + 1e-6).count();
            }
        }
    });
    hits
}

fn load_queries(a: &BenchOptions, c: &Collection) -> anyhow::Result<Vec<Query>> {
    let dim = c.dim();
    let vectors: Vec<(Vec<f32>, u32)> = match (&a.query_rows, &a.queries) {
        (Some(rows), _) => earshot_build::npy::read_int(rows)?
            .data
            .iter()
            .map(|&r| {
                anyhow::ensure!(
                    r >= 0 && (r as usize) < c.len(),
                    "query row {r} out of range"
                );
                let skip = if a.skip_self { r as u32 } else { u32::MAX };
                Ok((c.vector(r as u32).to_vec(), skip))
            })
            .collect::<anyhow::Result<_>>()?,
        (None, Some(q)) => {
            let q = earshot_build::npy::read_f32(q)?;
            anyhow::ensure!(
                q.cols() == dim,
                "queries have dimension {}, the index {dim}",
                q.cols()
            );
            q.data
                .chunks_exact(dim)
                .map(|v| {
                    let mut v = v.to_vec();
                    if c.manifest.metric == earshot_core::metric::Metric::Cosine {
                        earshot_core::distance::normalize(&mut v);
                    }
                    (v, u32::MAX)
                })
                .collect()
        }
        (None, None) => anyhow::bail!("give --queries Q.npy or --query-rows R.npy"),
    };
    let dist = c.dist();
    let threshold_of = |i: usize, vector: &[f32], skip: u32| -> anyhow::Result<f32> {
        match &a.gt {
            Some(_) => Ok(0.0), // filled below
            None => {
                let g = c.graph();
                let mut out = Vec::with_capacity(a.k);
                with_scratch(|s| {
                    g.scan(
                        vector,
                        a.k,
                        (0..c.len() as u32).filter(|&r| r != skip),
                        s,
                        &mut out,
                    )
                });
                out.last()
                    .map(|h| h.dist)
                    .with_context(|| format!("query {i}: the collection has no other items"))
            }
        }
    };
    let mut queries: Vec<Query> = Vec::with_capacity(vectors.len());
    for (i, (vector, skip)) in vectors.into_iter().enumerate() {
        let threshold = threshold_of(i, &vector, skip)?;
        queries.push(Query {
            vector,
            skip,
            threshold,
        });
    }
    if let Some(path) = &a.gt {
        let gt = earshot_build::npy::read_int(path)?;
        let first = usize::from(a.skip_self);
        anyhow::ensure!(
            gt.cols() >= a.k + first,
            "{}: {} columns, need at least {}",
            path.display(),
            gt.cols(),
            a.k + first
        );
        anyhow::ensure!(
            queries.len() <= gt.rows(),
            "{} queries but the ground truth has {} rows",
            queries.len(),
            gt.rows()
        );
        for (i, q) in queries.iter_mut().enumerate() {
            let kth = gt.data[i * gt.cols() + first + a.k - 1];
            let row = u32::try_from(kth)
                .ok()
                .filter(|&r| (r as usize) < c.len())
                .with_context(|| format!("ground truth row {i} names item {kth}, out of range"))?;
            q.threshold = dist.distance(&q.vector, c.vector(row));
        }
    }
    Ok(queries)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| round3(kb / 1024.0))
}
