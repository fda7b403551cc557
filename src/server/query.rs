//! The query engine behind the HTTP handlers: request types, validation and search.
//! Nothing here knows about HTTP beyond the error type.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::limits::*;
use crate::collection::Collection;
use crate::metric::Metric;
use crate::search::{with_scratch, Hit};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimilarParams {
    pub k: Option<usize>,
    pub ef: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub collection: String,
    pub vector: Vec<f32>,
    pub k: Option<usize>,
    pub ef: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasteRequest {
    pub history: Vec<HistoryItem>,
    pub k: Option<usize>,
    pub ef: Option<usize>,
    /// Leave the history's own items out of the results (default true).
    pub exclude_history: Option<bool>,
    /// Collection the history IDs belong to (default: the queried collection). It must share
    /// the queried collection's vector space (same dimension), e.g. tracks → creators.
    pub history_collection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryItem {
    pub id: String,
    /// Relative weight (default 1.0); must be finite and > 0.
    pub weight: Option<f32>,
}

/// One query of a batch: `{"type": "similar"|"search"|"taste", …}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BatchQuery {
    Similar {
        collection: String,
        id: String,
        k: Option<usize>,
        ef: Option<usize>,
    },
    Search(SearchRequest),
    Taste {
        collection: String,
        #[serde(flatten)]
        request: TasteRequest,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub queries: Vec<BatchQuery>,
}

/// Results of one query, still borrowing from the collection until rendered.
pub struct Answer {
    pub collection: Arc<Collection>,
    pub hits: Vec<Hit>,
}

#[derive(Serialize)]
pub struct ResultItem<'a> {
    pub id: &'a str,
    pub score: f32,
    pub creator: Option<&'a str>,
    pub popularity: Option<f32>,
}

impl Answer {
    pub fn items(&self) -> Vec<ResultItem<'_>> {
        let c = &self.collection;
        let dist = c.dist();
        self.hits
            .iter()
            .map(|h| ResultItem {
                id: c.id(h.row),
                score: dist.score(h.dist),
                creator: c.creator(h.row),
                popularity: c.popularity(h.row),
            })
            .collect()
    }
}

/// The served collections (read-only once loaded).
pub struct Engine {
    pub collections: BTreeMap<String, Arc<Collection>>,
    pub default_ef: usize,
}

impl Engine {
    pub fn collection(&self, name: &str) -> Result<&Arc<Collection>, ApiError> {
        self.collections
            .get(name)
            .ok_or_else(|| ApiError::unknown_collection(name))
    }

    fn k_ef(&self, k: Option<usize>, ef: Option<usize>) -> Result<(usize, usize), ApiError> {
        let k = k.unwrap_or(DEFAULT_K);
        if k == 0 || k > MAX_K {
            return Err(ApiError::bad_request(
                "invalid_k",
                format!("k must be between 1 and {MAX_K} (got {k})"),
            ));
        }
        let ef = match ef {
            Some(ef) if ef == 0 || ef > MAX_EF => {
                return Err(ApiError::bad_request(
                    "invalid_ef",
                    format!("ef must be between 1 and {MAX_EF} (got {ef})"),
                ))
            }
            Some(ef) => ef,
            None => self.default_ef,
        };
        Ok((k, ef.max(k)))
    }

    pub fn similar(
        &self,
        collection: &str,
        id: &str,
        k: Option<usize>,
        ef: Option<usize>,
    ) -> Result<Answer, ApiError> {
        let c = self.collection(collection)?;
        let (k, ef) = self.k_ef(k, ef)?;
        let row = c
            .row_of(id)
            .ok_or_else(|| ApiError::unknown_id(collection, id))?;
        let hits = run(c, c.vector(row), k, ef, &[row]);
        Ok(Answer {
            collection: c.clone(),
            hits,
        })
    }

