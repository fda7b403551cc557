//! The HTTP handlers: the API of `serve`, answered over shards. Request bodies are parsed
//! into `serve`'s own request types (so they accept and refuse exactly what `serve` does),
//! plus the router's `allow_partial`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query as QueryString, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use earshot_server::api::{
    BatchQuery, BatchRequest, ErrorDetail, ListExplanation, ResultItem, Results, SearchRequest,
    SimilarParams, SimilarRequest, Status, TasteRequest,
};
use earshot_server::engine::{self, answer, QueryError};
use earshot_server::error::ApiError;
use earshot_server::error_code::ErrorCode;
use earshot_server::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::failure::shard_unavailable;
use crate::query::{Body, ListOutcome, Outcome, Query};
use crate::upstream::{UpRequest, UpResponse, VERSION_HEADER};
use earshot_server::limits::MAX_ITEMS;

pub struct RouterState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    /// False while starting and while draining.
    pub ready: AtomicBool,
    /// Bounds the requests in the router at once (the server's limiter).
    pub limiter: Arc<earshot_server::overload::Limiter>,
}

type St = State<Arc<RouterState>>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

// ---------------------------------------------------------------------------------------
// Bodies

/// The JSON body as `serve`'s `Json` extractor reads it (content type, size, syntax), then
/// `allow_partial` taken out of it (and out of each of `nested`'s objects).
fn body_value(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            ApiError::new(ErrorCode::MalformedJson, e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("Failed to parse the request body as JSON: {e}"),
        )
    })
}

fn take_allow_partial(v: &mut Value) -> Result<bool, ApiError> {
    let Some(o) = v.as_object_mut() else {
        return Ok(false);
    };
    match o.remove("allow_partial") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "allow_partial: expected a boolean",
        )),
    }
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------------------
// Answers

#[derive(Serialize)]
struct Coverage {
    shards: usize,
    answered: usize,
}

#[derive(Serialize)]
struct RoutedResults<'a> {
    #[serde(flatten)]
    results: Results<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coverage: Option<Coverage>,
}

/// The picked list as `serve` renders an engine answer (`engine/answer.rs`).
pub(crate) fn result_items(o: &ListOutcome) -> Vec<ResultItem<'_>> {
    o.selection
        .picks
        .iter()
        .map(|p| {
            let it = &o.pool.items[p.row as usize];
            let score = answer::finite(-p.dist);
            ResultItem {
                id: &it.id,
                score,
                creator: it.creator.as_deref(),
                popularity: it.popularity,
                creator_popularity: None,
                explain: o.explain.then(|| answer::explanation(p, score, &o.weights)),
            }
        })
        .collect()
}

pub(crate) fn list_quota(o: &ListOutcome) -> (usize, usize) {
    (o.selection.quota_requested, o.selection.quota_reserved)
}

pub(crate) fn list_explanation(o: &ListOutcome) -> Option<ListExplanation> {
    let quota = (o.selection.quota_requested, o.selection.quota_reserved);
    o.explain
        .then(|| answer::list_explanation(&o.weights, quota))
}

fn coverage(o: &Outcome, allow_partial: bool) -> Option<Coverage> {
    allow_partial.then_some(Coverage {
        shards: o.shards,
        answered: o.answered,
    })
}

fn json_response<T: Serialize>(value: &T, version: Option<&str>) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = ([(header::CONTENT_TYPE, JSON)], body).into_response();
            if let Some(v) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
                r.headers_mut().insert(VERSION_HEADER, v);
            }
            r
        }
        Err(e) => {
            tracing::error!("cannot encode the answer: {e}");
            ApiError::new(ErrorCode::Internal, "the answer could not be encoded").into_response()
        }
    }
}

pub(crate) fn version_of(o: &Outcome) -> Option<&str> {
    (o.versions.len() == 1)
        .then(|| o.versions.iter().next().map(String::as_str))
        .flatten()
}

/// Counts an answer that some shards were missing from.
pub(crate) fn count_partial(state: &RouterState, collection: &str, o: &Outcome) {
    if o.answered < o.shards {
        state
            .cluster
            .metrics
            .partial
            .get_or_create(&crate::metrics::CollectionLabel {
                collection: collection.to_string(),
            })
            .inc();
    }
}

