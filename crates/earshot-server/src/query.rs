//! The query engine behind the HTTP handlers: request types, validation, and turning a
//! request into taste probes and constraints for [`earshot_recommend`].
//! Nothing here knows about HTTP beyond the error type.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::limits::*;
use earshot_core::collection::Collection;
use earshot_core::metric::Metric;
use earshot_recommend::centroids;
use earshot_recommend::constraints::{Emerging, HardFilter, Shape};
use earshot_recommend::history::{self, Evidence};
use earshot_recommend::select::{recommend, Pick, Probe};

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
    /// Default 0.3.
    #[schema(minimum = 0, maximum = 1)]
    pub min_share: Option<f32>,
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
    #[schema(schema_with = super::openapi::event_schema)]
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

/// One query of a batch: `{"type": "similar"|"search"|"taste", …}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BatchQuery {
    Similar(SimilarRequest),
    Search(SearchRequest),
    Taste(TasteRequest),
}

/// `POST /v1/batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"queries": [
    {"type": "similar", "collection": "tracks", "id": "demo:track:0000001", "k": 3},
    {"type": "search", "collection": "tracks", "vector": [0.12, -0.5, 0.33, 0.9, -0.07, 0.21, 0.4, -0.18], "k": 3, "explain": true},
    {"type": "taste", "collection": "tracks", "history": [{"id": "demo:track:0000002"}, {"id": "demo:track:0000003", "event": "like"}], "k": 3},
    {"type": "similar", "collection": "tracks", "id": "no-such-id"}
]}))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Answered in this order, each on its own.
    #[schema(schema_with = super::openapi::batch_queries_schema)]
    pub queries: Vec<BatchQuery>,
}

/// Results of one query, still borrowing from the collection until rendered.
pub struct Answer {
    pub collection: Arc<Collection>,
    pub picks: Vec<Pick>,
    /// Emerging-quota slots asked for and actually reserved.
    pub quota: (usize, usize),
    pub explain: bool,
    /// Slot-share weight of each probe (for explanations).
    pub probe_weights: Vec<f32>,
}

/// One result.
#[derive(Serialize, utoipa::ToSchema)]
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
    /// With `explain: true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub explain: Option<Explanation>,
}

/// What placed a result where it is.
#[derive(Serialize, utoipa::ToSchema)]
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
    /// Taken in its centroid's own share of slots; false = backfilled.
    pub in_share: bool,
    /// Constraints that passed over nearer candidates just before it was picked
    /// (`max_per_creator`, `emerging_quota`).
    pub moved_by: Vec<&'static str>,
}

/// Request-level explanation (with `explain: true`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ListExplanation {
    /// Each taste centroid's share of the evidence (one entry without centroids).
    pub centroid_weights: Vec<f32>,
    /// Emerging-quota slots requested, and reserved: fewer when fewer emerging items are
    /// within reach (the 10·k nearest admissible items).
    pub emerging_slots_requested: usize,
    /// Emerging-quota slots actually reserved.
    pub emerging_slots_reserved: usize,
}

impl Answer {
    pub fn list_explanation(&self) -> Option<ListExplanation> {
        let total: f32 = self
            .probe_weights
            .iter()
            .sum::<f32>()
            .max(f32::MIN_POSITIVE);
        self.explain.then(|| ListExplanation {
            centroid_weights: self.probe_weights.iter().map(|w| w / total).collect(),
            emerging_slots_requested: self.quota.0,
            emerging_slots_reserved: self.quota.1,
        })
    }

    pub fn items(&self) -> Vec<ResultItem<'_>> {
        let c = &self.collection;
        let dist = c.dist();
        let total: f32 = self.probe_weights.iter().sum();
        self.picks
            .iter()
            .map(|p| ResultItem {
                id: c.id(p.row),
                score: finite(dist.score(p.dist)),
                creator: c.creator(p.row),
                popularity: c.popularity(p.row),
                explain: self.explain.then(|| Explanation {
                    similarity: finite(dist.score(p.dist)),
                    centroid: p.probe,
                    centroid_weight: self.probe_weights.get(p.probe).copied().unwrap_or(0.0)
                        / total.max(f32::MIN_POSITIVE),
                    rank: p.rank,
                    emerging_quota: p.emerging,
                    in_share: p.in_share,
                    moved_by: p.moved_by.clone(),
                }),
            })
            .collect()
    }
}

