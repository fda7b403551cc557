//! Thin HTTP handlers: parse, call the engine, render.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra_json::AppJson;
use serde::Serialize;

use super::error::ApiError;
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

#[derive(Serialize)]
struct Results<'a> {
    results: Vec<ResultItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<ListExplanation>,
}

fn render(answer: &Answer) -> Response {
    Json(Results {
        results: answer.items(),
        explain: answer.list_explanation(),
    })
    .into_response()
}

/// Runs a query on the blocking pool, holding the request's execution slot until it ends
/// (even when the request timed out meanwhile), so the async workers stay free to answer
/// probes and to refuse overload quickly.
async fn offload<F>(permit: Option<Extension<Permit>>, f: F) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<Response, ApiError> + Send + 'static,
{
    let held = permit.map(|Extension(p)| p);
    match tokio::task::spawn_blocking(move || {
        let _held = held;
        f()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("query failed: {e}");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query failed unexpectedly; see the server log",
            ))
        }
    }
}

pub async fn similar(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<SimilarParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((collection, id)) = path?;
    let Query(p) = query?;
    let live = state.live();
    offload(permit, move || {
        Ok(render(&live.engine.similar_get(&collection, &id, p)?))
    })
    .await
}

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
    offload(permit, move || {
        Ok(render(&live.engine.similar(&collection, &id, &req)?))
    })
    .await
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    AppJson(req): AppJson<SearchRequest>,
) -> Result<Response, ApiError> {
    let live = state.live();
    offload(permit, move || Ok(render(&live.engine.search(&req)?))).await
}

pub async fn taste(
    State(state): State<Arc<AppState>>,
    permit: Option<Extension<Permit>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<TasteRequest>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    let live = state.live();
    offload(permit, move || {
        Ok(render(&live.engine.taste(&collection, &req)?))
    })
    .await
}

/// Each query of a batch answers on its own: one bad query does not fail the others.
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
    offload(permit, move || Ok(batch_answers(&live, &req))).await
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
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Entry<'a> {
        Ok {
            results: Vec<ResultItem<'a>>,
        },
        Err {
            error: super::error::ErrorDetail<'a>,
            status: u16,
        },
    }
    let entries: Vec<Entry> = answers
        .iter()
        .map(|a| match a {
            Ok(a) => Entry::Ok { results: a.items() },
            Err(e) => Entry::Err {
                error: e.body().error,
                status: e.status.as_u16(),
            },
        })
        .collect();
    #[derive(Serialize)]
    struct BatchResponse<'a> {
        responses: Vec<Entry<'a>>,
    }
    Json(BatchResponse { responses: entries }).into_response()
}

pub async fn collections(State(state): State<Arc<AppState>>) -> Response {
    #[derive(Serialize)]
    struct Info<'a> {
        name: &'a str,
        metric: crate::metric::Metric,
        dim: u32,
        count: u64,
        creators: u64,
        has_popularity: bool,
        m: u32,
        ef_construction: u32,
        default_ef: usize,
        built_at: &'a str,
        builder: &'a str,
        mapped_bytes: u64,
        /// The version in service (a version directory's name, or a plain one's build time).
        version: &'a str,
        /// When this server swapped it in (RFC 3339).
        loaded_at: Option<String>,
    }
    let live = state.live();
    let list: Vec<Info> = live
        .engine
        .collections
        .values()
        .map(|c| Info {
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
    #[derive(Serialize)]
    struct Body<'a> {
        collections: Vec<Info<'a>>,
        kernels: &'static str,
    }
    Json(Body {
        collections: list,
        kernels: crate::distance::kernel_name(),
    })
    .into_response()
}

pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is starting up or shutting down",
        )
        .into_response()
    }
}

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
