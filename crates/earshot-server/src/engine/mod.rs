//! The query engine: what a `similar`, `search` or `taste` request means. It validates a
//! request against the served collections, turns it into taste probes and constraints, and
//! lets [`earshot_recommend`] pick the list. Nothing here knows about HTTP: errors are a
//! [`QueryError`] naming an [`ErrorCode`], which `error.rs` turns into a response.
//!
//! The checks that need no rows of a collection are public functions (here, in [`list`]
//! and [`history`]), so that the router makes them — with the same codes and messages —
//! before it asks any shard.

pub mod answer;
mod error;
pub mod history;
pub mod list;
pub mod strategy;

use std::collections::BTreeMap;
use std::sync::Arc;

use earshot_core::collection::Collection;
use earshot_core::delta::{Delta, View};
use earshot_core::layout::check_name;
use earshot_core::metric::Metric;
use earshot_recommend::constraints::{HardFilter, Shape};
use earshot_recommend::query::{self, VectorError, MAX_QUERY_NORM};
use earshot_recommend::seeded;
use earshot_recommend::select::{recommend, Probe};
use earshot_recommend::strategy::Strategy;
use earshot_recommend::taste::Taste;

use crate::api::{Item, ItemsResponse, SearchRequest, SimilarRequest, TasteRequest};
use crate::error_code::ErrorCode;
use crate::limits::{MAX_BATCH, MAX_ITEMS};
use crate::recall::Sampler;

pub use answer::Answer;
pub use error::QueryError;
pub use history::taste_error;

/// The served collections (read-only once loaded).
pub struct Engine {
    pub collections: BTreeMap<String, Arc<Collection>>,
    /// The write log applied over each collection's version (absent: nothing applied).
    pub deltas: BTreeMap<String, Arc<Delta>>,
    pub default_ef: usize,
    /// Samples answers for the live recall estimate (`--recall-sample-rate`; None: off).
    pub recall: Option<Sampler>,
}

impl Engine {
    pub fn collection(&self, name: &str) -> Result<&Arc<Collection>, QueryError> {
        find_collection(&self.collections, name)
    }

    /// The collection named `name` and the write log's changes over it.
    pub fn target(
        &self,
        name: &str,
    ) -> Result<(&Arc<Collection>, Option<&Arc<Delta>>), QueryError> {
        let c = self.collection(name)?;
        Ok((c, self.deltas.get(name).filter(|d| !d.is_empty())))
    }

