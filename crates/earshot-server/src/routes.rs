//! Thin HTTP handlers: parse, call the engine, render. The errors each operation documents
//! are listed in `openapi/errors.rs` (`OPERATION_ERRORS`).

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::api::{
    BatchEntry, BatchQuery, BatchRequest, BatchResponse, CollectionInfo, CollectionsResponse,
    ErrorDetail, Item, ItemsRequest, ItemsResponse, NotReadyBody, Results, SearchRequest,
    ShardInfo, SimilarBody, SimilarParams, SimilarRequest, Status, TasteRequest,
};
use crate::engine::{answer, check_batch, Answer, Engine, QueryError};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::exec::{self, Work};
use crate::extract::{AppJson, Pin, VERSION_HEADER};
use crate::overload::Permit;
use crate::registry::Live;
use crate::state::AppState;

fn render(answer: &Answer) -> Response {
    let results = answer.items();
    // Sized for the whole answer: one allocation instead of axum's 128-byte start regrown
    // several times for a typical list.
    let per_item = if answer.explain { 256 } else { 64 };
    let item = answer.query_item();
    let capacity = 64
        + item.as_ref().map_or(0, |i| 128 + 16 * i.vector.len())
        + results
            .iter()
            .map(|r| per_item + r.id.len() + r.creator.map_or(0, str::len))
            .sum::<usize>();
    json_response(
        &{
            let (emerging_slots_requested, emerging_slots_reserved) =
                answer::emerging_slots(answer.quota);
            Results {
                results,
                explain: answer.list_explanation(),
                emerging_slots_requested,
                emerging_slots_reserved,
                item,
            }
        },
        capacity,
    )
}

/// `value` as an `application/json` response, serialized into one buffer of `capacity`.
fn json_response<T: Serialize>(value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => ([(header::CONTENT_TYPE, JSON)], body).into_response(),
        Err(e) => {
            tracing::error!("cannot encode the answer: {e}");
            ApiError::new(
                ErrorCode::Internal,
                "the answer could not be encoded; see the server log",
            )
            .into_response()
        }
    }
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Answers a request about `collection` from the engine its pin selects (the current
/// version without one) and names the version that answered in `x-earshot-version`, on
/// errors too. A pin this server cannot honour is `version_unavailable`.
fn pinned(
    live: &Live,
    collection: &str,
    pin: &Pin,
    f: impl FnOnce(&Engine) -> Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let (engine, served) = live.pinned(collection, pin.version()?)?;
    let mut resp = f(engine).unwrap_or_else(IntoResponse::into_response);
    if let Some(s) = served {
        resp.headers_mut().insert(VERSION_HEADER, s.header.clone());
    }
    Ok(resp)
}

/// Nearest items to an item, the item itself excluded.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}/similar",
    tag = "query",
    params(
        ("collection" = String, Path, description = "Collection name", example = "tracks"),
        ("id" = String, Path, description = "Item ID (percent-encode `/`)", example = "demo:track:0000001"),
        SimilarParams,
    ),
    responses(
        (status = 200, description = "Results", body = Results),
    )
)]
pub async fn similar(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<SimilarParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let Query(p) = query?;
    let req = SimilarRequest::from(p);
    let live = state.live();
    let small = similar_work(&collection, &req).is_small(&live.engine);
    exec::run(permit, small, move || {
        pinned(&live, &collection, &pin, |e| {
            Ok(render(&e.similar(&collection, &id, &req)?))
        })
    })
    .await
}

/// Nearest items to an item, with every list option.
#[utoipa::path(
    post,
    path = "/v1/{collection}/{id}/similar",
    tag = "query",
    params(
        ("collection" = String, Path, description = "Collection name", example = "tracks"),
        ("id" = String, Path, description = "Item ID (percent-encode `/`)", example = "demo:track:0000001"),
    ),
    request_body = SimilarBody,
    responses(
        (status = 200, description = "Results", body = Results),
    )
)]
pub async fn similar_post(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<SimilarRequest>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    if req.collection.is_some() || req.id.is_some() {
        return Err(ApiError::new(
            ErrorCode::ConflictingFields,
            "the path names the collection and id; leave them out of the body",
        ));
    }
    let live = state.live();
    let small = similar_work(&collection, &req).is_small(&live.engine);
    exec::run(permit, small, move || {
        pinned(&live, &collection, &pin, |e| {
            Ok(render(&e.similar(&collection, &id, &req)?))
        })
    })
    .await
}

