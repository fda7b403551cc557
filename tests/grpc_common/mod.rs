//! What the gRPC tests share: a client, gRPC answers in the HTTP API's JSON shape (so
//! that the two compare as a whole), the stable code of a gRPC error, request streams.

#![allow(dead_code)]

use earshot_grpc::pb;
use earshot_grpc::pb::earshot_client::EarshotClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::common::Server;

/// The `grpc listening on http://ADDR` line of a started server.
pub fn grpc_addr(s: &Server) -> String {
    let out = s.stdout();
    out.lines()
        .find_map(|l| l.strip_prefix("grpc listening on http://"))
        .unwrap_or_else(|| panic!("no `grpc listening on` line in:\n{out}"))
        .trim()
        .to_string()
}

pub async fn client(addr: &str) -> EarshotClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC listener");
    EarshotClient::new(ch)
}

// ---------------------------------------------------------------------------------------
// gRPC answers in the HTTP API's JSON shape, so that the two compare as a whole.

pub fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

pub fn item_json(i: &pb::Item) -> Value {
    json!({
        "id": i.id,
        "creator": opt(i.creator.clone()),
        "popularity": opt(i.popularity),
        "creator_popularity": opt(i.creator_popularity),
        "vector": i.vector,
    })
}

pub fn result_json(r: &pb::ResultItem, pool: bool) -> Value {
    let mut v = json!({
        "id": r.id,
        "score": r.score,
        "creator": opt(r.creator.clone()),
        "popularity": opt(r.popularity),
    });
    if pool {
        v["creator_popularity"] = opt(r.creator_popularity);
    }
    if let Some(e) = &r.explain {
        let mut x = json!({
            "similarity": e.similarity,
            "centroid": e.centroid,
            "centroid_weight": e.centroid_weight,
            "rank": e.rank,
            "emerging_quota": e.emerging_quota,
            "emerging_boost": e.emerging_boost,
            "in_share": e.in_share,
            "moved_by": e.moved_by,
        });
        if let Some(s) = e.support {
            x["support"] = s.into();
        }
        if let Some(b) = &e.because {
            x["because"] = b.clone().into();
        }
        v["explain"] = x;
    }
    v
}

pub fn results_json(r: &pb::Results, pool: bool) -> Value {
    let mut v = json!({
        "results": r.results.iter().map(|x| result_json(x, pool)).collect::<Vec<_>>(),
    });
    if let Some(e) = &r.explain {
        let mut x = json!({
            "centroid_weights": e.centroid_weights,
            "emerging_slots_requested": e.emerging_slots_requested,
            "emerging_slots_reserved": e.emerging_slots_reserved,
        });
        if let Some(s) = &e.strategy {
            x["strategy"] = s.clone().into();
        }
        if let Some(s) = e.seeds {
            x["seeds"] = s.into();
        }
        v["explain"] = x;
    }
    if let Some(n) = r.emerging_slots_requested {
        v["emerging_slots_requested"] = n.into();
    }
    if let Some(n) = r.emerging_slots_reserved {
        v["emerging_slots_reserved"] = n.into();
    }
    if let Some(i) = &r.item {
        v["item"] = item_json(i);
    }
    v
}

/// Every number as the f32 both sides computed (JSON text and protobuf floats then compare
/// exactly).
pub fn f32ify(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                if !(n.is_u64() || n.is_i64()) {
                    *v = json!(f as f32);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(f32ify),
        Value::Object(o) => o.values_mut().for_each(f32ify),
        _ => {}
    }
}

pub fn assert_same(mut rest: Value, mut grpc: Value, what: &str) {
    f32ify(&mut rest);
    f32ify(&mut grpc);
    assert_eq!(rest, grpc, "{what}: HTTP and gRPC answers differ");
    assert!(
        rest["results"].as_array().is_none_or(|r| !r.is_empty()) || what.contains("empty"),
        "{what}: no results to compare"
    );
}

/// The stable code of a gRPC error, from its `ErrorInfo` (domain `earshot`).
pub fn reason(s: &tonic::Status) -> String {
    let d = s.get_error_details();
    let info = d
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "earshot");
    info.reason.clone()
}

/// A finished request stream for a streaming call.
pub fn tokio_stream_of<T: Send + 'static>(items: Vec<T>) -> ReceiverStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(items.len().max(1));
    for i in items {
        tx.try_send(i).ok().unwrap();
    }
    drop(tx);
    ReceiverStream(rx)
}

/// `tokio::sync::mpsc::Receiver` as a `Stream` (what tokio-stream's wrapper does).
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> tonic::codegen::tokio_stream::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
