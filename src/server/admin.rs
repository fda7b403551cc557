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

/// `POST /admin/reload`: re-resolve every collection and swap in new versions that pass the
/// checks. 200 when nothing was refused, otherwise 422 `swap_refused`; both list the outcome
/// per collection.
pub async fn reload(State(state): State<Arc<AppState>>) -> Response {
    let report = state.registry.reload(Trigger::Admin).await;
    let refused = report.refused();
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorDetail<'a>>,
        collections: &'a std::collections::BTreeMap<String, Outcome>,
    }
    let message =
        format!("{refused} collection(s) refused their new version; the old one keeps serving");
    let body = Body {
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
