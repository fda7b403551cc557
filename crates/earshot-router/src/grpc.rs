//! `earshot route --grpc-addr ADDR`: the router's API over gRPC — the service `serve
//! --grpc-addr` offers (`proto/earshot/v1/earshot.proto`), answered by the fan-out and merge
//! the HTTP handlers use ([`crate::query`]), behind the same gates in the same order: API
//! key, the router's limiter, then the deadline (the client's `grpc-timeout` when sooner
//! than `--request-timeout-ms`). Lists go from the merged outcome straight to protobuf;
//! what the router passes through from one shard as JSON (an item, a write's answer, a
//! shard's error) and the collections it sums are converted from that JSON.
//!
//! Like the HTTP side it answers only complete lists (no `allow_partial`: the proto has
//! no coverage field), and a version pin is the router's own (`x-earshot-version` is not
//! read from callers).

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method};
use bytes::Bytes;
use earshot_grpc::pb::batch_entry::Outcome as Entry;
use earshot_grpc::pb::batch_query::Query as PbQuery;
use earshot_grpc::service::{request_span, respond, CallDeadline};
use earshot_grpc::stream::message_answer;
use earshot_grpc::wire::Outcome as StreamOutcome;
use earshot_grpc::{convert, pb, status};
use earshot_server::api::BatchQuery;
use earshot_server::auth::{check_key, Keys, Role};
use earshot_server::engine::{answer, check_batch};
use earshot_server::error::ApiError;
use earshot_server::error_code::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::http::{
    caller_auth, collections_value, count_partial, forward, item_path, list_explanation,
    list_quota, result_items, run_batch, version_of, write_path, RouterState,
};
use crate::query::{Body, Outcome, Query};
use crate::upstream::{UpRequest, UpResponse};

pub struct RoutedGrpc {
    pub state: Arc<RouterState>,
    pub keys: Arc<Keys>,
}

/// What a call's work returns: its answer and the version that answered it.
type Answered<T> = Result<(T, Option<HeaderValue>), ApiError>;

impl RoutedGrpc {
    /// One unary call through the gates; `work` gets the message and the caller's headers.
    async fn unary<M, T, F>(
        &self,
        method: &'static str,
        role: Role,
        req: Request<M>,
        work: impl FnOnce(Arc<RouterState>, M, HeaderMap) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Answered<T>>,
    {
        let started = Instant::now();
        let (metadata, _, msg) = req.into_parts();
        let headers = metadata.into_headers();
        let (id, span) = request_span(&headers, method);
        let m = &self.state.metrics;
        m.grpc_in_flight.inc();
        let result = async {
            check_key(&self.keys, &headers, role).map_err(|e| status::from_api(&e))?;
            let limiter = &self.state.limiter;
            let deadline = CallDeadline::of(&headers, started, limiter);
            let _permit = deadline.acquire(limiter).await?;
            let run = work(self.state.clone(), msg, headers.clone());
            match tokio::time::timeout_at(deadline.at, run).await {
                Ok(r) => r.map_err(|e| status::from_api(&e)),
                Err(_) => Err(deadline.passed(limiter)),
            }
        }
        .instrument(span.clone())
        .await;
        m.grpc_in_flight.dec();
        respond(m, method, started, (id, span), result)
    }
}

/// A list query across the shards, as `similar`, `search` and `taste` answer it.
async fn list(state: &RouterState, collection: &str, q: Query<'_>) -> Answered<pb::Results> {
    let c = state.cluster.routed(collection)?;
    let o = state.cluster.run(c, &q, false, Instant::now()).await?;
    count_partial(state, collection, &o);
    let version = version_of(&o).and_then(|v| HeaderValue::from_str(v).ok());
    Ok((results(&o), version))
}

/// A merged outcome as the `Results` message (an items lookup has no list: empty).
fn results(o: &Outcome) -> pb::Results {
    let Body::List(l) = &o.body else {
        return pb::Results::default();
    };
    let (requested, reserved) = answer::emerging_slots(list_quota(l));
    pb::Results {
        results: result_items(l)
            .into_iter()
            .map(convert::result_item)
            .collect(),
        explain: list_explanation(l).map(convert::list_explanation),
        emerging_slots_requested: requested.map(|n| n as u32),
        emerging_slots_reserved: reserved.map(|n| n as u32),
        item: None,
    }
}

/// A shard's answer passed through: its JSON body when it succeeded, else its error (the
/// stable code it sent, or `internal` if the body says none).
fn shard_json<T: for<'de> Deserialize<'de>>(r: &UpResponse) -> Result<T, ApiError> {
    if r.status.is_success() {
        return serde_json::from_slice(&r.body).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("a shard's answer could not be read: {e}"),
            )
        });
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    #[derive(Deserialize)]
    struct Error {
        error: Detail,
    }
    let e = serde_json::from_slice::<Error>(&r.body).ok();
    let code = e.as_ref().and_then(|e| {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == e.error.code)
    });
    Err(match (code, e) {
        (Some(code), Some(e)) => ApiError::new(code, e.error.message),
        _ => ApiError::new(
            ErrorCode::Internal,
            format!("a shard answered {} without an error code", r.status),
        ),
    })
}