/// The served collections (read-only once loaded).
pub struct Engine {
    pub collections: BTreeMap<String, Arc<Collection>>,
    pub default_ef: usize,
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unprocessable(code, message)
}

impl Engine {
    pub fn collection(&self, name: &str) -> Result<&Arc<Collection>, ApiError> {
        // Names are only ever looked up here, never joined to a path; a name that could not
        // be a directory of the index root is still refused outright.
        if !super::registry::valid_name(name) {
            return Err(ApiError::bad_request(
                "invalid_collection",
                format!(
                    "{name:?} is not a collection name (no '/', '\\', '..', NUL or control \
                     characters, no leading '.')"
                ),
            ));
        }
        self.collections
            .get(name)
            .ok_or_else(|| ApiError::unknown_collection(name))
    }

    pub fn similar(
        &self,
        collection: &str,
        id: &str,
        req: &SimilarRequest,
    ) -> Result<Answer, ApiError> {
        let c = self.collection(collection)?;
        let row = c
            .row_of(id)
            .ok_or_else(|| ApiError::unknown_id(collection, id))?;
        let (mut filter, shape, ef) = self.constraints(c, &list_spec!(req), &[row])?;
        if req.exclude_same_creator.unwrap_or(false) {
            if let Some(cr) = c.creator_index(row) {
                if let Err(at) = filter.deny_creators.binary_search(&cr) {
                    filter.deny_creators.insert(at, cr);
                }
            }
        }
        let probes = vec![Probe {
            query: c.vector(row).to_vec(),
            weight: 1.0,
        }];
        Ok(self.answer(c, probes, &filter, &shape, ef, req.explain))
    }

    /// A batch's `similar` query names its collection and item in the body.
    pub fn similar_in_batch(&self, req: &SimilarRequest) -> Result<Answer, ApiError> {
        let (Some(collection), Some(id)) = (&req.collection, &req.id) else {
            return Err(unprocessable(
                "invalid_request",
                "a batch similar query needs \"collection\" and \"id\"",
            ));
        };
        self.similar(collection, id, req)
    }

    pub fn search(&self, req: &SearchRequest) -> Result<Answer, ApiError> {
        let c = self.collection(&req.collection)?;
        let (filter, shape, ef) = self.constraints(c, &list_spec!(req), &[])?;
        let query = prepare_query(c, &req.vector)?;
        let probes = vec![Probe { query, weight: 1.0 }];
        Ok(self.answer(c, probes, &filter, &shape, ef, req.explain))
    }

