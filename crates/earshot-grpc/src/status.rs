//! The HTTP API's errors as gRPC statuses: a status code for each [`ErrorCode`], and the
//! stable code itself in a `google.rpc.ErrorInfo` (domain `earshot`), with a
//! `google.rpc.RetryInfo` on the answers a client should retry later.

use std::collections::HashMap;
use std::time::Duration;

use earshot_server::error::ApiError;
use earshot_server::error_code::ErrorCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `ErrorInfo` this server sends.
pub const DOMAIN: &str = "earshot";

/// How long a refused client should wait (HTTP's `Retry-After: 1`).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gRPC status code of an API error code (exhaustive: a new code must choose one).
pub fn grpc_code(c: ErrorCode) -> Code {
    use ErrorCode::*;
    match c {
        InvalidK | InvalidEf | InvalidBatch | InvalidIds | InvalidCentroids
        | InvalidMaxPerCreator | ExcludeTooLarge | FilterTooLarge | MalformedJson
        | InvalidQuery | InvalidPath | InvalidCollection | ConflictingFields | PayloadTooLarge
        | HistoryTooLarge | UnsupportedMediaType | InvalidRequest | DimensionMismatch
        | InvalidVector | EmptyHistory | InvalidWeight | UnknownEvent | InvalidHalfLife
        | InvalidTimestamp | NoPositiveHistory | TooManyCentroids | DegenerateHistory
        | UnknownStrategy | InvalidFanOut | ConflictingFilters | InvalidFilter
        | InvalidEmerging | InvalidWriteBatch | InvalidItem => Code::InvalidArgument,
        // The request is well formed; the collection cannot answer it.
        NoPopularity | SwapRefused | WritesDisabled => Code::FailedPrecondition,
        Unauthorized => Code::Unauthenticated,
        Forbidden => Code::PermissionDenied,
        UnknownCollection | UnknownId | NotFound => Code::NotFound,
        MethodNotAllowed => Code::Unimplemented,
        VersionUnavailable => Code::FailedPrecondition,
        Internal => Code::Internal,
        Overloaded => Code::ResourceExhausted,
        // The server's own `--request-timeout-ms` (the client's deadline is
        // `deadline_exceeded`): transient, like every 503.
        Timeout | ShardUnavailable | NotReady | LogUnavailable => Code::Unavailable,
    }
}

/// Whether a client should retry after [`RETRY_AFTER`] (HTTP sends `Retry-After` then).
fn retryable(c: ErrorCode) -> bool {
    matches!(
        c,
        ErrorCode::Overloaded
            | ErrorCode::Timeout
            | ErrorCode::ShardUnavailable
            | ErrorCode::NotReady
            | ErrorCode::LogUnavailable
    )
}

/// An API error as a status: its code, message and `ErrorInfo` (reason = the stable code,
/// metadata `http_status` = the status HTTP answers), plus `RetryInfo` when retryable.
pub fn from_api(e: &ApiError) -> Status {
    with_details(grpc_code(e.code), e.code, &e.message, retryable(e.code))
}

/// The client's deadline (`grpc-timeout`) passed: DEADLINE_EXCEEDED, reason `timeout`.
pub fn deadline_exceeded(after: Duration) -> Status {
    with_details(
        Code::DeadlineExceeded,
        ErrorCode::Timeout,
        &format!(
            "the request did not finish within the client's deadline ({} ms)",
            after.as_millis()
        ),
        false,
    )
}

fn with_details(code: Code, api: ErrorCode, message: &str, retry: bool) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        api.as_str(),
        DOMAIN,
        HashMap::from([("http_status".to_string(), api.status().to_string())]),
    );
    if retry {
        details.set_retry_info(Some(RETRY_AFTER));
    }
    Status::with_error_details(code, message, details)
}

/// The name of a status code as gRPC spells it (`OK`, `NOT_FOUND`, …), for metrics labels.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_travels_in_error_info() {
        for &c in ErrorCode::ALL {
            let s = from_api(&ApiError::new(c, "m"));
            let d = s.get_error_details();
            let info = d.error_info().expect("ErrorInfo");
            assert_eq!(info.reason, c.as_str());
            assert_eq!(info.domain, DOMAIN);
            assert_eq!(info.metadata["http_status"], c.status().to_string());
            assert_eq!(d.retry_info().is_some(), c.status() == 503, "{c:?}");
            // 4xx are the client's to fix, 5xx the server's.
            let client = matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::NotFound
                    | Code::Unimplemented
            );
            assert_eq!(client, c.status() < 500, "{c:?} → {:?}", s.code());
        }
    }
}
