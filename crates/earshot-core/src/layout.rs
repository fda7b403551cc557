//! Where a collection's bytes live on disk: the one module that knows the directory layout
//! of an index root (see docs/format.md, "Versions").
//!
//! A collection is `ROOT/NAME`: either a plain directory, or a symlink to
//! `ROOT/.versions/NAME/VERSION`. Writers only ever create new directories and rename them
//! (or a new symlink) into place; nothing here rewrites a file that a reader may have mapped.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The parent directory and collection name of `out` (checked with [`check_name`]).
pub fn split(out: &Path) -> anyhow::Result<(PathBuf, String)> {
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

/// fsyncs a directory, so a rename or new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

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

/// `20250101T120000.123Z-PID`: sorts by time, and two builds never collide.
pub fn version_name(t: std::time::SystemTime) -> String {
    let stamp = compact_time(&humantime::format_rfc3339_millis(t).to_string());
    format!("{stamp}-{}", std::process::id())
}

/// An RFC 3339 time as a path component: `2025-01-01T12:00:00Z` → `20250101T120000Z` (the
/// served version of a plain collection directory is its build time in this form).
pub fn compact_time(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// Points `link` at `.versions/NAME/version` atomically (a new symlink renamed over the old).
pub fn switch_link(link: &Path, version: &str) -> anyhow::Result<()> {
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
    /// The version's directory name (`YYYYMMDDTHHMMSS.mmmZ-PID` for a build).
    pub name: String,
    /// `ROOT/.versions/NAME/VERSION`.
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

/// Removes the temporary directories `.X.tmp-PID` in `dir` (only `.NAME.tmp-PID` when `name`
/// is given) whose writing process is gone. A PID that does not parse is left alone: nothing
/// proves its writer dead.
pub fn remove_dead_temps(dir: &Path, name: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let pid = match name {
            Some(name) => file_name.strip_prefix(&format!(".{name}.tmp-")),
            None if file_name.starts_with('.') => file_name.rsplit_once(".tmp-").map(|(_, p)| p),
            None => None,
        };
        let Some(pid) = pid else {
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
