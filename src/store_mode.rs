//! `earshot serve --store URL`: keeps the index root at the store's CURRENT versions while the
//! server answers from it. The store crate downloads and verifies; the server's registry does
//! the validated, pre-warmed swap, exactly as for a version built locally. Neither crate knows
//! the other: this loop is the only place they meet.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use earshot_core::format::log::{Ops, Segment};
use earshot_server::registry::Trigger;
use earshot_server::state::AppState;
use earshot_server::writes::{BoxFuture, LogStore, WriteOptions, Writes};
use earshot_store::{Store, Syncer};

/// How often the store is polled when `--watch-interval` is not given.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);

/// First retry after a failed poll; doubles up to [`MAX_BACKOFF`] (or the poll interval, when
/// longer) while the store keeps failing.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Polls the store every `every` (sooner, with backoff, after a failure) for as long as the
/// server runs. Serving never waits on it: a store that is down only delays new versions.
///
/// The loop runs on a thread and runtime of its own at the lowest CPU priority, and so do the
/// blocking threads it starts (Linux threads inherit their creator's nice value): fetching a
/// version hashes, verifies and fsyncs every byte of it, which on the query runtime stalled
/// its workers — 34 queries answered 503 at one instant on a replica at a quarter of its
/// capacity, seconds before the swap (BENCHMARKS.md §11, soak run 7).
pub fn spawn(state: Arc<AppState>, syncer: Syncer, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("earshot-store-sync".into())
        .spawn(move || {
            earshot_server::background::lower_this_thread();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("earshot-store-sync")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the store sync runtime (no new versions will be fetched): {e}");
                    return;
                }
            };
            rt.block_on(sync_loop(state, syncer, every));
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the store sync thread (no new versions will be fetched): {e}"
        );
    }
}

async fn sync_loop(state: Arc<AppState>, syncer: Syncer, every: Duration) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let ok = poll(&state, &syncer).await;
        let wait = if ok {
            backoff = FIRST_BACKOFF;
            every
        } else {
            let wait = backoff.min(every.max(MAX_BACKOFF));
            backoff = (backoff * 2).min(every.max(MAX_BACKOFF));
            wait
        };
        tokio::time::sleep(jitter(wait)).await;
    }
}

/// Accepts writes into the store's logs and tails them (`POST`/`DELETE /admin/…/items`).
/// Called before the sync loop starts, so every version it swaps in gets the log applied.
pub fn start_writes(state: &Arc<AppState>, store: Store, poll: Duration) {
    let writes = Writes::new(
        Arc::new(StoreLog(store)),
        &state.registry,
        WriteOptions {
            poll,
            ..WriteOptions::default()
        },
        state.log_metrics.clone(),
    );
    let _ = state.writes.set(writes.clone());
    writes.start();
}

/// The server's view of the write log: `earshot_store::Log` per collection.
struct StoreLog(Store);

impl LogStore for StoreLog {
    fn append<'a>(
        &'a self,
        collection: &'a str,
        ops: Ops,
        after: u64,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move { self.0.log(collection)?.append(ops, after).await })
    }

    fn read<'a>(
        &'a self,
        collection: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Arc<Segment>>>> {
        Box::pin(async move { Ok(self.0.log(collection)?.read(seq).await?.map(Arc::new)) })
    }

    fn head<'a>(&'a self, collection: &'a str) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move { self.0.log(collection)?.head().await })
    }
}

/// One round: sync, tell readiness what to wait for, swap in what was downloaded. Whether
/// every collection is at its CURRENT.
async fn poll(state: &AppState, syncer: &Syncer) -> bool {
    let report = syncer.sync_once().await;
    state.expect(report.expected.iter().cloned());
    for c in &report.changed {
        // A roll-back to a version still in the cache downloads nothing.
        if c.downloaded > 0 {
            state.store.downloads.inc();
            state.store.download_bytes.inc_by(c.downloaded);
        }
        tracing::info!(
            collection = c.name,
            from = c.from.as_deref().unwrap_or("-"),
            to = c.to,
            bytes = c.downloaded,
            "new version from the store"
        );
    }
    if !report.changed.is_empty() {
        let reload = state.registry.reload(Trigger::Store).await;
        if reload.refused() > 0 {
            tracing::warn!(?reload, "the registry refused a version from the store");
        }
    }
    if report.errors.is_empty() {
        state.store.sync_ok.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        state.store.last_sync_success_timestamp.set(now);
        true
    } else {
        state.store.sync_errors.inc();
        for e in &report.errors {
            tracing::warn!(
                collection = e.collection.as_deref().unwrap_or("-"),
                store = syncer.store.url(),
                "store sync failed (serving what is loaded; retrying): {:#}",
                e.error
            );
        }
        false
    }
}

/// ±10 %, so a fleet of replicas restarted together does not poll the store in lock-step.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    // splitmix64 finaliser: a uniform value from a weak seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64(0.9 + 0.2 * unit)
}
