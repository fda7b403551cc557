//! The search loop: one `Graph::search` (k = 10) on a small synthetic collection built in the
//! setup (20,000 clustered 128-d vectors from `demo::catalogue`, M = 16, ef_construction = 100,
//! with 8-bit codes), walking the f32 vectors and the int8 codes, per metric and ef.
//!
//!     cargo bench --bench search
//!
//! The setup builds three collections with hnsw_rs (~10-20 s each on 2 cores) into a temp
//! dir; only the queries are timed. The collection fits in cache, so this measures the
//! walk's own cost (heap operations, visited set, distances, re-ranking), not DRAM latency:
//! `earshot bench` on real data measures that.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use earshot_build::{build_collection, GraphParams, Settings};
use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::metric::Metric;
use earshot_core::search::{with_scratch, Hit};

const N: usize = 20_000;
const DIM: usize = 128;
const QUERIES: usize = 200;
const K: usize = 10;

fn search(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    for (metric, name) in [
        (Metric::Cosine, "cosine"),
        (Metric::L2, "l2"),
        (Metric::Dot, "dot"),
    ] {
        let (data, queries) = earshot_build::synthetic::catalogue(N, DIM, QUERIES, 7);
        let dir = tmp.path().join(name);
        let settings = Settings {
            metric,
            params: GraphParams {
                m: 16,
                ef_construction: 100,
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                builder: Default::default(),
                walk: Default::default(),
            },
            force: false,
            source: "benches/search.rs".into(),
            quantize: true,
            taste_history: None,
        };
        build_collection(data, &dir, &settings).expect("build the bench collection");
        let col = Collection::open(&dir, Verify::Lazy).expect("open the bench collection");
        let mut queries = queries;
        if metric == Metric::Cosine {
            for q in queries.chunks_exact_mut(DIM) {
                earshot_core::distance::normalize(q);
            }
        }
        let mut g = c.benchmark_group(format!("search_{name}"));
        g.throughput(Throughput::Elements(1));
        for (walk, graph) in [("f32", col.graph_with(false)), ("int8", col.graph())] {
            for ef in [16usize, 64, 128] {
                g.bench_with_input(BenchmarkId::new(walk, ef), &ef, |b, &ef| {
                    let mut out: Vec<Hit> = Vec::with_capacity(K);
                    let mut i = 0usize;
                    with_scratch(|scratch| {
                        b.iter(|| {
                            let q = &queries[(i % QUERIES) * DIM..(i % QUERIES + 1) * DIM];
                            i += 1;
                            out.clear();
                            graph.search(black_box(q), K, ef, |_| true, false, scratch, &mut out);
                            black_box(out.len())
                        })
                    });
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = search
}
criterion_main!(benches);
