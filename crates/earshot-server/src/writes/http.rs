//! `POST /admin/{collection}/items` (upsert) and `DELETE /admin/{collection}/items`: a batch
//! is validated whole (one bad item refuses it, naming the item), then appended to the log;
//! the answer comes only once the store has the segment.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use earshot_core::format::log::{LogItem, Ops};
use earshot_core::metric::Metric;
use earshot_recommend::query::{self, VectorError};

use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::extract::AppJson;
use crate::state::AppState;

/// Items or IDs one write takes at most.
pub const MAX_WRITE_ITEMS: usize = 1_000;
/// Bytes an item ID may have (as `build` allows).
pub const MAX_ID_BYTES: usize = 1024;
/// Body limit of the write routes (1,000 items of 1,024 dimensions as JSON fit).
pub const MAX_WRITE_BODY_BYTES: usize = 64 << 20;

/// Items to add, or to replace when their ID exists.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// 1 to 1,000 items, IDs distinct.
    pub items: Vec<WriteItem>,
}

/// One upserted item, as a build input row gives it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteItem {
    /// 1 to 1,024 bytes.
    #[schema(example = "track-123")]
    pub id: String,
    /// The collection's dimension; finite; not zero under cosine.
    pub vector: Vec<f32>,
    #[serde(default)]
    pub creator: Option<String>,
    /// Finite and ≥ 0.
    #[serde(default)]
    pub popularity: Option<f32>,
}

/// IDs to delete (unknown IDs are no-ops).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// 1 to 1,000 IDs.
    pub ids: Vec<String>,
}

/// A write the log has durably: its segment number orders it among all writes.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriteResponse {
    pub collection: String,
    /// The log segment holding the batch.
    pub seq: u64,
    /// Items upserted or IDs deleted.
    pub count: usize,
}

/// Upsert a batch of items through the write log.
#[utoipa::path(
    post,
    path = "/admin/{collection}/items",
    tag = "writes",
    summary = "Upsert items (acknowledged once durable in the write log)",
    description = "Validates the whole batch (one bad item refuses it, naming the item), appends it to the collection's write log in the object store and answers once the store has it. Every replica applies it within its `--log-poll-ms` (README \"Writes\").",
    params(("collection" = String, Path, description = "Collection name", example = "tracks")),
    request_body = UpsertRequest,
    responses((status = 200, description = "Durable: in the log as segment `seq`", body = WriteResponse)),
)]
pub async fn upsert(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<UpsertRequest>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    answer(write_upsert(&state, collection, req.items).await)
}

/// Validates `items` for `collection` and appends them (both transports' upsert).
pub async fn write_upsert(
    state: &AppState,
    collection: String,
    items: Vec<WriteItem>,
) -> Result<WriteResponse, ApiError> {
    let writes = writes(state)?;
    let live = state.live();
    let c = live.engine.collection(&collection)?;
    check_count(items.len(), "items")?;
    let mut seen = HashSet::with_capacity(items.len());
    let mut prepared = Vec::with_capacity(items.len());
    for (i, it) in items.into_iter().enumerate() {
        check_id(&it.id, i)?;
        if !seen.insert(it.id.clone()) {
            return Err(ApiError::new(
                ErrorCode::InvalidWriteBatch,
                format!("items[{i}]: ID {:?} is in the batch twice", it.id),
            ));
        }
        match query::prepare_in(c.manifest.metric, c.dim(), &it.vector) {
            // Only cosine needs a direction; a zero item is stored as given under dot / l2.
            Ok(_) => {}
            Err(VectorError::Zero) if c.manifest.metric != Metric::Cosine => {}
            Err(e) => return Err(item_vector_error(e, i, &it.id, c.dim())),
        }
        if let Some(p) = it.popularity.filter(|p| !p.is_finite() || *p < 0.0) {
            return Err(ApiError::new(
                ErrorCode::InvalidItem,
                format!(
                    "items[{i}] ({:?}): popularity {p} is not a finite number ≥ 0",
                    it.id
                ),
            ));
        }
        prepared.push(LogItem {
            id: it.id,
            vector: it.vector,
            creator: it.creator,
            popularity: it.popularity,
        });
    }
    let count = prepared.len();
    let ops = Ops::Upsert {
        dim: c.dim(),
        items: prepared,
    };
    drop(live);
    append(&writes, collection, ops, count).await
}