fn version_header(r: &UpResponse) -> Option<HeaderValue> {
    r.version
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
}

/// `GET /v1/{collection}/{id}`'s answer.
#[derive(Deserialize)]
struct ItemJson {
    id: String,
    creator: Option<String>,
    popularity: Option<f32>,
    creator_popularity: Option<f32>,
    vector: Vec<f32>,
}

/// One entry of `GET /v1/collections` (every field `serve` sends; the router's sums).
#[derive(Deserialize)]
struct CollectionJson {
    name: String,
    metric: String,
    dim: u32,
    count: u64,
    creators: u64,
    has_popularity: bool,
    m: u32,
    ef_construction: u32,
    default_ef: u32,
    built_at: String,
    builder: String,
    mapped_bytes: u64,
    version: String,
    loaded_at: Option<String>,
    #[serde(default)]
    retained: Vec<String>,
    #[serde(default)]
    taste_history: Option<String>,
}

#[derive(Deserialize)]
struct CollectionsJson {
    collections: Vec<CollectionJson>,
    kernels: String,
}

fn collections(v: Value) -> Result<pb::CollectionsResponse, ApiError> {
    let c: CollectionsJson = serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the shards' collection info could not be read: {e}"),
        )
    })?;
    Ok(pb::CollectionsResponse {
        collections: c
            .collections
            .into_iter()
            .map(|c| pb::CollectionInfo {
                name: c.name,
                metric: c.metric,
                dim: c.dim,
                count: c.count,
                creators: c.creators,
                has_popularity: c.has_popularity,
                m: c.m,
                ef_construction: c.ef_construction,
                default_ef: c.default_ef,
                built_at: c.built_at,
                builder: c.builder,
                mapped_bytes: c.mapped_bytes,
                version: c.version,
                loaded_at: c.loaded_at,
                retained: c.retained,
                shard: None,
                taste_history: c.taste_history,
            })
            .collect(),
        kernels: c.kernels,
    })
}

/// A write, forwarded as the HTTP side forwards it: to shard 0 (which appends to the
/// collection's one log), with the caller's credentials.
async fn write(
    state: &RouterState,
    method: Method,
    collection: &str,
    body: Value,
    headers: &HeaderMap,
) -> Answered<pb::WriteResponse> {
    let c = state.cluster.routed(collection)?;
    let req = UpRequest {
        method,
        auth: caller_auth(headers),
        path: write_path(collection),
        body: Some(Bytes::from(body.to_string())),
        version: None,
    };
    let r = forward(&state.cluster, c, 0, &req).await?;
    #[derive(Deserialize)]
    struct Written {
        collection: String,
        seq: u64,
        count: u32,
    }
    let w: Written = shard_json(&r)?;
    let answer = pb::WriteResponse {
        collection: w.collection,
        seq: w.seq,
        count: w.count,
    };
    Ok((answer, None))
}

/// A batch entry naming no query kind.
fn no_query() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        "a batch query must set one of similar, search or taste",
    )
}

#[tonic::async_trait]
impl pb::earshot_server::Earshot for RoutedGrpc {
    async fn similar(
        &self,
        req: Request<pb::SimilarRequest>,
    ) -> Result<Response<pb::Results>, Status> {
        self.unary("Similar", Role::Query, req, |state, m, _| async move {
            let (collection, id, req) = convert::similar(m, false);
            list(&state, &collection, Query::Similar { id: &id, req: &req }).await
        })
        .await
    }

