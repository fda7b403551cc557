//! Reading the index root: which entries are collections, where each one's files are, and
//! why an entry cannot be served.

use std::path::{Path, PathBuf};

use anyhow::Context;
use earshot_core::format::names;
use earshot_core::layout::{check_name, VERSIONS_DIR};

/// Device and inode of a version directory: a rebuilt or re-pointed collection changes it.
pub type Identity = (u64, u64);

/// A collection entry of the index root, resolved.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub name: String,
    /// Canonical directory to open.
    pub target: PathBuf,
    /// `Some` for a versioned collection (the symlink's version).
    pub version: Option<String>,
    pub identity: Identity,
}

/// Why an entry of the index root cannot be served.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub name: String,
    pub reason: String,
}

/// Reads the index root: usable entries and problems, each by collection name.
pub(super) fn scan(root: &Path) -> anyhow::Result<(Vec<Candidate>, Vec<Problem>)> {
    let entries = std::fs::read_dir(root).with_context(|| {
        format!(
            "cannot read index root {}: build an index first (earshot build --out {}/NAME …)",
            root.display(),
            root.display()
        )
    })?;
    let root_canon = root
        .canonicalize()
        .with_context(|| format!("cannot resolve index root {}", root.display()))?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let raw_name = e.file_name();
        let Some(name) = raw_name.to_str().map(str::to_string) else {
            problems.push(Problem {
                name: raw_name.to_string_lossy().into_owned(),
                reason: format!("{}: the name is not UTF-8", path.display()),
            });
            continue;
        };
        if name.starts_with('.') {
            continue; // .versions, temporary builds and links
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone since read_dir
        };
        let is_link = meta.file_type().is_symlink();
        if !is_link && !meta.is_dir() {
            continue; // stray files are not collections
        }
        match resolve(&root_canon, &path, &name, is_link) {
            Ok(c) => found.push(c),
            Err(reason) => problems.push(Problem { name, reason }),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    problems.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((found, problems))
}

fn resolve(root: &Path, path: &Path, name: &str, is_link: bool) -> Result<Candidate, String> {
    check_name(name).map_err(|p| {
        format!(
            "{}: collection name {name:?} {p}; rename the directory",
            path.display()
        )
    })?;
    let target = path
        .canonicalize()
        .map_err(|e| format!("{}: cannot resolve ({e})", path.display()))?;
    let version = if is_link {
        // A symlink must stay inside the root's own version store.
        let store = root.join(VERSIONS_DIR);
        let inside = store
            .canonicalize()
            .ok()
            .filter(|store| target.parent().and_then(Path::parent) == Some(store.as_path()));
        if inside.is_none() {
            return Err(format!(
                "{}: symlink to {} points outside {}/NAME/: refused (only versions under the \
                 index root's {VERSIONS_DIR} are served)",
                path.display(),
                target.display(),
                store.display()
            ));
        }
        let v = target
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        check_name(&v).map_err(|p| format!("{}: version name {v:?} {p}", target.display()))?;
        Some(v)
    } else {
        if target.parent() != Some(root) {
            return Err(format!(
                "{}: resolves to {}, outside the index root",
                path.display(),
                target.display()
            ));
        }
        None
    };
    let meta = std::fs::metadata(&target)
        .map_err(|e| format!("{}: cannot read ({e})", target.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", target.display()));
    }
    if !target.join(names::MANIFEST).exists() {
        return Err(format!(
            "{}: missing; every subdirectory of the index root must be a built collection",
            target.join(names::MANIFEST).display()
        ));
    }
    Ok(Candidate {
        name: name.to_string(),
        target,
        version,
        identity: identity(&meta),
    })
}

#[cfg(unix)]
fn identity(m: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(m: &std::fs::Metadata) -> Identity {
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    (t.as_secs(), t.subsec_nanos() as u64)
}
