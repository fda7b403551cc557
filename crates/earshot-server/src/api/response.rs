//! Response bodies: results, the collection list, probes, the reload report, and errors.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::ToSchema;

/// Every error response: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "unknown_id", "message": "no item with id \"x\" in collection \"tracks\""}}))]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, machine-readable error code (README "Errors" lists them by status).
    #[schema(example = "unknown_id")]
    pub code: &'a str,
    /// What went wrong and how to fix it, for humans; not stable.
    pub message: &'a str,
}

/// The answer of `similar`, `taste` and `search`.
#[derive(Serialize, ToSchema)]
pub struct Results<'a> {
    /// Sorted by score, highest first; no duplicates; at most `k`.
    pub results: Vec<ResultItem<'a>>,
    /// With `explain: true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub explain: Option<ListExplanation>,
    /// With an emerging quota only (`emerging.min_share` > 0): the slots it asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub emerging_slots_requested: Option<usize>,
    /// With an emerging quota only: the slots actually reserved, fewer than requested when
    /// fewer emerging items are within reach (the 10·k nearest admissible candidates).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub emerging_slots_reserved: Option<usize>,
    /// With `"pool": true` on `similar` only: the queried item as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub item: Option<Item<'a>>,
}

/// One result.
#[derive(Serialize, ToSchema)]
pub struct ResultItem<'a> {
    /// The item's ID.
    pub id: &'a str,
    /// Higher is closer: cosine similarity under `cosine`, the negative Euclidean distance
    /// under `l2`, the inner product under `dot`.
    pub score: f32,
    /// The item's creator; null when unknown.
    #[schema(required = true)]
    pub creator: Option<&'a str>,
    /// The item's popularity; null when unknown.
    #[schema(required = true)]
    pub popularity: Option<f32>,
    /// With `"pool": true` only (`POST /v1/search`): the popularity of the item's creator
    /// (the sum over its items, for the whole catalogue even in a shard); null when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f32>)]
    pub creator_popularity: Option<Option<f32>>,
    /// With `explain: true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub explain: Option<Explanation>,
}

/// One item of a collection, as stored (`GET /v1/{collection}/{id}`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "demo:track:0000001", "creator": "demo:artist:000001", "popularity": 12.5, "creator_popularity": 310.0, "vector": [0.12, -0.5, 0.33, 0.7, -0.07, 0.21, 0.2, -0.18]}))]
pub struct Item<'a> {
    /// The item's ID.
    pub id: &'a str,
    /// The item's creator; null when unknown.
    #[schema(required = true)]
    pub creator: Option<&'a str>,
    /// The item's popularity; null when unknown.
    #[schema(required = true)]
    pub popularity: Option<f32>,
    /// The popularity of the item's creator (the sum over its items); null when unknown.
    #[schema(required = true)]
    pub creator_popularity: Option<f32>,
    /// The stored vector, as the index searches it: unit length under `cosine` (normalised
    /// at build time), as given under `l2` and `dot`. f32 values, round-tripping exactly.
    pub vector: &'a [f32],
}

/// `POST /v1/{collection}/items` answer.
#[derive(Serialize, ToSchema)]
pub struct ItemsResponse<'a> {
    /// The items found, in request order (a repeated ID appears as often as asked).
    pub items: Vec<Item<'a>>,
    /// The IDs not in the collection, in request order.
    pub missing: Vec<&'a str>,
}

/// Which shard of a sharded collection this server holds (`earshot build --shard I/N`).
#[derive(Serialize, ToSchema)]
pub struct ShardInfo<'a> {
    /// Which shard, from 0.
    pub index: u32,
    /// How many shards the collection is split into.
    pub count: u32,
    /// The hash that assigns IDs to shards (`xxh3-64`; docs/format.md "Shards").
    #[schema(example = "xxh3-64")]
    pub hash: &'a str,
}

/// What placed a result where it is.
#[derive(Serialize, ToSchema)]
pub struct Explanation {
    /// Similarity to the taste probe that found it (same scale as `score`).
    pub similarity: f32,
    /// Which taste centroid found it, and that centroid's share of the evidence.
    pub centroid: usize,
    /// That centroid's share of the evidence (0…1).
    pub centroid_weight: f32,
    /// Position among that centroid's admissible candidates (0 = nearest).
    pub rank: usize,
    /// Its creator is emerging and it fills an emerging-quota slot.
    pub emerging_quota: bool,
    /// Its creator is emerging and its score includes `emerging.boost`.
    pub emerging_boost: bool,
    /// Taken in its centroid's own share of slots; false = backfilled.
    pub in_share: bool,
    /// Constraints that passed over nearer candidates just before it was picked
    /// (`max_per_creator`, `emerging_quota`).
    pub moved_by: Vec<&'static str>,
    /// `neighbours` and `best_score` only: how many history items (seeds) have it among
    /// their nearest items.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub support: Option<usize>,
    /// `neighbours` and `best_score` only: the history item adding most to its score.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub because: Option<String>,
}

