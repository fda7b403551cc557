//! Request bodies and query strings of the query API, as clients send them.

use serde::Deserialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Creator allow/deny lists and a popularity range.
#[derive(Debug, Deserialize, Default, Clone, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Only items by these creators.
    #[schema(max_items = 10000)]
    pub creators: Option<Vec<String>>,
    /// Never items by these creators.
    #[schema(max_items = 10000)]
    pub exclude_creators: Option<Vec<String>>,
    /// Only items with at least this popularity (items of unknown popularity fail the bound).
    pub min_popularity: Option<f32>,
    /// Only items with at most this popularity (items of unknown popularity fail the bound).
    pub max_popularity: Option<f32>,
}

/// Reserve slots for emerging creators.
#[derive(Debug, Deserialize, Clone, Copy, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmergingSpec {
    /// A creator is emerging when its popularity (the sum of its items' popularity) is at
    /// most this.
    pub max_popularity: f32,
    /// Share of the `k` slots reserved for items of emerging creators: `ceil(min_share·k)`.
    /// Default 0.3, or 0 when a `boost` is given (boost only).
    #[schema(minimum = 0, maximum = 1)]
    pub min_share: Option<f32>,
    /// Move emerging items up before picking: each one's distance is lowered by
    /// `boost × spread`, where `spread` is the distance from the nearest to the 10·k-th
    /// candidate (0 … 10; default 0 = no boost). 1 lifts an emerging item from the bottom of
    /// that window to its top. Scores of boosted items include the boost.
    #[schema(minimum = 0, maximum = 10)]
    pub boost: Option<f32>,
}

/// The bounded fan-out of the `neighbours` and `best_score` strategies.
#[derive(Debug, Deserialize, Clone, Copy, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOutSpec {
    /// Seeds: the heaviest positive history items walked from (and as many of the heaviest
    /// negative ones). Default 50.
    #[schema(minimum = 1, maximum = 256)]
    pub items: Option<usize>,
    /// Nearest items found per seed (k′). Default 100.
    #[schema(minimum = 1, maximum = 1024)]
    pub per_item: Option<usize>,
    /// `neighbours` only: divide a positive score by max(1, creator popularity)^damping
    /// (0 … 4; default 0).
    #[schema(minimum = 0, maximum = 4)]
    pub damping: Option<f32>,
}

/// List options every query takes (borrowed from the request).
#[derive(Default)]
pub struct ListSpec<'a> {
    pub k: Option<usize>,
    pub ef: Option<usize>,
    pub exclude: Option<&'a [String]>,
    pub filter: Option<&'a FilterSpec>,
    pub max_per_creator: Option<usize>,
    pub emerging: Option<EmergingSpec>,
    pub explain: bool,
}

macro_rules! list_spec {
    ($r:expr) => {
        ListSpec {
            k: $r.k,
            ef: $r.ef,
            exclude: $r.exclude.as_deref(),
            filter: $r.filter.as_ref(),
            max_per_creator: $r.max_per_creator,
            emerging: $r.emerging,
            explain: $r.explain.unwrap_or(false),
        }
    };
}

/// `GET /v1/{collection}/{id}/similar` query string.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SimilarParams {
    /// Results wanted (default 10).
    #[param(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    /// Beam width (default: the server's `--default-ef`; raised to `k`).
    #[param(minimum = 1, maximum = 4096)]
    pub ef: Option<usize>,
    /// At most this many results per creator; the list is backfilled to `k`.
    #[param(minimum = 1)]
    pub max_per_creator: Option<usize>,
    /// Leave out items by the query item's creator.
    pub exclude_same_creator: Option<bool>,
    /// Only items with at least this popularity.
    pub min_popularity: Option<f32>,
    /// Only items with at most this popularity.
    pub max_popularity: Option<f32>,
    /// Add an explanation to each result and to the list.
    pub explain: Option<bool>,
}