fn similar_work<'a>(collection: &'a str, req: &'a SimilarRequest) -> Work<'a> {
    Work {
        collection,
        spec: req.spec(),
        probes: 1,
        history: 0,
    }
}

/// Nearest items to a raw vector.
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "query",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Results", body = Results),
    )
)]
pub async fn search(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    AppJson(req): AppJson<SearchRequest>,
) -> Result<Response, ApiError> {
    let live = state.live();
    let small = Work {
        collection: &req.collection,
        spec: req.spec(),
        probes: 1,
        history: 0,
    }
    .is_small(&live.engine);
    exec::run(permit, small, move || {
        pinned(&live, &req.collection, &pin, |e| {
            Ok(render(&e.search(&req)?))
        })
    })
    .await
}

/// Items matching a listening history (README "Taste").
#[utoipa::path(
    post,
    path = "/v1/taste/{collection}",
    tag = "query",
    params(
        ("collection" = String, Path, description = "Collection to recommend from", example = "tracks"),
    ),
    request_body = TasteRequest,
    responses(
        (status = 200, description = "Results", body = Results),
    )
)]
pub async fn taste(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<TasteRequest>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    let live = state.live();
    let small = Work {
        collection: &collection,
        spec: req.spec(),
        probes: req.centroids.unwrap_or(1),
        history: req.history.len(),
    }
    .is_small(&live.engine);
    exec::run(permit, small, move || {
        pinned(&live, &collection, &pin, |e| {
            Ok(render(&e.taste(&collection, &req)?))
        })
    })
    .await
}

/// One item as stored: its metadata and its vector.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}",
    tag = "query",
    summary = "One item's metadata and stored vector",
    description = "The item as the index holds it: creator, popularity, its creator's popularity and the stored f32 vector (unit length under `cosine`, which normalises vectors at build time). `earshot route` fetches query vectors with it. An item whose ID is `items` needs its path segment percent-encoded (`%69tems`), or `POST /v1/{collection}/items`.",
    params(
        ("collection" = String, Path, description = "Collection name", example = "tracks"),
        ("id" = String, Path, description = "Item ID (percent-encode `/`)", example = "demo:track:0000001"),
    ),
    responses(
        (status = 200, description = "The item", body = Item),
    )
)]
pub async fn item(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let live = state.live();
    exec::run(permit, true, move || {
        pinned(&live, &collection, &pin, |e| {
            let item = e.item(&collection, &id)?;
            Ok(json_response(
                &item,
                96 + item.id.len() + 16 * item.vector.len(),
            ))
        })
    })
    .await
}

/// Several items as stored, in one request.
#[utoipa::path(
    post,
    path = "/v1/{collection}/items",
    tag = "query",
    summary = "Several items' metadata and stored vectors",
    description = "`GET /v1/{collection}/{id}` for 1 to 1,000 IDs at once; IDs the collection does not have are listed in `missing` instead of failing the request.",
    params(
        ("collection" = String, Path, description = "Collection name", example = "tracks"),
    ),
    request_body = ItemsRequest,
    responses(
        (status = 200, description = "The items found and the IDs missing", body = ItemsResponse),
    )
)]
pub async fn items(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    pin: Pin,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<ItemsRequest>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    let live = state.live();
    let dim = live.engine.collection(&collection).map_or(0, |c| c.dim());
    // Copying vectors is cheap: inline up to the budget of one small query.
    let small = req.ids.len().saturating_mul(dim.max(1)) <= exec::INLINE_BUDGET;
    exec::run(permit, small, move || {
        pinned(&live, &collection, &pin, |e| {
            let found = e.items(&collection, &req.ids)?;
            let capacity = 32
                + found
                    .items
                    .iter()
                    .map(|i| 96 + i.id.len() + 16 * i.vector.len())
                    .sum::<usize>()
                + found.missing.iter().map(|m| m.len() + 4).sum::<usize>();
            Ok(json_response(&found, capacity))
        })
    })
    .await
}

