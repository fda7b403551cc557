//! `/admin/*`: operations on a running server (behind admin keys, or loopback-only).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{ErrorDetail, ReloadResponse};
use crate::error_code::ErrorCode;
use crate::registry::Trigger;
use crate::state::AppState;

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
        // The one error answered with a body of its own (the outcomes); checked against
        // `ErrorCode` with the rest of the document.
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
            code: ErrorCode::SwapRefused.as_str(),
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