    pub fn taste(&self, collection: &str, req: &TasteRequest) -> Result<Answer, ApiError> {
        if let Some(named) = &req.collection {
            if named != collection {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("body names collection {named:?} but the path names {collection:?}"),
                ));
            }
        }
        let c = self.collection(collection)?;
        let source = match &req.history_collection {
            Some(name) => self.collection(name)?,
            None => c,
        };
        if source.dim() != c.dim() {
            return Err(unprocessable(
                "dimension_mismatch",
                format!(
                    "history collection {:?} has dimension {} but {:?} has {}",
                    source.name,
                    source.dim(),
                    c.name,
                    c.dim()
                ),
            ));
        }
        let evidence = self.evidence(source, req)?;
        // History IDs only mean something to exclude when they index the queried collection.
        let same = Arc::ptr_eq(source, c);
        let history_rows: Vec<u32> = if same && req.exclude_history.unwrap_or(true) {
            evidence.iter().map(|e| e.row).collect()
        } else {
            Vec::new()
        };
        let (filter, shape, ef) = self.constraints(c, &list_spec!(req), &history_rows)?;
        let probes = taste_probes(c, source, &evidence, req.centroids)?;
        Ok(self.answer(c, probes, &filter, &shape, ef, req.explain))
    }

    /// Taste requests in a batch carry their collection in the body.
    pub fn taste_in_batch(&self, req: &TasteRequest) -> Result<Answer, ApiError> {
        let Some(collection) = &req.collection else {
            return Err(unprocessable(
                "invalid_request",
                "a batch taste query needs \"collection\"",
            ));
        };
        self.taste(collection, req)
    }

    fn answer(
        &self,
        c: &Arc<Collection>,
        probes: Vec<Probe>,
        filter: &HardFilter,
        shape: &Shape,
        ef: usize,
        explain: Option<bool>,
    ) -> Answer {
        let sel = recommend(c, &probes, filter, shape, ef);
        Answer {
            collection: c.clone(),
            picks: sel.picks,
            quota: (sel.quota_requested, sel.quota_reserved),
            explain: explain.unwrap_or(false),
            probe_weights: probes.iter().map(|p| p.weight).collect(),
        }
    }

    /// Resolves the history to rows and signed evidence weights.
    fn evidence(&self, source: &Collection, req: &TasteRequest) -> Result<Vec<Evidence>, ApiError> {
        if req.history.is_empty() {
            return Err(unprocessable(
                "empty_history",
                "history must list at least one item",
            ));
        }
        if req.history.len() > MAX_HISTORY {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "history_too_large",
                format!(
                    "history holds at most {MAX_HISTORY} items (got {})",
                    req.history.len()
                ),
            ));
        }
        let half_life = req
            .half_life
            .as_deref()
            .map(|h| {
                humantime::parse_duration(h)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        unprocessable(
                            "invalid_half_life",
                            format!("half_life {h:?} is not a positive duration such as \"30d\" or \"12h\""),
                        )
                    })
            })
            .transpose()?;
        let now = match &req.now {
            Some(t) => parse_time(t, "now")?,
            None => jiff::Timestamp::now(),
        };
        let mut out = Vec::with_capacity(req.history.len());
        for (i, item) in req.history.iter().enumerate() {
            let w = item.weight.unwrap_or(1.0);
            if !(w.is_finite() && w > 0.0) {
                return Err(unprocessable(
                    "invalid_weight",
                    format!("history[{i}].weight must be a finite number > 0 (got {w}); use \"event\" for negative evidence"),
                ));
            }
            let event = item.event.as_deref().unwrap_or("play");
            let ew = history::event_weight(event).ok_or_else(|| {
                unprocessable(
                    "unknown_event",
                    format!(
                        "history[{i}].event {event:?} is not one of: {}",
                        history::EVENTS
                    ),
                )
            })?;
            let recency = match (&item.played_at, half_life) {
                (Some(t), Some(h)) => {
                    history::recency(parse_time(t, &format!("history[{i}].played_at"))?, now, h)
                }
                (Some(t), None) => {
                    parse_time(t, &format!("history[{i}].played_at"))?;
                    1.0
                }
                _ => 1.0,
            };
            let row = source
                .row_of(&item.id)
                .ok_or_else(|| ApiError::unknown_id(&source.name, &item.id))?;
            out.push(Evidence {
                row,
                weight: w as f64 * ew as f64 * recency as f64,
            });
        }
        Ok(out)
    }

    /// Validates the list options shared by every query.
    fn constraints(
        &self,
        c: &Collection,
        spec: &ListSpec,
        always_exclude: &[u32],
    ) -> Result<(HardFilter, Shape, usize), ApiError> {
        let k = spec.k.unwrap_or(DEFAULT_K);
        if k == 0 || k > MAX_K {
            return Err(ApiError::bad_request(
                "invalid_k",
                format!("k must be between 1 and {MAX_K} (got {k})"),
            ));
        }
        let ef = match spec.ef {
            Some(ef) if ef == 0 || ef > MAX_EF => {
                return Err(ApiError::bad_request(
                    "invalid_ef",
                    format!("ef must be between 1 and {MAX_EF} (got {ef})"),
                ))
            }
            Some(ef) => ef,
            None => self.default_ef,
        }
        .max(k);
        let mut filter = HardFilter::default();
        let mut exclude: Vec<u32> = always_exclude.to_vec();
        if let Some(ids) = spec.exclude {
            if ids.len() > MAX_EXCLUDE {
                return Err(ApiError::bad_request(
                    "exclude_too_large",
                    format!(
                        "exclude holds at most {MAX_EXCLUDE} IDs (got {})",
                        ids.len()
                    ),
                ));
            }
            // Unknown IDs cannot be returned anyway.
            exclude.extend(ids.iter().filter_map(|id| c.row_of(id)));
        }
        exclude.sort_unstable();
        exclude.dedup();
        filter.exclude = exclude;
        if let Some(f) = spec.filter {
            let creators = |names: &[String], field: &str| -> Result<Vec<u32>, ApiError> {
                if names.len() > MAX_EXCLUDE {
                    return Err(ApiError::bad_request(
                        "filter_too_large",
                        format!("filter.{field} holds at most {MAX_EXCLUDE} names"),
                    ));
                }
                let mut v: Vec<u32> = names.iter().filter_map(|n| c.creators.find(n)).collect();
                v.sort_unstable();
                v.dedup();
                Ok(v)
            };
            if let Some(allow) = &f.creators {
                filter.allow_creators = Some(creators(allow, "creators")?);
            }
            if let Some(deny) = &f.exclude_creators {
                filter.deny_creators = creators(deny, "exclude_creators")?;
            }
            if let (Some(allow), Some(deny)) = (&f.creators, &f.exclude_creators) {
                if let Some(both) = allow.iter().find(|a| deny.contains(a)) {
                    return Err(unprocessable(
                        "conflicting_filters",
                        format!("creator {both:?} is both allowed and excluded"),
                    ));
                }
            }
            for (name, v) in [
                ("min_popularity", f.min_popularity),
                ("max_popularity", f.max_popularity),
            ] {
                if v.is_some_and(|v| !v.is_finite()) {
                    return Err(unprocessable(
                        "invalid_filter",
                        format!("filter.{name} must be a finite number"),
                    ));
                }
            }
            if let (Some(lo), Some(hi)) = (f.min_popularity, f.max_popularity) {
                if lo > hi {
                    return Err(unprocessable(
                        "conflicting_filters",
                        format!("filter.min_popularity {lo} is above filter.max_popularity {hi}"),
                    ));
                }
            }
            filter.min_popularity = f.min_popularity;
            filter.max_popularity = f.max_popularity;
        }
        if let Some(m) = spec.max_per_creator {
            if m == 0 {
                return Err(ApiError::bad_request(
                    "invalid_max_per_creator",
                    "max_per_creator must be at least 1",
                ));
            }
        }
        let emerging = match spec.emerging {
            Some(e) => {
                let share = e.min_share.unwrap_or(0.3);
                if !(0.0..=1.0).contains(&share) || !e.max_popularity.is_finite() {
                    return Err(unprocessable(
                        "invalid_emerging",
                        "emerging.min_share must be within 0…1 and emerging.max_popularity finite",
                    ));
                }
                if !c.manifest.has_popularity || c.creator_count() == 0 {
                    return Err(unprocessable(
                        "no_popularity",
                        format!("collection {:?} has no creator popularity to tell emerging creators apart", c.name),
                    ));
                }
                Some(Emerging {
                    max_popularity: e.max_popularity,
                    min_share: share,
                })
            }
            None => None,
        };
        let shape = Shape {
            k,
            max_per_creator: spec.max_per_creator,
            emerging,
        };
        Ok((filter, shape, ef))
    }
}

