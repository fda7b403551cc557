//! The engine's `similar` path in-process against the bare walk it runs, on one thread
//! (BENCHMARKS.md §6, "Huge pages and the stream's rounds"): how much of a server's cost per
//! query is the engine (ID lookup, constraints, pick, answer) rather than the transport.
//! Alternates the two loops over the same query rows, printing queries per thread
//! CPU-second of each.
//!
//!     cargo run --release -p earshot-server --example engine_loop -- \
//!         INDEX_DIR QUERY_ROWS.npy EF REPEAT        # rows: an int .npy of row numbers

use std::collections::BTreeMap;
use std::sync::Arc;

use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::search::with_scratch;
use earshot_server::api::SimilarRequest;
use earshot_server::engine::Engine;

fn thread_cpu_s() -> f64 {
    earshot_server::background::thread_cpu().as_secs_f64()
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(a.len() == 4, "usage: INDEX_DIR QUERY_ROWS.npy EF REPEAT");
    let dir = std::path::Path::new(&a[0]);
    let rows: Vec<u32> = earshot_build::npy::read_int(std::path::Path::new(&a[1]))
        .expect("query rows")
        .data
        .iter()
        .map(|&r| u32::try_from(r).expect("a row number"))
        .collect();
    let ef: usize = a[2].parse().expect("EF");
    let repeat: usize = a[3].parse().expect("REPEAT");
    let c = Arc::new(Collection::open(dir, Verify::Lazy).expect("open the collection"));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let ids: Vec<String> = rows.iter().map(|&r| c.id(r).to_owned()).collect();
    let vectors: Vec<Vec<f32>> = rows.iter().map(|&r| c.vector(r).to_vec()).collect();
    let engine = Engine {
        collections: BTreeMap::from([(name.clone(), c.clone())]),
        deltas: BTreeMap::new(),
        default_ef: ef,
        recall: None,
    };
    let req = SimilarRequest {
        k: Some(10),
        ef: Some(ef),
        ..Default::default()
    };
    let g = c.graph();
    let n = (repeat * rows.len()) as f64;
    for round in 0..3 {
        let t = thread_cpu_s();
        let mut out = Vec::with_capacity(10);
        with_scratch(|s| {
            for _ in 0..repeat {
                for (v, &skip) in vectors.iter().zip(&rows) {
                    out.clear();
                    g.search(v, 10, ef, |r| r != skip, true, s, &mut out);
                }
            }
        });
        let walk = n / (thread_cpu_s() - t);
        let t = thread_cpu_s();
        for _ in 0..repeat {
            for id in &ids {
                engine.similar(&name, id, &req).expect("a known ID");
            }
        }
        let similar = n / (thread_cpu_s() - t);
        println!(
            "{{\"round\":{round},\"walk_per_cpu_s\":{walk:.0},\"engine_similar_per_cpu_s\":{similar:.0},\"ratio\":{:.3}}}",
            similar / walk
        );
    }
}
