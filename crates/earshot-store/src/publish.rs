//! `earshot publish`: a built collection uploaded as one version, COMPLETE written last,
//! then CURRENT moved by a conditional write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use earshot_core::collection::{sanity_check, Collection};
use earshot_core::format::{names, Verify};
use earshot_core::shard::ShardSpec;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::records::{self, Complete, Current, ObjectEntry};
use crate::store::{check_name, parse_shard_dir, Store, COMPLETE};

/// S3's smallest part of a multipart upload (all parts but the last).
const MIN_PART: usize = 5 << 20;

/// How a collection is published.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The collection's name in the store (default: the directory's name).
    pub name: Option<String>,
    /// The version's name (default: the version a versioned link points at, else the
    /// build time `YYYYMMDDTHHMMSSZ`). Required for a shard: every shard of a version must
    /// be published under one name.
    pub version: Option<String>,
    /// Objects uploaded at once.
    pub parallelism: usize,
    /// Files above this size go up in parts of this size (multipart upload; parts are at
    /// least 5 MiB, S3's minimum).
    pub part_size: usize,
    /// Move CURRENT once the version is complete (`false`: upload only).
    pub make_current: bool,
    /// Cap on the upload rate over all the version's files, bytes per second (None: as fast
    /// as the store takes them): a publisher sharing a host with serving replicas.
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            name: None,
            version: None,
            parallelism: 4,
            part_size: 16 << 20,
            make_current: true,
            max_bytes_per_sec: None,
        }
    }
}

/// What `earshot publish` prints (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The store's URL.
    pub store: String,
    /// The collection's name.
    pub name: String,
    /// The version published.
    pub version: String,
    /// `I/N` for one shard of a sharded version.
    pub shard: Option<String>,
    /// Objects uploaded (COMPLETE not counted).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Wall time of the verification, upload and pointer move.
    pub seconds: f64,
    /// Whether CURRENT points at this version now (a shard: only once every shard is
    /// complete).
    pub current: bool,
    /// The write log was pruned through this segment after CURRENT moved (the previous
    /// CURRENT's `log_through`, or this version's when there was none; docs/format.md
    /// "Write log"); `None` when nothing was pruned.
    pub log_pruned_through: Option<u64>,
    /// Segments deleted by that pruning.
    pub log_segments_pruned: usize,
    /// Why pruning failed, when it did (the publish itself succeeded; the next one prunes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_prune_error: Option<String>,
}

impl PublishReport {
    /// The report as one line of JSON (what `earshot publish` prints).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("the report serialises")
    }
}

impl Store {
    /// Verifies the collection in `dir` (every checksum), uploads it as one version
    /// (`NAME/V/`, or `NAME/V/shard-I-of-N/` for a shard), writes COMPLETE last, then moves
    /// CURRENT — for a shard only when every shard of the version is complete (whichever
    /// publisher completes the set commits it). An upload that fails leaves no COMPLETE, so
    /// it can never become CURRENT; publishing the same version again resumes it.
    pub async fn publish(
        &self,
        dir: &Path,
        opts: &PublishOptions,
    ) -> anyhow::Result<PublishReport> {
        let started = Instant::now();
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => dir
                .file_name()
                .and_then(|s| s.to_str())
                .map(str::to_string)
                .with_context(|| format!("{} has no directory name: pass --name", dir.display()))?,
        };
        check_name("collection", &name)?;

        let opened = dir.to_path_buf();
        // The checks every replica makes before it serves a fetched version: a version they
        // would all refuse is refused here, before it is uploaded.
        let manifest = tokio::task::spawn_blocking(move || {
            let c = Collection::open(&opened, Verify::Full)?;
            c.check_graph()?;
            sanity_check(&c).map_err(anyhow::Error::msg)?;
            anyhow::Ok(c.manifest.clone())
        })
        .await?
        .with_context(|| {
            format!(
                "{} is not a valid collection: nothing was published",
                dir.display()
            )
        })?;
        let shard: Option<ShardSpec> = match &manifest.shard {
            Some(info) => Some(info.spec().map_err(|problem| {
                anyhow::anyhow!("{}: {problem}", dir.join(names::MANIFEST).display())
            })?),
            None => None,
        };
        let version = match (&opts.version, shard) {
            (Some(v), _) => v.clone(),
            (None, Some(s)) => anyhow::bail!(
                "{} is shard {s} of a sharded collection: pass --version, the same for every shard of this build",
                dir.display()
            ),
            (None, None) => earshot_core::layout::active_version(dir)
                .unwrap_or_else(|| earshot_core::layout::compact_time(&manifest.built_at)),
        };
        check_name("version", &version)?;

        self.check_conditional_writes().await?;
        self.check_version_free(&name, &version, shard).await?;