fn parse_time(t: &str, field: &str) -> Result<jiff::Timestamp, ApiError> {
    t.parse::<jiff::Timestamp>().map_err(|_| {
        unprocessable(
            "invalid_timestamp",
            format!("{field} {t:?} is not an RFC 3339 time such as \"2026-11-26T08:00:00Z\""),
        )
    })
}

/// Turns the evidence into one probe per taste centroid (see `recommend::history`).
fn taste_probes(
    c: &Collection,
    source: &Collection,
    evidence: &[Evidence],
    centroids: Option<usize>,
) -> Result<Vec<Probe>, ApiError> {
    let dim = c.dim();
    // Merge repeated items: one point per distinct row, evidence summed (in f64, then scaled
    // so the largest magnitude is 1: weights are relative, and 3e38 must not overflow).
    let mut sums: BTreeMap<u32, f64> = BTreeMap::new();
    for e in evidence {
        *sums.entry(e.row).or_default() += e.weight;
    }
    let largest = sums.values().fold(0f64, |m, w| m.max(w.abs()));
    let merged: BTreeMap<u32, f32> = sums
        .into_iter()
        .map(|(r, w)| {
            (
                r,
                if largest > 0.0 {
                    (w / largest) as f32
                } else {
                    0.0
                },
            )
        })
        .collect();
    let positives: Vec<(&[f32], f32)> = merged
        .iter()
        .filter(|(_, &w)| w > 0.0)
        .map(|(&r, &w)| (source.vector(r), w))
        .collect();
    let negatives: Vec<(&[f32], f32)> = merged
        .iter()
        .filter(|(_, &w)| w < 0.0)
        .map(|(&r, &w)| (source.vector(r), w))
        .collect();
    if positives.is_empty() {
        return Err(unprocessable(
            "no_positive_history",
            "the history holds only negative evidence (skips, dislikes): nothing says what to recommend",
        ));
    }
    let n = centroids.unwrap_or(1);
    if n == 0 || n > MAX_CENTROIDS {
        return Err(ApiError::bad_request(
            "invalid_centroids",
            format!("centroids must be between 1 and {MAX_CENTROIDS} (got {n})"),
        ));
    }
    if n > positives.len() {
        return Err(unprocessable(
            "too_many_centroids",
            format!(
                "centroids {n} is more than the {} distinct positively weighted history items",
                positives.len()
            ),
        ));
    }
    let clusters = if n == 1 {
        let total: f32 = positives.iter().map(|(_, w)| w).sum();
        let mean = history::weighted_mean(positives.iter().copied(), dim).expect("positive total");
        vec![centroids::Cluster {
            centre: mean,
            weight: total,
        }]
    } else {
        centroids::kmeans(&positives, n, dim)
    };
    let mut probes = Vec::with_capacity(clusters.len());
    for cl in clusters {
        let mut t = cl.centre;
        history::pull_away(&mut t, cl.weight, &negatives);
        let query = prepare_query(c, &t).map_err(|_| {
            unprocessable(
                "degenerate_history",
                "the history's vectors cancel out: there is no taste direction to search",
            )
        })?;
        probes.push(Probe {
            query,
            weight: cl.weight,
        });
    }
    Ok(probes)
}

