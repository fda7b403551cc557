//! The router's own metrics, next to the HTTP metrics `serve` has
//! ([`earshot_server::metrics::Metrics`]): per shard and replica latency and outcomes,
//! hedges sent and won, ejections, answers with partial coverage, version re-asks.
//!
//! Handles are created once per shard and replica and kept next to them, so recording a
//! request takes no lock (a `Family` lookup would).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub collection: String,
    pub shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub collection: String,
    pub shard: u32,
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub collection: String,
    pub shard: u32,
    pub replica: String,
    /// `ok` (an answer below 500), `error` (5xx answer), `failed` (no answer).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectionLabel {
    pub collection: String,
}

#[derive(Clone)]
pub struct RouterMetrics {
    pub latency: Family<ReplicaLabel, Histogram>,
    pub outcomes: Family<OutcomeLabel, Counter>,
    pub hedges_sent: Family<ShardLabel, Counter>,
    pub hedges_won: Family<ShardLabel, Counter>,
    pub ejections: Family<ReplicaLabel, Counter>,
    pub live_replicas: Family<ShardLabel, Gauge>,
    pub partial: Family<CollectionLabel, Counter>,
    pub version_retries: Family<CollectionLabel, Counter>,
}

impl RouterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            latency: Family::new_with_constructor(|| {
                // 50 µs … ~6.5 s
                Histogram::new(exponential_buckets(50e-6, 2.0, 18))
            }),
            outcomes: Family::default(),
            hedges_sent: Family::default(),
            hedges_won: Family::default(),
            ejections: Family::default(),
            live_replicas: Family::default(),
            partial: Family::default(),
            version_retries: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("router");
        r.register(
            "upstream_duration_seconds",
            "Latency of answered requests to shard servers, by collection, shard and replica",
            m.latency.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests to shard servers by outcome (ok, error = 5xx, failed = no answer)",
            m.outcomes.clone(),
        );
        r.register(
            "hedges_sent",
            "Hedged second requests sent to another replica after the shard's p95",
            m.hedges_sent.clone(),
        );
        r.register(
            "hedges_won",
            "Hedged requests whose answer was used (it came first)",
            m.hedges_won.clone(),
        );
        r.register(
            "ejections",
            "Replicas taken out of rotation (failures or a failed /readyz)",
            m.ejections.clone(),
        );
        r.register(
            "live_replicas",
            "Replicas in rotation per shard",
            m.live_replicas.clone(),
        );
        r.register(
            "partial_answers",
            "Answers with coverage < 1 (allow_partial and a shard missing)",
            m.partial.clone(),
        );
        r.register(
            "version_reasks",
            "Queries asked again pinned to one version because shards answered from different versions",
            m.version_retries.clone(),
        );
        m
    }
}
