//! Writes over gRPC: `Upsert` and `Delete` validate and append exactly as
//! `POST`/`DELETE /admin/{collection}/items` do (same codes, in `ErrorInfo`), answer once the
//! batch is durable in the write log, and the items show up in (or vanish from) HTTP answers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use earshot_grpc::pb;
use earshot_grpc::pb::earshot_client::EarshotClient;
use earshot_testkit::S3Server;
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

const DIM: usize = 16;

fn grpc_addr(s: &Server) -> String {
    s.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("grpc listening on http://"))
        .expect("a `grpc listening on` line")
        .trim()
        .to_string()
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"))
        .reason
        .clone()
}

fn item(id: &str, vector: Vec<f32>) -> pb::WriteItem {
    pb::WriteItem {
        id: id.into(),
        vector,
        creator: Some("grpc-artist".into()),
        popularity: Some(1.0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_and_delete_over_grpc() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(4, 1_000, DIM, 6, 20, 1000, 1000);
    let (npy, csv) = cat.write(dir.path(), "tracks");
    let built = dir.path().join("built").join("tracks");
    earshot(build_args(&npy, Some(&csv), "cosine", &built)).assert_ok();
    publish_s3(&s3, &built, "v1");
    let cache = dir.path().join("cache");
    let server = serve_s3(
        &s3,
        &cache,
        &["--grpc-addr", "127.0.0.1:0", "--log-poll-ms", "100"],
    );
    let start = Instant::now();
    while server.get("/readyz").status != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ch = Channel::from_shared(format!("http://{}", grpc_addr(&server)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = EarshotClient::new(ch);

    let v = cat.row(5).to_vec();
    let r = client
        .upsert(pb::UpsertRequest {
            collection: "tracks".into(),
            items: vec![item("g-1", v.clone())],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.collection.as_str(), r.seq, r.count), ("tracks", 1, 1));
    let search = |v: &[f32]| {
        let r = server.post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": v, "k": 2}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let start = Instant::now();
    while !search(&v).contains("\"g-1\"") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "upsert not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client
        .delete(pb::DeleteRequest {
            collection: "tracks".into(),
            ids: vec!["g-1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.seq, 2);
    let start = Instant::now();
    while search(&v).contains("\"g-1\"") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "delete not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The HTTP API's validation, codes and all.
    let refused = |items: Vec<pb::WriteItem>| {
        let mut c = client.clone();
        async move {
            c.upsert(pb::UpsertRequest {
                collection: "tracks".into(),
                items,
            })
            .await
            .unwrap_err()
        }
    };
    let e = refused(vec![item("short", vec![1.0, 2.0])]).await;
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::InvalidArgument, "dimension_mismatch".into())
    );
    assert!(e.message().contains("items[0]"), "{}", e.message());
    let e = refused(vec![]).await;
    assert_eq!(reason(&e), "invalid_write_batch");
    let e = refused(vec![item("nan", vec![f32::NAN; DIM])]).await;
    assert_eq!(reason(&e), "invalid_vector");
    let e = client
        .delete(pb::DeleteRequest {
            collection: "nope".into(),
            ids: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::NotFound, "unknown_collection".into())
    );
    assert!(server.get("/metrics").body.contains("method=\"Upsert\""));
}
