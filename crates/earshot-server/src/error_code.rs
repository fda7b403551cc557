//! Every error code of the API, with its HTTP status and when it is answered.
//!
//! The one list of codes: responses carry them ([`crate::error::ApiError`]), the OpenAPI
//! document describes each operation's errors with them ([`crate::openapi`]), and README's
//! "Errors" table is this list (a test below keeps the two equal). The status is a plain
//! number so that the query engine can name codes without depending on HTTP types.

macro_rules! error_codes {
    ($($variant:ident = $status:literal, $code:literal, $when:literal;)*) => {
        /// A stable, machine-readable error code (the `code` of an error body).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in README order (by status).
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The HTTP status answered with this code.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// When it is answered, in one line (README's "when" column).
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $when,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidK = 400, "invalid_k", "`k` out of the bounds above";
    InvalidEf = 400, "invalid_ef", "`ef` out of the bounds above";
    InvalidBatch = 400, "invalid_batch", "a batch of 0 or more than 256 queries";
    InvalidWriteBatch = 400, "invalid_write_batch",
        "a write (`/admin/{collection}/items`) of 0 or more than 1,000 items or IDs, or one ID twice";
    InvalidIds = 400, "invalid_ids", "an items lookup of 0 or more than 1,000 IDs";
    InvalidCentroids = 400, "invalid_centroids", "`centroids` out of the bounds above";
    InvalidMaxPerCreator = 400, "invalid_max_per_creator", "`max_per_creator` is 0";
    ExcludeTooLarge = 400, "exclude_too_large", "`exclude` holds more than 10,000 IDs";
    FilterTooLarge = 400, "filter_too_large",
        "`filter.creators` or `filter.exclude_creators` holds more than 10,000 names";
    MalformedJson = 400, "malformed_json", "unparsable or unreadable body";
    InvalidQuery = 400, "invalid_query", "unparsable query string";
    InvalidPath = 400, "invalid_path", "unparsable path";
    InvalidCollection = 400, "invalid_collection",
        "a collection name (path or body) with `/`, `\\`, `..`, NUL or a control character, or a leading `.`";
    ConflictingFields = 400, "invalid_request",
        "`collection` or `id` in a `POST /v1/{collection}/{id}/similar` body, a taste body naming another collection than its path, or `max_per_creator` / `emerging` with `\"pool\": true`";
    Unauthorized = 401, "unauthorized",
        "API keys are configured and the request has none or a wrong one (with `WWW-Authenticate: Bearer`)";
    Forbidden = 403, "forbidden",
        "a query key on `/admin/*`, or `/admin/*` from a non-loopback client when no keys are configured";
    UnknownCollection = 404, "unknown_collection", "no such collection";
    UnknownId = 404, "unknown_id", "no such item";
    NotFound = 404, "not_found", "unknown route";
    MethodNotAllowed = 405, "method_not_allowed", "the route does not take that method";
    VersionUnavailable = 409, "version_unavailable",
        "`x-earshot-version` names a version of the collection this server does not have loaded (the message lists those it has)";
    WritesDisabled = 409, "writes_disabled",
        "a write to a server without a write log (writes need `serve --store URL`)";
    PayloadTooLarge = 413, "payload_too_large", "body over 4 MiB";
    HistoryTooLarge = 413, "history_too_large", "history over 10,000 items";
    UnsupportedMediaType = 415, "unsupported_media_type",
        "body without `Content-Type: application/json`";
    InvalidRequest = 422, "invalid_request",
        "JSON of the wrong shape (missing or unknown field, wrong type), or a batch query without its `collection` / `id`";
    DimensionMismatch = 422, "dimension_mismatch",
        "vector length ≠ the collection's dimension (or history collection of another dimension)";
    InvalidVector = 422, "invalid_vector",
        "NaN, ±inf, values overflowing f32, a norm over 1e15 under `l2` / `dot`, or a zero vector under `cosine` / `dot`";
    InvalidItem = 422, "invalid_item",
        "an upserted item whose ID is empty, over 1,024 bytes or holds a control character, or whose popularity is not finite and ≥ 0";
    EmptyHistory = 422, "empty_history", "empty history";
    InvalidWeight = 422, "invalid_weight", "a history weight ≤ 0 or not finite";
    UnknownEvent = 422, "unknown_event", "an `event` that is not play, like, save, share, skip or dislike";
    InvalidHalfLife = 422, "invalid_half_life", "`half_life` is not a positive duration";
    InvalidTimestamp = 422, "invalid_timestamp", "`now` or a `played_at` is not an RFC 3339 time";
    NoPositiveHistory = 422, "no_positive_history", "the history holds only negative evidence";
    TooManyCentroids = 422, "too_many_centroids",
        "more centroids than distinct positively weighted history items";
    DegenerateHistory = 422, "degenerate_history",
        "the history's vectors cancel out: a zero taste vector under any metric, or no history item with a usable vector for `neighbours` / `best_score`";
    UnknownStrategy = 422, "unknown_strategy", "a `strategy` that is not mean, neighbours or best_score";
    InvalidFanOut = 422, "invalid_fan_out",
        "`fan_out` out of its bounds, given with `mean`, `damping` with `best_score`, or `centroids` with a seed-based strategy";
    ConflictingFilters = 422, "conflicting_filters",
        "a creator both allowed and excluded, or min > max popularity";
    InvalidFilter = 422, "invalid_filter", "a popularity bound that is not finite";
    InvalidEmerging = 422, "invalid_emerging",
        "`emerging.min_share` outside 0 … 1, `emerging.boost` outside 0 … 10 or `emerging.max_popularity` not finite";
    NoPopularity = 422, "no_popularity", "an emerging quota on a collection without popularity";
    SwapRefused = 422, "swap_refused",
        "`POST /admin/reload` refused at least one new version (the body still lists every collection)";
    Internal = 500, "internal", "a bug; the log has the details";
    Overloaded = 503, "overloaded",
        "every execution slot busy and the queue full, or no slot in time (`--queue-timeout-ms`; `--queue-burst-ms` through a burst) (with `Retry-After: 1`)";
    Timeout = 503, "timeout",
        "the request did not finish within `--request-timeout-ms` (with `Retry-After: 1`)";
    ShardUnavailable = 503, "shard_unavailable",
        "`earshot route` only: no live replica of a shard the query needs (unless `allow_partial`)";
    LogUnavailable = 503, "log_unavailable",
        "the write log's object store did not take a write: it is not written (with `Retry-After: 1`)";
    NotReady = 503, "not_ready",
        "`/readyz` while starting up, shutting down, or waiting for an expected collection";
}

impl ErrorCode {
    /// README's "Errors" table: one row per code.
    pub fn markdown_table() -> String {
        let mut t = String::from("| status | code | when |\n|---|---|---|\n");
        for c in Self::ALL {
            t.push_str(&format!(
                "| {} | `{}` | {} |\n",
                c.status(),
                c.as_str(),
                c.description()
            ));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_sorted_by_status_and_well_formed() {
        assert!(ErrorCode::ALL.is_sorted_by_key(|c| c.status()));
        let mut seen = HashSet::new();
        for c in ErrorCode::ALL {
            assert!((400..600).contains(&c.status()), "{c:?}");
            assert!(
                axum::http::StatusCode::from_u16(c.status()).is_ok(),
                "{c:?}"
            );
            let code = c.as_str();
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert!(!c.description().contains('|'), "{c:?}: breaks the table");
            // A code may have two statuses, never two meanings under one status.
            assert!(seen.insert((code, c.status())), "{code} {}", c.status());
        }
    }

    /// README "Errors" is generated: after changing a code, paste the table printed here.
    #[test]
    fn readme_lists_exactly_these_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start = readme
            .find("| status | code | when |")
            .expect("README has the Errors table");
        let len = readme[start..].find("\n\n").unwrap_or(readme.len() - start) + 1;
        let table = &readme[start..start + len];
        let want = ErrorCode::markdown_table();
        assert!(
            table == want,
            "README's Errors table differs from `ErrorCode`; replace it with:\n\n{want}"
        );
    }
}
