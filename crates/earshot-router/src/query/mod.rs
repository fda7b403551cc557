//! What a query means across shards: the owner shard supplies an item's vector, every shard
//! is searched in pool mode for `k′` hits per probe, the answers are merged by score, and
//! `earshot_recommend::select::pick` — the code `serve` runs — picks the list under
//! `max_per_creator` and the emerging quota, widening with another round when the pool runs
//! short. Every answer comes from one version of the collection.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use earshot_core::search::Hit;
use earshot_recommend::constraints::QUOTA_WINDOW;
use earshot_recommend::query;
use earshot_recommend::select::{initial_pool_size, pick, Selection, WIDEN};
use earshot_recommend::strategy::{similarity_of_score, Aggregator, Strategy};
use earshot_recommend::taste::{HistoryVectors, Taste, TasteError};
use earshot_server::api::{SearchRequest, SimilarRequest, TasteRequest};
use earshot_server::engine::{self, history, QueryError};
use earshot_server::error_code::ErrorCode;
use earshot_server::limits::{MAX_EF, MAX_ITEMS, MAX_K};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cluster::{Cluster, Meta, Routed};
use crate::estimate::per_shard_k;
use crate::failure::{forwarded, shard_unavailable, version_unavailable, Failure};
use crate::pool::{merge, Pool, PoolAnswer, PoolHit};
use crate::upstream::{CallError, UpRequest, UpResponse};
use crate::validate;

mod taste;

/// A picked list over a merged pool.
pub struct ListOutcome {
    pub pool: Pool,
    pub selection: Selection,
    pub weights: Vec<f32>,
    pub explain: bool,
}

/// What a query produced.
pub enum Body {
    List(ListOutcome),
    /// `POST /v1/{collection}/items`: the items found, in request order, and the IDs not.
    Items {
        items: Vec<Value>,
        missing: Vec<String>,
    },
}

pub struct Outcome {
    pub body: Body,
    /// Versions the shards answered from (one, when consistent).
    pub versions: BTreeSet<String>,
    pub shards: usize,
    pub answered: usize,
}

