//! `taste` across shards: the history's vectors fetched from their owner shards, the taste
//! computed here by the code `serve` runs, then one pooled round per mean (or centroid)
//! probe, or a seed-based strategy (`neighbours`, `best_score`) over every seed's pool.

use super::*;

/// History vectors fetched from their owner shards, by position.
struct Fetched {
    dim: usize,
    data: Vec<f32>,
}

impl HistoryVectors for Fetched {
    fn history_vector(&self, row: u32) -> &[f32] {
        let at = row as usize * self.dim;
        &self.data[at..at + self.dim]
    }
}

impl Exec<'_> {
    pub(super) async fn taste(&mut self, req: &TasteRequest) -> Result<Body, Failure> {
        let coll = self.coll;
        engine::check_taste_collection(req, &coll.name)?;
        let meta = self.cluster.meta_of(coll).await?;
        // A collection built with `--taste-history` reads histories from its pair by default.
        let paired = meta.taste_history.as_deref();
        let source: &Routed = match (&req.history_collection, paired) {
            (Some(name), _) => self.cluster.routed(name)?,
            (None, Some(name)) => self
                .cluster
                .routed(name)
                .map_err(|_| engine::unserved_pair(&coll.name, name))?,
            (None, None) => coll,
        };
        let pair = paired == Some(source.name.as_str());
        let source_meta = if std::ptr::eq(source, coll) {
            meta.clone()
        } else {
            self.cluster.meta_of(source).await?
        };
        engine::check_history_dim((&source.name, source_meta.dim), (&coll.name, meta.dim))?;
        let clock = history::check_history(req)?;
        let strategy = engine::strategy::check_strategy(req)?;
        let mut ids: Vec<&str> = req.history.iter().map(|h| h.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let (found, _) = self.fetch_items(source, &ids).await?;
        // Rows: positions in `fetched`, one per distinct ID found.
        let mut rows: HashMap<&str, u32> = HashMap::with_capacity(found.len());
        let mut fetched = Fetched {
            dim: meta.dim,
            data: Vec::with_capacity(found.len() * meta.dim),
        };
        for id in &ids {
            let Some(item) = found.get(*id) else { continue };
            let Some(v) = item.get("vector").and_then(|v| v.as_array()) else {
                continue;
            };
            if v.len() != meta.dim {
                continue;
            }
            rows.insert(id, rows.len() as u32);
            fetched
                .data
                .extend(v.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32));
        }
        let evidence =
            history::weigh_history(req, &clock, &source.name, |id| rows.get(id).copied())?;
        let same = std::ptr::eq(source, coll);
        // The pair holds the same IDs: its history's IDs are this collection's to exclude.
        let history_ids: Vec<&str> = if (same || pair) && req.exclude_history.unwrap_or(true) {
            rows.keys().copied().collect()
        } else {
            Vec::new()
        };
        let plan = validate::list(&req.spec(), &meta)?;
        let taste = Taste::new(&fetched, &evidence).map_err(engine::taste_error)?;
        if let Some(fan) = strategy.fan_out() {
            let mut exclude: Vec<&str> = req.exclude.iter().flatten().map(String::as_str).collect();
            exclude.extend(history_ids);
            // The seeds' queries, as `earshot_recommend::seeded` makes them.
            let mut seeds = Vec::new();
            taste.seeds(fan.items, &mut seeds);
            let (mut queries, mut weights) = (Vec::new(), Vec::new());
            for s in &seeds {
                if let Ok(q) = query::prepare_in(meta.metric, meta.dim, s.vector) {
                    queries.push(q);
                    weights.push(s.weight);
                }
            }
            if !weights.iter().any(|&w| w > 0.0) {
                return Err(engine::taste_error(TasteError::Degenerate).into());
            }
            let list = self
                .seeded(&meta, strategy, queries, weights, &plan, &exclude)
                .await?;
            return Ok(Body::List(ListOutcome {
                explain: req.explain.unwrap_or(false),
                ..list
            }));
        }
        let n = history::check_centroids(req.centroids)?;
        let probes = taste
            .probes_in(meta.metric, meta.dim, n)
            .map_err(engine::taste_error)?;
        let weights: Vec<f32> = probes.iter().map(|p| p.weight).collect();
        let queries: Vec<Vec<f32>> = probes.into_iter().map(|p| p.query).collect();
        let mut exclude: Vec<&str> = req.exclude.iter().flatten().map(String::as_str).collect();
        exclude.extend(history_ids);
        let list = self
            .recommend(&meta, queries, weights, &plan, &exclude)
            .await?;
        Ok(Body::List(ListOutcome {
            explain: req.explain.unwrap_or(false),
            ..list
        }))
    }

    /// `neighbours` / `best_score` over shards: every seed's `per_item` nearest admissible
    /// items in one round of pooled searches, aggregated and picked by the code `serve` runs
    /// (`Aggregator`, `pick`). Unlike `serve` it does not widen a short list.
    async fn seeded(
        &mut self,
        meta: &Meta,
        strategy: Strategy,
        queries: Vec<Vec<f32>>,
        weights: Vec<f32>,
        plan: &validate::Plan,
        exclude: &[&str],
    ) -> Result<ListOutcome, Failure> {
        let coll = self.coll;
        let exclude_by_shard = split_exclude(coll, exclude);
        let shape = &plan.shape;
        let per_item = strategy.fan_out().map_or(shape.k, |f| f.per_item);
        let size = if shape.max_per_creator.is_some() || shape.emerging.is_some() {
            per_item.max(QUOTA_WINDOW * shape.k)
        } else {
            per_item.max(shape.k)
        };
        let mut pool = Pool::default();
        let (lists, _) = self
            .round(&mut pool, &queries, size, plan, &exclude_by_shard)
            .await?;
        let lists: Vec<&[Hit]> = lists.iter().map(Vec::as_slice).collect();
        let metric = meta.metric;
        // Pool hits carry `dist = −score` (the shards' scores, not internal distances).
        let sim = |d: f32| similarity_of_score(metric, -d);
        let mut merged = Vec::new();
        Aggregator::default().aggregate(&pool, sim, strategy, &weights, &lists, &mut merged);
        let selection = pick(&pool, &[1.0], std::slice::from_ref(&merged), shape);
        Ok(ListOutcome {
            pool,
            selection,
            weights: vec![1.0],
            explain: false,
        })
    }
}
