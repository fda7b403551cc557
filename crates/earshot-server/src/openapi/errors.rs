//! The errors each operation of the OpenAPI document lists (codes of [`ErrorCode`]), by
//! `operationId`; `mod.rs` turns them into responses.

use crate::error_code::ErrorCode::{self, *};

/// An error code as an operation documents it, with a note on when it answers it there:
/// appended to the code as is (`" (wrong shape)"`, `": shutting down"`), often empty.
pub type Documented = (ErrorCode, &'static str);

/// The errors each operation answers with itself (by `operationId`, the handler's name), in
/// the order its descriptions list them; what the layers add is in `SHARED` (`mod.rs`). `reload`
/// documents its one error in its attribute: that error has a body of its own.
pub const OPERATION_ERRORS: &[(&str, &[Documented])] = &[
    (
        "similar",
        &[
            (InvalidK, ""),
            (InvalidEf, ""),
            (InvalidMaxPerCreator, ""),
            (InvalidQuery, ""),
            (InvalidPath, ""),
            (InvalidCollection, ""),
            (UnknownCollection, ""),
            (UnknownId, ""),
            (ConflictingFilters, ""),
            (InvalidFilter, ""),
        ],
    ),
    (
        "similar_post",
        &[
            (InvalidK, ""),
            (InvalidEf, ""),
            (InvalidMaxPerCreator, ""),
            (ExcludeTooLarge, ""),
            (FilterTooLarge, ""),
            (MalformedJson, ""),
            (InvalidPath, ""),
            (InvalidCollection, ""),
            (ConflictingFields, " (`collection` or `id` in the body)"),
            (UnknownCollection, ""),
            (UnknownId, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, " (wrong shape)"),
            (ConflictingFilters, ""),
            (InvalidFilter, ""),
            (InvalidEmerging, ""),
            (NoPopularity, ""),
        ],
    ),
    (
        "item",
        &[
            (InvalidPath, ""),
            (InvalidCollection, ""),
            (UnknownCollection, ""),
            (UnknownId, ""),
        ],
    ),
    (
        "items",
        &[
            (InvalidIds, " (0 or more than 1,000 IDs)"),
            (MalformedJson, ""),
            (InvalidPath, ""),
            (InvalidCollection, ""),
            (UnknownCollection, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, " (wrong shape)"),
        ],
    ),
    (
        "search",
        &[
            (InvalidK, ""),
            (InvalidEf, ""),
            (InvalidMaxPerCreator, ""),
            (ExcludeTooLarge, ""),
            (FilterTooLarge, ""),
            (MalformedJson, ""),
            (
                ConflictingFields,
                " (max_per_creator or emerging with pool mode)",
            ),
            (InvalidCollection, ""),
            (UnknownCollection, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, ""),
            (DimensionMismatch, ""),
            (InvalidVector, ""),
            (ConflictingFilters, ""),
            (InvalidFilter, ""),
            (InvalidEmerging, ""),
            (NoPopularity, ""),
        ],
    ),
    (
        "taste",
        &[
            (InvalidK, ""),
            (InvalidEf, ""),
            (InvalidCentroids, ""),
            (InvalidMaxPerCreator, ""),
            (ExcludeTooLarge, ""),
            (FilterTooLarge, ""),
            (MalformedJson, ""),
            (InvalidPath, ""),
            (InvalidCollection, ""),
            (ConflictingFields, " (body names another collection)"),
            (UnknownCollection, ""),
            (UnknownId, ""),
            (PayloadTooLarge, ""),
            (HistoryTooLarge, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, ""),
            (EmptyHistory, ""),
            (InvalidWeight, ""),
            (UnknownEvent, ""),
            (InvalidHalfLife, ""),
            (InvalidTimestamp, ""),
            (
                DegenerateHistory,
                " (also a zero taste vector under dot or l2)",
            ),
            (UnknownStrategy, ""),
            (InvalidFanOut, ""),
            (NoPositiveHistory, ""),
            (TooManyCentroids, ""),
            (DimensionMismatch, ""),
            (ConflictingFilters, ""),
            (InvalidFilter, ""),
            (InvalidEmerging, ""),
            (NoPopularity, ""),
        ],
    ),
    (
        "batch",
        &[
            (InvalidBatch, " (0 or more than 256 queries)"),
            (MalformedJson, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, " (a query of the wrong shape)"),
        ],
    ),
    (
        "upsert",
        &[
            (
                InvalidWriteBatch,
                " (0 or more than 1,000 items, or one ID twice)",
            ),
            (WritesDisabled, ""),
            (UnknownCollection, ""),
            (PayloadTooLarge, " (over 64 MiB)"),
            (UnsupportedMediaType, ""),
            (InvalidRequest, ""),
            (DimensionMismatch, ""),
            (InvalidVector, ""),
            (InvalidItem, ""),
            (LogUnavailable, ""),
        ],
    ),
    (
        "delete",
        &[
            (
                InvalidWriteBatch,
                " (0 or more than 1,000 IDs, or one ID twice)",
            ),
            (WritesDisabled, ""),
            (UnknownCollection, ""),
            (UnsupportedMediaType, ""),
            (InvalidRequest, ""),
            (InvalidItem, ""),
            (LogUnavailable, ""),
        ],
    ),
    ("poll", &[(WritesDisabled, "")]),
    (
        "readyz",
        &[(
            NotReady,
            ": starting up, shutting down, or (store mode) waiting for a collection (the \
             body's extra field missing lists them)",
        )],
    ),
];