fn render(state: &RouterState, collection: &str, o: &Outcome, allow_partial: bool) -> Response {
    count_partial(state, collection, o);
    match &o.body {
        Body::List(list) => json_response(
            &RoutedResults {
                results: Results {
                    results: result_items(list),
                    explain: list_explanation(list),
                    item: None,
                    emerging_slots_requested: answer::emerging_slots(list_quota(list)).0,
                    emerging_slots_reserved: answer::emerging_slots(list_quota(list)).1,
                },
                coverage: coverage(o, allow_partial),
            },
            version_of(o),
        ),
        Body::Items { items, missing } => json_response(
            &serde_json::json!({"items": items, "missing": missing}),
            version_of(o),
        ),
    }
}

async fn answer(
    state: &RouterState,
    collection: &str,
    q: Query<'_>,
    allow_partial: bool,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let c = state.cluster.routed(collection)?;
    let o = state.cluster.run(c, &q, allow_partial, started).await?;
    Ok(render(state, collection, &o, allow_partial))
}

// ---------------------------------------------------------------------------------------
// Handlers

pub async fn similar(
    State(state): St,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<QueryString<SimilarParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let QueryString(p) = query?;
    let req = SimilarRequest::from(p);
    answer(
        &state,
        &collection,
        Query::Similar { id: &id, req: &req },
        false,
    )
    .await
}

pub async fn similar_post(
    State(state): St,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let mut v = body_value(&headers, body)?;
    let partial = take_allow_partial(&mut v)?;
    let req: SimilarRequest = typed(v)?;
    if req.collection.is_some() || req.id.is_some() {
        return Err(ApiError::new(
            ErrorCode::ConflictingFields,
            "the path names the collection and id; leave them out of the body",
        ));
    }
    answer(
        &state,
        &collection,
        Query::Similar { id: &id, req: &req },
        partial,
    )
    .await
}

pub async fn search(
    State(state): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut v = body_value(&headers, body)?;
    let partial = take_allow_partial(&mut v)?;
    let req: SearchRequest = typed(v)?;
    answer(&state, &req.collection, Query::Search(&req), partial).await
}

pub async fn taste(
    State(state): St,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    let mut v = body_value(&headers, body)?;
    let partial = take_allow_partial(&mut v)?;
    let req: TasteRequest = typed(v)?;
    answer(&state, &collection, Query::Taste(&req), partial).await
}

#[derive(Serialize)]
#[serde(untagged)]
enum Entry<'a> {
    Ok {
        results: Vec<ResultItem<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        coverage: Option<Coverage>,
    },
    Err {
        error: ErrorDetail<'a>,
        status: u16,
    },
}

pub async fn batch(
    State(state): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut v = body_value(&headers, body)?;
    let partial = take_allow_partial(&mut v)?;
    let mut per_query = Vec::new();
    if let Some(qs) = v.get_mut("queries").and_then(|q| q.as_array_mut()) {
        for q in qs {
            per_query.push(take_allow_partial(q)? || partial);
        }
    }
    let req: BatchRequest = typed(v)?;
    engine::check_batch(req.queries.len())?;
    let outcomes = run_batch(&state.cluster, &req.queries, |i| {
        per_query.get(i).copied().unwrap_or(partial)
    })
    .await;
    let entries: Vec<Entry> = outcomes
        .iter()
        .map(|a| match a {
            Ok((o, partial)) => match &o.body {
                Body::List(l) => Entry::Ok {
                    results: result_items(l),
                    coverage: coverage(o, *partial),
                },
                Body::Items { .. } => Entry::Ok {
                    results: Vec::new(),
                    coverage: None,
                },
            },
            Err(e) => Entry::Err {
                error: ErrorDetail {
                    code: e.code.as_str(),
                    message: &e.message,
                },
                status: e.code.status(),
            },
        })
        .collect();
    Ok(json_response(
        &serde_json::json!({ "responses": entries }),
        None,
    ))
}