    pub fn search(&self, req: &SearchRequest) -> Result<Answer, ApiError> {
        let c = self.collection(&req.collection)?;
        let (k, ef) = self.k_ef(req.k, req.ef)?;
        let query = prepare_query(c, &req.vector)?;
        let hits = run(c, &query, k, ef, &[]);
        Ok(Answer {
            collection: c.clone(),
            hits,
        })
    }

    pub fn taste(&self, collection: &str, req: &TasteRequest) -> Result<Answer, ApiError> {
        let c = self.collection(collection)?;
        let (k, ef) = self.k_ef(req.k, req.ef)?;
        let source = match &req.history_collection {
            Some(name) => self.collection(name)?,
            None => c,
        };
        if source.dim() != c.dim() {
            return Err(ApiError::unprocessable(
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
        if req.history.is_empty() {
            return Err(ApiError::unprocessable(
                "empty_history",
                "history must list at least one item",
            ));
        }
        if req.history.len() > MAX_HISTORY {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "history_too_large",
                format!("history holds at most {MAX_HISTORY} items"),
            ));
        }
        // Weighted mean of the history's vectors (each unit-length under cosine).
        let mut taste = vec![0f32; c.dim()];
        let mut total = 0f32;
        let mut history_rows = Vec::with_capacity(req.history.len());
        for (i, item) in req.history.iter().enumerate() {
            let w = item.weight.unwrap_or(1.0);
            if !(w.is_finite() && w > 0.0) {
                return Err(ApiError::unprocessable(
                    "invalid_weight",
                    format!("history[{i}].weight must be a finite number > 0 (got {w})"),
                ));
            }
            let row = source
                .row_of(&item.id)
                .ok_or_else(|| ApiError::unknown_id(&source.name, &item.id))?;
            for (t, x) in taste.iter_mut().zip(source.vector(row)) {
                *t += w * x;
            }
            total += w;
            history_rows.push(row);
        }
        taste.iter_mut().for_each(|t| *t /= total);
        let query = prepare_query(c, &taste).map_err(|_| {
            ApiError::unprocessable(
                "degenerate_history",
                "the history's vectors cancel out: there is no taste direction to search",
            )
        })?;
        // History IDs only mean something to exclude when they index the queried collection.
        let exclude: Vec<u32> = if req.exclude_history.unwrap_or(true) && Arc::ptr_eq(source, c) {
            let mut rows = history_rows;
            rows.sort_unstable();
            rows.dedup();
            rows
        } else {
            Vec::new()
        };
        let hits = run(c, &query, k, ef, &exclude);
        Ok(Answer {
            collection: c.clone(),
            hits,
        })
    }
}

/// Validates a query vector and brings it into the collection's space.
fn prepare_query(c: &Collection, vector: &[f32]) -> Result<Vec<f32>, ApiError> {
    if vector.len() != c.dim() {
        return Err(ApiError::unprocessable(
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
        return Err(ApiError::unprocessable(
            "invalid_vector",
            format!("vector[{i}] is not a finite number"),
        ));
    }
    let mut q = vector.to_vec();
    if c.manifest.metric == Metric::Cosine && !crate::distance::normalize(&mut q) {
        return Err(ApiError::unprocessable(
            "invalid_vector",
            "a zero vector has no direction under cosine",
        ));
    }
    Ok(q)
}

/// Searches `c`, leaving out the rows in `exclude` (sorted).
fn run(c: &Collection, query: &[f32], k: usize, ef: usize, exclude: &[u32]) -> Vec<Hit> {
    let graph = c.graph();
    let mut out = Vec::with_capacity(k);
    with_scratch(|scratch| {
        if exclude.is_empty() {
            graph.search(query, k, ef, |_| true, false, scratch, &mut out);
        } else {
            // The filter runs inside the search, which keeps walking until it holds `ef`
            // rows that pass, so excluded rows never shorten the list.
            graph.search(
                query,
                k,
                ef,
                |row| exclude.binary_search(&row).is_err(),
                true,
                scratch,
                &mut out,
            );
        }
    });
    out
}
