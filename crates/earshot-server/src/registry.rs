//! The served collections and how they change while the server runs.
//!
//! Every non-hidden entry of the index root is a collection: a plain directory, or a symlink
//! into `ROOT/.versions/NAME/VERSION` (see `build::writer`). The served set is one immutable
//! [`Live`] snapshot behind an [`ArcSwap`]: a request takes an `Arc` of it without a lock and
//! keeps every collection it reads alive until it finishes. A reload (SIGHUP,
//! `POST /admin/reload`, or the `--watch-interval` poll) re-resolves every entry; a collection
//! whose target changed is opened with full verification, checked against the one it replaces
//! (dimension and metric), probed with a few queries and paged in, and only then swapped in.
//! A version that fails any of that is refused with a log line and a metric, and the old one
//! keeps serving. The old mappings are released when the last request holding them is done.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use serde::Serialize;

use super::metrics::{CollectionLabel, Metrics};
use super::query::Engine;
use earshot_core::collection::{sanity_check, Collection};
use earshot_core::format::{names, Verify};
use earshot_core::layout::{check_name, VERSIONS_DIR};

/// What requests read: the engine over one consistent set of collections, and which version
/// of each is in service.
pub struct Live {
    pub engine: Engine,
    pub versions: BTreeMap<String, Served>,
}

/// The version of one collection in service.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// The version directory's name, or for a plain directory its build time.
    pub version: String,
    /// The directory the files were opened from (symlinks resolved).
    pub path: PathBuf,
    #[serde(skip)]
    pub identity: Identity,
    #[serde(serialize_with = "rfc3339")]
    pub loaded_at: SystemTime,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

/// Device and inode of a version directory: a rebuilt or re-pointed collection changes it.
pub type Identity = (u64, u64);

/// A collection entry of the index root, resolved.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    /// Canonical directory to open.
    target: PathBuf,
    /// `Some` for a versioned collection (the symlink's version).
    version: Option<String>,
    identity: Identity,
}

/// Why an entry of the index root cannot be served.
#[derive(Debug, Clone)]
struct Problem {
    name: String,
    reason: String,
}

/// Reads the index root: usable entries and problems, each by collection name.
fn scan(root: &Path) -> anyhow::Result<(Vec<Candidate>, Vec<Problem>)> {
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

/// Opens, checks and warms one candidate.
fn load(c: &Candidate, verify: Verify, probe: bool) -> Result<(Collection, Served), String> {
    let mut col = Collection::open(&c.target, verify).map_err(|e| e.to_string())?;
    col.name = c.name.clone();
    if probe {
        sanity_check(&col)?;
    }
    col.warm();
    let version = c
        .version
        .clone()
        .unwrap_or_else(|| compact_time(&col.manifest.built_at));
    let served = Served {
        version,
        path: c.target.clone(),
        identity: c.identity,
        loaded_at: SystemTime::now(),
    };
    Ok((col, served))
}

/// `2025-01-01T12:00:00Z` → `20250101T120000Z`.
fn compact_time(t: &str) -> String {
    t.chars().filter(|c| *c != '-' && *c != ':').collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub collection: String,
    pub version: String,
}

/// Swap metrics, registered into the server's registry.
#[derive(Clone, Default)]
pub struct SwapMetrics {
    pub swaps: Family<CollectionLabel, Counter>,
    pub refusals: Family<CollectionLabel, Counter>,
    pub version_info: Family<VersionLabel, Gauge>,
    items: Family<CollectionLabel, Gauge>,
    mapped_bytes: Family<CollectionLabel, Gauge>,
}

impl SwapMetrics {
    pub fn new(m: &mut Metrics) -> Self {
        let s = Self {
            items: m.items.clone(),
            mapped_bytes: m.mapped_bytes.clone(),
            ..Default::default()
        };
        register(&mut m.registry, &s);
        s
    }

    fn serving(&self, c: &Collection, served: &Served, replaced: Option<&Served>) {
        let label = CollectionLabel {
            collection: c.name.clone(),
        };
        if let Some(old) = replaced {
            self.version_info.remove(&VersionLabel {
                collection: c.name.clone(),
                version: old.version.clone(),
            });
        }
        self.version_info
            .get_or_create(&VersionLabel {
                collection: c.name.clone(),
                version: served.version.clone(),
            })
            .set(1);
        self.items.get_or_create(&label).set(c.len() as i64);
        self.mapped_bytes
            .get_or_create(&label)
            .set(c.mapped_bytes() as i64);
        // Present (at 0) from the start, so rates and alerts see them.
        let _ = self.swaps.get_or_create(&label);
        let _ = self.refusals.get_or_create(&label);
    }
}

fn register(r: &mut PromRegistry, s: &SwapMetrics) {
    r.register(
        "swaps",
        "New collection versions swapped in",
        s.swaps.clone(),
    );
    r.register(
        "swap_refusals",
        "New collection versions refused (failed verification, schema or sanity checks)",
        s.refusals.clone(),
    );
    r.register(
        "collection_version_info",
        "The version in service per collection (value 1)",
        s.version_info.clone(),
    );
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    /// The `--watch-interval` poll: a version refused before is not retried.
    Watch,
}

/// The outcome of a reload for one collection.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Unchanged {
        version: String,
    },
    Swapped {
        from: Option<String>,
        to: String,
        ms: u64,
    },
    Refused {
        version: Option<String>,
        reason: String,
        /// The version that keeps serving (none for a collection that never loaded).
        serving: Option<String>,
    },
    /// The entry is gone from the index root; the loaded version keeps serving until restart.
    Missing {
        serving: String,
    },
}

