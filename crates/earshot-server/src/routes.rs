//! Thin HTTP handlers: parse, call the engine, render.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra_json::AppJson;
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::exec::{self, Work};
use super::limits::MAX_BATCH;
use super::overload::Permit;
use super::query::{
    Answer, BatchQuery, BatchRequest, ListExplanation, ResultItem, SearchRequest, SimilarParams,
    SimilarRequest, TasteRequest,
};
use super::AppState;

/// `Json<T>` whose rejections become our JSON errors.
mod axum_extra_json {
    use axum::extract::{FromRequest, Request};

    use super::ApiError;

    pub struct AppJson<T>(pub T);

    impl<T, S> FromRequest<S> for AppJson<T>
    where
        axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
        S: Send + Sync,
    {
        type Rejection = ApiError;
        async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
            let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
            Ok(Self(v))
        }
    }
}

/// The answer of `similar`, `taste` and `search`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Results<'a> {
    /// Sorted by score, highest first; no duplicates; at most `k`.
    results: Vec<ResultItem<'a>>,
    /// With `explain: true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    explain: Option<ListExplanation>,
}

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
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
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
        (status = 400, description = "`invalid_k`, `invalid_ef`, `invalid_max_per_creator`, `invalid_query`, `invalid_path`, `invalid_collection`", body = ErrorBody),
        (status = 404, description = "`unknown_collection`, `unknown_id`", body = ErrorBody),
        (status = 422, description = "`conflicting_filters`, `invalid_filter`", body = ErrorBody),
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
    request_body = super::openapi::SimilarBody,
    responses(
        (status = 200, description = "Results", body = Results),
        (status = 400, description = "`invalid_k`, `invalid_ef`, `invalid_max_per_creator`, `exclude_too_large`, `filter_too_large`, `malformed_json`, `invalid_path`, `invalid_collection`, `invalid_request` (`collection` or `id` in the body)", body = ErrorBody),
        (status = 404, description = "`unknown_collection`, `unknown_id`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_request` (wrong shape), `conflicting_filters`, `invalid_filter`, `invalid_emerging`, `no_popularity`", body = ErrorBody),
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
        return Err(ApiError::bad_request(
            "invalid_request",
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
        (status = 400, description = "`invalid_k`, `invalid_ef`, `invalid_max_per_creator`, `exclude_too_large`, `filter_too_large`, `malformed_json`, `invalid_collection`", body = ErrorBody),
        (status = 404, description = "`unknown_collection`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `dimension_mismatch`, `invalid_vector`, `conflicting_filters`, `invalid_filter`, `invalid_emerging`, `no_popularity`", body = ErrorBody),
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
        (status = 400, description = "`invalid_k`, `invalid_ef`, `invalid_centroids`, `invalid_max_per_creator`, `exclude_too_large`, `filter_too_large`, `malformed_json`, `invalid_path`, `invalid_collection`, `invalid_request` (body names another collection)", body = ErrorBody),
        (status = 404, description = "`unknown_collection`, `unknown_id`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`, `history_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `empty_history`, `invalid_weight`, `unknown_event`, `invalid_half_life`, `invalid_timestamp`, `degenerate_history`, `no_positive_history`, `too_many_centroids`, `dimension_mismatch`, `conflicting_filters`, `invalid_filter`, `invalid_emerging`, `no_popularity`", body = ErrorBody),
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
        (status = 400, description = "`invalid_batch` (0 or more than 256 queries), `malformed_json`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_request` (a query of the wrong shape)", body = ErrorBody),
    )
)]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    AppJson(req): AppJson<BatchRequest>,
) -> Result<Response, ApiError> {
    if req.queries.is_empty() || req.queries.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_batch",
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

fn batch_answers(live: &super::registry::Live, req: &BatchRequest) -> Response {
    let engine = &live.engine;
    let answers: Vec<Result<Answer, ApiError>> = req
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
                error: e.body().error,
                status: e.status.as_u16(),
            },
        })
        .collect();
    Json(BatchResponse { responses: entries }).into_response()
}

/// One query's answer in a batch.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchEntry<'a> {
    Ok {
        /// Sorted by score, highest first; no duplicates; at most `k`.
        results: Vec<ResultItem<'a>>,
    },
    Err {
        error: super::error::ErrorDetail<'a>,
        /// The HTTP status this query alone would have had.
        #[schema(minimum = 400, maximum = 599)]
        status: u16,
    },
}

/// `POST /v1/batch` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchResponse<'a> {
    /// One per query, in request order.
    responses: Vec<BatchEntry<'a>>,
}

/// One served collection.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CollectionInfo<'a> {
    /// The collection's name (its directory under the index root).
    name: &'a str,
    /// How closeness is measured; scores are always "higher is closer".
    #[schema(schema_with = super::openapi::metric_schema)]
    metric: earshot_core::metric::Metric,
    /// Vector dimension.
    dim: u32,
    /// Items.
    count: u64,
    /// Distinct creators.
    creators: u64,
    /// Whether items carry a popularity (needed by `emerging`).
    has_popularity: bool,
    /// HNSW parameter M.
    m: u32,
    /// HNSW build beam width.
    ef_construction: u32,
    /// The beam width used when a request gives none.
    default_ef: usize,
    /// When it was built (RFC 3339).
    built_at: &'a str,
    /// The earshot version that built it.
    builder: &'a str,
    /// Bytes of its memory-mapped files.
    mapped_bytes: u64,
    /// The version in service (a version directory's name, or a plain one's build time).
    version: &'a str,
    /// When this server swapped it in (RFC 3339).
    #[schema(required = true)]
    loaded_at: Option<String>,
}

/// `GET /v1/collections` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CollectionsResponse<'a> {
    /// Every served collection, by name.
    collections: Vec<CollectionInfo<'a>>,
    /// The SIMD distance kernels in use.
    kernels: &'static str,
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

/// `{"status": …}` of the probes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    status: &'static str,
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
        (status = 503, description = "`not_ready`: shutting down", body = ErrorBody),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(Status { status: "ready" }).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
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
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see README for the API",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
