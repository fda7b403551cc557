//! [`Store`]: a store URL opened, its CURRENT pointers and version listings, and the
//! conditional-write probe every pointer move depends on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;

use crate::error::StoreError;
use crate::records::{self, Complete, Current};

/// The pointer object of a collection: `NAME/CURRENT`.
pub const CURRENT: &str = "CURRENT";
/// The object written last in a version (or shard) directory.
pub const COMPLETE: &str = "COMPLETE";
/// How many times a pointer move re-reads CURRENT after losing a race before giving up.
const CAS_ATTEMPTS: usize = 32;

/// An opened store: an object_store and the key prefix earshot owns inside it.
#[derive(Clone)]
pub struct Store {
    pub(crate) os: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
    probed: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// One version of a collection in a store, as `earshot versions --store` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version's name.
    pub version: String,
    /// Every object (every shard's, for a sharded version) is uploaded and COMPLETE written.
    pub complete: bool,
    /// CURRENT points at it.
    pub current: bool,
    /// `N` for a sharded version, `None` for an unsharded one.
    pub shards: Option<u32>,
    /// How many shards have their COMPLETE (`1` or `0` for an unsharded version).
    pub shards_complete: u32,
}

impl VersionInfo {
    /// One line for `earshot versions --store`: `*` marks CURRENT, then the version and
    /// whether it is complete.
    pub fn describe(&self) -> String {
        let mark = if self.current { '*' } else { ' ' };
        let state = match (self.complete, self.shards) {
            (true, None) => "complete".to_string(),
            (true, Some(n)) => format!("complete, {n} shards"),
            (false, None) => "incomplete (upload not finished: never served)".to_string(),
            (false, Some(n)) => format!(
                "incomplete: {} of {n} shards complete (never served)",
                self.shards_complete
            ),
        };
        format!("{mark} {}  {state}", self.version)
    }
}

