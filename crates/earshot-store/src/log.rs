//! A collection's write log in the store: `URL/NAME/log/SEQ.seg`, one segment per
//! acknowledged batch (docs/format.md "Write log"; the bytes are
//! `earshot_core::format::log`). Appending is a create-if-absent of the next number, so the
//! store decides the order and no two writers share a number.

use std::time::Duration;

use anyhow::Context;
use earshot_core::format::log::{parse_segment_name, segment_name, Ops, Segment};
use earshot_core::format::{names, Manifest};
use earshot_core::shard::ShardSpec;
use futures_util::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::StoreError;
use crate::store::{check_name, Store};

/// The directory of a collection's log under `URL/NAME/` (never a version name).
pub const LOG_DIR: &str = "log";
/// How many numbers an append tries before it gives up (each loss means another writer
/// appended a batch in between).
const APPEND_ATTEMPTS: usize = 64;

/// One collection's write log.
#[derive(Clone, Debug)]
pub struct Log {
    store: Store,
    name: String,
}

impl Store {
    /// The write log of collection `name`.
    pub fn log(&self, name: &str) -> anyhow::Result<Log> {
        check_name("collection", name)?;
        Ok(Log {
            store: self.clone(),
            name: name.to_string(),
        })
    }
}

impl Log {
    /// The collection whose log this is.
    pub fn collection(&self) -> &str {
        &self.name
    }

    /// `URL/NAME/log/SEQ.seg`, for messages.
    pub fn segment_url(&self, seq: u64) -> String {
        self.store
            .object_url(&[&self.name, LOG_DIR, &segment_name(seq)])
    }

    /// Appends `ops` as the next segment and returns its sequence number once the store has
    /// it. `after` is a number known to be taken already (the caller's last seen head; 0
    /// when unknown): the append tries `after + 1` and, when another writer has it, the next
    /// free number after the store's head.
    pub async fn append(&self, mut ops: Ops, after: u64) -> anyhow::Result<u64> {
        self.store.check_conditional_writes().await?;
        let written_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // `seq` may be taken only while `seq - 1` exists: pruning never deletes the newest
        // segment, so this is what keeps a stale writer from reusing a pruned number.
        let mut seq = after + 1;
        if seq == 1 || !self.exists(seq - 1).await? {
            seq = self.head().await? + 1;
        }
        for attempt in 0..APPEND_ATTEMPTS {
            let segment = Segment {
                seq,
                collection: self.name.clone(),
                written_at_ms,
                ops,
            };
            let bytes = segment.encode();
            let key = self.store.key(&[&self.name, LOG_DIR, &segment_name(seq)]);
            match self
                .store
                .os
                .put_opts(
                    &key,
                    PutPayload::from(bytes),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(_) => return Ok(seq),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    tracing::debug!(collection = self.name, seq, attempt, "log number taken");
                    seq = self.head().await?.max(seq) + 1;
                    // Give the other writers room when many append at once: a jitter of this
                    // task's own (the clock's nanoseconds), so tasks do not retry in step.
                    if attempt > 2 {
                        let nanos = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos() as u64);
                        let jitter = (nanos ^ seq.wrapping_mul(0x9e37_79b9)) % 20;
                        tokio::time::sleep(Duration::from_millis(2 + jitter)).await;
                    }
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot write {}", self.segment_url(seq))))
                }
            }
            ops = segment.ops;
        }
        anyhow::bail!(
            "{}: {APPEND_ATTEMPTS} numbers in a row were taken by other writers; try again",
            self.store.object_url(&[&self.name, LOG_DIR])
        )
    }

    /// Segment `seq`, or `None` when the log has no such segment (yet, or any more). A
    /// segment whose bytes are not segment `seq` of this collection is an error naming it.
    pub async fn read(&self, seq: u64) -> anyhow::Result<Option<Segment>> {
        let key = self.store.key(&[&self.name, LOG_DIR, &segment_name(seq)]);
        let got = match self.store.os.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read {}", self.segment_url(seq)))
                )
            }
        };
        if got.meta.size > earshot_core::format::log::MAX_SEGMENT_BYTES {
            return Err(StoreError::Corrupt {
                object: self.segment_url(seq),
                problem: format!("{} bytes is larger than any segment", got.meta.size),
            }
            .into());
        }
        let bytes = got
            .bytes()
            .await
            .with_context(|| format!("cannot read {}", self.segment_url(seq)))?;
        Segment::decode(&bytes, &self.name, seq)
            .map(Some)
            .map_err(|problem| {
                StoreError::Corrupt {
                    object: self.segment_url(seq),
                    problem,
                }
                .into()
            })
    }

    /// Whether segment `seq` exists (one HEAD request).
    pub async fn exists(&self, seq: u64) -> anyhow::Result<bool> {
        let key = self.store.key(&[&self.name, LOG_DIR, &segment_name(seq)]);
        match self.store.os.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("cannot read {}", self.segment_url(seq))))
            }
        }
    }

    /// Every segment number in the log, ascending (one listing).
    pub async fn list(&self) -> anyhow::Result<Vec<u64>> {
        let dir = self.store.key(&[&self.name, LOG_DIR]);
        let objects: Vec<_> = self
            .store
            .os
            .list(Some(&dir))
            .try_collect()
            .await
            .with_context(|| {
                format!(
                    "cannot list {}",
                    self.store.object_url(&[&self.name, LOG_DIR])
                )
            })?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| o.location.filename().and_then(parse_segment_name))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The newest segment's number (0 for an empty log).
    pub async fn head(&self) -> anyhow::Result<u64> {
        Ok(self.list().await?.last().copied().unwrap_or(0))
    }

    /// Deletes the segments up to `through` that every served version already includes,
    /// except the newest segment of the log (which keeps the numbering going). Returns how
    /// many were deleted.
    pub async fn prune_through(&self, through: u64) -> anyhow::Result<usize> {
        let seqs = self.list().await?;
        let newest = seqs.last().copied().unwrap_or(0);
        let mut deleted = 0;
        for seq in seqs.into_iter().filter(|&s| s <= through && s < newest) {
            let key = self.store.key(&[&self.name, LOG_DIR, &segment_name(seq)]);
            match self.store.os.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot delete {}", self.segment_url(seq))))
                }
            }
        }
        Ok(deleted)
    }
}

