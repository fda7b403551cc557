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
//!
//! A replaced version is kept loaded for `retain_previous` (`--retain-previous`) after the
//! swap, so requests pinned to it (`x-earshot-version`) still answer from it while a fleet
//! rolls over: [`Live::pinned`] picks the engine a request runs on. In store mode
//! (`allow_empty`) the index root may start empty and collections arrive later, each on a
//! reload.

mod metrics;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use serde::Serialize;

use earshot_core::collection::{sanity_check, Collection};
use earshot_core::delta::Delta;
use earshot_core::format::{names, Verify};
use earshot_core::layout::compact_time;

use crate::api::ReloadOutcome;
use crate::metrics::CollectionLabel;
use crate::recall::Sampler;
pub use metrics::{SwapMetrics, VersionLabel};
pub use scan::Identity;

/// Builds the write log's delta over a version before it is swapped in (implemented by
/// `crate::writes`; called on the reload thread, so it may block on the store).
pub trait DeltaSource: Send + Sync {
    /// The delta over `c` (version `version`), or None when the log adds nothing.
    fn delta_for(&self, c: &Collection, version: &str) -> Result<Option<Delta>, String>;
}

use scan::{scan, Candidate};

mod live;
pub use live::{Live, Retained};

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
    /// `version` as the `x-earshot-version` response header (made once, cloned per answer).
    #[serde(skip)]
    pub header: HeaderValue,
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
    // Version names are checked like collection names (no control characters), which
    // every header value accepts.
    let header = HeaderValue::from_str(&version).unwrap_or(HeaderValue::from_static("invalid"));
    let served = Served {
        version,
        path: c.target.clone(),
        identity: c.identity,
        loaded_at: SystemTime::now(),
        header,
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
    /// Store mode, after new versions were downloaded into the index root; like `Watch`, a
    /// version refused before is not retried.
    Store,
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

/// How the registry opens and swaps collections.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Checksums at start-up (`--lazy` skips them; a swap always verifies fully).
    pub verify: Verify,
    pub default_ef: usize,
    /// Accept a new version whose dimension or metric differs from the served one.
    pub allow_schema_change: bool,
    /// Keep a replaced version loaded this long for pinned requests (zero: unload at once).
    pub retain_previous: Duration,
    /// Start with an empty (or not yet existing) index root, and log instead of failing on
    /// an entry that cannot be served: store mode fills the root while serving.
    pub allow_empty: bool,
    /// The live recall estimate's sampler, given to the engine of the version in service.
    pub recall: Option<Sampler>,
}

impl RegistryOptions {
    pub fn new(verify: Verify, default_ef: usize) -> Self {
        Self {
            verify,
            default_ef,
            allow_schema_change: false,
            retain_previous: Duration::ZERO,
            allow_empty: false,
            recall: None,
        }
    }
}

/// The served collections, swappable.
pub struct Registry {
    root: PathBuf,
    live: ArcSwap<Live>,
    default_ef: usize,
    recall: Option<Sampler>,
    allow_schema_change: bool,
    retain_previous: Duration,
    metrics: SwapMetrics,
    /// Held for the whole of a reload: reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Builds the write log's delta over a version about to be swapped in (`--store`).
    delta_source: std::sync::OnceLock<Arc<dyn DeltaSource>>,
    /// What was last refused or reported missing per collection (a target's identity or the
    /// problem's text): the watch poll neither retries nor re-reports it.
    reported: Mutex<HashMap<String, String>>,
}

impl Registry {
    /// Opens every collection of `root`; any problem is an error naming the file (with
    /// `allow_empty`, a logged refusal, and the root is created when missing).
    pub fn open(root: &Path, opts: &RegistryOptions, metrics: SwapMetrics) -> anyhow::Result<Self> {
        let verify = opts.verify;
        if opts.allow_empty {
            std::fs::create_dir_all(root)
                .map_err(|e| anyhow::anyhow!("cannot create index root {}: {e}", root.display()))?;
        }
        let (found, problems) = scan(root)?;
        let reported = Mutex::new(HashMap::new());
        for p in &problems {
            if !opts.allow_empty {
                anyhow::bail!("{}", p.reason);
            }
            tracing::error!(collection = %p.name, "not served: {}", p.reason);
            reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(p.name.clone(), p.reason.clone());
        }
        let mut collections = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for c in &found {
            let started = Instant::now();
            // --lazy promises a fast start: no checksums, no probe queries.
            let (col, served) = match load(c, verify, verify == Verify::Full) {
                Ok(x) => x,
                Err(reason) if opts.allow_empty => {
                    tracing::error!(collection = %c.name, "not served: {reason}");
                    metrics
                        .refusals
                        .get_or_create(&CollectionLabel {
                            collection: c.name.clone(),
                        })
                        .inc();
                    reported
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(c.name.clone(), fingerprint(c.identity));
                    continue;
                }
                Err(reason) => anyhow::bail!("{reason}"),
            };
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
            !collections.is_empty() || opts.allow_empty,
            "no collections under {}: build one with `earshot build --out {}/tracks …`",
            root.display(),
            root.display()
        );
        Ok(Self {
            root: root.to_path_buf(),
            live: ArcSwap::from_pointee(Live::new(
                collections,
                BTreeMap::new(),
                versions,
                BTreeMap::new(),
                opts.default_ef,
                &opts.recall,
            )),
            default_ef: opts.default_ef,
            recall: opts.recall.clone(),
            allow_schema_change: opts.allow_schema_change,
            retain_previous: opts.retain_previous,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            delta_source: std::sync::OnceLock::new(),
            reported,
        })
    }

