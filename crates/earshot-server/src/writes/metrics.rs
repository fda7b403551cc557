//! The write log's metrics per collection (registered in store mode): where the log's head
//! is, what this replica has applied, how far behind it is, and what its delta holds.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use earshot_core::delta::Delta;

use crate::metrics::CollectionLabel;

#[derive(Clone, Default)]
pub struct LogMetrics {
    pub head: Family<CollectionLabel, Gauge>,
    pub applied: Family<CollectionLabel, Gauge>,
    pub lag_segments: Family<CollectionLabel, Gauge>,
    pub lag_seconds: Family<CollectionLabel, Gauge<f64, AtomicU64>>,
    pub delta_items: Family<CollectionLabel, Gauge>,
    pub delta_tombstones: Family<CollectionLabel, Gauge>,
    pub delta_indexed: Family<CollectionLabel, Gauge>,
    pub delta_bytes: Family<CollectionLabel, Gauge>,
    pub errors: Family<CollectionLabel, Counter>,
    pub writes: Family<CollectionLabel, Counter>,
}

fn label(c: &str) -> CollectionLabel {
    CollectionLabel {
        collection: c.to_string(),
    }
}

impl LogMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "log_head_segment",
            "Newest write-log segment this replica knows of",
            self.head.clone(),
        );
        r.register(
            "log_applied_segment",
            "Write-log segment this replica has applied through",
            self.applied.clone(),
        );
        r.register(
            "log_lag_segments",
            "Known segments not applied yet",
            self.lag_segments.clone(),
        );
        r.register(
            "log_lag_seconds",
            "Time from the last applied segment's acknowledgement to its application",
            self.lag_seconds.clone(),
        );
        r.register(
            "delta_items",
            "Items upserted through the write log and held in memory",
            self.delta_items.clone(),
        );
        r.register(
            "delta_tombstones",
            "Rows of the served version hidden by the write log (deleted or replaced)",
            self.delta_tombstones.clone(),
        );
        r.register(
            "delta_indexed_items",
            "Delta items linked into the version's graph (the rest are scanned exactly)",
            self.delta_indexed.clone(),
        );
        r.register(
            "delta_bytes",
            "Memory the write log's delta holds, roughly",
            self.delta_bytes.clone(),
        );
        r.register(
            "log_errors",
            "Write-log reads or applications that failed (retried next poll)",
            self.errors.clone(),
        );
        r.register(
            "log_writes",
            "Write batches this server appended to the log (acknowledged)",
            self.writes.clone(),
        );
    }

    pub(super) fn head(&self, c: &str, seq: u64) {
        self.head.get_or_create(&label(c)).set(seq as i64);
    }

    pub(super) fn applied(&self, c: &str, seq: u64, head: u64, written_at_ms: Option<u64>) {
        self.applied.get_or_create(&label(c)).set(seq as i64);
        self.lag_segments
            .get_or_create(&label(c))
            .set(head.saturating_sub(seq) as i64);
        if let Some(at) = written_at_ms.filter(|&t| t > 0) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.lag_seconds
                .get_or_create(&label(c))
                .set(now.saturating_sub(at) as f64 / 1000.0);
        }
    }

    pub(super) fn delta(&self, c: &str, d: &Delta) {
        self.delta_items
            .get_or_create(&label(c))
            .set(d.items() as i64);
        self.delta_tombstones
            .get_or_create(&label(c))
            .set(d.tombstones() as i64);
        self.delta_indexed
            .get_or_create(&label(c))
            .set(d.linked() as i64);
        self.delta_bytes
            .get_or_create(&label(c))
            .set((d.heap_bytes() + d.links().map_or(0, |o| o.heap_bytes())) as i64);
    }

    pub(super) fn error(&self, c: &str) {
        self.errors.get_or_create(&label(c)).inc();
    }
}