/// `POST /v1/{collection}/{id}/similar` body, and the `similar` query of a batch.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarRequest {
    /// Batch only (the path names them otherwise).
    pub collection: Option<String>,
    /// Batch only: the item whose neighbours are wanted.
    pub id: Option<String>,
    /// Results wanted (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    /// Beam width (default: the server's `--default-ef`; raised to `k`).
    #[schema(minimum = 1, maximum = 4096)]
    pub ef: Option<usize>,
    /// IDs never to return (unknown IDs are ignored).
    #[schema(max_items = 10000)]
    pub exclude: Option<Vec<String>>,
    /// Creator and popularity constraints, applied during the graph walk.
    pub filter: Option<FilterSpec>,
    /// At most this many results per creator; the list is backfilled to `k`.
    #[schema(minimum = 1)]
    pub max_per_creator: Option<usize>,
    /// Reserve slots for items of emerging creators.
    pub emerging: Option<EmergingSpec>,
    /// Add an explanation to each result and to the list.
    pub explain: Option<bool>,
    /// Leave out items by the query item's creator ("similar tracks by other artists").
    pub exclude_same_creator: Option<bool>,
    /// Pool mode, intended for `earshot route` asking the shard that owns the item: as in
    /// `POST /v1/search`, and the answer also carries `item` (the queried item as stored, as
    /// `GET /v1/{collection}/{id}` returns it), whose vector the router searches the other
    /// shards with. Single requests only (a batch entry carries no `item`).
    pub pool: Option<bool>,
}

impl From<SimilarParams> for SimilarRequest {
    fn from(p: SimilarParams) -> Self {
        let filter =
            (p.min_popularity.is_some() || p.max_popularity.is_some()).then(|| FilterSpec {
                min_popularity: p.min_popularity,
                max_popularity: p.max_popularity,
                ..Default::default()
            });
        Self {
            k: p.k,
            ef: p.ef,
            max_per_creator: p.max_per_creator,
            exclude_same_creator: p.exclude_same_creator,
            explain: p.explain,
            filter,
            ..Default::default()
        }
    }
}

/// `POST /v1/search` body, and the `search` query of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"collection": "tracks", "vector": [0.12, -0.5, 0.33, 0.9, -0.07, 0.21, 0.4, -0.18], "k": 5}))]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The collection to search.
    #[schema(example = "tracks")]
    pub collection: String,
    /// The query: as many finite numbers as the collection's dimension (not all zero under
    /// cosine and dot).
    #[schema(min_items = 1)]
    pub vector: Vec<f32>,
    /// Results wanted (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    /// Beam width (default: the server's `--default-ef`; raised to `k`).
    #[schema(minimum = 1, maximum = 4096)]
    pub ef: Option<usize>,
    /// IDs never to return (unknown IDs are ignored).
    #[schema(max_items = 10000)]
    pub exclude: Option<Vec<String>>,
    /// Creator and popularity constraints, applied during the graph walk.
    pub filter: Option<FilterSpec>,
    /// At most this many results per creator; the list is backfilled to `k`.
    #[schema(minimum = 1)]
    pub max_per_creator: Option<usize>,
    /// Reserve slots for items of emerging creators.
    pub emerging: Option<EmergingSpec>,
    /// Add an explanation to each result and to the list.
    pub explain: Option<bool>,
    /// Pool mode, intended for `earshot route` asking a shard for its part of a merged
    /// answer: each result also carries `creator_popularity`, and `max_per_creator` /
    /// `emerging` are refused (400 `invalid_request`: the router applies them on the merged
    /// pool). `exclude`, `filter`, `k` and `ef` work as usual.
    pub pool: Option<bool>,
}

/// `POST /v1/taste/{collection}` body, and the `taste` query of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"history": [{"id": "demo:track:0000001", "event": "like", "played_at": "2026-11-20T18:00:00Z"}, {"id": "demo:track:0000002", "weight": 3.0}, {"id": "demo:track:0000003", "event": "skip"}], "half_life": "30d", "now": "2026-11-26T00:00:00Z", "centroids": 2, "k": 10, "explain": true}))]
#[serde(deny_unknown_fields)]
pub struct TasteRequest {
    /// Batch only (the path names it otherwise; if given anyway it must equal the path's).
    pub collection: Option<String>,
    /// The listening history: what the results should be like.
    #[schema(min_items = 1, max_items = 10000)]
    pub history: Vec<HistoryItem>,
    /// Leave the history's own items out of the results (default true).
    pub exclude_history: Option<bool>,
    /// Collection the history IDs belong to (default: the queried collection). It must share
    /// the queried collection's vector space (same dimension), e.g. tracks → creators.
    pub history_collection: Option<String>,
    /// Older plays count less: weight × 0.5^(age / half_life), e.g. "30d", "12h".
    pub half_life: Option<String>,
    /// The instant ages are measured from (RFC 3339); default: the server's clock.
    #[schema(format = DateTime)]
    pub now: Option<String>,
    /// Cluster the history into this many taste centroids and share the k slots among them
    /// (at most the number of distinct positively weighted history items).
    #[schema(minimum = 1, maximum = 16)]
    pub centroids: Option<usize>,
    /// How the history becomes a list: `mean` (the evidence-weighted mean of the history
    /// vectors, one search per centroid), `neighbours` (item-based kNN: each history item's
    /// own nearest items, scores summed with the evidence weights, negatives subtracting) or
    /// `best_score` (a candidate's best similarity to a positive item minus its best to a
    /// negative one). Default `mean`.
    #[schema(schema_with = strategy_schema)]
    pub strategy: Option<String>,
    /// Fan-out of `neighbours` and `best_score`.
    pub fan_out: Option<FanOutSpec>,
    /// Results wanted (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<usize>,
    /// Beam width (default: the server's `--default-ef`; raised to `k`).
    #[schema(minimum = 1, maximum = 4096)]
    pub ef: Option<usize>,
    /// IDs never to return (unknown IDs are ignored).
    #[schema(max_items = 10000)]
    pub exclude: Option<Vec<String>>,
    /// Creator and popularity constraints, applied during the graph walk.
    pub filter: Option<FilterSpec>,
    /// At most this many results per creator; the list is backfilled to `k`.
    #[schema(minimum = 1)]
    pub max_per_creator: Option<usize>,
    /// Reserve slots for items of emerging creators.
    pub emerging: Option<EmergingSpec>,
    /// Add an explanation to each result and to the list.
    pub explain: Option<bool>,
}