/// The queries the router answers over shards.
pub enum Query<'a> {
    Similar {
        id: &'a str,
        req: &'a SimilarRequest,
    },
    Search(&'a SearchRequest),
    Taste(&'a TasteRequest),
    Items(&'a [String]),
}

/// One attempt at a query, all of it pinned to `pin` when set.
struct Exec<'a> {
    cluster: &'a Cluster,
    coll: &'a Routed,
    deadline: Instant,
    allow_partial: bool,
    pin: Option<Arc<str>>,
    versions: BTreeSet<String>,
    missing: BTreeSet<usize>,
    /// A `similar` query's owner shard: the other shards walk with a wider beam.
    owner: Option<usize>,
}

impl Cluster {
    pub fn routed(&self, name: &str) -> Result<&Arc<Routed>, QueryError> {
        engine::find_collection(&self.collections, name)
    }

    /// The collection's metadata, asking its shards now if they never answered.
    pub async fn meta_of(&self, c: &Routed) -> Result<Meta, QueryError> {
        if c.info.iter().any(|i| i.load().is_none()) {
            self.refresh(c).await;
        }
        c.meta().ok_or_else(|| {
            shard_unavailable(format!(
                "no shard of collection {:?} has answered yet",
                c.name
            ))
        })
    }

    /// Answers `q` on `coll` from one version of it: the pinned one while a roll-out is in
    /// progress, else whatever the shards serve — and if they answer from different
    /// versions, asked again pinned to the newest version all of them have.
    pub async fn run(
        &self,
        coll: &Routed,
        q: &Query<'_>,
        allow_partial: bool,
        started: Instant,
    ) -> Result<Outcome, QueryError> {
        let deadline = started + self.opts.request_timeout;
        let hint: Option<Arc<str>> = coll.pin_hint.load_full().map(|h| h.as_str().into());
        let mut attempt = self
            .attempt(coll, q, allow_partial, deadline, hint.clone())
            .await;
        if hint.is_some() && matches!(attempt, Err(Failure::Version)) {
            // The pinned version is gone everywhere: the roll-out is over.
            coll.pin_hint.store(None);
            attempt = self.attempt(coll, q, allow_partial, deadline, None).await;
        }
        let first = match attempt {
            Ok(o) if o.versions.len() <= 1 => return Ok(o),
            Ok(o) => o,
            Err(Failure::Api(e)) => return Err(e),
            Err(Failure::Version) => {
                return Err(version_unavailable(format!(
                    "the shards of {:?} have no version in common loaded",
                    coll.name
                )))
            }
        };
        // Shards built apart (not published as one version) never share a version name:
        // once that is known for this set of versions, their answers stand as they are.
        if coll
            .unpinnable
            .load()
            .as_ref()
            .is_some_and(|known| **known == first.versions)
        {
            return Ok(first);
        }
        self.metrics
            .version_retries
            .get_or_create(&crate::metrics::CollectionLabel {
                collection: coll.name.clone(),
            })
            .inc();
        let versions = first.versions.clone();
        tracing::info!(collection = %coll.name, ?versions, "shards answered from different versions; pinning");
        // Newest first (version names are build times).
        for v in versions.iter().rev() {
            let v: Arc<str> = v.as_str().into();
            match self
                .attempt(coll, q, allow_partial, deadline, Some(v.clone()))
                .await
            {
                Ok(o) => {
                    coll.pin_hint.store(Some(Arc::new(v.to_string())));
                    return Ok(o);
                }
                Err(Failure::Version) => continue,
                Err(Failure::Api(e)) => return Err(e),
            }
        }
        tracing::warn!(
            collection = %coll.name, ?versions,
            "no version is loaded on every shard (shards built apart?); answering across versions"
        );
        coll.unpinnable.store(Some(Arc::new(versions)));
        Ok(first)
    }

    async fn attempt(
        &self,
        coll: &Routed,
        q: &Query<'_>,
        allow_partial: bool,
        deadline: Instant,
        pin: Option<Arc<str>>,
    ) -> Result<Outcome, Failure> {
        let mut x = Exec {
            cluster: self,
            coll,
            deadline,
            allow_partial,
            pin,
            versions: BTreeSet::new(),
            missing: BTreeSet::new(),
            owner: None,
        };
        let body = match q {
            Query::Similar { id, req } => x.similar(id, req).await?,
            Query::Search(req) => x.search(req).await?,
            Query::Taste(req) => x.taste(req).await?,
            Query::Items(ids) => x.items(ids).await?,
        };
        let shards = coll.shards.len();
        Ok(Outcome {
            body,
            versions: x.versions,
            shards,
            answered: shards - x.missing.len(),
        })
    }
}

fn encode_segment(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

#[derive(Deserialize)]
struct ItemAnswer {
    creator: Option<String>,
    vector: Vec<f32>,
}

/// The owner shard's pool-mode `similar` answer: its part of the pool, and the item.
#[derive(Deserialize)]
struct OwnerAnswer {
    results: Vec<PoolHit>,
    item: ItemAnswer,
}

#[derive(Deserialize)]
struct ItemsAnswer {
    items: Vec<Value>,
    #[serde(default)]
    missing: Vec<String>,
}

/// A shard's part of a merged answer, in pool mode: a search (`collection` and `vector`) or
/// the owner's `similar` (the path names the item). The vector is serialised straight from
/// the query as `f32` (the shortest round-trip form, ~9 digits) rather than through
/// `serde_json::Value`, whose `f64` numbers print ~17 digits per component — half the bytes
/// to write and for the shard to parse.
#[derive(serde::Serialize)]
struct PoolQuery<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    collection: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<&'a [f32]>,
    k: usize,
    ef: usize,
    pool: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    exclude: &'a [&'a str],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    exclude_same_creator: bool,
}

