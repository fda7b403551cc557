//! Writes a collection directory atomically: everything goes into a hidden temporary
//! sibling directory, is fsynced, and only then renamed into place. A crash or `kill -9`
//! leaves at most a `.NAME.tmp-PID` directory, which readers ignore and the next build
//! of the same name removes.
//!
//! A versioned collection (`earshot build --versioned`) is a symlink `NAME` →
//! `.versions/NAME/VERSION` beside it: each build writes a new version directory the same
//! way, then switches the symlink atomically (a new link under a temporary name renamed over
//! the old one), and old versions beyond `--keep` are deleted. See "Versions" below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::format::{array_file, manifest::FileEntry, names, strings::StringTableData, Manifest};

/// The arrays of one collection, in memory.
pub struct CollectionArrays<'a> {
    pub vectors: &'a [f32],
    pub level0: &'a [u32],
    pub upper: &'a [u32],
    pub upper_start: &'a [u32],
    pub ids: &'a StringTableData,
    pub creator_of: &'a [u32],
    pub popularity: &'a [f32],
    pub creators: &'a StringTableData,
    pub creator_item_offsets: &'a [u64],
    pub creator_items: &'a [u32],
    pub creator_popularity: &'a [f32],
    /// The 8-bit copy of the vectors, when built with `--quantize int8`.
    pub quant: Option<QuantArrays<'a>>,
}

pub struct QuantArrays<'a> {
    pub codes: &'a [i8],
    pub scale: &'a [f32],
    pub offset: &'a [f32],
    pub sqnorms: &'a [f32],
}