/// A batch's queries, all at once, each answered on its own (with whether it allowed a
/// partial answer).
pub(crate) async fn run_batch(
    cluster: &Cluster,
    queries: &[BatchQuery],
    partial: impl Fn(usize) -> bool,
) -> Vec<Result<(Outcome, bool), QueryError>> {
    let started = Instant::now();
    let runs = queries.iter().enumerate().map(|(i, q)| {
        let partial = partial(i);
        async move {
            let (collection, query) = match q {
                BatchQuery::Similar(s) => {
                    let (c, id) = engine::batch_similar_target(s)?;
                    (c, Query::Similar { id, req: s })
                }
                BatchQuery::Search(s) => (s.collection.as_str(), Query::Search(s)),
                BatchQuery::Taste(t) => (engine::batch_taste_target(t)?, Query::Taste(t)),
            };
            let c = cluster.routed(collection)?;
            let o = cluster.run(c, &query, partial, started).await?;
            Ok((o, partial))
        }
    });
    futures_util::future::join_all(runs).await
}

/// `POST`/`DELETE /admin/{collection}/items`: a write goes to the collection's one write log,
/// which every shard tails (each applying the IDs it owns), so one replica of one shard
/// takes it — shard 0's, another of its replicas if one is down. The caller's credentials go
/// with it (shards check the admin key), and the shard's answer comes back as it is.
/// Upserts and deletes are idempotent: a write retried (or hedged) on another replica at
/// worst appends the same batch twice.
pub async fn write(
    State(state): St,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    // The router checks what it can without the collection (media type, size, JSON); the
    // shard validates the items and answers.
    let bytes = body.as_ref().ok().cloned();
    body_value(&headers, body)?;
    let body = bytes.unwrap_or_default();
    let cluster = &state.cluster;
    let c = cluster.routed(&collection)?;
    let auth = caller_auth(&headers);
    let req = UpRequest {
        method,
        path: write_path(&collection),
        body: Some(body),
        version: None,
        auth,
    };
    passthrough(cluster, c, 0, &req).await
}

/// The caller's own credentials, which a forwarded write carries instead of the shard key.
pub(crate) fn caller_auth(headers: &HeaderMap) -> Option<(header::HeaderName, HeaderValue)> {
    [
        header::AUTHORIZATION,
        header::HeaderName::from_static("x-api-key"),
    ]
    .into_iter()
    .find_map(|name| headers.get(&name).map(|v| (name, v.clone())))
}