    /// The collection named `name` as queries see it (the write log applied).
    pub fn view(&self, name: &str) -> Result<View<'_>, QueryError> {
        let (c, d) = self.target(name)?;
        Ok(View::new(c, d.map(|d| &**d)))
    }

    pub fn similar(
        &self,
        collection: &str,
        id: &str,
        req: &SimilarRequest,
    ) -> Result<Answer, QueryError> {
        let (c, d) = self.target(collection)?;
        let v = View::new(c, d.map(|d| &**d));
        let pool = check_pool(
            req.pool,
            req.max_per_creator.is_some() || req.emerging.is_some(),
        )?;
        let row = v.row_of(id).ok_or_else(|| unknown_id(collection, id))?;
        let (mut filter, shape, ef) = list::constraints(v, &req.spec(), self.default_ef, &[row])?;
        if req.exclude_same_creator.unwrap_or(false) {
            if let Some(cr) = v.creator_index(row) {
                if let Err(at) = filter.deny_creators.binary_search(&cr) {
                    filter.deny_creators.insert(at, cr);
                }
            }
        }
        let probes = vec![Probe {
            query: v.vector(row).to_vec(),
            weight: 1.0,
        }];
        let mut answer = self.answer((c, d), probes, &filter, &shape, ef, req.explain);
        answer.pool = pool;
        // The router searches the other shards with this item's vector: it comes with the
        // owner's own pool, one exchange instead of two.
        answer.item = pool.then_some(row);
        Ok(answer)
    }

    /// A batch's `similar` query names its collection and item in the body.
    pub fn similar_in_batch(&self, req: &SimilarRequest) -> Result<Answer, QueryError> {
        let (collection, id) = batch_similar_target(req)?;
        self.similar(collection, id, req)
    }

    pub fn search(&self, req: &SearchRequest) -> Result<Answer, QueryError> {
        let (c, d) = self.target(&req.collection)?;
        let pool = check_pool(
            req.pool,
            req.max_per_creator.is_some() || req.emerging.is_some(),
        )?;
        let v = View::new(c, d.map(|d| &**d));
        let (filter, shape, ef) = list::constraints(v, &req.spec(), self.default_ef, &[])?;
        let query = query::prepare(c, &req.vector).map_err(|e| vector_error(c, e))?;
        let probes = vec![Probe { query, weight: 1.0 }];
        let mut answer = self.answer((c, d), probes, &filter, &shape, ef, req.explain);
        answer.pool = pool;
        Ok(answer)
    }

    /// One item as stored: metadata and vector.
    pub fn item<'a>(&'a self, collection: &str, id: &str) -> Result<Item<'a>, QueryError> {
        let v = self.view(collection)?;
        let row = v.row_of(id).ok_or_else(|| unknown_id(collection, id))?;
        Ok(item(v, row))
    }

    /// Several items as stored, and the IDs the collection does not have (1 to
    /// [`MAX_ITEMS`] IDs).
    pub fn items<'a>(
        &'a self,
        collection: &str,
        ids: &'a [String],
    ) -> Result<ItemsResponse<'a>, QueryError> {
        if ids.is_empty() || ids.len() > MAX_ITEMS {
            return Err(QueryError::new(
                ErrorCode::InvalidIds,
                format!(
                    "an items lookup names 1 to {MAX_ITEMS} IDs (got {})",
                    ids.len()
                ),
            ));
        }
        let v = self.view(collection)?;
        let mut items = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match v.row_of(id) {
                Some(row) => items.push(item(v, row)),
                None => missing.push(id.as_str()),
            }
        }
        Ok(ItemsResponse { items, missing })
    }

    pub fn taste(&self, collection: &str, req: &TasteRequest) -> Result<Answer, QueryError> {
        check_taste_collection(req, collection)?;
        let (c, d) = self.target(collection)?;
        let v = View::new(c, d.map(|d| &**d));
        // A collection built with `--taste-history` reads histories from its pair by default.
        let paired = c.manifest.taste_history.as_deref();
        let (source, source_view) = match (req.history_collection.as_deref(), paired) {
            (Some(name), _) => (self.collection(name)?, self.view(name)?),
            (None, Some(name)) => match (self.collection(name), self.view(name)) {
                (Ok(s), Ok(sv)) => (s, sv),
                _ => return Err(unserved_pair(&c.name, name)),
            },
            (None, None) => (c, v),
        };
        check_history_dim((&source.name, source.dim()), (&c.name, c.dim()))?;
        let evidence = history::evidence(source_view, req)?;
        let strategy = strategy::check_strategy(req)?;
        // History IDs only mean something to exclude when they index the queried collection:
        // its own rows, or its pair's (the same IDs, looked up here).
        let same = Arc::ptr_eq(source, c);
        let pair = paired == Some(source.name.as_str());
        let history_rows: Vec<u32> = match req.exclude_history.unwrap_or(true) {
            true if same => evidence.iter().map(|e| e.row).collect(),
            true if pair => evidence
                .iter()
                .filter_map(|e| v.row_of(source_view.id(e.row)))
                .collect(),
            _ => Vec::new(),
        };
        let (filter, shape, ef) =
            list::constraints(v, &req.spec(), self.default_ef, &history_rows)?;
        if strategy == Strategy::Mean {
            let probes = history::probes(v, source_view, &evidence, req.centroids)?;
            return Ok(self.answer((c, d), probes, &filter, &shape, ef, req.explain));
        }
        let taste = Taste::new(&source_view, &evidence).map_err(taste_error)?;
        let explain = req.explain.unwrap_or(false);
        let s = seeded::recommend(v, &taste, strategy, &filter, &shape, ef, explain)
            .map_err(taste_error)?;
        let quota = (s.selection.quota_requested, s.selection.quota_reserved);
        Ok(Answer {
            collection: c.clone(),
            delta: d.cloned(),
            picks: s.selection.picks,
            quota,
            explain,
            probe_weights: vec![1.0],
            pool: false,
            item: None,
            seeded: Some(answer::Seeded {
                strategy: strategy.name(),
                seeds: s.seeds,
                support: s
                    .support
                    .iter()
                    .map(|sp| {
                        (
                            sp.seeds,
                            sp.strongest.map(|r| source_view.id(r).to_string()),
                        )
                    })
                    .collect(),
            }),
        })
    }

    /// Taste requests in a batch carry their collection in the body.
    pub fn taste_in_batch(&self, req: &TasteRequest) -> Result<Answer, QueryError> {
        self.taste(batch_taste_target(req)?, req)
    }

    fn answer(
        &self,
        (c, d): (&Arc<Collection>, Option<&Arc<Delta>>),
        probes: Vec<Probe>,
        filter: &HardFilter,
        shape: &Shape,
        ef: usize,
        explain: Option<bool>,
    ) -> Answer {
        let sel = recommend(View::new(c, d.map(|d| &**d)), &probes, filter, shape, ef);
        // A list straight from one walk (no shape constraint reordered it) is what the live
        // recall estimate measures; the estimate is of the version's graph, so answers
        // merged with the write log's items are not sampled.
        if let (Some(s), None) = (&self.recall, d) {
            let plain = shape.max_per_creator.is_none() && shape.emerging.is_none();
            if plain && probes.len() == 1 && s.pick() {
                let rows = sel.picks.iter().map(|p| p.row);
                s.offer(c, &probes[0].query, rows, filter, shape.k);
            }
        }
        Answer {
            collection: c.clone(),
            delta: d.cloned(),
            picks: sel.picks,
            quota: (sel.quota_requested, sel.quota_reserved),
            explain: explain.unwrap_or(false),
            probe_weights: probes.iter().map(|p| p.weight).collect(),
            pool: false,
            item: None,
            seeded: None,
        }
    }
}

