//! [`Syncer`]: one poll of a replica's cache against the store.

use std::path::PathBuf;

use anyhow::Context;
use earshot_core::layout;
use earshot_core::shard::ShardSpec;

use crate::fetch::FetchOptions;
use crate::store::Store;

/// Keeps a local index root (`earshot serve --index-root CACHE`) at the store's CURRENT
/// versions. The caller polls [`sync_once`](Self::sync_once) (with backoff while it
/// reports errors) and reloads its registry when something changed.
#[derive(Debug, Clone)]
pub struct Syncer {
    /// The store.
    pub store: Store,
    /// The index root the server serves from.
    pub cache_root: PathBuf,
    /// The shard this replica serves (`--shard I/N`): a sharded collection is fetched as
    /// shard I; `None` refuses sharded collections.
    pub shard: Option<ShardSpec>,
    /// Versions kept per collection (at least 1; the active one is never deleted).
    pub keep: usize,
    /// Cap on a version download's rate, bytes per second (None: uncapped).
    pub max_fetch_bytes_per_sec: Option<u64>,
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Every collection with a CURRENT in the store (empty when the store could not be
    /// listed: see `errors`). A replica is ready when each has a version loaded.
    pub expected: Vec<String>,
    /// Collections whose link now points at a new version.
    pub changed: Vec<SyncChange>,
    /// What failed; the cache keeps what it had for these.
    pub errors: Vec<SyncError>,
}

/// A collection switched to a new version.
#[derive(Debug, Clone)]
pub struct SyncChange {
    /// The collection.
    pub name: String,
    /// The version it served before, if any.
    pub from: Option<String>,
    /// The version it serves now.
    pub to: String,
    /// Bytes downloaded for it.
    pub downloaded: u64,
}

/// One failure of a poll.
#[derive(Debug)]
pub struct SyncError {
    /// The collection, or `None` when the store itself could not be listed.
    pub collection: Option<String>,
    /// What went wrong (with its causes).
    pub error: anyhow::Error,
}

impl Syncer {
    /// For each collection of the store: read CURRENT; if the local link `ROOT/NAME`
    /// already points at it, nothing; else fetch it (resuming a partial download), switch
    /// the link, and delete versions beyond `keep`. Errors are per collection and leave the
    /// cache as it was.
    pub async fn sync_once(&self) -> SyncReport {
        let mut report = SyncReport::default();
        let names = match self.store.collections().await {
            Ok(n) => n,
            Err(error) => {
                report.errors.push(SyncError {
                    collection: None,
                    error,
                });
                return report;
            }
        };
        report.expected = names.clone();
        for name in names {
            match self.sync_collection(&name).await {
                Ok(Some(change)) => report.changed.push(change),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(collection = name, "sync failed: {error:#}");
                    report.errors.push(SyncError {
                        collection: Some(name),
                        error,
                    })
                }
            }
        }
        report
    }

    async fn sync_collection(&self, name: &str) -> anyhow::Result<Option<SyncChange>> {
        let current = self
            .store
            .current(name)
            .await?
            .with_context(|| format!("{}/{name} has no CURRENT", self.store.url()))?;
        let link = self.cache_root.join(name);
        let active = layout::active_version(&link);
        if active.as_deref() == Some(current.version.as_str()) {
            return Ok(None);
        }
        if let Ok(m) = std::fs::symlink_metadata(&link) {
            if !m.file_type().is_symlink() {
                anyhow::bail!(
                    "{} is a plain directory: an index root synced from a store holds only versioned links (move it away)",
                    link.display()
                );
            }
        }
        std::fs::create_dir_all(&self.cache_root)
            .with_context(|| format!("cannot create {}", self.cache_root.display()))?;
        let opts = FetchOptions {
            shard: self.shard,
            max_bytes_per_sec: self.max_fetch_bytes_per_sec,
            ..Default::default()
        };
        let fetched = self
            .store
            .fetch(name, &current, &self.cache_root, &opts)
            .await?;
        layout::switch_link(&link, &fetched.version)?;
        let removed = layout::prune(&link, self.keep)?;
        tracing::info!(
            collection = name,
            from = ?active,
            to = fetched.version,
            pruned = removed.len(),
            "switched to the store's CURRENT"
        );
        Ok(Some(SyncChange {
            name: name.to_string(),
            from: active,
            to: fetched.version,
            downloaded: fetched.downloaded,
        }))
    }
}