/// Writes `arrays` and `manifest` (whose `files` is filled in here) to `out`.
/// An existing `out` is refused unless `force`, in which case it is replaced.
pub fn write_collection(
    out: &Path,
    arrays: &CollectionArrays,
    manifest: &mut Manifest,
    force: bool,
) -> anyhow::Result<()> {
    let (parent, name) = split(out)?;
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    if out.exists() && !force {
        anyhow::bail!(
            "{} already exists: pass --force to replace it, or choose another --out",
            out.display()
        );
    }
    remove_stale_temps(&parent, &name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = write_files(&tmp, arrays, manifest);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp)?;
    if out.exists() {
        // Swap the new build in with one atomic exchange where the OS has it, so `out` is
        // never missing; the old build ends up in `tmp` and is deleted (a server that mapped
        // it keeps its files alive until it drops them).
        if exchange(&tmp, out).is_err() {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(out, &old)?;
            std::fs::rename(&tmp, out)?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    } else {
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    }
    sync_dir(&parent)?;
    Ok(())
}

fn write_files(dir: &Path, a: &CollectionArrays, manifest: &mut Manifest) -> anyhow::Result<()> {
    fn put<T: array_file::Element>(
        sums: &mut Vec<(String, u64)>,
        dir: &Path,
        file: &str,
        data: &[T],
    ) -> anyhow::Result<()> {
        let path = dir.join(file);
        let sum = array_file::write(&path, data)
            .with_context(|| format!("cannot write {}", path.display()))?;
        sums.push((file.to_string(), sum));
        Ok(())
    }
    let mut sums: Vec<(String, u64)> = Vec::new();
    let s = &mut sums;
    put(s, dir, names::VECTORS, a.vectors)?;
    put(s, dir, names::LEVEL0, a.level0)?;
    put(s, dir, names::UPPER, a.upper)?;
    put(s, dir, names::UPPER_START, a.upper_start)?;
    put(s, dir, names::CREATOR_OF, a.creator_of)?;
    put(s, dir, names::POPULARITY, a.popularity)?;
    put(s, dir, names::CREATOR_ITEM_OFFSETS, a.creator_item_offsets)?;
    put(s, dir, names::CREATOR_ITEMS, a.creator_items)?;
    put(s, dir, names::CREATOR_POPULARITY, a.creator_popularity)?;
    if let Some(q) = &a.quant {
        put(s, dir, names::VECTORS_I8, q.codes)?;
        put(s, dir, names::QUANT_SCALE, q.scale)?;
        put(s, dir, names::QUANT_OFFSET, q.offset)?;
        put(s, dir, names::SQNORMS, q.sqnorms)?;
    }
    sums.extend(a.ids.write(dir, names::IDS)?);
    sums.extend(a.creators.write(dir, names::CREATORS)?);
    let mut files = BTreeMap::new();
    for (file, sum) in sums {
        let bytes = std::fs::metadata(dir.join(&file))?.len();
        files.insert(
            file,
            FileEntry {
                bytes,
                xxh3: format!("{sum:016x}"),
            },
        );
    }
    manifest.files = files;
    manifest.write(dir)?;
    Ok(())
}

fn split(out: &Path) -> anyhow::Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .with_context(|| {
            format!(
                "--out {} must end in a directory name that does not start with '.'",
                out.display()
            )
        })?
        .to_string();
    if let Err(problem) = check_name(&name) {
        anyhow::bail!(
            "--out {}: the collection name {name:?} {problem}",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Removes `.NAME.tmp-PID` directories left by builds whose process is gone.
fn remove_stale_temps(parent: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .map(|p| Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(false);
        if !alive {
            tracing::info!("removing stale temporary build {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Atomically exchanges two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

// ---------------------------------------------------------------------------------------
// Versions: `ROOT/NAME` → `ROOT/.versions/NAME/VERSION`

/// The hidden directory, beside the collection links, that holds every version.
pub const VERSIONS_DIR: &str = ".versions";

/// Why `name` cannot name a collection or a version (it must stay one plain path component
/// that no reader skips as hidden), or `Ok`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    if name.starts_with('.') {
        return Err("starts with '.'".into());
    }
    if name.contains("..") {
        return Err("contains '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!("contains the character {c:?}"));
    }
    Ok(())
}

/// Where a build is written.
#[derive(Debug, Clone)]
pub enum Output {
    /// A plain collection directory, written (or replaced with `--force`) in place.
    Plain(PathBuf),
    /// A new version of a versioned collection: built into `dir`, then `link` is switched to
    /// it by [`finish_output`]. `migrate`: `link` is still a plain directory, to be kept as a
    /// version of its own.
    Version {
        link: PathBuf,
        version: String,
        dir: PathBuf,
        migrate: bool,
    },
}

impl Output {
    /// The directory the build writes.
    pub fn build_dir(&self) -> &Path {
        match self {
            Output::Plain(p) => p,
            Output::Version { dir, .. } => dir,
        }
    }
    /// Whether the build may replace an existing directory (a new version never does).
    pub fn replaces(&self, force: bool) -> bool {
        matches!(self, Output::Plain(_)) && force
    }
}

/// `ROOT/.versions/NAME` for the collection link `ROOT/NAME`.
pub fn versions_home(link: &Path) -> anyhow::Result<PathBuf> {
    let (parent, name) = split(link)?;
    Ok(parent.join(VERSIONS_DIR).join(name))
}

/// The version `link` points to, when it is a symlink into its own `.versions/NAME/` (the
/// version directory itself may be gone).
pub fn active_version(link: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(link).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    let target = std::fs::read_link(link).ok()?;
    let (parent, _) = split(link).ok()?;
    let resolved = parent.join(target);
    let version = resolved.file_name()?.to_str()?.to_string();
    let home = versions_home(link).ok()?.canonicalize().ok()?;
    (resolved.parent()?.canonicalize().ok()? == home).then_some(version)
}

/// Decides where a build of `out` goes, before the (long) build starts. `versioned` asks for a
/// new version; a collection that already is versioned always gets one.
pub fn plan_output(out: &Path, versioned: bool, force: bool) -> anyhow::Result<Output> {
    let (_, name) = split(out)?;
    let meta = std::fs::symlink_metadata(out).ok();
    let managed = active_version(out).is_some();
    if let Some(m) = &meta {
        if m.file_type().is_symlink() && !managed {
            anyhow::bail!(
                "{} is a symlink that does not point into {}: remove it or choose another --out",
                out.display(),
                versions_home(out)?.display()
            );
        }
    }
    if !versioned && !managed {
        if out.exists() && !force {
            anyhow::bail!(
                "{} already exists: pass --force to replace it, or choose another --out",
                out.display()
            );
        }
        return Ok(Output::Plain(out.to_path_buf()));
    }
    let migrate = match &meta {
        Some(m) if m.is_dir() => {
            if !force {
                anyhow::bail!(
                    "{} is a plain collection directory: pass --force to turn it into a versioned \
                     collection (the current build is kept as a version to roll back to)",
                    out.display()
                );
            }
            true
        }
        Some(m) if !m.file_type().is_symlink() => {
            anyhow::bail!("{} exists and is not a directory", out.display())
        }
        _ => false,
    };
    let home = versions_home(out)?;
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    remove_dead_temps(&home);
    let base = version_name(std::time::SystemTime::now());
    let mut version = base.clone();
    let mut i = 2;
    while home.join(&version).exists() {
        version = format!("{base}-{i}");
        i += 1;
    }
    tracing::debug!(collection = name, version, "building a new version");
    Ok(Output::Version {
        link: out.to_path_buf(),
        dir: home.join(&version),
        version,
        migrate,
    })
}

/// `20250101T120000.123Z-PID`: sorts by time, and two builds never collide.
fn version_name(t: std::time::SystemTime) -> String {
    let stamp: String = humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{stamp}-{}", std::process::id())
}

/// After a successful build: switches a versioned collection to its new version and deletes
/// versions beyond the newest `keep` (never the one it points to). Returns the removed ones.
pub fn finish_output(o: &Output, keep: usize) -> anyhow::Result<Vec<String>> {
    let Output::Version {
        link,
        version,
        migrate,
        ..
    } = o
    else {
        return Ok(Vec::new());
    };
    if *migrate {
        // The plain directory becomes a version of its own, named after its build time.
        let home = versions_home(link)?;
        let built = Manifest::read(link)
            .ok()
            .and_then(|m| humantime::parse_rfc3339(&m.built_at).ok())
            .unwrap_or(std::time::UNIX_EPOCH);
        let stamp = version_name(built);
        let stamp = stamp.rsplit_once('-').map_or(stamp.as_str(), |(s, _)| s);
        let legacy = format!("{stamp}-plain");
        std::fs::rename(link, home.join(&legacy)).with_context(|| {
            format!(
                "cannot move {} to {}",
                link.display(),
                home.join(&legacy).display()
            )
        })?;
        tracing::info!(
            "kept the previous build of {} as version {legacy}",
            link.display()
        );
    }
    switch_link(link, version)?;
    tracing::info!(collection = %link.display(), version, "activated");
    prune(link, keep)
}

/// Points `link` at `.versions/NAME/version` atomically (a new symlink renamed over the old).
fn switch_link(link: &Path, version: &str) -> anyhow::Result<()> {
    let (parent, name) = split(link)?;
    let target = Path::new(VERSIONS_DIR).join(&name).join(version);
    let tmp = parent.join(format!(".{name}.link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("cannot create the symlink {}", tmp.display()))?;
    #[cfg(not(unix))]
    anyhow::bail!("versioned collections need symlinks (unix)");
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot switch {}", link.display()));
    }
    sync_dir(&parent)
}

/// One version of a versioned collection.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub name: String,
    pub dir: PathBuf,
    /// The collection link points to it.
    pub active: bool,
}

/// Every version of the collection `link`, oldest first.
pub fn list_versions(link: &Path) -> anyhow::Result<Vec<VersionEntry>> {
    let home = versions_home(link)?;
    let entries = std::fs::read_dir(&home).with_context(|| {
        format!(
            "{} has no versions ({} is missing; build it with --versioned)",
            link.display(),
            home.display()
        )
    })?;
    let active = active_version(link);
    let mut out: Vec<VersionEntry> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (!name.starts_with('.')).then(|| VersionEntry {
                active: active.as_deref() == Some(name.as_str()),
                dir: e.path(),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The directory of `version` of the collection `link`; `previous` names the version before
/// the active one.
pub fn find_version(link: &Path, version: &str) -> anyhow::Result<VersionEntry> {
    let list = list_versions(link)?;
    if version == "previous" {
        let at = list
            .iter()
            .position(|v| v.active)
            .with_context(|| format!("{} points to no listed version", link.display()))?;
        return at.checked_sub(1).map(|i| list[i].clone()).with_context(|| {
            format!("{} has no version before {}", link.display(), list[at].name)
        });
    }
    if let Err(problem) = check_name(version) {
        anyhow::bail!("version name {version:?} {problem}");
    }
    list.into_iter()
        .find(|v| v.name == version)
        .with_context(|| {
            format!(
                "{} has no version {version:?} (`earshot versions {}` lists them)",
                link.display(),
                link.display()
            )
        })
}

/// Points the collection `link` at one of its versions (a roll-back or roll-forward).
/// The caller checks the version first; servers switch on their next reload.
pub fn activate(link: &Path, version: &str) -> anyhow::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(link) {
        if !m.file_type().is_symlink() {
            anyhow::bail!(
                "{} is a plain directory, not a versioned collection (build it with --versioned)",
                link.display()
            );
        }
    }
    let v = find_version(link, version)?;
    switch_link(link, &v.name)
}

/// Deletes versions of `link` beyond the newest `keep` (at least 1), never the active one,
/// and only those named by a build (`YYYYMMDDTHHMMSS…`): a directory placed there by hand is
/// left alone. A server still reading a deleted version keeps its mapped files until it lets
/// go of them.
pub fn prune(link: &Path, keep: usize) -> anyhow::Result<Vec<String>> {
    let built_name = |n: &str| {
        n.len() > 9 && n.as_bytes()[..8].iter().all(u8::is_ascii_digit) && n.as_bytes()[8] == b'T'
    };
    let list: Vec<VersionEntry> = list_versions(link)?
        .into_iter()
        .filter(|v| built_name(&v.name))
        .collect();
    let keep = keep.max(1);
    let mut removed = Vec::new();
    for (i, v) in list.iter().enumerate() {
        if i + keep < list.len() && !v.active {
            std::fs::remove_dir_all(&v.dir)
                .with_context(|| format!("cannot delete old version {}", v.dir.display()))?;
            tracing::info!(version = v.name, "deleted old version");
            removed.push(v.name.clone());
        }
    }
    Ok(removed)
}

/// Removes `.ANY.tmp-PID` directories in `dir` whose process is gone.
fn remove_dead_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        if !file_name.starts_with('.') {
            continue;
        }
        let Some((_, pid)) = file_name.rsplit_once(".tmp-") else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .map(|p| Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(true);
        if !alive {
            tracing::info!("removing stale temporary build {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["tracks", "creators-v2", "a.b", "20250101T120000Z-12"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a..b", "a/b", "a\\b", "a\0b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_names_sort_by_time() {
        let t = humantime::parse_rfc3339("2025-03-04T05:06:07Z").unwrap();
        let v = version_name(t);
        assert!(v.starts_with("20250304T050607.000Z-"), "{v}");
        let later = version_name(t + std::time::Duration::from_secs(3600));
        assert!(later > v);
    }
}
