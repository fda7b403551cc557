//! Downloading a version into a local index root (`ROOT/.versions/NAME/V`), resumably and
//! checked object by object before it is renamed into place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use earshot_core::collection::{sanity_check, Collection};
use earshot_core::format::{names, FormatError, Manifest, Verify};
use earshot_core::layout;
use earshot_core::shard::ShardSpec;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::error::StoreError;
use crate::records::{self, Complete, Current, ObjectEntry};
use crate::store::{Store, COMPLETE};

/// How a version is downloaded.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The shard this replica serves: a sharded version is fetched as `shard-I-of-N`
    /// (an unsharded one whole, whatever this says).
    pub shard: Option<ShardSpec>,
    /// Objects downloaded at once.
    pub parallelism: usize,
    /// Bytes asked for per ranged request (a failed request loses at most this much).
    pub range_size: u64,
    /// Cap on the fetch's download rate over all its objects, bytes per second (None: as
    /// fast as the store answers). A version downloaded at full speed beside a serving
    /// replica costs its queries: 143 MB in 2 s on a 2-core host failed 10 queries at one
    /// instant on both replicas (BENCHMARKS.md §11, soak).
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            shard: None,
            parallelism: 4,
            range_size: 64 << 20,
            max_bytes_per_sec: None,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The collection.
    pub name: String,
    /// The version now in the cache.
    pub version: String,
    /// `ROOT/.versions/NAME/V`.
    pub dir: PathBuf,
    /// Objects in the version.
    pub files: usize,
    /// Bytes downloaded by this call (less than the version's size when resumed).
    pub downloaded: u64,
    /// The version was already in the cache: nothing was downloaded.
    pub cached: bool,
    /// Wall time.
    pub seconds: f64,
}

