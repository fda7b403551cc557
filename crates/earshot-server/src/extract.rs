//! Extractors whose rejections are [`ApiError`]s, so a bad request gets the API's JSON error,
//! and the version pin of a request.

use std::convert::Infallible;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};

use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// `axum::Json<T>`, rejecting with `malformed_json`, `invalid_request`,
/// `unsupported_media_type` or `payload_too_large`.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// The request and response header naming a collection's version: a request carrying it is
/// answered from that version (if still loaded), and every answer about one collection
/// names the version that answered.
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-earshot-version");

/// The request's `x-earshot-version`, if any (one header value, cloned without copying).
pub struct Pin(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for Pin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(VERSION_HEADER).cloned()))
    }
}

impl Pin {
    /// The pinned version's name; `version_unavailable` when the header is not text.
    pub fn version(&self) -> Result<Option<&str>, ApiError> {
        self.0
            .as_ref()
            .map(|v| {
                std::str::from_utf8(v.as_bytes()).map_err(|_| {
                    ApiError::new(
                        ErrorCode::VersionUnavailable,
                        "x-earshot-version is not a version name (not UTF-8)",
                    )
                })
            })
            .transpose()
    }
}
