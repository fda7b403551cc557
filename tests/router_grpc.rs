//! `earshot route --grpc-addr` on real processes: 2 shards of `earshot serve` behind a router
//! that answers over HTTP and gRPC. The same requests over both give identical answers
//! (IDs, scores, order, explanations, items, collections), the same errors with the same
//! stable code in a `google.rpc.ErrorInfo`; SimilarStream answers each message as Similar;
//! `grpc.health.v1` follows `/readyz`; calls are counted in the router's metrics; and the
//! gRPC listener stops with the router.

mod common;
mod grpc_common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use earshot_grpc::pb;
use grpc_common::*;
use serde_json::{json, Value};
use tonic::{Code, Request};

const SHARDS: usize = 2;
const N: usize = 1500;
const DIM: usize = 16;
const EF: u32 = 300;

struct Fixture {
    cat: Catalogue,
    router: Server,
    grpc: String,
    _shards: Vec<Server>,
    _dir: PathBuf,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// A topology file naming one replica per shard, at these addresses.
fn topology(dir: &Path, shards: &[&str]) -> PathBuf {
    let lists: Vec<String> = shards.iter().map(|a| format!("[\"http://{a}\"]")).collect();
    let path = dir.join("topology.toml");
    std::fs::write(
        &path,
        format!("[collections.tracks]\nshards = [{}]\n", lists.join(", ")),
    )
    .unwrap();
    path
}

/// `earshot route` over `topology`, its gRPC listener on `grpc`.
fn route_args(topology: &Path, grpc: &str) -> Vec<std::ffi::OsString> {
    let args = ["route", "--topology", topology.to_str().unwrap()];
    let rest = ["--addr", "127.0.0.1:0", "--grpc-addr", grpc];
    args.iter().chain(&rest).map(Into::into).collect()
}

fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let cat = catalogue(17, N, DIM, 8, 100, 50, 40);
        let (npy, csv) = cat.write(&dir, "tracks");
        let shards: Vec<Server> = (0..SHARDS)
            .map(|i| {
                let root = dir.join(format!("shard{i}"));
                let mut args = build_args(&npy, Some(&csv), "cosine", &root.join("tracks"));
                args.push("--shard".into());
                args.push(format!("{i}/{SHARDS}").into());
                earshot(args).assert_ok();
                Server::start(&root, &[])
            })
            .collect();
        let addrs: Vec<&str> = shards.iter().map(|s| s.addr.as_str()).collect();
        let topo = topology(&dir, &addrs);
        let router = Server::start_route(
            &topo,
            &["--grpc-addr", "127.0.0.1:0", "--health-interval", "0.3"],
        );
        let mut pids = vec![router.pid()];
        pids.extend(shards.iter().map(|s| s.pid()));
        let reaper = reap_at_exit(&pids, &[&dir]);
        let grpc = grpc_addr(&router);
        Fixture {
            cat,
            router,
            grpc,
            _shards: shards,
            _dir: dir,
            _reaper: reaper,
        }
    })
}

fn similar(id: &str) -> pb::SimilarRequest {
    pb::SimilarRequest {
        collection: "tracks".into(),
        id: id.into(),
        ef: Some(EF),
        ..Default::default()
    }
}

