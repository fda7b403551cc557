//! `/admin/*`: operations on a running server (behind admin keys, or loopback-only).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ErrorDetail;
use super::registry::{Outcome, Trigger};
use super::AppState;

/// `POST /admin/reload` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReloadResponse<'a> {
    /// `swap_refused` when at least one collection refused its new version (status 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<ErrorDetail<'a>>,
    /// The outcome of every collection, by name.
    #[schema(value_type = std::collections::BTreeMap<String, super::openapi::ReloadOutcome>)]
    collections: &'a std::collections::BTreeMap<String, Outcome>,
}

/// `POST /admin/reload`: re-resolve every collection and swap in new versions that pass the
/// checks. 200 when nothing was refused, otherwise 422 `swap_refused`; both list the outcome
/// per collection.
#[utoipa::path(
    post,
    path = "/admin/reload",
    tag = "operations",
    summary = "Swap in new collection versions now",
    description = "Re-resolves every collection of the index root and swaps in new versions that pass the checks (README \"Swap\"); lists the outcome per collection.",
    responses(
        (status = 200, description = "Nothing was refused", body = ReloadResponse),
        (status = 422, description = "`swap_refused`: at least one collection refused its new version (the old one keeps serving); the body still lists every collection", body = ReloadResponse),
    )
)]
pub async fn reload(State(state): State<Arc<AppState>>) -> Response {
    let report = state.registry.reload(Trigger::Admin).await;
    let refused = report.refused();
    let message =
        format!("{refused} collection(s) refused their new version; the old one keeps serving");
    let body = ReloadResponse {
        error: (refused > 0).then(|| ErrorDetail {
            code: "swap_refused",
            message: &message,
        }),
        collections: &report.collections,
    };
    let status = if refused > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}
