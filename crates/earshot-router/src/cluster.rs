//! The routed collections: their shards, what the shards say about themselves (metric,
//! dimension, counts, versions), and the background loops that keep replicas, health and
//! that knowledge current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::http::{Method, StatusCode};
use earshot_core::metric::Metric;

use crate::metrics::RouterMetrics;
use crate::topology::Topology;
use crate::upstream::{client, HttpClient, Shard, UpRequest, UpstreamOptions};

/// What one shard's `/v1/collections` entry says.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// The entry as the shard sent it.
    pub raw: serde_json::Value,
    pub metric: Metric,
    pub dim: usize,
    pub count: u64,
    pub creators: u64,
    pub has_popularity: bool,
    pub default_ef: usize,
    pub version: Option<String>,
    /// `build --taste-history`: where taste histories come from by default.
    pub taste_history: Option<String>,
}

impl ShardInfo {
    fn parse(raw: serde_json::Value) -> Option<ShardInfo> {
        let metric = raw.get("metric")?.as_str()?.parse::<Metric>().ok()?;
        Some(ShardInfo {
            metric,
            dim: raw.get("dim")?.as_u64()? as usize,
            count: raw.get("count")?.as_u64()?,
            creators: raw.get("creators").and_then(|v| v.as_u64()).unwrap_or(0),
            has_popularity: raw
                .get("has_popularity")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            default_ef: raw.get("default_ef").and_then(|v| v.as_u64()).unwrap_or(64) as usize,
            version: raw
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            taste_history: raw
                .get("taste_history")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            raw,
        })
    }
}

/// What the router knows of a collection as a whole.
#[derive(Debug, Clone)]
pub struct Meta {
    pub name: String,
    pub metric: Metric,
    pub dim: usize,
    pub default_ef: usize,
    pub has_popularity: bool,
    pub creators: u64,
    /// Items over the shards that reported (a lower bound while one is missing).
    pub count: u64,
    /// The taste-history pair the shards were built with (`build --taste-history`).
    pub taste_history: Option<String>,
}

/// One collection of the topology.
pub struct Routed {
    pub name: String,
    pub shards: Vec<Shard>,
    /// Per shard, its last `/v1/collections` entry.
    pub info: Vec<ArcSwapOption<ShardInfo>>,
    /// The version queries start pinned to while shards disagree (a roll-out in progress).
    pub pin_hint: ArcSwapOption<String>,
    /// Versions the shards answer from that share no loaded version (shards built apart,
    /// not published together): answers across them are accepted without re-asking.
    pub unpinnable: ArcSwapOption<std::collections::BTreeSet<String>>,
}

impl Routed {
    pub fn meta(&self) -> Option<Meta> {
        let infos: Vec<Arc<ShardInfo>> = self.info.iter().filter_map(|i| i.load_full()).collect();
        let first = infos.first()?;
        Some(Meta {
            name: self.name.clone(),
            metric: first.metric,
            dim: first.dim,
            default_ef: first.default_ef,
            has_popularity: infos.iter().all(|i| i.has_popularity),
            creators: infos.iter().map(|i| i.creators).max().unwrap_or(0),
            count: infos.iter().map(|i| i.count).sum(),
            taste_history: first.taste_history.clone(),
        })
    }

    /// Whether every shard has a replica in rotation.
    pub fn ready(&self) -> bool {
        self.shards.iter().all(|s| s.live_count() > 0)
    }

    /// The shard that owns `id`.
    pub fn owner(&self, id: &str) -> usize {
        earshot_core::shard::shard_of(id, self.shards.len() as u32) as usize
    }
}

/// Router-wide settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub upstream: UpstreamOptions,
    /// Probability that each shard's share of the merged top k is complete (Vespa's p).
    pub topk_probability: f64,
    /// `similar`: the shards that do not own the item walk with this many times the
    /// request's ef (the vector is a stranger to their graphs; BENCHMARKS.md §10).
    pub similar_ef_boost: f64,
    /// `search` and `taste` (no shard owns the query) over 2 or more shards: every shard walks
    /// with this many times the request's ef.
    pub search_ef_boost: f64,
    /// Longest a request may take, over every shard it asks.
    pub request_timeout: Duration,
    /// `/readyz` checks of every replica and `/v1/collections` refreshes this often.
    pub health_interval: Duration,
    /// `dns://` names are re-resolved this often.
    pub resolve_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            upstream: UpstreamOptions::default(),
            topk_probability: 0.999,
            similar_ef_boost: 2.0,
            search_ef_boost: 1.5,
            request_timeout: Duration::from_secs(5),
            health_interval: Duration::from_secs(2),
            resolve_interval: Duration::from_secs(5),
        }
    }
}

pub struct Cluster {
    pub collections: BTreeMap<String, Arc<Routed>>,
    pub client: HttpClient,
    pub opts: ClusterOptions,
    pub metrics: RouterMetrics,
}