    /// Has every swapped-in version get the write log applied over it by `source` before
    /// it serves (set once; later calls are ignored).
    pub fn set_delta_source(&self, source: Arc<dyn DeltaSource>) {
        let _ = self.delta_source.set(source);
    }

    /// Swaps in `delta` over collection `name` if it still serves the version the delta was
    /// built over (false: a swap came first, and the caller builds again). Waits for a
    /// reload in progress; never blocks queries.
    pub async fn set_delta(&self, name: &str, delta: Arc<Delta>) -> bool {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.live();
        if current.versions.get(name).map(|s| s.version.as_str())
            != Some(delta.base_version.as_str())
        {
            return false;
        }
        let mut deltas = current.engine.deltas.clone();
        deltas.insert(name.to_string(), delta);
        let old = self.live.swap(Arc::new(Live::new(
            current.engine.collections.clone(),
            deltas,
            current.versions.clone(),
            current.retained_parts(),
            self.default_ef,
            &self.recall,
        )));
        drop(current);
        crate::background::reap("earshot-unmap", old);
        true
    }

    /// The current snapshot (lock-free; keeps it alive while held).
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Re-resolves every collection and swaps in those that changed and pass the checks.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        // Verifying and opening a version is CPU and I/O the queries must not wait behind.
        let report =
            match crate::background::run("earshot-reload", move || this.reload_blocking(trigger))
                .await
            {
                Some(r) => r,
                None => {
                    tracing::error!("reload failed: its thread panicked");
                    ReloadReport {
                        collections: BTreeMap::new(),
                    }
                }
            };
        let swapped = report
            .collections
            .values()
            .any(|o| matches!(o, ReloadOutcome::Swapped { from: Some(_), .. }));
        if swapped && !self.retain_previous.is_zero() {
            // Unload what this swap retained once its time is up.
            let this = self.clone();
            let after = self.retain_previous + Duration::from_millis(100);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _one_at_a_time = this.reloading.lock().await;
                this.drop_expired();
            });
        }
        report
    }

    /// Unloads the retained versions whose time is up.
    fn drop_expired(&self) {
        let current = self.live();
        let now = Instant::now();
        let expired = |list: &Vec<Retained>| list.iter().any(|r| r.until <= now);
        if !current.retained.values().any(expired) {
            return;
        }
        let mut retained = current.retained_parts();
        for (name, list) in retained.iter_mut() {
            list.retain(|(served, _, until)| {
                let keep = *until > now;
                if !keep {
                    tracing::info!(collection = %name, version = %served.version, "unloaded retained version");
                }
                keep
            });
        }
        retained.retain(|_, list| !list.is_empty());
        let old = self.live.swap(Arc::new(Live::new(
            current.engine.collections.clone(),
            current.engine.deltas.clone(),
            current.versions.clone(),
            retained,
            self.default_ef,
            &self.recall,
        )));
        drop(current);
        crate::background::reap("earshot-unmap", old);
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
        let mut deltas = current.engine.deltas.clone();
        let mut versions = current.versions.clone();
        let mut retained = current.retained_parts();
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
                    // The write log over the new version: what it does not fold in yet.
                    deltas.remove(&c.name);
                    if let Some(source) = self.delta_source.get() {
                        match source.delta_for(&col, &served.version) {
                            Ok(Some(d)) => {
                                deltas.insert(c.name.clone(), Arc::new(d));
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!(
                                collection = %c.name,
                                version = %served.version,
                                "write log not applied to the new version yet: {e}"
                            ),
                        }
                    }
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
                    let kept = retained.entry(c.name.clone()).or_default();
                    // A roll-back makes a retained version current again.
                    kept.retain(|(s, _, _)| s.version != served.version);
                    let replaced = collections.insert(c.name.clone(), Arc::new(col));
                    let previous = versions.insert(c.name.clone(), served);
                    if let (Some(col), Some(prev)) = (replaced, previous) {
                        if !self.retain_previous.is_zero() {
                            kept.retain(|(s, _, _)| s.version != prev.version);
                            kept.push((prev, col, Instant::now() + self.retain_previous));
                        }
                    }
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
            let now = Instant::now();
            for list in retained.values_mut() {
                list.retain(|(_, _, until)| *until > now);
            }
            retained.retain(|_, list| !list.is_empty());
            // The replaced snapshot is dropped (and a version it alone held unmapped) by a
            // low-priority reaper, never by the query that happens to let go of it last.
            let old = self.live.swap(Arc::new(Live::new(
                collections,
                deltas,
                versions,
                retained,
                self.default_ef,
                &self.recall,
            )));
            crate::background::reap("earshot-unmap", old);
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
        matches!(trigger, Trigger::Watch | Trigger::Store) && before.as_deref() == Some(what)
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
pub(crate) mod tests;