impl Store {
    /// Downloads the version `current` names of `name` into `root/.versions/NAME/V` (the
    /// layout `earshot_core::layout` serves from) without switching `root/NAME` to it.
    ///
    /// Objects are downloaded into `root/.versions/NAME/.V.partial/` in ranges; an
    /// interrupted fetch resumes there on the next call. Each object's size and xxh3 are
    /// checked against the version's COMPLETE, the manifest against COMPLETE, and the whole
    /// collection is opened with every checksum verified before the directory is renamed
    /// into place. A store that returns other bytes, misses an object or serves another
    /// shard gets an error naming the object; nothing else in the cache is touched.
    pub async fn fetch(
        &self,
        name: &str,
        current: &Current,
        root: &Path,
        opts: &FetchOptions,
    ) -> anyhow::Result<FetchReport> {
        let started = Instant::now();
        crate::store::check_name("collection", name)?;
        let version = current.version.clone();
        crate::store::check_name("version", &version)?;
        let shard = match (current.shards, opts.shard) {
            (None, _) => None,
            (Some(n), None) => anyhow::bail!(
                "{} {version} is split into {n} shards: start this replica with --shard I/{n}",
                self.object_url(&[name])
            ),
            (Some(n), Some(s)) if s.count != n => anyhow::bail!(
                "this replica serves shard {s} (--shard {s}), but {} {version} is split into {n} shards: use --shard I/{n}",
                self.object_url(&[name])
            ),
            (Some(_), Some(s)) => Some(s),
        };
        let mut base: Vec<String> = vec![name.to_string(), version.clone()];
        if let Some(s) = shard {
            base.push(s.dir_name());
        }
        let base_refs: Vec<&str> = base.iter().map(String::as_str).collect();

        let home = root.join(layout::VERSIONS_DIR).join(name);
        let dest = home.join(&version);
        if dest.is_dir() {
            return Ok(FetchReport {
                name: name.to_string(),
                version,
                dir: dest,
                files: 0,
                downloaded: 0,
                cached: true,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        let _lock = FetchLock::try_take(&home.join(".fetch.lock")).with_context(|| {
            format!("another process is fetching {name} into {}", root.display())
        })?;

        let complete_url = {
            let mut p = base_refs.clone();
            p.push(COMPLETE);
            self.object_url(&p)
        };
        let complete =
            self.read_complete(&base_refs)
                .await?
                .ok_or_else(|| StoreError::Corrupt {
                    object: complete_url.clone(),
                    problem: "missing: CURRENT points at a version whose upload is not complete"
                        .into(),
                })?;
        check_complete(&complete, name, &version, shard, &complete_url)?;

        let partial = home.join(format!(".{version}.partial"));
        remove_other_partials(&home, &partial);
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        // Files of an earlier attempt that this version does not list.
        if let Ok(entries) = std::fs::read_dir(&partial) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !complete.files.contains_key(&n) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }

        let need: u64 = complete
            .files
            .iter()
            .map(|(f, e)| {
                let have = std::fs::metadata(partial.join(f)).map_or(0, |m| m.len());
                e.bytes
                    .saturating_sub(if have <= e.bytes { have } else { 0 })
            })
            .sum();
        let free = free_bytes(&home)?;
        const RESERVE: u64 = 16 << 20;
        if need.saturating_add(RESERVE) > free {
            return Err(StoreError::DiskFull {
                dir: home.display().to_string(),
                name: name.to_string(),
                version,
                need,
                free,
            }
            .into());
        }

        // Owned jobs: the stream's futures borrow nothing, so a fetch stays `Send`.
        let range = opts.range_size.max(1);
        let jobs: Vec<(ObjPath, String, PathBuf, ObjectEntry)> = complete
            .files
            .iter()
            .map(|(f, entry)| {
                let mut p = base_refs.clone();
                p.push(f);
                (
                    self.key(&p),
                    self.object_url(&p),
                    partial.join(f),
                    entry.clone(),
                )
            })
            .collect();
        let pace = crate::pace::Pace::new(opts.max_bytes_per_sec);
        let downloaded: u64 = futures_util::stream::iter(jobs)
            .map(|(key, url, local, entry)| {
                let (os, pace) = (self.os.clone(), &pace);
                async move { download(os.as_ref(), &key, &url, &local, &entry, range, pace).await }
            })
            .buffer_unordered(opts.parallelism.max(1))
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;

        let base_url = self.object_url(&base_refs);
        let checked = partial.clone();
        let expect_shard = shard;
        let complete_for_check = complete.clone();
        tokio::task::spawn_blocking(move || {
            verify_dir(&checked, &complete_for_check, expect_shard, &base_url)
        })
        .await??;

        std::fs::rename(&partial, &dest).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), dest.display())
        })?;
        layout::sync_dir(&home)?;
        tracing::info!(
            collection = name,
            version,
            bytes = complete.bytes(),
            downloaded,
            "version fetched"
        );
        Ok(FetchReport {
            name: name.to_string(),
            version,
            dir: dest,
            files: complete.files.len(),
            downloaded,
            cached: false,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// COMPLETE must describe this collection, version and shard, and name only plain files.
fn check_complete(
    c: &Complete,
    name: &str,
    version: &str,
    shard: Option<ShardSpec>,
    url: &str,
) -> Result<(), StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        object: url.to_string(),
        problem,
    };
    if c.collection != name || c.version != version {
        return Err(corrupt(format!(
            "describes {} {}, not {name} {version}",
            c.collection, c.version
        )));
    }
    if c.shard != shard.map(|s| s.info()) {
        return Err(corrupt(format!(
            "describes shard {:?}, expected {:?}",
            c.shard.as_ref().map(|s| format!("{}/{}", s.index, s.count)),
            shard.map(|s| s.to_string())
        )));
    }
    if !c.files.contains_key(names::MANIFEST) {
        return Err(corrupt("lists no manifest.json".into()));
    }
    for f in c.files.keys() {
        if let Err(problem) = layout::check_name(f) {
            return Err(corrupt(format!(
                "lists the file {f:?}, whose name {problem}"
            )));
        }
    }
    Ok(())
}