/// Scores are always JSON numbers: an overflow (only possible with extreme stored vectors)
/// saturates instead of turning into `null`.
fn finite(x: f32) -> f32 {
    if x.is_nan() {
        f32::MIN
    } else {
        x.clamp(f32::MIN, f32::MAX)
    }
}

/// Validates a query vector and brings it into the collection's space.
fn prepare_query(c: &Collection, vector: &[f32]) -> Result<Vec<f32>, ApiError> {
    if vector.len() != c.dim() {
        return Err(unprocessable(
            "dimension_mismatch",
            format!(
                "vector has {} dimensions but collection {:?} has {}",
                vector.len(),
                c.name,
                c.dim()
            ),
        ));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(unprocessable(
            "invalid_vector",
            format!("vector[{i}] is not a finite number (or overflows f32)"),
        ));
    }
    // Under l2 and dot the query's magnitude enters the scores: past this norm they would
    // overflow f32 (the scores must stay finite numbers).
    if c.manifest.metric != Metric::Cosine
        && earshot_core::distance::norm_f64(vector) > MAX_QUERY_NORM
    {
        return Err(unprocessable(
            "invalid_vector",
            format!("the vector's norm is above {MAX_QUERY_NORM:e}: scores would overflow"),
        ));
    }
    let mut q = vector.to_vec();
    match c.manifest.metric {
        Metric::Cosine if !earshot_core::distance::normalize(&mut q) => Err(unprocessable(
            "invalid_vector",
            "a zero vector has no direction under cosine",
        )),
        Metric::Dot if q.iter().all(|&x| x == 0.0) => Err(unprocessable(
            "invalid_vector",
            "a zero vector scores every item 0 under dot",
        )),
        _ => Ok(q),
    }
}