impl Store {
    /// The `log_through` of a version in the store: from `NAME/V/manifest.json`, or shard
    /// 0's for a sharded version (every shard of a build folds in the same log). `None`:
    /// the version includes no write log.
    pub async fn version_log_through(
        &self,
        name: &str,
        version: &str,
        shards: Option<u32>,
    ) -> anyhow::Result<Option<u64>> {
        check_name("collection", name)?;
        check_name("version", version)?;
        let shard_dir = shards.map(|count| ShardSpec { index: 0, count }.dir_name());
        let mut parts = vec![name, version];
        parts.extend(shard_dir.as_deref());
        parts.push(names::MANIFEST);
        let url = self.object_url(&parts);
        let bytes = self
            .os
            .get(&self.key(&parts))
            .await
            .with_context(|| format!("cannot read {url}"))?
            .bytes()
            .await
            .with_context(|| format!("cannot read {url}"))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            object: url,
            problem: format!("not a manifest: {e}"),
        })?;
        Ok(m.log_through)
    }

    /// Refuses a version that could not be served with the write log as it is now: one whose
    /// `log_through` is `P` while segment `P + 1` is gone and later segments exist (the
    /// writes in between would be lost). Checked before CURRENT moves to it.
    pub async fn check_log_covers(
        &self,
        name: &str,
        version: &str,
        shards: Option<u32>,
    ) -> anyhow::Result<()> {
        let through = self
            .version_log_through(name, version, shards)
            .await?
            .unwrap_or(0);
        let log = self.log(name)?;
        let listed = log.list().await?;
        match listed.iter().find(|&&s| s > through) {
            Some(&next) if next != through + 1 => Err(StoreError::NotReady(format!(
                "{} includes the write log through {through}, but the write log after {through} \
                 was pruned ({} now starts at segment {next}); build a new version with \
                 --apply-log (earshot build --base DIR --apply-log {}) and publish it: serving \
                 this one would lose the writes in between",
                self.object_url(&[name, version]),
                self.object_url(&[name, LOG_DIR]),
                self.object_url(&[name]),
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_core::format::log::LogItem;

    fn upsert(id: &str) -> Ops {
        Ops::Upsert {
            dim: 2,
            items: vec![LogItem {
                id: id.into(),
                vector: vec![1.0, 0.5],
                creator: Some("c".into()),
                popularity: None,
            }],
        }
    }

    #[tokio::test]
    async fn appends_take_consecutive_numbers_even_from_stale_writers() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&url).unwrap();
        let log = store.log("tracks").unwrap();
        assert_eq!(log.head().await.unwrap(), 0);
        assert_eq!(log.read(1).await.unwrap(), None);
        assert_eq!(log.append(upsert("a"), 0).await.unwrap(), 1);
        // A writer that has not seen segment 1 still gets a fresh number.
        assert_eq!(log.append(upsert("b"), 0).await.unwrap(), 2);
        let del = Ops::Delete {
            ids: vec!["a".into()],
        };
        assert_eq!(log.append(del.clone(), 2).await.unwrap(), 3);
        assert_eq!(log.list().await.unwrap(), [1, 2, 3]);
        let s = log.read(3).await.unwrap().unwrap();
        assert_eq!((s.seq, &s.ops), (3, &del));
        // Many writers at once: every batch lands once, numbers have no gaps.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(upsert(&format!("w{i}")), 3).await.unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (4..20).collect::<Vec<u64>>());
        // Pruning keeps the newest segment.
        assert_eq!(log.prune_through(100).await.unwrap(), 18);
        assert_eq!(log.list().await.unwrap(), [19]);
        assert_eq!(log.append(upsert("c"), 0).await.unwrap(), 20);
        // A writer whose last seen head was pruned away does not reuse its number.
        assert_eq!(log.append(upsert("d"), 5).await.unwrap(), 21);
        assert_eq!(log.list().await.unwrap(), [19, 20, 21]);
    }

    #[tokio::test]
    async fn a_damaged_or_misplaced_segment_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let log = Store::open(&url).unwrap().log("tracks").unwrap();
        log.append(upsert("a"), 0).await.unwrap();
        let path = dir.path().join("tracks/log").join(segment_name(1));
        // Segment 1's bytes under the name of 2.
        std::fs::copy(&path, dir.path().join("tracks/log").join(segment_name(2))).unwrap();
        let e = format!("{:#}", log.read(2).await.unwrap_err());
        assert!(
            e.contains("00000000000000000002.seg") && e.contains("sequence number 1"),
            "{e}"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = format!("{:#}", log.read(1).await.unwrap_err());
        assert!(
            e.contains("00000000000000000001.seg") && e.contains("checksum"),
            "{e}"
        );
    }
}
