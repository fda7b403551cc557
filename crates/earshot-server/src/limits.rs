//! Documented request bounds (README "Limits").

pub const MAX_K: usize = 1_000;
pub const MAX_EF: usize = 4_096;
pub const MAX_BATCH: usize = 256;
/// Most IDs of one `POST /v1/{collection}/items`.
pub const MAX_ITEMS: usize = 1_000;
pub const MAX_HISTORY: usize = 10_000;
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_K: usize = 10;
pub const MAX_EXCLUDE: usize = 10_000;
pub const MAX_CENTROIDS: usize = 16;
/// Largest `emerging.boost`.
pub const MAX_BOOST: f32 = 10.0;
/// Largest query-vector norm accepted under l2 and dot (scores stay finite in f32).
pub use earshot_recommend::query::MAX_QUERY_NORM;
