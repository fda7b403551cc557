//! Writes a collection directory atomically: everything goes into a hidden temporary
//! sibling directory, is fsynced, and only then renamed into place. A crash or `kill -9`
//! leaves at most a `.NAME.tmp-PID` directory, which readers ignore and the next build
//! of the same name removes.

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
        // Move the old build aside first; a server that mapped it keeps its files alive.
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old)?;
        std::fs::rename(&tmp, out)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    }
    sync_dir(&parent)?;
    Ok(())
}

fn write_files(dir: &Path, a: &CollectionArrays, manifest: &mut Manifest) -> anyhow::Result<()> {
    let mut sums: Vec<(String, u64)> = Vec::new();
    let mut put = |file: &str, sum: std::io::Result<u64>| -> anyhow::Result<()> {
        let sum = sum.with_context(|| format!("cannot write {}", dir.join(file).display()))?;
        sums.push((file.to_string(), sum));
        Ok(())
    };
    put(
        names::VECTORS,
        array_file::write(&dir.join(names::VECTORS), a.vectors),
    )?;
    put(
        names::LEVEL0,
        array_file::write(&dir.join(names::LEVEL0), a.level0),
    )?;
    put(
        names::UPPER,
        array_file::write(&dir.join(names::UPPER), a.upper),
    )?;
    put(
        names::UPPER_START,
        array_file::write(&dir.join(names::UPPER_START), a.upper_start),
    )?;
    put(
        names::CREATOR_OF,
        array_file::write(&dir.join(names::CREATOR_OF), a.creator_of),
    )?;
    put(
        names::POPULARITY,
        array_file::write(&dir.join(names::POPULARITY), a.popularity),
    )?;
    put(
        names::CREATOR_ITEM_OFFSETS,
        array_file::write(
            &dir.join(names::CREATOR_ITEM_OFFSETS),
            a.creator_item_offsets,
        ),
    )?;
    put(
        names::CREATOR_ITEMS,
        array_file::write(&dir.join(names::CREATOR_ITEMS), a.creator_items),
    )?;
    put(
        names::CREATOR_POPULARITY,
        array_file::write(&dir.join(names::CREATOR_POPULARITY), a.creator_popularity),
    )?;
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

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
