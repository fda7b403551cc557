//! The one error type of the HTTP API: `{"error":{"code":"…","message":"…"}}` with the status
//! of its [`ErrorCode`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{ErrorBody, ErrorDetail};
use crate::engine::QueryError;
use crate::error_code::ErrorCode;
use crate::limits::MAX_BODY_BYTES;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    /// For humans; not stable.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        // Every code's status is valid (tested in `error_code`).
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn detail(&self) -> ErrorDetail<'_> {
        ErrorDetail {
            code: self.code.as_str(),
            message: &self.message,
        }
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
        )
    }
}

/// The engine's errors become responses here and nowhere else.
impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::new(e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.detail(),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        use JsonRejection::*;
        match r {
            MissingJsonContentType(_) => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonDataError(e) => ApiError::new(ErrorCode::InvalidRequest, e.body_text()),
            JsonSyntaxError(e) => ApiError::new(ErrorCode::MalformedJson, e.body_text()),
            BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::payload_too_large()
            }
            other => ApiError::new(ErrorCode::MalformedJson, other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidQuery, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(ErrorCode::InvalidPath, r.body_text())
    }
}