/// The collection named `name` in `collections`. Names are only ever looked up, never
/// joined to a path; a name that could not be a directory of an index root is still refused
/// outright.
pub fn find_collection<'a, T>(
    collections: &'a BTreeMap<String, T>,
    name: &str,
) -> Result<&'a T, QueryError> {
    if check_name(name).is_err() {
        return Err(QueryError::new(
            ErrorCode::InvalidCollection,
            format!(
                "{name:?} is not a collection name (no '/', '\\', '..', NUL or control \
                 characters, no leading '.')"
            ),
        ));
    }
    collections.get(name).ok_or_else(|| {
        QueryError::new(
            ErrorCode::UnknownCollection,
            format!("no collection named {name:?}; GET /v1/collections lists them"),
        )
    })
}

/// A collection's taste-history pair (`build --taste-history`) is not served here.
pub fn unserved_pair(collection: &str, pair: &str) -> QueryError {
    QueryError::new(
        ErrorCode::UnknownCollection,
        format!(
            "{collection:?} reads taste histories from {pair:?} (built with --taste-history), \
             which is not served here: serve {pair:?} beside it, or name a history_collection"
        ),
    )
}

/// Pool mode (`"pool": true`, for the router) leaves `max_per_creator` and the emerging
/// quota to the router, which applies them on the merged pool.
fn check_pool(pool: Option<bool>, shaped: bool) -> Result<bool, QueryError> {
    let pool = pool.unwrap_or(false);
    if pool && shaped {
        return Err(QueryError::new(
            ErrorCode::ConflictingFields,
            "the router applies max_per_creator and emerging on the merged pool",
        ));
    }
    Ok(pool)
}

/// A batch holds 1 to [`MAX_BATCH`] queries.
pub fn check_batch(len: usize) -> Result<(), QueryError> {
    if len == 0 || len > MAX_BATCH {
        return Err(QueryError::new(
            ErrorCode::InvalidBatch,
            format!("a batch holds 1 to {MAX_BATCH} queries (got {len})"),
        ));
    }
    Ok(())
}

/// A batch's `similar` query names its collection and item in the body.
pub fn batch_similar_target(req: &SimilarRequest) -> Result<(&str, &str), QueryError> {
    match (&req.collection, &req.id) {
        (Some(collection), Some(id)) => Ok((collection, id)),
        _ => Err(QueryError::new(
            ErrorCode::InvalidRequest,
            "a batch similar query needs \"collection\" and \"id\"",
        )),
    }
}

/// A batch's `taste` query names its collection in the body.
pub fn batch_taste_target(req: &TasteRequest) -> Result<&str, QueryError> {
    req.collection.as_deref().ok_or_else(|| {
        QueryError::new(
            ErrorCode::InvalidRequest,
            "a batch taste query needs \"collection\"",
        )
    })
}

/// A taste body that names a collection must name the path's.
pub fn check_taste_collection(req: &TasteRequest, collection: &str) -> Result<(), QueryError> {
    match &req.collection {
        Some(named) if named != collection => Err(QueryError::new(
            ErrorCode::ConflictingFields,
            format!("body names collection {named:?} but the path names {collection:?}"),
        )),
        _ => Ok(()),
    }
}

/// The history collection (name, dimension) must have the queried one's dimension.
pub fn check_history_dim(source: (&str, usize), target: (&str, usize)) -> Result<(), QueryError> {
    if source.1 != target.1 {
        return Err(QueryError::new(
            ErrorCode::DimensionMismatch,
            format!(
                "history collection {:?} has dimension {} but {:?} has {}",
                source.0, source.1, target.0, target.1
            ),
        ));
    }
    Ok(())
}

pub fn item(c: View<'_>, row: u32) -> Item<'_> {
    Item {
        id: c.id(row),
        creator: c.creator(row),
        popularity: c.popularity(row),
        creator_popularity: c.creator_index(row).and_then(|cr| c.creator_popularity(cr)),
        vector: c.vector(row),
    }
}

fn unknown_id(collection: &str, id: &str) -> QueryError {
    QueryError::new(
        ErrorCode::UnknownId,
        format!("no item with id {id:?} in collection {collection:?}"),
    )
}

fn vector_error(c: &Collection, e: VectorError) -> QueryError {
    let code = match e {
        VectorError::Dimension { .. } => ErrorCode::DimensionMismatch,
        _ => ErrorCode::InvalidVector,
    };
    let message = match e {
        VectorError::Dimension { got, want } => format!(
            "vector has {got} dimensions but collection {:?} has {want}",
            c.name
        ),
        VectorError::NotFinite { index } => {
            format!("vector[{index}] is not a finite number (or overflows f32)")
        }
        VectorError::TooLong => {
            format!("the vector's norm is above {MAX_QUERY_NORM:e}: scores would overflow")
        }
        VectorError::Zero if c.manifest.metric == Metric::Cosine => {
            "a zero vector has no direction under cosine".into()
        }
        VectorError::Zero => "a zero vector scores every item 0 under dot".into(),
    };
    QueryError::new(code, message)
}