/// Per-collection outcomes of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub collections: BTreeMap<String, Outcome>,
}

impl ReloadReport {
    pub fn refused(&self) -> usize {
        self.collections
            .values()
            .filter(|o| matches!(o, Outcome::Refused { .. }))
            .count()
    }
}

/// The served collections, swappable.
pub struct Registry {
    root: PathBuf,
    live: ArcSwap<Live>,
    default_ef: usize,
    allow_schema_change: bool,
    metrics: SwapMetrics,
    /// Held for the whole of a reload: reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// What was last refused or reported missing per collection (a target's identity or the
    /// problem's text): the watch poll neither retries nor re-reports it.
    reported: Mutex<HashMap<String, String>>,
}

impl Registry {
    /// Opens every collection of `root`; any problem is an error naming the file.
    pub fn open(
        root: &Path,
        verify: Verify,
        default_ef: usize,
        allow_schema_change: bool,
        metrics: SwapMetrics,
    ) -> anyhow::Result<Self> {
        let (found, problems) = scan(root)?;
        if let Some(p) = problems.first() {
            anyhow::bail!("{}", p.reason);
        }
        let mut collections = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for c in &found {
            let started = Instant::now();
            // --lazy promises a fast start: no checksums, no probe queries.
            let (col, served) =
                load(c, verify, verify == Verify::Full).map_err(anyhow::Error::msg)?;
            tracing::info!(
                collection = %col.name,
                version = %served.version,
                count = col.len(),
                dim = col.dim(),
                metric = ?col.manifest.metric,
                ms = started.elapsed().as_millis() as u64,
                "opened"
            );
            metrics.serving(&col, &served, None);
            collections.insert(col.name.clone(), Arc::new(col));
            versions.insert(c.name.clone(), served);
        }
        anyhow::ensure!(
            !collections.is_empty(),
            "no collections under {}: build one with `earshot build --out {}/tracks …`",
            root.display(),
            root.display()
        );
        Ok(Self {
            root: root.to_path_buf(),
            live: ArcSwap::from_pointee(Live {
                engine: Engine {
                    collections,
                    default_ef,
                },
                versions,
            }),
            default_ef,
            allow_schema_change,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            reported: Mutex::new(HashMap::new()),
        })
    }