impl Cluster {
    pub fn new(topology: &Topology, opts: ClusterOptions, metrics: RouterMetrics) -> Self {
        let collections = topology
            .collections
            .iter()
            .map(|(name, shards)| {
                let shards: Vec<Shard> = shards
                    .iter()
                    .enumerate()
                    .map(|(i, sources)| {
                        Shard::new(name, i as u32, sources.clone(), &opts.upstream, &metrics)
                    })
                    .collect();
                let info = shards.iter().map(|_| ArcSwapOption::empty()).collect();
                (
                    name.clone(),
                    Arc::new(Routed {
                        name: name.clone(),
                        shards,
                        info,
                        pin_hint: ArcSwapOption::empty(),
                        unpinnable: ArcSwapOption::empty(),
                    }),
                )
            })
            .collect();
        Self {
            collections,
            client: client(),
            opts,
            metrics,
        }
    }

    pub fn ready(&self) -> bool {
        self.collections.values().all(|c| c.ready())
    }

    /// Resolves every `dns://` source.
    pub async fn resolve_all(&self) {
        let all = self
            .collections
            .values()
            .flat_map(|c| c.shards.iter().map(|s| s.resolve()));
        futures_util::future::join_all(all).await;
    }

    /// `/readyz` of every replica.
    pub async fn check_all(&self) {
        let timeout = self
            .opts
            .health_interval
            .clamp(Duration::from_millis(200), Duration::from_secs(2));
        let mut checks = Vec::new();
        for c in self.collections.values() {
            for s in &c.shards {
                let replicas = s.replicas();
                for r in replicas.iter() {
                    let r = r.clone();
                    let client = &self.client;
                    let opts = &self.opts.upstream;
                    checks.push(async move {
                        let mut req = axum::http::Request::get(r.url("/readyz"));
                        if let Some(k) = &opts.shard_key {
                            req = req.header("authorization", format!("Bearer {k}"));
                        }
                        let Ok(req) = req.body(http_body_util::Full::default()) else {
                            return;
                        };
                        let ready = matches!(
                            tokio::time::timeout(timeout, client.request(req)).await,
                            Ok(Ok(resp)) if resp.status() == StatusCode::OK
                        );
                        r.checked(opts, ready);
                    });
                }
            }
        }
        futures_util::future::join_all(checks).await;
        for c in self.collections.values() {
            for s in &c.shards {
                s.live_count();
            }
        }
    }

    /// Asks one replica of every shard of `c` for its `/v1/collections` entry.
    pub async fn refresh(&self, c: &Routed) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let req = UpRequest {
            method: Method::GET,
            path: "/v1/collections".into(),
            body: None,
            version: None,
            auth: None,
        };
        let asks = c
            .shards
            .iter()
            .map(|s| s.call(&self.client, &self.opts.upstream, &req, deadline));
        let answers = futures_util::future::join_all(asks).await;
        let n = c.shards.len() as u64;
        for (i, a) in answers.into_iter().enumerate() {
            let Ok(resp) = a else { continue };
            if resp.status != StatusCode::OK {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
                continue;
            };
            let entry = v["collections"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == c.name.as_str()))
                .cloned();
            let Some(entry) = entry else {
                tracing::warn!(collection = %c.name, shard = i, "the shard does not serve the collection");
                continue;
            };
            // A shard built as I/N must sit at position I of an N-shard list, or owners
            // would be looked up on the wrong servers.
            if let Some(shard) = entry.get("shard").filter(|s| !s.is_null()) {
                let (index, count) = (shard["index"].as_u64(), shard["count"].as_u64());
                if index != Some(i as u64) || count != Some(n) {
                    tracing::error!(
                        collection = %c.name, position = i, shards = n, ?index, ?count,
                        "the topology lists this server at the wrong position; ignoring it"
                    );
                    continue;
                }
            } else if n > 1 {
                tracing::error!(collection = %c.name, position = i, "an unsharded collection listed as one of several shards; ignoring it");
                continue;
            }
            if let Some(info) = ShardInfo::parse(entry) {
                c.info[i].store(Some(Arc::new(info)));
            }
        }
        // Every shard on one version: the roll-out is over, stop pinning.
        let versions: Vec<Option<String>> = c
            .info
            .iter()
            .map(|i| i.load().as_ref().and_then(|i| i.version.clone()))
            .collect();
        if versions.iter().all(|v| v.is_some() && *v == versions[0]) {
            if let Some(h) = c.pin_hint.load().as_ref() {
                if Some(h.as_str()) != versions[0].as_deref() {
                    c.pin_hint.store(None);
                }
            }
        }
    }

    pub async fn refresh_all(&self) {
        futures_util::future::join_all(self.collections.values().map(|c| self.refresh(c))).await;
    }

    /// The background loops: DNS, health and collection info, hedging quantiles.
    pub fn spawn_loops(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.opts.resolve_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.resolve_all().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.opts.health_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.check_all().await;
                me.refresh_all().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let q = me.opts.upstream.hedge_quantile.unwrap_or(0.95);
                for c in me.collections.values() {
                    for s in &c.shards {
                        s.tick(q);
                    }
                }
            }
        });
    }
}