fn vector_of(f: &Fixture, i: usize) -> Vec<f32> {
    f.router
        .get(&format!("/v1/tracks/{}", encode_segment(&f.cat.ids[i])))
        .ok_json()["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn every_query_answers_as_the_routers_http_does() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    for i in [0, 5, 777, N - 1] {
        let id = &f.cat.ids[i];
        let g = c.similar(similar(id)).await.unwrap().into_inner();
        let h = f
            .router
            .get(&format!(
                "/v1/tracks/{}/similar?ef={EF}",
                encode_segment(id)
            ))
            .ok_json();
        assert_same(h, results_json(&g, false), "similar");
    }
    // Shaped and explained: max_per_creator and the emerging quota over the merged pool.
    let id = &f.cat.ids[42];
    let req = pb::SimilarRequest {
        k: Some(12),
        max_per_creator: Some(1),
        explain: Some(true),
        emerging: Some(pb::Emerging {
            max_popularity: 30.0,
            min_share: Some(0.25),
            boost: None,
        }),
        ..similar(id)
    };
    let g = c.similar(req).await.unwrap().into_inner();
    let body = json!({"k": 12, "ef": EF, "max_per_creator": 1, "explain": true,
                      "emerging": {"max_popularity": 30.0, "min_share": 0.25}});
    let h = f
        .router
        .post_json(&format!("/v1/tracks/{}/similar", encode_segment(id)), &body)
        .ok_json();
    assert_same(h, results_json(&g, false), "shaped similar");

    let v = vector_of(f, 9);
    let g = c
        .search(pb::SearchRequest {
            collection: "tracks".into(),
            vector: v.clone(),
            k: Some(8),
            ef: Some(EF),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let body = json!({"collection": "tracks", "vector": v, "k": 8, "ef": EF});
    assert_same(
        f.router.post_json("/v1/search", &body).ok_json(),
        results_json(&g, false),
        "search",
    );

    let history = [3, 30, 300].map(|i| pb::HistoryItem {
        id: f.cat.ids[i].clone(),
        ..Default::default()
    });
    let g = c
        .taste(pb::TasteRequest {
            collection: "tracks".into(),
            history: history.to_vec(),
            k: Some(10),
            ef: Some(EF),
            explain: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<Value> = [3, 30, 300].map(|i| json!({"id": f.cat.ids[i]})).into();
    let body = json!({"history": ids, "k": 10, "ef": EF, "explain": true});
    assert_same(
        f.router.post_json("/v1/taste/tracks", &body).ok_json(),
        results_json(&g, false),
        "taste",
    );

    // A batch: answers in order, each on its own, errors as entries.
    let q = |q| pb::BatchQuery { query: Some(q) };
    use pb::batch_query::Query as Q;
    let g = c
        .batch(pb::BatchRequest {
            queries: vec![
                q(Q::Similar(pb::SimilarRequest {
                    k: Some(5),
                    ..similar(&f.cat.ids[7])
                })),
                q(Q::Search(pb::SearchRequest {
                    collection: "tracks".into(),
                    vector: v.clone(),
                    k: Some(5),
                    ef: Some(EF),
                    ..Default::default()
                })),
                q(Q::Similar(similar("no-such-id"))),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let body = json!({"queries": [
        {"type": "similar", "collection": "tracks", "id": f.cat.ids[7], "k": 5, "ef": EF},
        {"type": "search", "collection": "tracks", "vector": v, "k": 5, "ef": EF},
        {"type": "similar", "collection": "tracks", "id": "no-such-id", "ef": EF},
    ]});
    let h = f.router.post_json("/v1/batch", &body).ok_json();
    let h = h["responses"].as_array().unwrap();
    assert_eq!(g.responses.len(), 3);
    for (i, (g, h)) in g.responses.iter().zip(h).enumerate() {
        match g.outcome.as_ref().unwrap() {
            pb::batch_entry::Outcome::Ok(r) => {
                assert_same(h.clone(), results_json(r, false), &format!("batch {i}"))
            }
            pb::batch_entry::Outcome::Error(e) => {
                assert_eq!(e.code, h["error"]["code"].as_str().unwrap(), "batch {i}");
                assert_eq!(e.status as u64, h["status"].as_u64().unwrap());
                assert_eq!(e.message, h["error"]["message"].as_str().unwrap());
            }
        }
    }
}

#[tokio::test]
async fn items_and_collections_are_the_shards_as_http_gives_them() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    for i in [0, 1, 2, 1234] {
        let id = &f.cat.ids[i];
        let r = c
            .get_item(pb::GetItemRequest {
                collection: "tracks".into(),
                id: id.clone(),
            })
            .await
            .unwrap();
        let version = r.metadata().get("x-earshot-version").cloned();
        let h = f.router.get(&format!("/v1/tracks/{}", encode_segment(id)));
        let (mut got, mut want) = (item_json(r.get_ref()), h.ok_json());
        f32ify(&mut got);
        f32ify(&mut want);
        assert_eq!(got, want);
        assert_eq!(
            version.as_ref().map(|v| v.to_str().unwrap()),
            h.header("x-earshot-version"),
            "the owner shard's version"
        );
    }
    let g = c
        .collections(pb::CollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let h = f.router.get("/v1/collections").ok_json();
    assert_eq!(g.kernels, h["kernels"].as_str().unwrap());
    assert_eq!(g.collections.len(), 1);
    let (g, h) = (&g.collections[0], &h["collections"][0]);
    assert_eq!(g.name, "tracks");
    assert_eq!(g.count, N as u64, "the shards' counts summed");
    assert!(g.shard.is_none(), "the collection as a whole");
    for (got, field) in [
        (json!(g.count), "count"),
        (json!(g.dim), "dim"),
        (json!(g.metric), "metric"),
        (json!(g.creators), "creators"),
        (json!(g.mapped_bytes), "mapped_bytes"),
        (json!(g.version), "version"),
        (json!(g.default_ef), "default_ef"),
    ] {
        assert_eq!(got, h[field], "{field}");
    }
}

#[tokio::test]
async fn errors_carry_the_routers_http_codes() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let v = vector_of(f, 1);
    let search = |collection: &str, vector: Vec<f32>, k: Option<u32>| pb::SearchRequest {
        collection: collection.into(),
        vector,
        k,
        ..Default::default()
    };
    let cases: Vec<(tonic::Status, Resp)> = vec![
        (
            c.similar(similar("no-such-id")).await.unwrap_err(),
            f.router.get("/v1/tracks/no-such-id/similar"),
        ),
        (
            c.similar(pb::SimilarRequest {
                collection: "nope".into(),
                ..similar(&f.cat.ids[1])
            })
            .await
            .unwrap_err(),
            f.router.get(&format!(
                "/v1/nope/{}/similar",
                encode_segment(&f.cat.ids[1])
            )),
        ),
        (
            c.search(search("tracks", vec![1.0, 2.0], None))
                .await
                .unwrap_err(),
            f.router.post_json(
                "/v1/search",
                &json!({"collection": "tracks", "vector": [1.0, 2.0]}),
            ),
        ),
        (
            c.search(search("tracks", v.clone(), Some(0)))
                .await
                .unwrap_err(),
            f.router.post_json(
                "/v1/search",
                &json!({"collection": "tracks", "vector": v, "k": 0}),
            ),
        ),
        (
            c.taste(pb::TasteRequest {
                collection: "tracks".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            f.router
                .post_json("/v1/taste/tracks", &json!({"history": []})),
        ),
        (
            c.get_item(pb::GetItemRequest {
                collection: "tracks".into(),
                id: "no-such-id".into(),
            })
            .await
            .unwrap_err(),
            f.router.get("/v1/tracks/no-such-id"),
        ),
        (
            c.batch(pb::BatchRequest { queries: vec![] })
                .await
                .unwrap_err(),
            f.router.post_json("/v1/batch", &json!({"queries": []})),
        ),
        // Writes go to the shards, which have no write log here: their refusal, passed on.
        (
            c.delete(pb::DeleteRequest {
                collection: "tracks".into(),
                ids: vec!["x".into()],
            })
            .await
            .unwrap_err(),
            http(
                "DELETE",
                &f.router.url("/admin/tracks/items"),
                &[("content-type", "application/json")],
                Some(br#"{"ids": ["x"]}"#.to_vec()),
            ),
        ),
    ];
    for (g, h) in cases {
        let body = h.json();
        let code = body["error"]["code"].as_str().unwrap();
        assert!(h.status >= 400, "{h:?}");
        assert_eq!(reason(&g), code, "{g:?} vs {h:?}");
        assert_eq!(g.message(), body["error"]["message"].as_str().unwrap());
        let want = match h.status {
            400 | 413 | 415 | 422 => Code::InvalidArgument,
            404 => Code::NotFound,
            409 => Code::FailedPrecondition,
            503 => Code::Unavailable,
            s => panic!("unexpected status {s}: {h:?}"),
        };
        assert_eq!(g.code(), want, "{g:?}");
    }
}

#[tokio::test]
async fn streams_health_and_metrics() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let reqs = vec![
        similar(&f.cat.ids[20]),
        similar("no-such-id"),
        pb::SimilarRequest {
            k: Some(3),
            ..similar(&f.cat.ids[21])
        },
    ];
    let mut answers = c
        .similar_stream(Request::new(tokio_stream_of(reqs.clone())))
        .await
        .unwrap()
        .into_inner();
    for r in reqs {
        let a = answers.message().await.unwrap().expect("one answer each");
        match (a.outcome.unwrap(), c.similar(r).await) {
            (pb::similar_answer::Outcome::Ok(got), Ok(want)) => {
                assert_eq!(got, want.into_inner())
            }
            (pb::similar_answer::Outcome::Error(got), Err(want)) => {
                assert_eq!(got.code, reason(&want));
                assert_eq!(got.status, 404);
            }
            (got, want) => panic!("stream answered {got:?}, Similar {want:?}"),
        }
    }
    assert!(answers.message().await.unwrap().is_none());

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", f.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    for service in ["", "earshot.v1.Earshot", "tracks"] {
        // The health service is filled in by a loop: give it a moment after start.
        let mut status = None;
        for _ in 0..50 {
            let r = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await;
            if let Ok(r) = r {
                status = Some(r.into_inner().status());
                if status == Some(ServingStatus::Serving) {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, Some(ServingStatus::Serving), "{service:?}");
    }
    assert_eq!(f.router.get("/readyz").status, 200);
    let m = f.router.get("/metrics").body;
    for needle in [
        r#"earshot_grpc_requests_total{method="SimilarStream",code="OK"}"#,
        r#"earshot_grpc_requests_total{method="Similar",code="NOT_FOUND"}"#,
        "earshot_connections_open",
    ] {
        assert!(m.contains(needle), "{needle} not in /metrics");
    }
}

/// A router whose gRPC address cannot be bound refuses to start, naming the flag.
#[test]
fn a_grpc_address_in_use_stops_the_router_at_start() {
    let f = fx();
    let dir = tempfile::tempdir().unwrap();
    let topo = topology(dir.path(), &[&f.router.addr]);
    let args = route_args(&topo, &f.grpc);
    let e = match Server::try_spawn(&args) {
        Ok(_) => panic!("started on a gRPC address in use"),
        Err(e) => e,
    };
    assert!(e.stderr.contains("--grpc-addr"), "{}", e.stderr);
}

/// API keys as the router's HTTP side checks them: none or a wrong one is UNAUTHENTICATED
/// (`unauthorized`), a query key answers queries, writes need the admin key
/// (PERMISSION_DENIED, `forbidden`) and the stream checks the key once, before any message.
#[tokio::test]
async fn keys_are_checked_as_http_checks_them() {
    let f = fx();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<&str> = f._shards.iter().map(|s| s.addr.as_str()).collect();
    let topo = topology(dir.path(), &addrs);
    let args = route_args(&topo, "127.0.0.1:0");
    let env = [(
        "EARSHOT_QUERY_KEYS".to_string(),
        "query-key-123".to_string(),
    )];
    let r = Server::try_spawn_env(&args, &env).expect("route starts");
    let _reaper = reap_at_exit(&[r.pid()], &[dir.path()]);
    let mut c = client(&grpc_addr(&r)).await;
    let id = &f.cat.ids[3];
    fn with<M>(key: &str, m: M) -> Request<M> {
        let mut req = Request::new(m);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    }
    let e = c.similar(similar(id)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "unauthorized")
    );
    r.get(&format!("/v1/tracks/{}/similar", encode_segment(id)))
        .assert_error(401, "unauthorized");
    let e = c
        .similar(with("wrong-key-000", similar(id)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "unauthorized");
    c.similar(with("query-key-123", similar(id))).await.unwrap();
    let del = pb::DeleteRequest {
        collection: "tracks".into(),
        ids: vec!["x".into()],
    };
    let e = c.delete(with("query-key-123", del)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "forbidden")
    );
    let e = c
        .similar_stream(Request::new(tokio_stream_of(vec![similar(id)])))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "unauthorized");
}