/// `POST /v1/{collection}/items` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"ids": ["demo:track:0000001", "demo:track:0000002", "no-such-id"]}))]
#[serde(deny_unknown_fields)]
pub struct ItemsRequest {
    /// The items wanted (1 to 1,000 IDs); unknown ones are listed in `missing`.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
}

/// One listening event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryItem {
    /// An item of the history collection.
    pub id: String,
    /// Relative weight (default 1.0); must be finite and > 0. The event gives the sign.
    #[schema(exclusive_minimum = 0)]
    pub weight: Option<f32>,
    /// RFC 3339 time of the event, for `half_life`.
    #[schema(format = DateTime)]
    pub played_at: Option<String>,
    /// play (default), like, save, share, skip, dislike.
    #[schema(schema_with = event_schema)]
    pub event: Option<String>,
}

impl SimilarRequest {
    pub fn spec(&self) -> ListSpec<'_> {
        list_spec!(self)
    }
}

impl SearchRequest {
    pub fn spec(&self) -> ListSpec<'_> {
        list_spec!(self)
    }
}

impl TasteRequest {
    pub fn spec(&self) -> ListSpec<'_> {
        list_spec!(self)
    }
}

/// `schema_with` of `HistoryItem.event`: the events `earshot_recommend::history` knows.
fn event_schema() -> Schema {
    let mut events: Vec<serde_json::Value> = earshot_recommend::history::EVENTS
        .split(',')
        .map(|e| e.trim().into())
        .collect();
    events.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(events))
        .description(Some(
            "What happened: `play` (default, weight 1), `like` 2, `save` 2, `share` 1.5, \
             `skip` −0.5, `dislike` −2",
        ))
        .build()
        .into()
}

/// `schema_with` of `TasteRequest.strategy`: the strategies `earshot_recommend` knows.
fn strategy_schema() -> Schema {
    let mut names: Vec<serde_json::Value> = earshot_recommend::strategy::STRATEGIES
        .split(',')
        .map(|e| e.trim().into())
        .collect();
    names.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(names))
        .description(Some(
            "How the history becomes a list: `mean` (default), `neighbours`, `best_score`",
        ))
        .build()
        .into()
}

/// The object schema a request type derives (they are all structs).
pub(super) fn object_of<T: PartialSchema>() -> utoipa::openapi::schema::Object {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o,
        _ => unreachable!("request types are structs"),
    }
}

/// The body of `POST /v1/{collection}/{id}/similar`: [`SimilarRequest`] without the
/// batch-only `collection` and `id` (the path names them; sending them is a 400).
pub struct SimilarBody;

impl PartialSchema for SimilarBody {
    fn schema() -> RefOr<Schema> {
        let mut o = object_of::<SimilarRequest>();
        o.properties.remove("collection");
        o.properties.remove("id");
        o.required.retain(|r| r != "collection" && r != "id");
        o.description = Some("List options for the neighbours of the item the path names".into());
        o.example = Some(serde_json::json!({
            "k": 5,
            "max_per_creator": 1,
            "exclude_same_creator": true,
            "emerging": {"max_popularity": 200.0, "min_share": 0.4},
            "explain": true
        }));
        RefOr::T(o.into())
    }
}

impl ToSchema for SimilarBody {}