impl Exec<'_> {
    fn post(&self, path: String, body: &Value) -> UpRequest {
        self.post_bytes(path, serde_json::to_vec(body).unwrap_or_default())
    }

    fn post_bytes(&self, path: String, body: Vec<u8>) -> UpRequest {
        UpRequest {
            method: Method::POST,
            path,
            body: Some(Bytes::from(body)),
            version: self.pin.clone(),
            auth: None,
        }
    }

    /// Sends each request to its shard at once; every shard's answer, or None for a shard
    /// that did not answer when partial answers are allowed. `record`: the answers are
    /// of the queried collection (their versions count).
    async fn ask(
        &mut self,
        on: &Routed,
        requests: Vec<(usize, UpRequest)>,
        partial_ok: bool,
    ) -> Result<Vec<Option<UpResponse>>, Failure> {
        let record = std::ptr::eq(on, self.coll);
        let c = self.cluster;
        let calls = requests
            .iter()
            .map(|(s, r)| on.shards[*s].call(&c.client, &c.opts.upstream, r, self.deadline));
        let answers = futures_util::future::join_all(calls).await;
        // Client errors first (the request's fault, the same on every shard), then
        // version conflicts, then shards that did not answer.
        for r in answers.iter().flatten() {
            if r.status.is_client_error() && r.status != StatusCode::CONFLICT {
                return Err(Failure::Api(forwarded(r)));
            }
        }
        if answers
            .iter()
            .flatten()
            .any(|r| r.status == StatusCode::CONFLICT)
        {
            return Err(Failure::Version);
        }
        let mut out = Vec::with_capacity(answers.len());
        for ((s, _), a) in requests.iter().zip(answers) {
            match a {
                Ok(r) if r.status == StatusCode::OK => {
                    if record {
                        if let Some(v) = &r.version {
                            if !self.versions.contains(v) {
                                self.versions.insert(v.clone());
                            }
                        }
                    }
                    out.push(Some(r));
                }
                Ok(r) => return Err(Failure::Api(forwarded(&r))),
                Err(e) if partial_ok && self.allow_partial && record => {
                    tracing::debug!(collection = %on.name, shard = s, error = ?e, "shard missing from a partial answer");
                    self.missing.insert(*s);
                    out.push(None);
                }
                Err(CallError::Timeout) => {
                    return Err(Failure::Api(QueryError::new(
                        ErrorCode::Timeout,
                        format!(
                            "shard {s} of collection {:?} did not answer within the request timeout",
                            on.name
                        ),
                    )))
                }
                Err(CallError::Unavailable(why)) => {
                    return Err(Failure::Api(shard_unavailable(format!(
                        "shard {s} of collection {:?} is unavailable: {why} (send \"allow_partial\": true to accept answers from the other shards)",
                        on.name
                    ))))
                }
                Err(CallError::Upstream(r)) => return Err(Failure::Api(forwarded(&r))),
            }
        }
        Ok(out)
    }

    /// Items by ID from their owner shards of `on`: vectors and metadata as JSON, by ID.
    async fn fetch_items(
        &mut self,
        on: &Routed,
        ids: &[&str],
    ) -> Result<(HashMap<String, Value>, Vec<String>), Failure> {
        let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); on.shards.len()];
        for id in ids {
            by_shard[on.owner(id)].push(id);
        }
        let path = format!("/v1/{}/items", encode_segment(&on.name));
        let mut requests = Vec::new();
        for (s, list) in by_shard.iter().enumerate() {
            for chunk in list.chunks(MAX_ITEMS) {
                let mut r = self.post(path.clone(), &json!({ "ids": chunk }));
                if !std::ptr::eq(on, self.coll) {
                    r.version = None;
                }
                requests.push((s, r));
            }
        }
        let answers = self.ask(on, requests, false).await?;
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for a in answers.into_iter().flatten() {
            let parsed: ItemsAnswer = serde_json::from_slice(&a.body).map_err(|e| {
                QueryError::new(ErrorCode::Internal, format!("a shard's items answer: {e}"))
            })?;
            for item in parsed.items {
                if let Some(id) = item.get("id").and_then(|v| v.as_str()) {
                    found.insert(id.to_string(), item);
                }
            }
            missing.extend(parsed.missing);
        }
        Ok((found, missing))
    }

    async fn items(&mut self, ids: &[String]) -> Result<Body, Failure> {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let coll = self.coll;
        let (found, _) = self.fetch_items(coll, &refs).await?;
        let mut items = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match found.get(id) {
                Some(v) => items.push(v.clone()),
                None => missing.push(id.clone()),
            }
        }
        Ok(Body::Items { items, missing })
    }

    /// The owner shard first — its own pool and the item's vector in one exchange — then
    /// the other shards with that vector (at a wider beam: the item is a stranger to their
    /// graphs), merged; more rounds over every shard while the pool runs short.
    async fn similar(&mut self, id: &str, req: &SimilarRequest) -> Result<Body, Failure> {
        let coll = self.coll;
        let n = coll.shards.len();
        let owner = coll.owner(id);
        self.owner = Some(owner);
        let meta = self.cluster.meta_of(coll).await?;
        let mut plan = validate::list(&req.spec(), &meta)?;
        let exclude: Vec<&str> = req.exclude.iter().flatten().map(String::as_str).collect();
        let mut exclude_by_shard = split_exclude(coll, &exclude);
        let size = initial_pool_size(&plan.shape, plan.ef);
        let kp = per_shard_k(size, n, self.cluster.opts.topk_probability).min(MAX_K);
        let body = PoolQuery {
            collection: None,
            vector: None,
            k: kp,
            ef: plan.ef.max(kp).min(MAX_EF),
            pool: true,
            filter: plan.filter.as_ref(),
            exclude: &exclude_by_shard[owner],
            exclude_same_creator: req.exclude_same_creator.unwrap_or(false),
        };
        let path = format!(
            "/v1/{}/{}/similar",
            encode_segment(&coll.name),
            encode_segment(id)
        );
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let request = self.post_bytes(path, bytes);
        let answer = self.ask(coll, vec![(owner, request)], false).await?;
        let Some(Some(answer)) = answer.into_iter().next() else {
            return Err(Failure::Api(shard_unavailable(format!(
                "the shard owning {id:?} did not answer"
            ))));
        };
        let first: OwnerAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
            QueryError::new(
                ErrorCode::Internal,
                format!("a shard's similar answer: {e}"),
            )
        })?;
        if req.exclude_same_creator.unwrap_or(false) {
            if let Some(cr) = &first.item.creator {
                deny_creator(&mut plan, cr);
            }
        }
        // From here on the owner is searched like the others, so it excludes the item too.
        exclude_by_shard[owner].push(id);
        let queries = vec![first.item.vector];
        let others: Vec<usize> = (0..n).filter(|&s| s != owner).collect();
        let mut answers = vec![first.results];
        answers.extend(
            self.ask_pools(&queries, &others, kp, &plan, &exclude_by_shard)
                .await?
                .into_iter()
                .flatten(),
        );
        let mut pool = Pool::default();
        let (hits, complete) = merge(&mut pool, answers, kp, size);
        let list = self
            .widen(
                &meta,
                &queries,
                vec![1.0],
                &plan,
                &exclude_by_shard,
                pool,
                size,
                Some((vec![hits], complete)),
            )
            .await?;
        Ok(Body::List(ListOutcome {
            explain: req.explain.unwrap_or(false),
            ..list
        }))
    }

    async fn search(&mut self, req: &SearchRequest) -> Result<Body, Failure> {
        let coll = self.coll;
        let meta = self.cluster.meta_of(coll).await?;
        let plan = validate::list(&req.spec(), &meta)?;
        let exclude: Vec<&str> = req.exclude.iter().flatten().map(String::as_str).collect();
        let list = self
            .recommend(&meta, vec![req.vector.clone()], vec![1.0], &plan, &exclude)
            .await?;
        Ok(Body::List(ListOutcome {
            explain: req.explain.unwrap_or(false),
            ..list
        }))
    }

    /// `select::recommend` over shards: pools per probe merged from every shard, picked
    /// with the same code, widened (×4) while short and not exhausted.
    async fn recommend(
        &mut self,
        meta: &Meta,
        queries: Vec<Vec<f32>>,
        weights: Vec<f32>,
        plan: &validate::Plan,
        exclude: &[&str],
    ) -> Result<ListOutcome, Failure> {
        let exclude_by_shard = split_exclude(self.coll, exclude);
        let size = initial_pool_size(&plan.shape, plan.ef);
        self.widen(
            meta,
            &queries,
            weights,
            plan,
            &exclude_by_shard,
            Pool::default(),
            size,
            None,
        )
        .await
    }

    /// Rounds from pool size `size` on (`first`: that round's pools, already asked), picked
    /// after each, until the list is full or no shard has more.
    #[allow(clippy::too_many_arguments)]
    async fn widen(
        &mut self,
        meta: &Meta,
        queries: &[Vec<f32>],
        weights: Vec<f32>,
        plan: &validate::Plan,
        exclude_by_shard: &[Vec<&str>],
        mut pool: Pool,
        mut size: usize,
        mut first: Option<(Vec<Vec<Hit>>, bool)>,
    ) -> Result<ListOutcome, Failure> {
        let total = if meta.count == 0 {
            usize::MAX
        } else {
            meta.count as usize
        };
        let k = plan.shape.k;
        loop {
            let (pools, complete) = match first.take() {
                Some(done) => done,
                None => {
                    self.round(&mut pool, queries, size, plan, exclude_by_shard)
                        .await?
                }
            };
            let selection = pick(&pool, &weights, &pools, &plan.shape);
            if selection.picks.len() >= k || complete || size >= total {
                return Ok(ListOutcome {
                    pool,
                    selection,
                    weights,
                    explain: false,
                });
            }
            size = size.saturating_mul(WIDEN).min(total);
        }
    }

    /// Each of `shards` asked for the `kp` nearest admissible items to each of `queries` in
    /// pool mode: the answers by query, then by shard (None for a shard missing from a
    /// partial answer).
    async fn ask_pools(
        &mut self,
        queries: &[Vec<f32>],
        shards: &[usize],
        kp: usize,
        plan: &validate::Plan,
        exclude_by_shard: &[Vec<&str>],
    ) -> Result<Vec<Option<Vec<PoolHit>>>, Failure> {
        let coll = self.coll;
        let ef = plan.ef.max(kp).min(MAX_EF);
        let opts = &self.cluster.opts;
        let boosted = |by: f64| ((ef as f64 * by).ceil() as usize).min(MAX_EF);
        let mut requests = Vec::with_capacity(queries.len() * shards.len());
        for q in queries {
            for &s in shards {
                let ef = match self.owner {
                    Some(o) if o != s => boosted(opts.similar_ef_boost),
                    Some(_) => ef,
                    None if coll.shards.len() > 1 => boosted(opts.search_ef_boost),
                    None => ef,
                };
                let body = PoolQuery {
                    collection: Some(&coll.name),
                    vector: Some(q),
                    k: kp,
                    ef,
                    pool: true,
                    filter: plan.filter.as_ref(),
                    exclude: &exclude_by_shard[s],
                    exclude_same_creator: false,
                };
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                requests.push((s, self.post_bytes("/v1/search".into(), bytes)));
            }
        }
        let answers = self.ask(coll, requests, true).await?;
        answers
            .into_iter()
            .map(|a| {
                a.map(|a| {
                    serde_json::from_slice::<PoolAnswer>(&a.body)
                        .map(|p| p.results)
                        .map_err(|e| {
                            Failure::Api(QueryError::new(
                                ErrorCode::Internal,
                                format!("a shard's pool answer: {e}"),
                            ))
                        })
                })
                .transpose()
            })
            .collect()
    }

    /// One round: every probe's `size` nearest admissible items, merged from the shards'
    /// `k′` each; and whether every pool is complete (no shard has more).
    async fn round(
        &mut self,
        pool: &mut Pool,
        queries: &[Vec<f32>],
        size: usize,
        plan: &validate::Plan,
        exclude_by_shard: &[Vec<&str>],
    ) -> Result<(Vec<Vec<Hit>>, bool), Failure> {
        let n = self.coll.shards.len();
        let kp = per_shard_k(size, n, self.cluster.opts.topk_probability).min(MAX_K);
        let shards: Vec<usize> = (0..n).collect();
        let mut answers = self
            .ask_pools(queries, &shards, kp, plan, exclude_by_shard)
            .await?
            .into_iter();
        let mut pools = Vec::with_capacity(queries.len());
        let mut complete = true;
        for _ in queries {
            let per_probe = answers.by_ref().take(n).flatten().collect();
            let (hits, done) = merge(pool, per_probe, kp, size);
            complete &= done;
            pools.push(hits);
        }
        Ok((pools, complete))
    }
}

/// Each shard's share of `exclude`: the IDs it owns.
fn split_exclude<'a>(coll: &Routed, exclude: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); coll.shards.len()];
    for id in exclude {
        by_shard[coll.owner(id)].push(id);
    }
    by_shard
}

/// Adds `creator` to the plan's filter for the shards: out of the allow-list, into the
/// deny-list.
fn deny_creator(plan: &mut validate::Plan, creator: &str) {
    let f = plan.filter.get_or_insert_with(Map::new);
    if let Some(Value::Array(allow)) = f.get_mut("creators") {
        allow.retain(|a| a.as_str() != Some(creator));
    } else if let Value::Array(d) = f
        .entry("exclude_creators")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        if !d.iter().any(|x| x.as_str() == Some(creator)) {
            d.push(Value::from(creator));
        }
    }
}