    /// The current snapshot (lock-free; keeps it alive while held).
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Re-resolves every collection and swaps in those that changed and pass the checks.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reload_blocking(trigger)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reload failed: {e}");
                ReloadReport {
                    collections: BTreeMap::new(),
                }
            }
        }
    }

    fn reload_blocking(&self, trigger: Trigger) -> ReloadReport {
        let current = self.live();
        let mut outcomes = BTreeMap::new();
        let (found, problems) = match scan(&self.root) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("reload: {e:#}; still serving what is loaded");
                (Vec::new(), Vec::new())
            }
        };
        let mut collections = current.engine.collections.clone();
        let mut versions = current.versions.clone();
        let mut changed = false;
        for p in problems {
            let serving = current.versions.get(&p.name).map(|s| s.version.clone());
            if !self.seen(trigger, &p.name, &p.reason) {
                self.refuse(&p.name, None, &p.reason, serving.as_deref(), trigger);
            }
            outcomes.insert(
                p.name.clone(),
                Outcome::Refused {
                    version: None,
                    reason: p.reason,
                    serving,
                },
            );
        }
        for c in &found {
            let old = current.versions.get(&c.name);
            if let Some(old) = old.filter(|o| o.identity == c.identity) {
                outcomes.insert(
                    c.name.clone(),
                    Outcome::Unchanged {
                        version: old.version.clone(),
                    },
                );
                continue;
            }
            let serving = old.map(|o| o.version.clone());
            if self.seen(trigger, &c.name, &fingerprint(c.identity)) {
                // Refused before and not changed since: not worth another full verification.
                outcomes.insert(
                    c.name.clone(),
                    Outcome::Refused {
                        version: c.version.clone(),
                        reason: "refused earlier (unchanged since)".into(),
                        serving,
                    },
                );
                continue;
            }
            let started = Instant::now();
            let checked = load(c, Verify::Full, true).and_then(|(col, served)| {
                match current.engine.collections.get(&c.name) {
                    Some(prev) if !self.allow_schema_change => {
                        schema_unchanged(prev, &col).map(|()| (col, served))
                    }
                    _ => Ok((col, served)),
                }
            });
            match checked {
                Ok((col, served)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(
                        collection = %c.name,
                        from = serving.as_deref().unwrap_or("-"),
                        to = %served.version,
                        path = %served.path.display(),
                        count = col.len(),
                        ms,
                        "swapped in new version"
                    );
                    self.metrics.serving(&col, &served, old);
                    self.metrics
                        .swaps
                        .get_or_create(&CollectionLabel {
                            collection: c.name.clone(),
                        })
                        .inc();
                    self.reported.lock().unwrap().remove(&c.name);
                    outcomes.insert(
                        c.name.clone(),
                        Outcome::Swapped {
                            from: serving,
                            to: served.version.clone(),
                            ms,
                        },
                    );
                    collections.insert(c.name.clone(), Arc::new(col));
                    versions.insert(c.name.clone(), served);
                    changed = true;
                }
                Err(reason) => {
                    self.reported
                        .lock()
                        .unwrap()
                        .insert(c.name.clone(), fingerprint(c.identity));
                    self.refuse(
                        &c.name,
                        c.version.as_deref(),
                        &reason,
                        serving.as_deref(),
                        trigger,
                    );
                    outcomes.insert(
                        c.name.clone(),
                        Outcome::Refused {
                            version: c.version.clone(),
                            reason,
                            serving,
                        },
                    );
                }
            }
        }
        for (name, served) in &current.versions {
            if !outcomes.contains_key(name) {
                if !self.seen(trigger, name, "missing") {
                    tracing::warn!(
                        collection = %name,
                        version = %served.version,
                        "gone from the index root; still serving the loaded version (restart to drop it)"
                    );
                }
                outcomes.insert(
                    name.clone(),
                    Outcome::Missing {
                        serving: served.version.clone(),
                    },
                );
            }
        }
        if changed {
            self.live.store(Arc::new(Live {
                engine: Engine {
                    collections,
                    default_ef: self.default_ef,
                },
                versions,
            }));
        }
        ReloadReport {
            collections: outcomes,
        }
    }

    /// Records `what` as reported for `name`; true if the watch poll reported it already.
    fn seen(&self, trigger: Trigger, name: &str, what: &str) -> bool {
        let mut reported = self.reported.lock().unwrap();
        let before = reported.insert(name.to_string(), what.to_string());
        trigger == Trigger::Watch && before.as_deref() == Some(what)
    }

    fn refuse(
        &self,
        name: &str,
        version: Option<&str>,
        reason: &str,
        serving: Option<&str>,
        trigger: Trigger,
    ) {
        tracing::error!(
            collection = %name,
            version = version.unwrap_or("-"),
            serving = serving.unwrap_or("-"),
            ?trigger,
            "refused new version: {reason}"
        );
        self.metrics
            .refusals
            .get_or_create(&CollectionLabel {
                collection: name.to_string(),
            })
            .inc();
    }
}

fn fingerprint(id: Identity) -> String {
    format!("target {}:{}", id.0, id.1)
}

/// A new version must keep the dimension and metric of the one it replaces: clients send
/// vectors of that shape, and scores would change meaning.
fn schema_unchanged(old: &Collection, new: &Collection) -> Result<(), String> {
    if old.dim() != new.dim() || old.manifest.metric != new.manifest.metric {
        return Err(format!(
            "{}: dimension {} / metric {:?} differ from the served {} / {:?} \
             (restart with --allow-schema-change to accept)",
            new.dir.join(names::MANIFEST).display(),
            new.dim(),
            new.manifest.metric,
            old.dim(),
            old.manifest.metric
        ));
    }
    Ok(())
}

/// Whether a collection name taken from a request can name a collection at all.
pub fn valid_name(name: &str) -> bool {
    check_name(name).is_ok()
}