/// Downloads `key` into `local`, continuing from what `local` already holds, then checks
/// its xxh3. Returns the bytes downloaded by this call.
async fn download(
    os: &dyn ObjectStore,
    key: &ObjPath,
    url: &str,
    local: &Path,
    entry: &ObjectEntry,
    range_size: u64,
    pace: &crate::pace::Pace,
) -> anyhow::Result<u64> {
    let corrupt = |problem: String| StoreError::Corrupt {
        object: url.to_string(),
        problem,
    };
    let mut have = tokio::fs::metadata(local).await.map_or(0, |m| m.len());
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(local)
        .await
        .with_context(|| format!("cannot write {}", local.display()))?;
    if have > entry.bytes {
        file.set_len(0).await?;
        have = 0;
    }
    let start = have;
    // Bytes received but not yet written, and the file offset they start at.
    let mut pending: Vec<u8> = Vec::with_capacity(HUGE_PAGE as usize);
    let mut written = have;
    let result: anyhow::Result<()> = async {
        while have < entry.bytes {
            let end = (have + range_size).min(entry.bytes);
            let got = match os
                .get_opts(
                    key,
                    GetOptions {
                        range: Some(GetRange::Bounded(have..end)),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(corrupt("missing from the store (COMPLETE lists it)".into()).into())
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {url}"))),
            };
            if got.meta.size != entry.bytes {
                return Err(corrupt(format!(
                    "is {} bytes, COMPLETE says {} (a truncated or replaced object)",
                    got.meta.size, entry.bytes
                ))
                .into());
            }
            let mut stream = got.into_stream();
            let mut received = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("cannot read {url}"))?;
                received += chunk.len() as u64;
                if have + received > end {
                    return Err(corrupt(format!(
                        "returned more than the {} bytes asked for",
                        end - have
                    ))
                    .into());
                }
                pending.extend_from_slice(&chunk);
                while let Some(cut) = aligned_cut(written, pending.len()) {
                    if let Err(e) = file.write_all(&pending[..cut]).await {
                        // What reached the file is a prefix of the piece: the next attempt
                        // resumes after it, so nothing pending may be appended behind it.
                        pending.clear();
                        return Err(e.into());
                    }
                    pending.drain(..cut);
                    written += cut as u64;
                }
                pace.took(chunk.len() as u64).await;
            }
            if received < end - have {
                return Err(corrupt(format!(
                    "returned {received} of the {} bytes asked for at offset {have} (a truncated object)",
                    end - have
                ))
                .into());
            }
            have = end;
        }
        Ok(())
    }
    .await;
    // Keep what arrived (flushed) for the next attempt, whatever happened (a failed write
    // emptied `pending`).
    file.write_all(&pending).await?;
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    result?;
    let path = local.to_path_buf();
    let sum = tokio::task::spawn_blocking(move || hash_file(&path)).await??;
    if sum != entry.xxh3 {
        let _ = std::fs::remove_file(local);
        return Err(corrupt(format!(
            "xxh3 {sum} but COMPLETE says {}: the store returned other bytes (the download is discarded)",
            entry.xxh3
        ))
        .into());
    }
    Ok(have - start)
}

/// Downloads are written in whole 2 MiB-aligned pieces: the page cache then holds the file
/// as 2 MiB folios, which the server maps with huge pages (`ArrayFile::open`); the network's
/// small chunks written as they come would leave it in small ones.
const HUGE_PAGE: u64 = 2 << 20;

/// How many of `pending` bytes, starting at file offset `written`, end exactly on the next
/// 2 MiB boundary (None while they do not reach it).
fn aligned_cut(written: u64, pending: usize) -> Option<usize> {
    let cut = (HUGE_PAGE - written % HUGE_PAGE) as usize;
    (pending >= cut).then_some(cut)
}