/// Delete a batch of items through the write log.
#[utoipa::path(
    delete,
    path = "/admin/{collection}/items",
    tag = "writes",
    summary = "Delete items (acknowledged once durable in the write log)",
    description = "Appends the deletion to the collection's write log; every replica hides the items within its `--log-poll-ms`. IDs the collection does not have are no-ops.",
    params(("collection" = String, Path, description = "Collection name", example = "tracks")),
    request_body = DeleteRequest,
    responses((status = 200, description = "Durable: in the log as segment `seq`", body = WriteResponse)),
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    AppJson(req): AppJson<DeleteRequest>,
) -> Result<Response, ApiError> {
    let Path(collection) = path?;
    answer(write_delete(&state, collection, req.ids).await)
}

/// Validates `ids` for `collection` and appends their deletion (both transports' delete).
pub async fn write_delete(
    state: &AppState,
    collection: String,
    ids: Vec<String>,
) -> Result<WriteResponse, ApiError> {
    let writes = writes(state)?;
    state.live().engine.collection(&collection)?;
    check_count(ids.len(), "ids")?;
    let mut seen = HashSet::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        check_id(id, i)?;
        if !seen.insert(id.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidWriteBatch,
                format!("ids[{i}]: {id:?} is in the batch twice"),
            ));
        }
    }
    let count = ids.len();
    append(&writes, collection, Ops::Delete { ids }, count).await
}

/// A write's answer, or its error (`log_unavailable` with `Retry-After: 1`).
fn answer(r: Result<WriteResponse, ApiError>) -> Result<Response, ApiError> {
    match r {
        Ok(w) => Ok(Json(w).into_response()),
        Err(e) if e.code == ErrorCode::LogUnavailable => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            Ok(r)
        }
        Err(e) => Err(e),
    }
}

/// `POST /admin/log/poll`: look for new log segments now instead of at the next poll.
#[utoipa::path(
    post,
    path = "/admin/log/poll",
    tag = "writes",
    summary = "Apply new write-log segments now",
    responses((status = 202, description = "The tail looks for new segments at once")),
)]
pub async fn poll(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    writes(&state)?.poke();
    Ok(axum::http::StatusCode::ACCEPTED.into_response())
}

fn writes(state: &AppState) -> Result<Arc<super::Writes>, ApiError> {
    state.writes.get().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::WritesDisabled,
            "this server has no write log: writes need an object store (start serve with --store URL --index-root DIR)",
        )
    })
}

async fn append(
    writes: &super::Writes,
    collection: String,
    ops: Ops,
    count: usize,
) -> Result<WriteResponse, ApiError> {
    match writes.append(&collection, ops).await {
        Ok(seq) => Ok(WriteResponse {
            collection,
            seq,
            count,
        }),
        Err(e) => {
            tracing::warn!(collection = %collection, "write not acknowledged: {e:#}");
            Err(ApiError::new(
                ErrorCode::LogUnavailable,
                format!("the write log did not take the batch, so it is not written: {e:#}; retry"),
            ))
        }
    }
}

fn check_count(n: usize, what: &str) -> Result<(), ApiError> {
    if n == 0 || n > MAX_WRITE_ITEMS {
        return Err(ApiError::new(
            ErrorCode::InvalidWriteBatch,
            format!("a write holds 1 to {MAX_WRITE_ITEMS} {what} (got {n})"),
        ));
    }
    Ok(())
}

fn check_id(id: &str, i: usize) -> Result<(), ApiError> {
    let problem = if id.is_empty() {
        "is empty".to_string()
    } else if id.len() > MAX_ID_BYTES {
        format!("is {} bytes long; the maximum is {MAX_ID_BYTES}", id.len())
    } else if id.chars().any(char::is_control) {
        "holds a control character".to_string()
    } else {
        return Ok(());
    };
    Err(ApiError::new(
        ErrorCode::InvalidItem,
        format!("[{i}]: ID {id:?} {problem}"),
    ))
}

fn item_vector_error(e: VectorError, i: usize, id: &str, dim: usize) -> ApiError {
    let at = format!("items[{i}] ({id:?})");
    match e {
        VectorError::Dimension { got, .. } => ApiError::new(
            ErrorCode::DimensionMismatch,
            format!("{at}: vector has {got} dimensions but the collection has {dim}"),
        ),
        VectorError::NotFinite { index } => ApiError::new(
            ErrorCode::InvalidVector,
            format!("{at}: vector[{index}] is not a finite number (or overflows f32)"),
        ),
        VectorError::TooLong => ApiError::new(
            ErrorCode::InvalidVector,
            format!("{at}: the vector's norm is too large: scores would overflow"),
        ),
        VectorError::Zero => ApiError::new(
            ErrorCode::InvalidVector,
            format!("{at}: a zero vector has no direction under cosine"),
        ),
    }
}
