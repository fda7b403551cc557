//! How a routed query fails: a shard's error answer passed on with its own code, status and
//! message; `shard_unavailable` / `version_unavailable`. (Taste errors are worded by
//! `serve`'s own [`earshot_server::engine::taste_error`].)

use earshot_server::engine::QueryError;
use earshot_server::error_code::ErrorCode;
use serde::Deserialize;

use crate::upstream::UpResponse;

/// The code named `name` with `status`, if this build has it.
pub fn code_named(name: &str, status: u16) -> Option<ErrorCode> {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.as_str() == name && c.status() == status)
}

pub fn shard_unavailable(message: String) -> QueryError {
    QueryError::new(ErrorCode::ShardUnavailable, message)
}

pub fn version_unavailable(message: String) -> QueryError {
    QueryError::new(ErrorCode::VersionUnavailable, message)
}

/// A shard's error answer as the same error (same code, status and message).
pub(crate) fn forwarded(resp: &UpResponse) -> QueryError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(&resp.body) {
        Ok(b) => match code_named(&b.error.code, resp.status.as_u16()) {
            Some(code) => QueryError::new(code, b.error.message),
            None => QueryError::new(
                ErrorCode::Internal,
                format!(
                    "a shard answered {} {}: {}",
                    resp.status, b.error.code, b.error.message
                ),
            ),
        },
        Err(_) => QueryError::new(
            ErrorCode::Internal,
            format!("a shard answered {} without an error body", resp.status),
        ),
    }
}

/// Why an attempt at a query stopped.
pub enum Failure {
    Api(QueryError),
    /// A shard does not have the version the attempt was pinned to.
    Version,
}

impl From<QueryError> for Failure {
    fn from(e: QueryError) -> Self {
        Failure::Api(e)
    }
}