impl Store {
    /// Opens `s3://bucket/prefix` (credentials, region and endpoint from the `AWS_*`
    /// environment variables; `AWS_ALLOW_HTTP=true` for plain http) or `file:///abs/path`.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with_env(url, &[])
    }

    /// [`open`](Self::open), with `AWS_*` settings that override the environment's (for
    /// tests and tools that must not change the process environment).
    pub fn open_with_env(url: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let (os, prefix) = crate::url::open(url, env)?;
        Ok(Self::from_object_store(
            os,
            prefix.as_ref(),
            url.trim_end_matches('/'),
        ))
    }

    /// A store over any object_store (tests wrap one to make it misbehave); `prefix` is the
    /// key prefix inside it, `url` names it in messages.
    pub fn from_object_store(os: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Self {
        Self {
            os,
            prefix: ObjPath::from(prefix),
            url: url.to_string(),
            probed: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The store's URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of `parts` joined under the prefix.
    pub(crate) fn key(&self, parts: &[&str]) -> ObjPath {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part))
    }

    /// `URL/parts…`, for messages.
    pub(crate) fn object_url(&self, parts: &[&str]) -> String {
        format!("{}/{}", self.url, parts.join("/"))
    }

    /// Checks once per `Store` that the store honours create-if-absent and compare-and-swap:
    /// a second create of one object must fail, and so must an update with a wrong ETag.
    /// A store that accepts either gets [`StoreError::NoConditionalWrites`].
    pub async fn check_conditional_writes(&self) -> anyhow::Result<()> {
        self.probed
            .get_or_try_init(|| self.probe())
            .await
            .map(|_| ())
    }

    async fn probe(&self) -> anyhow::Result<()> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = format!("{}-{stamp}", records::publisher().replace('/', "-"));
        let key = self.key(&[".earshot-probe", &id]);
        let refuse = |problem: &str| StoreError::NoConditionalWrites {
            store: self.url.clone(),
            problem: problem.to_string(),
        };
        let put = |mode: PutMode| {
            self.os.put_opts(
                &key,
                PutPayload::from_static(b"earshot conditional-write probe\n"),
                PutOptions::from(mode),
            )
        };
        let result = async {
            match put(PutMode::Create).await {
                Ok(_) => {}
                Err(object_store::Error::NotImplemented { .. }) => {
                    return Err(refuse("create-if-absent is not implemented").into())
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot write to the store {}", self.url)))
                }
            }
            match put(PutMode::Create).await {
                Ok(_) => {
                    return Err(refuse(
                        "a second create-if-absent (If-None-Match: *) of one object succeeded",
                    )
                    .into())
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("probing conditional writes in {}", self.url)))
                }
            }
            let wrong = UpdateVersion {
                e_tag: Some("\"00000000000000000000000000000000\"".into()),
                version: None,
            };
            match put(PutMode::Update(wrong)).await {
                Ok(_) => Err(refuse("an update with a wrong ETag (If-Match) succeeded").into()),
                Err(object_store::Error::Precondition { .. }) => Ok(()),
                Err(object_store::Error::NotImplemented { .. }) => {
                    Err(refuse("compare-and-swap (If-Match) is not implemented").into())
                }
                Err(e) => Err(anyhow::Error::new(e)
                    .context(format!("probing conditional writes in {}", self.url))),
            }
        }
        .await;
        let _ = self.os.delete(&key).await;
        result
    }

    /// Reads `NAME/CURRENT` and its ETag.
    pub(crate) async fn read_current(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(Current, Option<String>)>> {
        let key = self.key(&[name, CURRENT]);
        let got = match self.os.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot read {}", self.object_url(&[name, CURRENT]))))
            }
        };
        let e_tag = got.meta.e_tag.clone();
        let bytes = got
            .bytes()
            .await
            .with_context(|| format!("cannot read {}", self.object_url(&[name, CURRENT])))?;
        let current: Current = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            object: self.object_url(&[name, CURRENT]),
            problem: format!("not a CURRENT record: {e}"),
        })?;
        Ok(Some((current, e_tag)))
    }

    /// The version `NAME/CURRENT` points at, or `None` before the first publish.
    pub async fn current(&self, name: &str) -> anyhow::Result<Option<Current>> {
        check_name("collection", name)?;
        Ok(self.read_current(name).await?.map(|(c, _)| c))
    }

    /// Moves `NAME/CURRENT` with a conditional write: create-if-absent when there is none,
    /// else compare-and-swap on the ETag just read. `next` decides from what it finds (and
    /// may decline with `Ok(None)`); on a lost race it is asked again with the new value.
    /// Returns the CURRENT in force afterwards.
    pub(crate) async fn move_current<F>(&self, name: &str, mut next: F) -> anyhow::Result<Current>
    where
        F: FnMut(Option<&Current>) -> anyhow::Result<Option<Current>>,
    {
        self.check_conditional_writes().await?;
        let key = self.key(&[name, CURRENT]);
        for attempt in 0..CAS_ATTEMPTS {
            let found = self.read_current(name).await?;
            let Some(new) = next(found.as_ref().map(|(c, _)| c))? else {
                return found
                    .map(|(c, _)| c)
                    .ok_or_else(|| anyhow::anyhow!("{} has no CURRENT", self.object_url(&[name])));
            };
            let mode = match found {
                None => PutMode::Create,
                Some((_, Some(e_tag))) => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
                Some((_, None)) => {
                    return Err(StoreError::NoConditionalWrites {
                        store: self.url.clone(),
                        problem: format!("it returned {key} without an ETag"),
                    }
                    .into())
                }
            };
            let mut text = serde_json::to_vec(&new).expect("CURRENT serialises");
            text.push(b'\n');
            match self
                .os
                .put_opts(&key, PutPayload::from(text), PutOptions::from(mode))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        store = self.url,
                        collection = name,
                        version = new.version,
                        "CURRENT moved"
                    );
                    return Ok(new);
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    tracing::debug!(
                        collection = name,
                        attempt,
                        "CURRENT changed under us; retrying"
                    );
                    let jitter = (std::process::id() as u64 * 7 + attempt as u64 * 13) % 50;
                    tokio::time::sleep(Duration::from_millis(10 + jitter)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot write {}",
                        self.object_url(&[name, CURRENT])
                    )))
                }
            }
        }
        anyhow::bail!(
            "{} kept changing under {CAS_ATTEMPTS} attempts to move it: too many publishers at once? Try again",
            self.object_url(&[name, CURRENT])
        )
    }

    /// Every version of `name` in the store, oldest first by name.
    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<VersionInfo>> {
        check_name("collection", name)?;
        let current = self.current(name).await?;
        let base = self.key(&[name]);
        let objects: Vec<_> = self
            .os
            .list(Some(&base))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {}", self.object_url(&[name])))?;
        #[derive(Default)]
        struct Seen {
            root_complete: bool,
            // shard count → indexes with COMPLETE; shard dirs seen with any object
            shard_complete: BTreeMap<u32, Vec<u32>>,
            shard_counts: Vec<u32>,
        }
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        for o in &objects {
            let rel: Vec<String> = o
                .location
                .prefix_match(&base)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            if rel.len() < 2
                || rel[0] == crate::log::LOG_DIR
                || check_name("version", &rel[0]).is_err()
            {
                continue;
            }
            let s = seen.entry(rel[0].clone()).or_default();
            match (rel.len(), parse_shard_dir(&rel[1])) {
                (2, _) if rel[1] == COMPLETE => s.root_complete = true,
                (3, Some((i, n))) => {
                    if !s.shard_counts.contains(&n) {
                        s.shard_counts.push(n);
                    }
                    if rel[2] == COMPLETE {
                        s.shard_complete.entry(n).or_default().push(i);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (version, s) in seen {
            let is_current = current.as_ref().is_some_and(|c| c.version == version);
            let info = if s.shard_counts.is_empty() {
                VersionInfo {
                    complete: s.root_complete,
                    current: is_current,
                    shards: None,
                    shards_complete: u32::from(s.root_complete),
                    version,
                }
            } else {
                let n = *s.shard_counts.iter().max().expect("not empty");
                let done = s.shard_complete.get(&n).map_or(0, |v| v.len() as u32);
                VersionInfo {
                    // Shards of two different counts under one version: never complete.
                    complete: s.shard_counts.len() == 1 && !s.root_complete && done == n,
                    current: is_current,
                    shards: Some(n),
                    shards_complete: done,
                    version,
                }
            };
            out.push(info);
        }
        Ok(out)
    }

    /// Points `NAME/CURRENT` at `version` (`previous`: the complete version before the
    /// current one), by the same conditional write as a publish. Refuses a version that is
    /// absent or incomplete.
    pub async fn activate(&self, name: &str, version: &str) -> anyhow::Result<Current> {
        check_name("collection", name)?;
        self.check_conditional_writes().await?;
        let list = self.versions(name).await?;
        let listing = format!("`earshot versions --store {}/{name}` lists them", self.url);
        let target = if version == "previous" {
            let complete: Vec<&VersionInfo> = list.iter().filter(|v| v.complete).collect();
            let at = complete.iter().position(|v| v.current).ok_or_else(|| {
                StoreError::NotReady(format!(
                    "{} points at no complete version, so there is no previous one ({listing})",
                    self.object_url(&[name, CURRENT])
                ))
            })?;
            let prev = at.checked_sub(1).ok_or_else(|| {
                StoreError::NotReady(format!(
                    "{name} has no complete version before {} in {}",
                    complete[at].version, self.url
                ))
            })?;
            complete[prev].clone()
        } else {
            check_name("version", version)?;
            let v = list.iter().find(|v| v.version == version).ok_or_else(|| {
                StoreError::NotReady(format!(
                    "{} has no version {version:?} ({listing})",
                    self.object_url(&[name])
                ))
            })?;
            if !v.complete {
                let what = match v.shards {
                    Some(n) => format!("{} of its {n} shards are complete", v.shards_complete),
                    None => "it has no COMPLETE (its upload never finished)".into(),
                };
                return Err(StoreError::NotReady(format!(
                    "{} is not complete: {what}; publish it (again) before activating it",
                    self.object_url(&[name, version])
                ))
                .into());
            }
            v.clone()
        };
        self.check_log_covers(name, &target.version, target.shards)
            .await?;
        let wanted = target.version.clone();
        self.move_current(name, |found| {
            if found.is_some_and(|c| c.version == wanted) {
                return Ok(None);
            }
            Ok(Some(Current {
                version: wanted.clone(),
                shards: target.shards,
                published_at: records::now(),
                publisher: records::publisher(),
            }))
        })
        .await
    }

    /// The collections of the store that have a CURRENT, sorted.
    pub async fn collections(&self) -> anyhow::Result<Vec<String>> {
        let listed = self
            .os
            .list_with_delimiter(Some(&self.prefix))
            .await
            .with_context(|| format!("cannot list the store {}", self.url))?;
        let mut out = Vec::new();
        for p in listed.common_prefixes {
            let Some(name) = p.filename().map(str::to_string) else {
                continue;
            };
            if check_name("collection", &name).is_err() {
                continue;
            }
            match self.os.head(&self.key(&[&name, CURRENT])).await {
                Ok(_) => out.push(name),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot read {}",
                        self.object_url(&[&name, CURRENT])
                    )))
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads and parses a COMPLETE record; `Ok(None)` when absent.
    pub(crate) async fn read_complete(&self, parts: &[&str]) -> anyhow::Result<Option<Complete>> {
        let mut all: Vec<&str> = parts.to_vec();
        all.push(COMPLETE);
        let url = self.object_url(&all);
        let bytes = match self.os.get(&self.key(&all)).await {
            Ok(g) => g
                .bytes()
                .await
                .with_context(|| format!("cannot read {url}"))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {url}"))),
        };
        let c = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            object: url,
            problem: format!("not a COMPLETE record: {e}"),
        })?;
        Ok(Some(c))
    }
}

/// `shard-I-of-N` → `(I, N)`.
pub(crate) fn parse_shard_dir(s: &str) -> Option<(u32, u32)> {
    let rest = s.strip_prefix("shard-")?;
    let (i, n) = rest.split_once("-of-")?;
    let (i, n) = (i.parse().ok()?, n.parse().ok()?);
    (i < n).then_some((i, n))
}

/// Refuses a name that cannot be one path component (see `earshot_core::layout::check_name`).
pub(crate) fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if what == "version" && name == crate::log::LOG_DIR {
        anyhow::bail!("the version name {name:?} is reserved for the collection's write log: choose another --version");
    }
    earshot_core::layout::check_name(name)
        .map_err(|problem| anyhow::anyhow!("the {what} name {name:?} {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_dirs() {
        assert_eq!(parse_shard_dir("shard-2-of-3"), Some((2, 3)));
        assert_eq!(parse_shard_dir("shard-3-of-3"), None);
        assert_eq!(parse_shard_dir("shard-x-of-3"), None);
        assert_eq!(parse_shard_dir("manifest.json"), None);
    }
}