        let mut base: Vec<String> = vec![name.clone(), version.clone()];
        if let Some(s) = shard {
            base.push(s.dir_name());
        }
        let base_refs: Vec<&str> = base.iter().map(String::as_str).collect();
        let mut files: Vec<String> = vec![names::MANIFEST.to_string()];
        files.extend(manifest.files.keys().cloned());
        let part_size = opts.part_size.max(1);
        // Owned jobs: the stream's futures borrow nothing, so the whole publish stays `Send`.
        let jobs: Vec<(String, ObjPath, String, PathBuf)> = files
            .iter()
            .map(|f| {
                let mut parts = base_refs.clone();
                parts.push(f);
                (
                    f.clone(),
                    self.key(&parts),
                    self.object_url(&parts),
                    dir.join(f),
                )
            })
            .collect();
        let pace = crate::pace::Pace::new(opts.max_bytes_per_sec);
        let entries: BTreeMap<String, ObjectEntry> = futures_util::stream::iter(jobs)
            .map(|(f, key, url, path)| {
                let (os, pace) = (self.os.clone(), &pace);
                async move {
                    let entry = upload(os.as_ref(), &key, &path, part_size, pace)
                        .await
                        .with_context(|| format!("cannot upload {} to {url}", path.display()))?;
                    anyhow::Ok((f, entry))
                }
            })
            .buffer_unordered(opts.parallelism.max(1))
            .try_collect()
            .await?;
        let bytes = entries.values().map(|e| e.bytes).sum();

        let complete = Complete {
            collection: name.clone(),
            version: version.clone(),
            shard: manifest.shard.clone(),
            files: entries,
            manifest_xxh3: manifest
                .files
                .iter()
                .map(|(k, v)| (k.clone(), v.xxh3.clone()))
                .collect(),
            completed_at: records::now(),
            publisher: records::publisher(),
        };
        let mut text = serde_json::to_vec_pretty(&complete).expect("COMPLETE serialises");
        text.push(b'\n');
        let mut parts = base_refs.clone();
        parts.push(COMPLETE);
        match self
            .os
            .put_opts(
                &self.key(&parts),
                PutPayload::from(text),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => anyhow::bail!(
                "another publisher completed {} first; its objects may have been overwritten by this upload: publish under a new --version",
                self.object_url(&base_refs)
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot write {}", self.object_url(&parts))))
            }
        }
        tracing::info!(store = self.url(), collection = name, version, shard = ?shard, "version uploaded");

        // `moved_from`: Some(what CURRENT held) when this publish moved it.
        let (current, moved_from) = if !opts.make_current {
            (false, None)
        } else if let Some(s) = shard {
            self.commit_if_all_shards(&name, &version, s.count).await?
        } else {
            let v = version.clone();
            let mut before = None;
            let c = self
                .move_current(&name, |found| {
                    before = Some(found.cloned());
                    Ok(Some(Current {
                        version: v.clone(),
                        shards: None,
                        published_at: records::now(),
                        publisher: records::publisher(),
                    }))
                })
                .await?;
            (c.version == version, before)
        };
        let mut pruned = (None, 0, None);
        if let (Some(before), Some(through)) = (moved_from, manifest.log_through) {
            match self.prune_log(&name, before.as_ref(), through).await {
                Ok((p, n)) => pruned = (p, n, None),
                Err(e) => {
                    tracing::warn!(
                        collection = name,
                        "pruning the write log failed (the next publish prunes it): {e:#}"
                    );
                    pruned.2 = Some(format!("{e:#}"));
                }
            }
        }
        Ok(PublishReport {
            store: self.url().to_string(),
            name,
            version,
            shard: shard.map(|s| s.to_string()),
            files: files.len(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            current,
            log_pruned_through: pruned.0,
            log_segments_pruned: pruned.1,
            log_prune_error: pruned.2,
        })
    }

    /// After CURRENT moved from `before` to a version that includes the write log through
    /// `through`: deletes the segments every version a replica may still serve includes —
    /// through `before`'s `log_through` (replicas serve it until their next poll; older
    /// versions are no longer served), or through `through` when there was no CURRENT.
    /// Nothing when `before` includes no log. Returns what it pruned through and how many
    /// segments it deleted.
    async fn prune_log(
        &self,
        name: &str,
        before: Option<&Current>,
        through: u64,
    ) -> anyhow::Result<(Option<u64>, usize)> {
        let upto = match before {
            None => through,
            Some(prev) => match self
                .version_log_through(name, &prev.version, prev.shards)
                .await?
            {
                Some(p) => p.min(through),
                None => return Ok((None, 0)),
            },
        };
        if upto == 0 {
            return Ok((None, 0));
        }
        let deleted = self.log(name)?.prune_through(upto).await?;
        tracing::info!(
            collection = name,
            through = upto,
            deleted,
            "write log pruned"
        );
        Ok((Some(upto), deleted))
    }