/// Request-level explanation (with `explain: true`).
#[derive(Serialize, ToSchema)]
pub struct ListExplanation {
    /// `neighbours` and `best_score` (from `earshot serve`): the strategy that made the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub strategy: Option<&'static str>,
    /// `neighbours` and `best_score` only: history items walked from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seeds: Option<usize>,
    /// Each taste centroid's share of the evidence (one entry without centroids; for
    /// `neighbours` and `best_score` one entry, 1).
    pub centroid_weights: Vec<f32>,
    /// Emerging-quota slots requested, and reserved: fewer when fewer emerging items are
    /// within reach (the 10·k nearest admissible items).
    pub emerging_slots_requested: usize,
    /// Emerging-quota slots actually reserved.
    pub emerging_slots_reserved: usize,
}

/// One served collection.
#[derive(Serialize, ToSchema)]
pub struct CollectionInfo<'a> {
    /// The collection's name (its directory under the index root).
    pub name: &'a str,
    /// How closeness is measured; scores are always "higher is closer".
    #[schema(schema_with = metric_schema)]
    pub metric: earshot_core::metric::Metric,
    /// Vector dimension.
    pub dim: u32,
    /// Items.
    pub count: u64,
    /// Distinct creators.
    pub creators: u64,
    /// Whether items carry a popularity (needed by `emerging`).
    pub has_popularity: bool,
    /// The collection taste requests read their history from when they name none
    /// (`build --taste-history`: a two-tower pair). Absent: this collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taste_history: Option<&'a str>,
    /// HNSW parameter M.
    pub m: u32,
    /// HNSW build beam width.
    pub ef_construction: u32,
    /// The beam width used when a request gives none.
    pub default_ef: usize,
    /// When it was built (RFC 3339).
    pub built_at: &'a str,
    /// The earshot version that built it.
    pub builder: &'a str,
    /// Bytes of its memory-mapped files.
    pub mapped_bytes: u64,
    /// The version in service (a version directory's name, or a plain one's build time).
    pub version: &'a str,
    /// When this server swapped it in (RFC 3339).
    #[schema(required = true)]
    pub loaded_at: Option<String>,
    /// Earlier versions still loaded for requests pinned to them with `x-earshot-version`
    /// (kept for `--retain-previous` seconds after a swap), oldest first.
    pub retained: Vec<&'a str>,
    /// Present when the collection is one shard of a larger one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shard: Option<ShardInfo<'a>>,
}

/// `GET /v1/collections` answer.
#[derive(Serialize, ToSchema)]
pub struct CollectionsResponse<'a> {
    /// Every served collection, by name.
    pub collections: Vec<CollectionInfo<'a>>,
    /// The SIMD distance kernels in use.
    pub kernels: &'static str,
}

/// `{"status": …}` of the probes.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `/readyz` while waiting for collections: the error body plus the collections not loaded
/// yet.
#[derive(Serialize, ToSchema)]
pub struct NotReadyBody<'a> {
    pub error: ErrorDetail<'a>,
    /// Expected collections (store mode) without a loaded version yet.
    pub missing: &'a [String],
}

/// `schema_with` of `CollectionInfo.metric`: the names serde gives [`earshot_core::metric::Metric`].
fn metric_schema() -> Schema {
    let names = earshot_core::metric::Metric::ALL.map(|m| serde_json::Value::from(m.name()));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some(
            "How closeness is measured: `cosine` (score: cosine similarity), `l2` (score: \
             negative Euclidean distance), `dot` (score: inner product)",
        ))
        .build()
        .into()
}

/// `POST /admin/reload` answer.
#[derive(Serialize, ToSchema)]
pub struct ReloadResponse<'a> {
    /// `swap_refused` when at least one collection refused its new version (status 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<ErrorDetail<'a>>,
    /// The outcome of every collection, by name.
    #[schema(value_type = BTreeMap<String, ReloadOutcome>)]
    pub collections: &'a BTreeMap<String, ReloadOutcome>,
}

/// The per-collection outcome of `POST /admin/reload`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The version in service is still the current one.
    Unchanged { version: String },
    /// A new version passed every check and serves now.
    Swapped {
        /// The version it replaced (null for a new collection).
        #[schema(required = true)]
        from: Option<String>,
        to: String,
        /// How long opening, checking and warming took.
        ms: u64,
    },
    /// The new version failed a check; the old one keeps serving.
    Refused {
        /// The refused version (null when the entry itself is unusable).
        #[schema(required = true)]
        version: Option<String>,
        /// The file and the problem.
        reason: String,
        /// The version that keeps serving (null for a collection that never loaded).
        #[schema(required = true)]
        serving: Option<String>,
    },
    /// The entry is gone from the index root; the loaded version serves until a restart.
    Missing { serving: String },
}
