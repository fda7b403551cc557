//! What the handlers share: the served collections and the server's operational state.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Keys;
use crate::metrics::{Metrics, StoreMetrics};
use crate::overload::Limiter;
use crate::registry::{Live, Registry, ReloadReport, Trigger};

pub struct AppState {
    /// The served collections; swapped whole on reload.
    pub registry: Arc<Registry>,
    /// Each middleware takes its own part as its state (see `router`).
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub keys: Arc<Keys>,
    /// False while starting up and while draining.
    pub ready: AtomicBool,
    /// Collections `/readyz` waits for (store mode; see [`AppState::expect`]).
    pub expected: ArcSwap<BTreeSet<String>>,
    /// Set in store mode: `/readyz` also waits for at least one collection.
    pub wait_for_collections: bool,
    /// The store sync's counters (registered in `/metrics` in store mode only).
    pub store: StoreMetrics,
    /// The write path and log tail (store mode: set by the binary once it has the store).
    pub writes: std::sync::OnceLock<Arc<crate::writes::Writes>>,
    /// The write log's metrics (registered in `/metrics` in store mode only).
    pub log_metrics: crate::writes::LogMetrics,
}

impl AppState {
    /// The collections a request works on (lock-free; keeps them mapped while held).
    pub fn live(&self) -> Arc<Live> {
        self.registry.live()
    }

    /// Adds collections `/readyz` waits for: it answers 200 only once each has a version
    /// loaded. For store mode, which learns the names from the store after starting.
    pub fn expect<I: IntoIterator<Item = String>>(&self, names: I) {
        let names: Vec<String> = names.into_iter().collect();
        self.expected.rcu(|old| {
            let mut set = BTreeSet::clone(old);
            set.extend(names.iter().cloned());
            set
        });
    }

    /// Expected collections without a loaded version, by name.
    pub fn missing(&self) -> Vec<String> {
        let live = self.live();
        self.expected
            .load()
            .iter()
            .filter(|n| !live.versions.contains_key(*n))
            .cloned()
            .collect()
    }

    /// Why `/readyz` answers 503, or `None` when ready: (message, missing collections).
    pub fn not_ready(&self) -> Option<(String, Vec<String>)> {
        if !self.ready.load(Ordering::Acquire) {
            return Some((
                "the server is starting up or shutting down".into(),
                Vec::new(),
            ));
        }
        let missing = self.missing();
        if !missing.is_empty() {
            let message = format!("waiting for collection(s) to load: {}", missing.join(", "));
            return Some((message, missing));
        }
        if self.wait_for_collections && self.live().versions.is_empty() {
            return Some(("no collection loaded yet".into(), Vec::new()));
        }
        if self.writes.get().is_some_and(|w| !w.caught_up()) {
            return Some((
                "applying the write log up to the head seen at start".into(),
                Vec::new(),
            ));
        }
        None
    }

    /// Re-reads the index root and swaps in what changed (store mode: after a download,
    /// with [`Trigger::Store`]).
    pub async fn reload(&self, trigger: Trigger) -> ReloadReport {
        self.registry.reload(trigger).await
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::path::Path;

    use earshot_core::format::Verify;

    use super::*;
    use crate::overload::LimitOptions;
    use crate::registry::tests::build_version;
    use crate::registry::{RegistryOptions, SwapMetrics};

    /// Store mode's state on `root` (empty at first), ready to serve.
    fn store_state(root: &Path) -> AppState {
        let mut metrics = Metrics::new();
        let opts = RegistryOptions {
            allow_empty: true,
            ..RegistryOptions::new(Verify::Full, 64)
        };
        let registry = Registry::open(root, &opts, SwapMetrics::new(&mut metrics)).unwrap();
        let limiter = Limiter::new(LimitOptions::default(), &mut metrics);
        let store = StoreMetrics::default();
        store.register(&mut metrics.registry);
        AppState {
            registry: Arc::new(registry),
            metrics: Arc::new(metrics),
            limiter: Arc::new(limiter),
            keys: Arc::new(Keys::load(None).unwrap()),
            ready: AtomicBool::new(true),
            expected: Default::default(),
            wait_for_collections: true,
            store,
            writes: Default::default(),
            log_metrics: Default::default(),
        }
    }

    #[tokio::test]
    async fn readiness_waits_for_every_expected_collection() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let state = store_state(&root);
        // Nothing loaded yet: not ready even with nothing expected.
        let (message, missing) = state.not_ready().unwrap();
        assert!(message.contains("no collection"), "{message}");
        assert!(missing.is_empty());

        state.expect(["tracks".to_string(), "creators".to_string()]);
        let (message, missing) = state.not_ready().unwrap();
        assert_eq!(missing, ["creators", "tracks"]);
        assert!(message.contains("creators, tracks"), "{message}");

        build_version(&root, "tracks", "V1", 4);
        state.reload(Trigger::Store).await;
        assert_eq!(state.not_ready().unwrap().1, ["creators"]);

        build_version(&root, "creators", "V1", 4);
        state.reload(Trigger::Store).await;
        assert_eq!(state.not_ready(), None);

        // Draining wins over everything.
        state.ready.store(false, Ordering::Release);
        assert!(state.not_ready().unwrap().0.contains("shutting down"));

        // The store metrics are exposed for the sync loop to bump.
        state.store.downloads.inc();
        state.store.download_bytes.inc_by(1234);
        state.store.last_sync_success_timestamp.set(1.5e9);
        let text = state.metrics.encode();
        for line in [
            "earshot_store_downloads_total 1",
            "earshot_store_download_bytes_total 1234",
            "earshot_store_syncs_ok_total 0",
            "earshot_store_sync_errors_total 0",
            "earshot_store_last_sync_success_timestamp_seconds 1500000000",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
