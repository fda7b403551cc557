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

use earshot_core::format::{
    array_file, manifest::FileEntry, names, strings::StringTableData, Manifest,
};
use earshot_core::layout::{
    active_version, prune, remove_dead_temps, split, switch_link, sync_dir, version_name,
    versions_home,
};

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
    remove_dead_temps(&parent, Some(&name));
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
    remove_dead_temps(&home, None);
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
