//! The engine's error: an API error code and a message, no HTTP (`crate::error` renders it).

use crate::error_code::ErrorCode;

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub code: ErrorCode,
    /// What went wrong and how to fix it, for humans.
    pub message: String,
}

impl QueryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