    async fn taste(&self, req: Request<pb::TasteRequest>) -> Result<Response<pb::Results>, Status> {
        self.unary("Taste", Role::Query, req, |state, m, _| async move {
            let (collection, req) = convert::taste(m, false);
            list(&state, &collection, Query::Taste(&req)).await
        })
        .await
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::Results>, Status> {
        self.unary("Search", Role::Query, req, |state, m, _| async move {
            let req = convert::search(m);
            list(&state, &req.collection, Query::Search(&req)).await
        })
        .await
    }

    async fn batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        self.unary("Batch", Role::Query, req, |state, m, _| async move {
            check_batch(m.queries.len())?;
            let queries = m
                .queries
                .into_iter()
                .map(|q| {
                    Ok(match q.query.ok_or_else(no_query)? {
                        PbQuery::Similar(s) => BatchQuery::Similar(convert::similar(s, true).2),
                        PbQuery::Search(s) => BatchQuery::Search(convert::search(s)),
                        PbQuery::Taste(t) => BatchQuery::Taste(convert::taste(t, true).1),
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            let outcomes = run_batch(&state.cluster, &queries, |_| false).await;
            let responses = outcomes
                .iter()
                .map(|o| pb::BatchEntry {
                    outcome: Some(match o {
                        Ok((o, _)) => Entry::Ok(pb::Results {
                            results: results(o).results,
                            ..Default::default()
                        }),
                        Err(e) => Entry::Error(convert::batch_error(e.code, e.message.clone())),
                    }),
                })
                .collect();
            Ok((pb::BatchResponse { responses }, None))
        })
        .await
    }

    async fn collections(
        &self,
        req: Request<pb::CollectionsRequest>,
    ) -> Result<Response<pb::CollectionsResponse>, Status> {
        self.unary("Collections", Role::Query, req, |state, _, _| async move {
            Ok((collections(collections_value(&state.cluster).await)?, None))
        })
        .await
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        self.unary("GetItem", Role::Query, req, |state, m, _| async move {
            let c = state.cluster.routed(&m.collection)?;
            let up = UpRequest {
                method: Method::GET,
                path: item_path(&m.collection, &m.id),
                body: None,
                version: None,
                auth: None,
            };
            let r = forward(&state.cluster, c, c.owner(&m.id), &up).await?;
            let i: ItemJson = shard_json(&r)?;
            let item = pb::Item {
                id: i.id,
                creator: i.creator,
                popularity: i.popularity,
                creator_popularity: i.creator_popularity,
                vector: i.vector,
            };
            Ok((item, version_header(&r)))
        })
        .await
    }

    type SimilarStreamStream = ReceiverStream<Result<pb::SimilarAnswer, Status>>;

    /// Each message answered as a `Similar` call is (its own slot and deadline), in order.
    async fn similar_stream(
        &self,
        req: Request<Streaming<pb::SimilarRequest>>,
    ) -> Result<Response<Self::SimilarStreamStream>, Status> {
        let (metadata, _, mut incoming) = req.into_parts();
        let headers = metadata.into_headers();
        check_key(&self.keys, &headers, Role::Query).map_err(|e| status::from_api(&e))?;
        let (id, span) = request_span(&headers, "SimilarStream");
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        tokio::spawn(
            async move {
                loop {
                    let m = match incoming.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                    };
                    let answer = stream_message(&state, m).await;
                    if tx.send(Ok(answer)).await.is_err() {
                        break; // the client went away
                    }
                }
            }
            .instrument(span),
        );
        let mut r = Response::new(ReceiverStream::new(rx));
        let h: &mut HeaderMap = r.metadata_mut().as_mut();
        h.insert(earshot_grpc::service::REQUEST_ID, id);
        Ok(r)
    }

    async fn upsert(
        &self,
        req: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.unary("Upsert", Role::Admin, req, |state, m, headers| async move {
            let items: Vec<Value> = m
                .items
                .into_iter()
                .map(|i| {
                    json!({"id": i.id, "vector": i.vector, "creator": i.creator,
                           "popularity": i.popularity})
                })
                .collect();
            let body = json!({ "items": items });
            write(&state, Method::POST, &m.collection, body, &headers).await
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.unary("Delete", Role::Admin, req, |state, m, headers| async move {
            let body = json!({ "ids": m.ids });
            write(&state, Method::DELETE, &m.collection, body, &headers).await
        })
        .await
    }
}

/// One `SimilarStream` message, as `serve` answers one: its own slot and the router's
/// `--request-timeout-ms`, counted as a call.
async fn stream_message(state: &RouterState, m: pb::SimilarRequest) -> pb::SimilarAnswer {
    let started = Instant::now();
    let limiter = &state.limiter;
    let deadline = tokio::time::Instant::now() + limiter.options().request_timeout;
    let answered = async {
        let _permit = limiter.acquire(deadline).await?;
        let (collection, id, req) = convert::similar(m, false);
        let run = list(state, &collection, Query::Similar { id: &id, req: &req });
        match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r.map(|(r, _)| StreamOutcome::Ok(r)),
            Err(_) => Err(limiter.rejection("timeout")),
        }
    }
    .await;
    message_answer(&state.metrics, started, answered)
}