/// Each query of a batch answers on its own: one bad query does not fail the others.
#[utoipa::path(
    post,
    path = "/v1/batch",
    tag = "query",
    summary = "Several similar, search and taste queries in one request",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One entry per query, in request order: results, or the error that query alone would have had", body = BatchResponse),
    )
)]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    AppJson(req): AppJson<BatchRequest>,
) -> Result<Response, ApiError> {
    check_batch(req.queries.len())?;
    let live = state.live();
    // Up to 256 queries: always on the blocking pool.
    exec::run(permit, false, move || Ok(batch_answers(&live, &req))).await
}

fn batch_answers(live: &Live, req: &BatchRequest) -> Response {
    let engine = &live.engine;
    let answers: Vec<Result<Answer, QueryError>> = req
        .queries
        .iter()
        .map(|q| match q {
            BatchQuery::Similar(s) => engine.similar_in_batch(s),
            BatchQuery::Search(s) => engine.search(s),
            BatchQuery::Taste(t) => engine.taste_in_batch(t),
        })
        .collect();
    let entries: Vec<BatchEntry> = answers
        .iter()
        .map(|a| match a {
            Ok(a) => BatchEntry::Ok { results: a.items() },
            Err(e) => BatchEntry::Err {
                error: ErrorDetail {
                    code: e.code.as_str(),
                    message: &e.message,
                },
                status: e.code.status(),
            },
        })
        .collect();
    Json(BatchResponse { responses: entries }).into_response()
}

/// The served collections and the version of each in service.
#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "query",
    responses(
        (status = 200, description = "Served collections", body = CollectionsResponse),
    )
)]
pub async fn collections(State(state): State<Arc<AppState>>) -> Response {
    let live = state.live();
    Json(collections_of(&live)).into_response()
}

/// The answer of `GET /v1/collections` (and of gRPC's `Collections`).
pub fn collections_of(live: &Live) -> CollectionsResponse<'_> {
    let list: Vec<CollectionInfo> = live
        .engine
        .collections
        .values()
        .map(|c| CollectionInfo {
            name: &c.name,
            metric: c.manifest.metric,
            dim: c.manifest.dim,
            count: c.manifest.count,
            creators: c.manifest.creators,
            has_popularity: c.manifest.has_popularity,
            taste_history: c.manifest.taste_history.as_deref(),
            m: c.manifest.hnsw.m,
            ef_construction: c.manifest.hnsw.ef_construction,
            default_ef: live.engine.default_ef,
            built_at: &c.manifest.built_at,
            builder: &c.manifest.builder,
            mapped_bytes: c.mapped_bytes(),
            version: live
                .versions
                .get(&c.name)
                .map_or("", |v| v.version.as_str()),
            loaded_at: live
                .versions
                .get(&c.name)
                .map(|v| humantime::format_rfc3339_seconds(v.loaded_at).to_string()),
            retained: live.retained_versions(&c.name).collect(),
            shard: c.manifest.shard.as_ref().map(|s| ShardInfo {
                index: s.index,
                count: s.count,
                hash: &s.hash,
            }),
        })
        .collect();
    CollectionsResponse {
        collections: list,
        kernels: earshot_core::distance::kernel_name(),
    }
}

/// Liveness: 200 while the process runs (never queued, no key needed).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Status, example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> Response {
    Json(Status { status: "ok" }).into_response()
}

/// Readiness: 200 when serving, 503 while starting, shutting down, or (store mode) waiting
/// for a collection; the 503 body lists the collections still missing (`missing`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Status, example = json!({"status": "ready"})),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.not_ready() {
        None => Json(Status { status: "ready" }).into_response(),
        Some((message, missing)) => {
            let body = NotReadyBody {
                error: ErrorDetail {
                    code: ErrorCode::NotReady.as_str(),
                    message: &message,
                },
                missing: &missing,
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Prometheus metrics (README "Monitor").
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.clone().response().await
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see README for the API",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}