    /// Refuses a version (or shard) that is already complete, or whose layout (sharded or
    /// not, the shard count) differs from this one.
    async fn check_version_free(
        &self,
        name: &str,
        version: &str,
        shard: Option<ShardSpec>,
    ) -> anyhow::Result<()> {
        let listed = self
            .os
            .list_with_delimiter(Some(&self.key(&[name, version])))
            .await
            .with_context(|| format!("cannot list {}", self.object_url(&[name, version])))?;
        let here = self.object_url(&[name, version]);
        let root_complete = listed
            .objects
            .iter()
            .any(|o| o.location.filename() == Some(COMPLETE));
        let shard_dirs: Vec<(u32, u32)> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_shard_dir))
            .collect();
        match shard {
            None if root_complete => anyhow::bail!(
                "{here} is already published (COMPLETE exists): published versions are never rewritten; pass another --version"
            ),
            None if !shard_dirs.is_empty() => anyhow::bail!(
                "{here} holds shards, but this collection is not a shard: pass another --version"
            ),
            Some(s) if root_complete || !listed.objects.is_empty() => anyhow::bail!(
                "{here} holds an unsharded collection, but this is shard {s}: pass another --version"
            ),
            Some(s) => {
                if let Some((_, n)) = shard_dirs.iter().find(|(_, n)| *n != s.count) {
                    anyhow::bail!(
                        "{here} holds shards of a {n}-way split, but this is shard {s}: every shard of a version must come from one split; pass another --version"
                    );
                }
                if self
                    .read_complete(&[name, version, &s.dir_name()])
                    .await?
                    .is_some()
                {
                    anyhow::bail!(
                        "{}/{} is already published (COMPLETE exists): pass another --version",
                        here,
                        s.dir_name()
                    );
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Moves CURRENT to `version` when all `count` shards of it have COMPLETE; `true` when
    /// CURRENT points at it afterwards, and what CURRENT held when this call moved it.
    async fn commit_if_all_shards(
        &self,
        name: &str,
        version: &str,
        count: u32,
    ) -> anyhow::Result<(bool, Option<Option<Current>>)> {
        let mut done = 0;
        for i in 0..count {
            let dir = ShardSpec { index: i, count }.dir_name();
            let key = self.key(&[name, version, &dir, COMPLETE]);
            match self.os.head(&key).await {
                Ok(_) => done += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot read {}",
                        self.object_url(&[name, version, &dir, COMPLETE])
                    )))
                }
            }
        }
        if done < count {
            tracing::info!(
                collection = name,
                version,
                done,
                count,
                "shard uploaded; CURRENT waits for the others"
            );
            return Ok((false, None));
        }
        let mut before = None;
        let c = self
            .move_current(name, |found| {
                if found.is_some_and(|c| c.version == version && c.shards == Some(count)) {
                    before = None;
                    return Ok(None);
                }
                before = Some(found.cloned());
                Ok(Some(Current {
                    version: version.to_string(),
                    shards: Some(count),
                    published_at: records::now(),
                    publisher: records::publisher(),
                }))
            })
            .await?;
        Ok((c.version == version, before))
    }
}

/// Uploads one file (in parts above `part_size`), checks the stored size, and returns its
/// size and whole-file xxh3.
async fn upload(
    os: &dyn ObjectStore,
    key: &ObjPath,
    path: &PathBuf,
    part_size: usize,
    pace: &crate::pace::Pace,
) -> anyhow::Result<ObjectEntry> {
    let len = tokio::fs::metadata(path).await?.len();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    if len <= part_size as u64 {
        let data = tokio::fs::read(path).await?;
        hasher.update(&data);
        pace.took(len).await;
        os.put(key, PutPayload::from(data)).await?;
    } else {
        // S3 parts are 5 MiB at least (but the last) and 10,000 at most per object.
        let part = part_size.max(MIN_PART).max(len.div_ceil(9_000) as usize);
        let upload = os.put_multipart(key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut file = tokio::fs::File::open(path).await?;
        let result = async {
            loop {
                let mut buf = Vec::with_capacity(part);
                let n = (&mut file).take(part as u64).read_to_end(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf);
                pace.took(n as u64).await;
                writer.wait_for_capacity(2).await?;
                writer.put(Bytes::from(buf));
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await?;
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
    }
    let stored = os.head(key).await?.size;
    anyhow::ensure!(stored == len, "the store kept {stored} of its {len} bytes");
    Ok(ObjectEntry {
        bytes: len,
        xxh3: records::hex(hasher.digest()),
    })
}