/// `GET /v1/{collection}/{id}`: the owner shard's answer, as it is.
pub async fn item(
    State(state): St,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let cluster = &state.cluster;
    let c = cluster.routed(&collection)?;
    let owner = c.owner(&id);
    let req = UpRequest {
        method: Method::GET,
        path: item_path(&collection, &id),
        body: None,
        version: None,
        auth: None,
    };
    passthrough(cluster, c, owner, &req).await
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

async fn passthrough(
    cluster: &Cluster,
    c: &crate::cluster::Routed,
    shard: usize,
    req: &UpRequest,
) -> Result<Response, ApiError> {
    let r = forward(cluster, c, shard, req).await?;
    let mut resp = (r.status, [(header::CONTENT_TYPE, JSON)], r.body).into_response();
    if let Some(v) = r.version.and_then(|v| HeaderValue::from_str(&v).ok()) {
        resp.headers_mut().insert(VERSION_HEADER, v);
    }
    Ok(resp)
}

/// `req` to one of `shard`'s replicas: its answer as it is (an error status too), or
/// `shard_unavailable` when none answered.
pub(crate) async fn forward(
    cluster: &Cluster,
    c: &crate::cluster::Routed,
    shard: usize,
    req: &UpRequest,
) -> Result<UpResponse, ApiError> {
    let deadline = Instant::now() + cluster.opts.request_timeout;
    match c.shards[shard]
        .call(&cluster.client, &cluster.opts.upstream, req, deadline)
        .await
    {
        Ok(r) | Err(crate::upstream::CallError::Upstream(r)) => Ok(r),
        Err(e) => Err(shard_unavailable(format!(
            "shard {shard} of collection {:?} is unavailable: {e:?}",
            c.name
        ))
        .into()),
    }
}

/// The path of an item on its shards.
pub(crate) fn item_path(collection: &str, id: &str) -> String {
    format!(
        "/v1/{}/{}",
        percent_encoding::utf8_percent_encode(collection, SEGMENT),
        percent_encoding::utf8_percent_encode(id, SEGMENT)
    )
}

/// The path of a collection's write endpoint on its shards.
pub(crate) fn write_path(collection: &str) -> String {
    format!(
        "/admin/{}/items",
        percent_encoding::utf8_percent_encode(collection, SEGMENT)
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsRequest {
    ids: Vec<String>,
}

/// `POST /v1/{collection}/items`: each ID from its owner shard, in request order.
pub async fn items(
    State(state): St,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    let v = body_value(&headers, body)?;
    let req: ItemsRequest = typed(v)?;
    if req.ids.is_empty() || req.ids.len() > MAX_ITEMS {
        return Err(ApiError::new(
            ErrorCode::InvalidIds,
            format!(
                "an items lookup names 1 to {MAX_ITEMS} IDs (got {})",
                req.ids.len()
            ),
        ));
    }
    answer(&state, &collection, Query::Items(&req.ids), false).await
}

/// `GET /v1/collections`: each routed collection as its shards describe it, counts summed.
pub async fn collections(State(state): St) -> Response {
    json_response(&collections_value(&state.cluster).await, None)
}

/// The collections answer (`{"collections": [...], "kernels": ...}`), for HTTP and gRPC.
pub(crate) async fn collections_value(cluster: &Cluster) -> Value {
    let mut list = Vec::new();
    for c in cluster.collections.values() {
        if c.info.iter().any(|i| i.load().is_none()) {
            cluster.refresh(c).await;
        }
        let infos: Vec<_> = c.info.iter().filter_map(|i| i.load_full()).collect();
        let Some(first) = infos.first() else { continue };
        let mut entry = first.raw.clone();
        if let Some(o) = entry.as_object_mut() {
            o.remove("shard");
            let sum = |field: &str| -> u64 {
                infos
                    .iter()
                    .map(|i| i.raw.get(field).and_then(|v| v.as_u64()).unwrap_or(0))
                    .sum()
            };
            o.insert("count".into(), sum("count").into());
            o.insert("mapped_bytes".into(), sum("mapped_bytes").into());
            o.insert(
                "creators".into(),
                infos.iter().map(|i| i.creators).max().unwrap_or(0).into(),
            );
            let versions: std::collections::BTreeSet<&str> =
                infos.iter().filter_map(|i| i.version.as_deref()).collect();
            let hint = c.pin_hint.load_full();
            let version = match (&hint, versions.len()) {
                (Some(h), _) => h.to_string(),
                (None, 1) => versions
                    .iter()
                    .next()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                (None, _) => versions
                    .iter()
                    .next()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            };
            o.insert("version".into(), version.into());
        }
        list.push(entry);
    }
    serde_json::json!({
        "collections": list,
        "kernels": earshot_core::distance::kernel_name(),
    })
}

pub async fn healthz() -> Response {
    axum::Json(Status { status: "ok" }).into_response()
}

pub async fn readyz(State(state): St) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return ApiError::new(
            ErrorCode::NotReady,
            "the router is starting up or shutting down",
        )
        .into_response();
    }
    let down: Vec<String> = state
        .cluster
        .collections
        .values()
        .flat_map(|c| {
            c.shards
                .iter()
                .filter(|s| s.live_count() == 0)
                .map(move |s| format!("{}/{}", c.name, s.index))
        })
        .collect();
    if down.is_empty() {
        axum::Json(Status { status: "ready" }).into_response()
    } else {
        ApiError::new(
            ErrorCode::NotReady,
            format!("shards without a live replica: {}", down.join(", ")),
        )
        .into_response()
    }
}

pub async fn metrics(State(state): St) -> Response {
    state.metrics.clone().response().await
}
