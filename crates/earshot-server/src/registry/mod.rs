//! The served collections and how they change while the server runs.
//!
//! Every non-hidden entry of the index root is a collection: a plain directory, or a symlink
//! into `ROOT/.versions/NAME/VERSION` (see `earshot_core::layout`). The served set is one immutable
//! [`Live`] snapshot behind an [`ArcSwap`]: a request takes an `Arc` of it without a lock and
//! keeps every collection it reads alive until it finishes. A reload (SIGHUP,
//! `POST /admin/reload`, or the `--watch-interval` poll) re-resolves every entry; a collection
//! whose target changed is opened with full verification, checked against the one it replaces
//! (dimension and metric), probed with a few queries and paged in, and only then swapped in.
//! A version that fails any of that is refused with a log line and a metric, and the old one
//! keeps serving. The old mappings are released when the last request holding them is done.

mod metrics;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use earshot_core::collection::{sanity_check, Collection};
use earshot_core::format::{names, Verify};
use earshot_core::layout::compact_time;

use crate::api::ReloadOutcome;
use crate::engine::Engine;
use crate::metrics::CollectionLabel;
pub use metrics::{SwapMetrics, VersionLabel};
pub use scan::Identity;
use scan::{scan, Candidate};

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

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin,
    /// The `--watch-interval` poll: a version refused before is not retried.
    Watch,
}

/// Per-collection outcomes of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub collections: BTreeMap<String, ReloadOutcome>,
}

impl ReloadReport {
    pub fn refused(&self) -> usize {
        self.collections
            .values()
            .filter(|o| matches!(o, ReloadOutcome::Refused { .. }))
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
            metrics.serving(&col, &served.version, None);
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
                ReloadOutcome::Refused {
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
                    ReloadOutcome::Unchanged {
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
                    ReloadOutcome::Refused {
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
                    self.metrics
                        .serving(&col, &served.version, old.map(|o| o.version.as_str()));
                    self.metrics
                        .swaps
                        .get_or_create(&CollectionLabel {
                            collection: c.name.clone(),
                        })
                        .inc();
                    self.reported().remove(&c.name);
                    outcomes.insert(
                        c.name.clone(),
                        ReloadOutcome::Swapped {
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
                    self.reported()
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
                        ReloadOutcome::Refused {
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
                    ReloadOutcome::Missing {
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

    /// A panicked reload leaves nothing half-written in the map: a poisoned lock is usable.
    fn reported(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `what` as reported for `name`; true if the watch poll reported it already.
    fn seen(&self, trigger: Trigger, name: &str, what: &str) -> bool {
        let mut reported = self.reported();
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

// Versioned collections are symlinks: the tests build them on unix only.
#[cfg(all(test, unix))]
mod tests;
