//! Thin HTTP handlers: parse, call the engine, render. The errors each operation documents
//! are listed in `openapi.rs` (`OPERATION_ERRORS`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::api::{
    BatchEntry, BatchQuery, BatchRequest, BatchResponse, CollectionInfo, CollectionsResponse,
    ErrorDetail, Results, SearchRequest, SimilarBody, SimilarParams, SimilarRequest, Status,
    TasteRequest,
};
use crate::engine::{Answer, QueryError};
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::exec::{self, Work};
use crate::extract::AppJson;
use crate::limits::MAX_BATCH;
use crate::overload::Permit;
use crate::registry::Live;
use crate::state::AppState;

fn render(answer: &Answer) -> Response {
    let results = answer.items();
    // Sized for the whole answer: one allocation instead of axum's 128-byte start regrown
    // several times for a typical list.
    let per_item = if answer.explain { 256 } else { 64 };
    let capacity = 64
        + results
            .iter()
            .map(|r| per_item + r.id.len() + r.creator.map_or(0, str::len))
            .sum::<usize>();
    json_response(
        &Results {
            results,
            explain: answer.list_explanation(),
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
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<SimilarParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let Query(p) = query?;
    let req = SimilarRequest::from(p);
    let live = state.live();
    let small = similar_work(&collection, &req).is_small(&live.engine);
    exec::run(permit, small, move || {
        Ok(render(&live.engine.similar(&collection, &id, &req)?))
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
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<SimilarRequest>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    if req.collection.is_some() || req.id.is_some() {
        return Err(ApiError::new(
            ErrorCode::PathInBody,
            "the path names the collection and id; leave them out of the body",
        ));
    }
    let live = state.live();
    let small = similar_work(&collection, &req).is_small(&live.engine);
    exec::run(permit, small, move || {
        Ok(render(&live.engine.similar(&collection, &id, &req)?))
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
        Ok(render(&live.engine.search(&req)?))
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
        Ok(render(&live.engine.taste(&collection, &req)?))
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
    if req.queries.is_empty() || req.queries.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::InvalidBatch,
            format!(
                "a batch holds 1 to {MAX_BATCH} queries (got {})",
                req.queries.len()
            ),
        ));
    }
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
        })
        .collect();
    Json(CollectionsResponse {
        collections: list,
        kernels: earshot_core::distance::kernel_name(),
    })
    .into_response()
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

/// Readiness: 200 when serving, 503 while starting or shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Status, example = json!({"status": "ready"})),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(Status { status: "ready" }).into_response()
    } else {
        ApiError::new(
            ErrorCode::NotReady,
            "the server is starting up or shutting down",
        )
        .into_response()
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
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