fn hash_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(records::hex(h.digest()))
}

/// The manifest agrees with COMPLETE and the expected shard, and the collection opens with
/// every checksum verified and finds its own items.
fn verify_dir(
    dir: &Path,
    complete: &Complete,
    shard: Option<ShardSpec>,
    base_url: &str,
) -> anyhow::Result<()> {
    let manifest_url = format!("{base_url}/{}", names::MANIFEST);
    let corrupt = |object: String, problem: String| StoreError::Corrupt { object, problem };
    let object_of = |e: FormatError| match e {
        FormatError::File { path, problem } => corrupt(
            format!(
                "{base_url}/{}",
                path.file_name()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            ),
            problem,
        ),
    };
    let manifest = Manifest::read(dir).map_err(object_of)?;
    let listed: BTreeSet<&str> = complete
        .files
        .keys()
        .map(String::as_str)
        .filter(|f| *f != names::MANIFEST)
        .collect();
    let in_manifest: BTreeSet<&str> = manifest.files.keys().map(String::as_str).collect();
    if listed != in_manifest {
        return Err(corrupt(
            manifest_url,
            format!("lists the files {in_manifest:?}, COMPLETE lists {listed:?}"),
        )
        .into());
    }
    for (f, e) in &manifest.files {
        let c = &complete.files[f];
        if c.bytes != e.bytes || complete.manifest_xxh3.get(f) != Some(&e.xxh3) {
            return Err(corrupt(
                manifest_url,
                format!("its entry for {f} differs from COMPLETE's"),
            )
            .into());
        }
    }
    if manifest.shard != shard.map(|s| s.info()) {
        return Err(corrupt(
            manifest_url,
            format!(
                "is the manifest of {}, expected {}",
                manifest
                    .shard
                    .as_ref()
                    .map_or("an unsharded collection".into(), |s| format!(
                        "shard {}/{}",
                        s.index, s.count
                    )),
                shard.map_or("an unsharded collection".into(), |s| format!("shard {s}"))
            ),
        )
        .into());
    }
    let c = Collection::open(dir, Verify::Full).map_err(object_of)?;
    c.check_graph().map_err(object_of)?;
    sanity_check(&c).map_err(|problem| corrupt(base_url.to_string(), problem))?;
    for f in complete.files.keys() {
        std::fs::File::open(dir.join(f)).and_then(|f| f.sync_all())?;
    }
    layout::sync_dir(dir)
}

/// Partial downloads of other versions: a newer CURRENT replaced them.
fn remove_other_partials(home: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(home) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".partial") && e.path() != keep {
            tracing::info!("removing the abandoned download {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Bytes available to this user on the file system holding `dir`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid statvfs to fill in.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the free space of {}", dir.display()));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A non-blocking exclusive `flock`, released when dropped.
struct FetchLock(#[allow(dead_code)] std::fs::File);

impl FetchLock {
    fn try_take(path: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: `flock` on a descriptor we own and keep open for the call.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{} is locked", path.display()));
        }
        Ok(Self(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_are_written_in_aligned_pieces() {
        let mb2 = HUGE_PAGE as usize;
        assert_eq!(aligned_cut(0, mb2 - 1), None);
        assert_eq!(aligned_cut(0, mb2), Some(mb2));
        assert_eq!(aligned_cut(0, 3 * mb2), Some(mb2));
        // A resumed download first fills up to the boundary, then goes piece by piece.
        assert_eq!(aligned_cut(100, mb2), Some(mb2 - 100));
        assert_eq!(aligned_cut(HUGE_PAGE + 5, 10), None);
        // Every piece written from a boundary ends on the next one.
        let (mut written, mut pending) = (12_345u64, 5 * mb2 + 7);
        while let Some(cut) = aligned_cut(written, pending) {
            written += cut as u64;
            pending -= cut;
            assert_eq!(written % HUGE_PAGE, 0);
        }
        assert!(pending < mb2);
    }
}
