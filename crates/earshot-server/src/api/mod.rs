//! The wire format of the HTTP API: every request and response body, with its serde form
//! and its OpenAPI schema. Plain data: no handler, engine or registry code depends on being
//! here, and nothing here depends on them.

mod batch;
mod request;
mod response;

pub use batch::{
    BatchEntry, BatchQuery, BatchRequest, BatchResponse, BatchSearchQuery, BatchSimilarQuery,
    BatchTasteQuery,
};
pub use request::{
    EmergingSpec, FanOutSpec, FilterSpec, HistoryItem, ItemsRequest, ListSpec, SearchRequest,
    SimilarBody, SimilarParams, SimilarRequest, TasteRequest,
};
pub use response::{
    CollectionInfo, CollectionsResponse, ErrorBody, ErrorDetail, Explanation, Item, ItemsResponse,
    ListExplanation, NotReadyBody, ReloadOutcome, ReloadResponse, ResultItem, Results, ShardInfo,
    Status,
};
