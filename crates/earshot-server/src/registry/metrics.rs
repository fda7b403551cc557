//! The registry's Prometheus metrics: swaps, refusals and the version in service.

use earshot_core::collection::Collection;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::metrics::{CollectionLabel, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub collection: String,
    pub version: String,
}

/// Swap metrics, registered into the server's registry.
#[derive(Clone, Default)]
pub struct SwapMetrics {
    pub swaps: Family<CollectionLabel, Counter>,
    pub refusals: Family<CollectionLabel, Counter>,
    pub version_info: Family<VersionLabel, Gauge>,
    items: Family<CollectionLabel, Gauge>,
    mapped_bytes: Family<CollectionLabel, Gauge>,
}

impl SwapMetrics {
    pub fn new(m: &mut Metrics) -> Self {
        let s = Self {
            items: m.items.clone(),
            mapped_bytes: m.mapped_bytes.clone(),
            ..Default::default()
        };
        register(&mut m.registry, &s);
        s
    }

    /// `c` serves at `version` now, in place of version `replaced`.
    pub(super) fn serving(&self, c: &Collection, version: &str, replaced: Option<&str>) {
        let label = CollectionLabel {
            collection: c.name.clone(),
        };
        if let Some(old) = replaced {
            self.version_info.remove(&VersionLabel {
                collection: c.name.clone(),
                version: old.to_string(),
            });
        }
        self.version_info
            .get_or_create(&VersionLabel {
                collection: c.name.clone(),
                version: version.to_string(),
            })
            .set(1);
        self.items.get_or_create(&label).set(c.len() as i64);
        self.mapped_bytes
            .get_or_create(&label)
            .set(c.mapped_bytes() as i64);
        // Present (at 0) from the start, so rates and alerts see them.
        let _ = self.swaps.get_or_create(&label);
        let _ = self.refusals.get_or_create(&label);
    }
}

fn register(r: &mut PromRegistry, s: &SwapMetrics) {
    r.register(
        "swaps",
        "New collection versions swapped in",
        s.swaps.clone(),
    );
    r.register(
        "swap_refusals",
        "New collection versions refused (failed verification, schema or sanity checks)",
        s.refusals.clone(),
    );
    r.register(
        "collection_version_info",
        "The version in service per collection (value 1)",
        s.version_info.clone(),
    );
}
