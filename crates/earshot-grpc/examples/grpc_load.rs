//! Closed-loop gRPC load for measuring the server's CPU per request (BENCHMARKS.md §6,
//! "gRPC"): `similar` calls by the IDs of `--query-rows` (an int `.npy` of row numbers of
//! the collection), CONCURRENCY calls in flight over one HTTP/2 connection, for SECONDS,
//! one tokio thread. BATCH N sends `Batch` calls of N `similar` queries instead; BATCH
//! `stream[:D]` sends single queries as messages of `SimilarStream` (one stream per task,
//! D messages in flight on each, default 1).
//! Prints one JSON line: calls answered, errors, the mean protobuf size of an answer.
//!
//!     cargo run --release --example grpc_load -p earshot-grpc -- \
//!         ADDR INDEX_DIR QUERY_ROWS.npy EF SECONDS CONCURRENCY [BATCH]
//!     cargo run --release --example grpc_load -p earshot-grpc -- ids INDEX_DIR QUERY_ROWS.npy

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_grpc::pb;
use earshot_grpc::pb::earshot_client::EarshotClient;
use prost::Message;

/// Row numbers from a little-endian `<i4` or `<i8` `.npy` vector.
fn rows(path: &Path) -> Vec<u32> {
    let b = std::fs::read(path).expect("query rows");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let data = &b[10 + hlen..];
    if header.contains("'<i8'") {
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    } else {
        assert!(header.contains("'<i4'"), "{header}");
        data.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    // `ids INDEX_DIR QUERY_ROWS`: the query IDs, one a line (for the JSON side of the
    // wire-size comparison).
    if a.first().map(String::as_str) == Some("ids") {
        let c = Collection::open(Path::new(&a[1]), Verify::Lazy).expect("open the collection");
        for r in rows(Path::new(&a[2])) {
            println!("{}", c.id(r));
        }
        return;
    }
    assert!(
        a.len() >= 6,
        "usage: ADDR INDEX_DIR QUERY_ROWS EF SECONDS CONCURRENCY [BATCH]"
    );
    let dir = Path::new(&a[1]);
    let collection = dir.file_name().unwrap().to_str().unwrap().to_string();
    let c = Collection::open(dir, Verify::Lazy).expect("open the collection");
    let ids: Arc<Vec<String>> = Arc::new(
        rows(Path::new(&a[2]))
            .into_iter()
            .map(|r| c.id(r).to_string())
            .collect(),
    );
    let ef: u32 = a[3].parse().unwrap();
    let secs: f64 = a[4].parse().unwrap();
    let conc: usize = a[5].parse().unwrap();
    // A number of queries per Batch call, or `stream`: single queries on SimilarStream.
    // `stream:D`: D messages in flight on each stream (default 1).
    let stream = a.get(6).is_some_and(|b| b.starts_with("stream"));
    let depth: usize = a
        .get(6)
        .and_then(|b| b.strip_prefix("stream:"))
        .map_or(1, |d| d.parse().unwrap());
    let batch: usize = a
        .get(6)
        .filter(|_| !stream)
        .map_or(1, |b| b.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", a[0]))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let client = EarshotClient::new(ch);
        let (ok, err, bytes) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..conc)
            .map(|t| {
                let (mut client, ids, collection) =
                    (client.clone(), ids.clone(), collection.clone());
                let (ok, err, bytes) = (ok.clone(), err.clone(), bytes.clone());
                tokio::spawn(async move {
                    let mut i = t * 7919;
                    let req = |i: usize| pb::SimilarRequest {
                        collection: collection.clone(),
                        id: ids[i % ids.len()].clone(),
                        k: Some(10),
                        ef: Some(ef),
                        ..Default::default()
                    };
                    if stream {
                        // One stream per task, `depth` messages in flight on each.
                        let (tx, rx) = tokio::sync::mpsc::channel(depth);
                        for _ in 0..depth {
                            tx.send(req(i)).await.unwrap();
                            i += 1;
                        }
                        let mut answers = client
                            .similar_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .await
                            .expect("open the stream")
                            .into_inner();
                        while let Ok(Some(a)) = answers.message().await {
                            match a.outcome {
                                Some(pb::similar_answer::Outcome::Ok(r)) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    bytes.fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
                                }
                                _ => {
                                    err.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            if Instant::now() >= end {
                                break;
                            }
                            i += 1;
                            if tx.send(req(i)).await.is_err() {
                                break;
                            }
                        }
                        return;
                    }
                    while Instant::now() < end {
                        let size = if batch == 1 {
                            client
                                .similar(req(i))
                                .await
                                .map(|r| r.into_inner().encoded_len())
                        } else {
                            let queries = (0..batch)
                                .map(|j| pb::BatchQuery {
                                    query: Some(pb::batch_query::Query::Similar(req(i + j))),
                                })
                                .collect();
                            client
                                .batch(pb::BatchRequest { queries })
                                .await
                                .map(|r| r.into_inner().encoded_len())
                        };
                        i += batch;
                        match size {
                            Ok(n) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(_) => {
                                err.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let ok = ok.load(Ordering::Relaxed);
        println!(
            "{{\"calls\": {ok}, \"errors\": {}, \"mean_answer_bytes\": {:.1}}}",
            err.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed) as f64 / ok.max(1) as f64
        );
    });
}
