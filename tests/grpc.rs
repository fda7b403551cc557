//! The gRPC transport end to end: a real `earshot serve --grpc-addr` process, the generated
//! Rust client over a real HTTP/2 channel, and the same requests sent over HTTP: answers
//! identical (IDs, scores, order, metadata, explanations), errors with the same stable code
//! in a `google.rpc.ErrorInfo`, API keys, overload, deadlines, version pins, request IDs,
//! metrics, `grpc.health.v1` and reflection.

mod common;
mod grpc_common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use earshot_grpc::pb;
use grpc_common::*;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const DIM: usize = 16;

struct Fixture {
    server: Server,
    grpc: String,
    cat: Catalogue,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalogue(11, 2000, DIM, 12, 150, 50, 23);
        let root = build_tracks(dir.path(), &cat, true);
        let server = Server::start(&root, &["--grpc-addr", "127.0.0.1:0"]);
        let reaper = reap_at_exit(&[server.pid()], &[dir.path()]);
        let grpc = grpc_addr(&server);
        Fixture {
            server,
            grpc,
            cat,
            _dir: dir,
            _reaper: reaper,
        }
    })
}

fn similar(collection: &str, id: &str) -> pb::SimilarRequest {
    pb::SimilarRequest {
        collection: collection.into(),
        id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_rpc_answers_as_http_does() {
    let f = fx();
    let s = &f.server;
    let mut c = client(&f.grpc).await;
    let id = &f.cat.ids[5];
    let creator = f.cat.creators[5].clone();

    // Similar: the plain GET form, then every list option through the POST body.
    let rest = s.get(&format!("/v1/tracks/{id}/similar?k=7")).ok_json();
    let mut req = similar("tracks", id);
    req.k = Some(7);
    let g = c.similar(req).await.unwrap().into_inner();
    assert_same(rest, results_json(&g, false), "similar");

    let body = json!({
        "k": 12, "ef": 80, "exclude": [f.cat.ids[6], f.cat.ids[7]],
        "filter": {"exclude_creators": ["artist-0001"], "min_popularity": 10.0},
        "max_per_creator": 2, "explain": true, "exclude_same_creator": true,
        "emerging": {"max_popularity": 20000.0, "min_share": 0.3, "boost": 0.5},
    });
    let rest = s
        .post_json(&format!("/v1/tracks/{id}/similar"), &body)
        .ok_json();
    let req = pb::SimilarRequest {
        k: Some(12),
        ef: Some(80),
        exclude: vec![f.cat.ids[6].clone(), f.cat.ids[7].clone()],
        filter: Some(pb::Filter {
            exclude_creators: vec!["artist-0001".into()],
            min_popularity: Some(10.0),
            ..Default::default()
        }),
        max_per_creator: Some(2),
        explain: Some(true),
        exclude_same_creator: Some(true),
        emerging: Some(pb::Emerging {
            max_popularity: 20000.0,
            min_share: Some(0.3),
            boost: Some(0.5),
        }),
        ..similar("tracks", id)
    };
    let g = c.similar(req).await.unwrap().into_inner();
    assert!(g
        .results
        .iter()
        .all(|r| r.creator.as_ref() != Some(&creator)));
    assert_same(rest, results_json(&g, false), "similar with every option");

    // Pool mode: creator popularity on each result, and the queried item.
    let rest = s
        .post_json(
            &format!("/v1/tracks/{id}/similar"),
            &json!({"pool": true, "k": 5}),
        )
        .ok_json();
    let req = pb::SimilarRequest {
        pool: Some(true),
        k: Some(5),
        ..similar("tracks", id)
    };
    let g = c.similar(req).await.unwrap().into_inner();
    assert!(g.item.is_some());
    assert_same(rest, results_json(&g, true), "similar in pool mode");

    // Search.
    let v: Vec<f32> = f.cat.row(42).to_vec();
    let rest = s
        .post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": v, "k": 9, "explain": true,
                    "filter": {"creators": [f.cat.creators[42], f.cat.creators[43]]}}),
        )
        .ok_json();
    let req = pb::SearchRequest {
        collection: "tracks".into(),
        vector: v.clone(),
        k: Some(9),
        explain: Some(true),
        filter: Some(pb::Filter {
            creators: vec![f.cat.creators[42].clone(), f.cat.creators[43].clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = c.search(req).await.unwrap().into_inner();
    assert_same(rest, results_json(&g, false), "search");

    // Taste, with each strategy.
    for strategy in ["mean", "neighbours", "best_score"] {
        let history = [(10, "like"), (11, "play"), (12, "skip"), (300, "save")];
        let centroids = (strategy == "mean").then_some(2);
        let rest = s
            .post_json(
                "/v1/taste/tracks",
                &json!({
                    "history": history.iter().map(|(i, e)| json!({
                        "id": f.cat.ids[*i], "event": e, "played_at": "2026-11-20T18:00:00Z"
                    })).collect::<Vec<_>>(),
                    "half_life": "30d", "now": "2026-11-26T00:00:00Z",
                    "centroids": centroids, "strategy": strategy, "k": 10, "explain": true,
                }),
            )
            .ok_json();
        let req = pb::TasteRequest {
            collection: "tracks".into(),
            history: history
                .iter()
                .map(|(i, e)| pb::HistoryItem {
                    id: f.cat.ids[*i].clone(),
                    event: Some(e.to_string()),
                    played_at: Some("2026-11-20T18:00:00Z".into()),
                    weight: None,
                })
                .collect(),
            half_life: Some("30d".into()),
            now: Some("2026-11-26T00:00:00Z".into()),
            centroids: centroids.map(|n| n as u32),
            strategy: Some(strategy.into()),
            k: Some(10),
            explain: Some(true),
            ..Default::default()
        };
        let g = c.taste(req).await.unwrap().into_inner();
        assert_same(rest, results_json(&g, false), strategy);
    }

    // Batch: each entry answers on its own, errors included.
    let rest = s
        .post_json(
            "/v1/batch",
            &json!({"queries": [
                {"type": "similar", "collection": "tracks", "id": id, "k": 3},
                {"type": "search", "collection": "tracks", "vector": v, "k": 4},
                {"type": "taste", "collection": "tracks", "history": [{"id": f.cat.ids[1]}], "k": 5},
                {"type": "similar", "collection": "tracks", "id": "no-such-id"},
                {"type": "similar", "id": id},
            ]}),
        )
        .ok_json();
    let q = |q| pb::BatchQuery { query: Some(q) };
    use pb::batch_query::Query;
    let req = pb::BatchRequest {
        queries: vec![
            q(Query::Similar(pb::SimilarRequest {
                k: Some(3),
                ..similar("tracks", id)
            })),
            q(Query::Search(pb::SearchRequest {
                collection: "tracks".into(),
                vector: v.clone(),
                k: Some(4),
                ..Default::default()
            })),
            q(Query::Taste(pb::TasteRequest {
                collection: "tracks".into(),
                history: vec![pb::HistoryItem {
                    id: f.cat.ids[1].clone(),
                    ..Default::default()
                }],
                k: Some(5),
                ..Default::default()
            })),
            q(Query::Similar(similar("tracks", "no-such-id"))),
            q(Query::Similar(similar("", id))),
        ],
    };
    let g = c.batch(req).await.unwrap().into_inner();
    let entries: Vec<Value> = g
        .responses
        .iter()
        .map(|e| match e.outcome.as_ref().unwrap() {
            pb::batch_entry::Outcome::Ok(r) => {
                json!({"results": results_json(r, false)["results"]})
            }
            pb::batch_entry::Outcome::Error(e) => {
                json!({"error": {"code": e.code, "message": e.message}, "status": e.status})
            }
        })
        .collect();
    let mut rest = rest;
    f32ify(&mut rest);
    let mut grpc = json!({ "responses": entries });
    f32ify(&mut grpc);
    assert_eq!(rest, grpc, "batch");

    // GetItem (the ID needs percent-encoding in HTTP's path, not in gRPC).
    let rest = s
        .get(&format!("/v1/tracks/{}", encode_segment(id)))
        .ok_json();
    let g = c
        .get_item(pb::GetItemRequest {
            collection: "tracks".into(),
            id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut a, mut b) = (rest, item_json(&g));
    f32ify(&mut a);
    f32ify(&mut b);
    assert_eq!(a, b, "item");

    // Collections.
    let rest = s.get("/v1/collections").ok_json();
    let g = c
        .collections(pb::CollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest["kernels"], g.kernels);
    let names: Vec<&str> = g.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["creators", "tracks"]);
    for (r, g) in rest["collections"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&g.collections)
    {
        let g = json!({
            "name": g.name, "metric": g.metric, "dim": g.dim, "count": g.count,
            "creators": g.creators, "has_popularity": g.has_popularity, "m": g.m,
            "ef_construction": g.ef_construction, "default_ef": g.default_ef,
            "built_at": g.built_at, "builder": g.builder, "mapped_bytes": g.mapped_bytes,
            "version": g.version, "loaded_at": opt(g.loaded_at.clone()), "retained": g.retained,
        });
        assert_eq!(*r, g);
    }
}

#[tokio::test]
async fn similar_stream_answers_each_message_as_similar() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let reqs: Vec<pb::SimilarRequest> = vec![
        pb::SimilarRequest {
            k: Some(5),
            ..similar("tracks", &f.cat.ids[20])
        },
        similar("tracks", "no-such-id"),
        pb::SimilarRequest {
            explain: Some(true),
            max_per_creator: Some(1),
            ..similar("tracks", &f.cat.ids[21])
        },
    ];
    let mut req = Request::new(tokio_stream_of(reqs.clone()));
    req.metadata_mut()
        .insert("x-request-id", "stream-1".parse().unwrap());
    let resp = c.similar_stream(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "stream-1");
    let mut answers = resp.into_inner();
    for r in reqs {
        let a = answers
            .message()
            .await
            .unwrap()
            .expect("one answer per request");
        match (a.outcome.unwrap(), c.similar(r.clone()).await) {
            (pb::similar_answer::Outcome::Ok(got), Ok(want)) => {
                assert_same(
                    results_json(&want.into_inner(), false),
                    results_json(&got, false),
                    "stream vs unary",
                );
                let rest = f.server.get(&format!(
                    "/v1/tracks/{}/similar?k={}",
                    r.id,
                    r.k.unwrap_or(10)
                ));
                if r.explain.is_none() {
                    assert_same(rest.ok_json(), results_json(&got, false), "stream vs HTTP");
                }
            }
            (pb::similar_answer::Outcome::Error(got), Err(want)) => {
                assert_eq!(got.code, reason(&want));
                assert_eq!(got.message, want.message());
                assert_eq!(got.status, 404);
            }
            (got, want) => panic!("stream answered {got:?}, Similar {want:?}"),
        }
    }
    assert!(
        answers.message().await.unwrap().is_none(),
        "ends with the requests"
    );
    let m = f.server.get("/metrics").body;
    assert!(m.contains(r#"earshot_grpc_requests_total{method="SimilarStream",code="OK"}"#));
}

/// Messages pipelined on one stream, more than the server answers in one round (it answers
/// those already received back to back and writes the answers together), come back one
/// answer each, in order, each equal to the unary call's.
#[tokio::test]
async fn a_pipelined_stream_is_answered_in_order() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let reqs: Vec<pb::SimilarRequest> = (0..40)
        .map(|i| match i % 7 {
            3 => similar("tracks", "no-such-id"),
            _ => pb::SimilarRequest {
                k: Some(4),
                ..similar("tracks", &f.cat.ids[i])
            },
        })
        .collect();
    let mut answers = c
        .similar_stream(Request::new(tokio_stream_of(reqs.clone())))
        .await
        .unwrap()
        .into_inner();
    for (i, r) in reqs.into_iter().enumerate() {
        let a = answers
            .message()
            .await
            .unwrap()
            .expect("one answer per request");
        match (a.outcome.unwrap(), c.similar(r).await) {
            (pb::similar_answer::Outcome::Ok(got), Ok(want)) => {
                assert_eq!(got, want.into_inner(), "message {i}")
            }
            (pb::similar_answer::Outcome::Error(got), Err(want)) => {
                assert_eq!(got.code, reason(&want), "message {i}")
            }
            (got, want) => panic!("message {i}: stream answered {got:?}, Similar {want:?}"),
        }
    }
    assert!(answers.message().await.unwrap().is_none());
}

#[tokio::test]
async fn errors_carry_the_http_code_in_error_info() {
    let f = fx();
    let s = &f.server;
    let mut c = client(&f.grpc).await;
    let id = f.cat.ids[3].clone();
    let cases: Vec<(&str, Code, String, Value, pb::SimilarRequest)> = vec![
        (
            "unknown_id",
            Code::NotFound,
            "/v1/tracks/nope/similar".into(),
            json!({}),
            similar("tracks", "nope"),
        ),
        (
            "unknown_collection",
            Code::NotFound,
            format!("/v1/nope/{id}/similar"),
            json!({}),
            similar("nope", &id),
        ),
        (
            "invalid_k",
            Code::InvalidArgument,
            format!("/v1/tracks/{id}/similar"),
            json!({"k": 0}),
            pb::SimilarRequest {
                k: Some(0),
                ..similar("tracks", &id)
            },
        ),
        (
            "invalid_ef",
            Code::InvalidArgument,
            format!("/v1/tracks/{id}/similar"),
            json!({"ef": 5000}),
            pb::SimilarRequest {
                ef: Some(5000),
                ..similar("tracks", &id)
            },
        ),
        (
            "invalid_max_per_creator",
            Code::InvalidArgument,
            format!("/v1/tracks/{id}/similar"),
            json!({"max_per_creator": 0}),
            pb::SimilarRequest {
                max_per_creator: Some(0),
                ..similar("tracks", &id)
            },
        ),
        (
            "conflicting_filters",
            Code::InvalidArgument,
            format!("/v1/tracks/{id}/similar"),
            json!({"filter": {"min_popularity": 5.0, "max_popularity": 1.0}}),
            pb::SimilarRequest {
                filter: Some(pb::Filter {
                    min_popularity: Some(5.0),
                    max_popularity: Some(1.0),
                    ..Default::default()
                }),
                ..similar("tracks", &id)
            },
        ),
    ];
    for (code, grpc_code, path, body, req) in cases {
        let http = s.post_json(&path, &body);
        let message = http.assert_error(http.status, code);
        let e = c.similar(req).await.unwrap_err();
        assert_eq!(e.code(), grpc_code, "{code}: {e:?}");
        assert_eq!(reason(&e), code);
        assert_eq!(e.message(), message, "{code}: the same message");
        let info = e.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.metadata["http_status"], http.status.to_string());
    }

    // Search, taste and batch validation, the same way.
    let e = c
        .search(pb::SearchRequest {
            collection: "tracks".into(),
            vector: vec![1.0; DIM + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "dimension_mismatch")
    );
    let e = c
        .taste(pb::TasteRequest {
            collection: "tracks".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    s.post_json("/v1/taste/tracks", &json!({"history": []}))
        .assert_error(422, &reason(&e));
    assert_eq!(reason(&e), "empty_history");
    let e = c.batch(pb::BatchRequest::default()).await.unwrap_err();
    s.post_json("/v1/batch", &json!({"queries": []}))
        .assert_error(400, &reason(&e));
    let e = c
        .get_item(pb::GetItemRequest {
            collection: "tracks".into(),
            id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "unknown_id")
    );
}

#[tokio::test]
async fn request_ids_version_pins_and_metrics() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let id = &f.cat.ids[9];

    // A client's request ID comes back; one is made when there is none.
    let mut req = Request::new(similar("tracks", id));
    req.metadata_mut()
        .insert("x-request-id", "grpc-test-1".parse().unwrap());
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let r = c.similar(req).await.unwrap();
    assert_eq!(r.metadata().get("x-request-id").unwrap(), "grpc-test-1");
    // The version that answered, as HTTP names it.
    let version = f
        .server
        .get(&format!("/v1/tracks/{id}/similar"))
        .header("x-earshot-version")
        .unwrap()
        .to_string();
    assert_eq!(r.metadata().get("x-earshot-version").unwrap(), &version);
    let r = c.similar(similar("tracks", id)).await.unwrap();
    assert!(!r.metadata().get("x-request-id").unwrap().is_empty());

    // Pinned to the current version: answered; to another: version_unavailable.
    let mut req = Request::new(similar("tracks", id));
    req.metadata_mut()
        .insert("x-earshot-version", version.parse().unwrap());
    c.similar(req).await.unwrap();
    let mut req = Request::new(similar("tracks", id));
    req.metadata_mut()
        .insert("x-earshot-version", "no-such-version".parse().unwrap());
    let e = c.similar(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e), "version_unavailable");
    assert!(
        e.metadata().get("x-request-id").is_some(),
        "errors carry the ID too"
    );

    let m = f.server.get("/metrics").body;
    for needle in [
        r#"earshot_grpc_requests_total{method="Similar",code="OK"}"#,
        r#"earshot_grpc_requests_total{method="Similar",code="FAILED_PRECONDITION"}"#,
        r#"earshot_grpc_request_duration_seconds_count{method="Similar",code="OK"}"#,
        "earshot_grpc_in_flight_requests",
    ] {
        assert!(m.contains(needle), "{needle} not in /metrics");
    }
}

#[tokio::test]
async fn the_clients_deadline_is_honoured() {
    let f = fx();
    let mut c = client(&f.grpc).await;
    let id = &f.cat.ids[0];
    c.similar(similar("tracks", id)).await.unwrap();
    // The server gives up a few milliseconds before the client's deadline (its answer
    // could not arrive in time otherwise), so a deadline that short is answered at once
    // with DEADLINE_EXCEEDED. The client's own timer (tonic reports it as CANCELLED) may
    // still win on a loaded machine: retry until the server's answer is seen.
    let mut seen = false;
    for _ in 0..20 {
        let mut req = Request::new(similar("tracks", id));
        req.set_timeout(Duration::from_millis(5));
        match c.similar(req).await {
            Err(e) if e.code() == Code::DeadlineExceeded => {
                assert_eq!(reason(&e), "timeout");
                assert!(e.message().contains("deadline"), "{e:?}");
                seen = true;
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Cancelled, "{e:?}"),
            Ok(_) => panic!("answered past the margin of a 5 ms deadline"),
        }
    }
    assert!(seen, "the server never answered DEADLINE_EXCEEDED itself");
    let m = f.server.get("/metrics").body;
    assert!(m.contains(r#"earshot_grpc_requests_total{method="Similar",code="DEADLINE_EXCEEDED"}"#));
    // A generous deadline changes nothing.
    let mut req = Request::new(similar("tracks", id));
    req.set_timeout(Duration::from_secs(30));
    assert_eq!(c.similar(req).await.unwrap().into_inner().results.len(), 10);
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let f = fx();
    let ch = Channel::from_shared(format!("http://{}", f.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch.clone());
    // Readiness is polled: give it a moment after start-up.
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        match h.check(check("")).await {
            Ok(r) => {
                status = r.into_inner().status();
                if status == ServingStatus::Serving {
                    break;
                }
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, ServingStatus::Serving);
    for service in ["earshot.v1.Earshot", "tracks", "creators"] {
        let r = h.check(check(service)).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }
    let e = h.check(check("no-such-service")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut r = ServerReflectionClient::new(ch);
    let ask = |m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let reqs = tokio_stream_of(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "earshot.v1.Earshot".into(),
        )),
    ]);
    let mut answers = r.server_reflection_info(reqs).await.unwrap().into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("not a service list: {first:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["earshot.v1.Earshot", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let second = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("not a file descriptor: {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn keys_and_overload() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(12, 1500, DIM, 8, 100, 50, 23);
    let root = build_tracks(dir.path(), &cat, false);
    let args: Vec<std::ffi::OsString> = [
        "serve",
        "--index-root",
        root.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--max-concurrent",
        "1",
        "--max-queue",
        "0",
    ]
    .map(Into::into)
    .into();
    let env = [(
        "EARSHOT_QUERY_KEYS".to_string(),
        "query-key-123".to_string(),
    )];
    let s = Server::try_spawn_env(&args, &env).expect("serve starts");
    let mut c = client(&grpc_addr(&s)).await;
    let id = &cat.ids[0];

    // No key, a wrong key: refused as HTTP refuses them.
    let e = c.similar(similar("tracks", id)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "unauthorized")
    );
    s.get(&format!("/v1/tracks/{id}/similar"))
        .assert_error(401, "unauthorized");
    let with = |key: &str| {
        let mut r = Request::new(similar("tracks", id));
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let e = c.similar(with("wrong-key-000")).await.unwrap_err();
    assert_eq!(reason(&e), "unauthorized");
    c.similar(with("query-key-123")).await.unwrap();
    let mut r = Request::new(similar("tracks", id));
    r.metadata_mut()
        .insert("x-api-key", "query-key-123".parse().unwrap());
    c.similar(r).await.unwrap();

    // One slot, no queue: concurrent heavy batches are refused with RESOURCE_EXHAUSTED and
    // a RetryInfo, never queued without bound.
    let heavy = pb::BatchQuery {
        query: Some(pb::batch_query::Query::Similar(pb::SimilarRequest {
            k: Some(1000),
            ef: Some(4096),
            max_per_creator: Some(1),
            ..similar("tracks", id)
        })),
    };
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = c.clone();
            let mut r = Request::new(pb::BatchRequest {
                queries: vec![heavy.clone(); 64],
            });
            r.metadata_mut()
                .insert("authorization", "Bearer query-key-123".parse().unwrap());
            tokio::spawn(async move { c.batch(r).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert_eq!(reason(&e), "overloaded");
                let retry = e.get_error_details().retry_info().cloned().unwrap();
                assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    let m = s.get("/metrics").body;
    assert!(
        m.contains(r#"earshot_rejected_total{reason="queue_full"}"#),
        "refusals are counted with HTTP's"
    );
}

/// The server's count of connections it closed as idle.
fn idle_closed(s: &Server) -> f64 {
    let m = s.get("/metrics").body;
    let name = "earshot_connections_closed_by_server_total{reason=\"idle_timeout\"} ";
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in /metrics:\n{m}"))
}

/// A gRPC connection without a call for `--idle-timeout-ms` is closed and counted, whether
/// it never called or its last call ended (the HTTP/2 handshake and pings do not count as
/// use); one with a stream open is kept however quiet the stream, answers on it afterwards,
/// and is closed once the stream has ended and the timeout passed again.
#[tokio::test]
async fn connections_without_calls_are_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(13, 600, DIM, 4, 50, 20, 23);
    let root = build_tracks(dir.path(), &cat, false);
    let s = Server::start(
        &root,
        &["--grpc-addr", "127.0.0.1:0", "--idle-timeout-ms", "1500"],
    );
    let _reaper = reap_at_exit(&[s.pid()], &[dir.path()]);
    let grpc = grpc_addr(&s);
    let start = std::time::Instant::now();
    let _never_called = client(&grpc).await;
    let mut called = client(&grpc).await;
    called.collections(pb::CollectionsRequest {}).await.unwrap();
    let mut streaming = client(&grpc).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = streaming
        .similar_stream(ReceiverStream(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(similar("tracks", &cat.ids[1])).await.unwrap();
    assert!(answers.message().await.unwrap().is_some());
    assert_eq!(idle_closed(&s), 0.0, "closed before the idle timeout");

    let wait_for = |want: f64, within: Duration| {
        let s = &s;
        async move {
            let t = std::time::Instant::now();
            while idle_closed(s) < want {
                assert!(t.elapsed() < within, "{want} idle connections not closed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(2.0, IDLE + Duration::from_secs(8)).await;
    assert!(
        start.elapsed() >= IDLE,
        "closed after {:?}",
        start.elapsed()
    );
    // Twice the timeout more with the stream open and silent: still there, still answering.
    tokio::time::sleep(IDLE * 2).await;
    assert_eq!(
        idle_closed(&s),
        2.0,
        "a connection with an open stream was closed"
    );
    tx.send(similar("tracks", &cat.ids[2])).await.unwrap();
    let a = answers.message().await.unwrap().expect("an answer");
    assert!(matches!(
        a.outcome,
        Some(pb::similar_answer::Outcome::Ok(_))
    ));
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
    drop(answers);
    wait_for(3.0, IDLE + Duration::from_secs(8)).await;
    // The connection cap's gauge agrees: no gRPC connection is left open (the one open is
    // this request's; an earlier request's may take a moment to be seen closed).
    let t = std::time::Instant::now();
    loop {
        let m = s.get("/metrics").body;
        if m.lines().any(|l| l == "earshot_connections_open 1") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "connections left open:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
