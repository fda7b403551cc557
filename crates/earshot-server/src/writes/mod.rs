//! Writes between builds (README "Writes"; docs/format.md "Write log"): upserts and deletes
//! are appended to the collection's log in the object store and acknowledged only then;
//! every replica tails the log and applies it to an in-memory [`Delta`] over the version it
//! serves, which queries search beside the mapped version (`earshot_core::delta::View`).
//!
//! This crate does not reach object storage: the binary hands it a [`LogStore`] (backed by
//! `earshot-store`). The tail runs on the tokio runtime; applying segments (a copy of the
//! delta, then the new segments) runs on the blocking pool, and linking the delta's items
//! into the version's graph (an `Overlay`) on a thread of its own, both at normal priority.

pub mod http;
mod metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use earshot_core::collection::Collection;
use earshot_core::delta::Delta;
use earshot_core::format::log::{Ops, Segment};
use earshot_core::search::{InsertScratch, Overlay};
use earshot_core::shard::shard_of;

use crate::registry::{DeltaSource, Registry};

pub use metrics::LogMetrics;

/// A boxed future (the trait below is object-safe without an async-trait crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the write log lives: `earshot-store`'s `Log`, joined in by the binary.
pub trait LogStore: Send + Sync + 'static {
    /// Appends `ops` to `collection`'s log; returns the segment's number once durable.
    /// `after` is a number known to be taken (0 if none known).
    fn append<'a>(
        &'a self,
        collection: &'a str,
        ops: Ops,
        after: u64,
    ) -> BoxFuture<'a, anyhow::Result<u64>>;
    /// Segment `seq` of `collection`'s log, or None when it does not exist (yet).
    fn read<'a>(
        &'a self,
        collection: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Arc<Segment>>>>;
    /// The newest segment's number (0: empty log).
    fn head<'a>(&'a self, collection: &'a str) -> BoxFuture<'a, anyhow::Result<u64>>;
}

/// How the tail runs.
#[derive(Clone)]
pub struct WriteOptions {
    /// Look for new segments this often (`--log-poll-ms`, default 1 s).
    pub poll: Duration,
    /// Link the delta's items into the version's graph off the query path (false: every
    /// query scans them all exactly).
    pub link: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            link: true,
        }
    }
}

/// While linking a backlog, the overlay is handed to queries this often (each hand-over is a
/// copy of it), so a large batch is not scanned exactly until its last item is linked.
const LINK_PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Rounds start at most this often, however many writes poke the tail: each round that finds
/// segments copies the delta and hands new items to the linker, and at 20 writes/s one round
/// per write spent most of a replica's write-path CPU on those copies (BENCHMARKS.md §11).
const MIN_ROUND_GAP: Duration = Duration::from_millis(500);

/// A missing next segment is told apart from a pruned one (a LIST of the whole log) only once
/// it has been missing this long, and then at most this often: an up-to-date replica listed
/// the log on every round otherwise.
const GAP_CHECK_EVERY: Duration = Duration::from_secs(5);

/// A version's name and the newest overlay over it.
type VersionOverlay = (String, Arc<Overlay>);

/// Overlays kept per collection: the served version's, the one a swap is preparing, and the
/// one just replaced (whose linker may still finish after the swap).
const OVERLAY_VERSIONS: usize = 3;

/// Segment reads in flight at once per collection while the tail catches up.
const READ_AHEAD: usize = 16;

/// Segments read most per collection in one round (the rest follow in the next).
const MAX_SEGMENTS_PER_ROUND: usize = 256;

/// The write path and the tail of every served collection's log.
pub struct Writes {
    log: Arc<dyn LogStore>,
    registry: Weak<Registry>,
    opts: WriteOptions,
    /// Per collection, the segments read so far that some served version may still need.
    cache: Mutex<HashMap<String, BTreeMap<u64, Arc<Segment>>>>,
    /// Serialises this server's appends per collection.
    append_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Highest segment number known taken, per collection (the next append's hint).
    heads: Mutex<HashMap<String, u64>>,
    /// Per collection, the newest overlay linking its delta's items into each of the last
    /// [`OVERLAY_VERSIONS`] versions (version name, overlay), newest last.
    overlays: Mutex<HashMap<String, Vec<VersionOverlay>>>,
    /// Collections whose delta is being linked.
    linking: Mutex<HashSet<String>>,
    /// Per collection, the next segment found missing and when it first was (or was last
    /// checked against the log's head).
    missing: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    /// Set once every collection's log was applied up to the head seen at start.
    caught_up: AtomicBool,
    poke: tokio::sync::Notify,
    runtime: tokio::runtime::Handle,
    pub metrics: LogMetrics,
}

impl Writes {
    /// The write path over `registry`'s collections; call [`Writes::start`] to tail.
    pub fn new(
        log: Arc<dyn LogStore>,
        registry: &Arc<Registry>,
        opts: WriteOptions,
        metrics: LogMetrics,
    ) -> Arc<Self> {
        let w = Arc::new(Self {
            log,
            registry: Arc::downgrade(registry),
            opts,
            cache: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            append_locks: Mutex::new(HashMap::new()),
            overlays: Mutex::new(HashMap::new()),
            linking: Mutex::new(HashSet::new()),
            missing: Mutex::new(HashMap::new()),
            caught_up: AtomicBool::new(false),
            poke: tokio::sync::Notify::new(),
            runtime: tokio::runtime::Handle::current(),
            metrics,
        });
        registry.set_delta_source(w.clone());
        w
    }

    /// Whether `/readyz` may say ready: every log applied up to its head at start.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Look for new segments now (after a write here, or `POST /admin/log/poll`).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Tails every served collection's log until the process ends.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                let (done, collections) = this.round().await;
                if done && collections > 0 && !this.caught_up() {
                    this.caught_up.store(true, Ordering::Release);
                    tracing::info!("write log applied up to its head on every collection");
                }
                tokio::select! {
                    _ = tokio::time::sleep(this.opts.poll) => {}
                    _ = this.poke.notified() => {}
                }
                tokio::time::sleep_until(started + MIN_ROUND_GAP).await;
            }
        });
    }

    /// Appends `ops` to `collection`'s log (acknowledged once this returns Ok).
    pub async fn append(&self, collection: &str, ops: Ops) -> anyhow::Result<u64> {
        // One append in flight per collection on this server: concurrent ones would race
        // for the same number and all but one retry (each with a listing of the log).
        let lock = self
            .append_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(collection.to_string())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let after = self.head_hint(collection);
        let seq = self.log.append(collection, ops, after).await?;
        self.metrics
            .writes
            .get_or_create(&crate::metrics::CollectionLabel {
                collection: collection.to_string(),
            })
            .inc();
        self.note_head(collection, seq);
        self.poke();
        Ok(seq)
    }

    fn head_hint(&self, collection: &str) -> u64 {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads.get(collection).copied().unwrap_or(0)
    }

    fn note_head(&self, collection: &str, seq: u64) {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        let h = heads.entry(collection.to_string()).or_default();
        *h = (*h).max(seq);
        self.metrics.head(collection, *h);
    }

    /// One tail round over every served collection: whether each is at its log's head (no
    /// error), and how many there are.
    async fn round(self: &Arc<Self>) -> (bool, usize) {
        let Some(registry) = self.registry.upgrade() else {
            return (false, 0);
        };
        let live = registry.live();
        let mut all = true;
        for (name, c) in &live.engine.collections {
            let Some(served) = live.versions.get(name) else {
                continue;
            };
            let base = c.manifest.log_through.unwrap_or(0);
            let applied = live
                .engine
                .deltas
                .get(name)
                .filter(|d| d.base_version == served.version)
                .map_or(base, |d| d.applied);
            let current = live
                .engine
                .deltas
                .get(name)
                .filter(|d| d.base_version == served.version);
            let links_waiting = current.is_some_and(|d| self.newer_links(name, d));
            match self.read_from(name, applied + 1).await {
                Ok(0) if !links_waiting => {
                    self.metrics
                        .applied(name, applied, self.head_hint(name), None);
                    if let Some(d) = current {
                        self.maybe_link(c, d);
                    }
                }
                Ok(read) => {
                    let this = self.clone();
                    let (col, version) = (c.clone(), served.version.clone());
                    let prev = live.engine.deltas.get(name).cloned();
                    let through = applied + read as u64;
                    // Applying is cheap and what freshness waits for: a blocking-pool thread at
                    // normal priority, as is the linking (see `maybe_link`).
                    let built = tokio::task::spawn_blocking(move || {
                        this.build_delta(&col, &version, prev.as_deref(), through)
                    })
                    .await
                    .ok();
                    match built {
                        Some(Ok(d)) => {
                            let (seq, at) = (d.applied, d.applied_written_at_ms);
                            self.metrics.delta(name, &d);
                            let d = Arc::new(d);
                            self.maybe_link(c, &d);
                            if registry.set_delta(name, d).await {
                                self.metrics
                                    .applied(name, seq, self.head_hint(name), Some(at));
                            } else {
                                all = false; // a swap came first: next round
                            }
                        }
                        Some(Err(e)) => {
                            all = false;
                            self.metrics.error(name);
                            tracing::error!(collection = %name, "write log not applied: {e}");
                        }
                        None => all = false,
                    }
                }
                Err(e) => {
                    all = false;
                    self.metrics.error(name);
                    tracing::warn!(collection = %name, "cannot read the write log: {e:#}; retrying");
                }
            }
        }
        (all, live.versions.len())
    }

    /// Whether an overlay linking more of `d`'s items than `d`'s own waits to be attached.
    fn newer_links(&self, name: &str, d: &Delta) -> bool {
        self.overlay(name, &d.base_version)
            .is_some_and(|o| o.len() > d.linked() && o.len() <= d.appended())
    }

    /// The newest overlay of `name` over `version`.
    fn overlay(&self, name: &str, version: &str) -> Option<Arc<Overlay>> {
        let overlays = self.overlays.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, o) = overlays.get(name)?.iter().find(|(v, _)| v == version)?;
        Some(o.clone())
    }

    fn put_overlay(&self, name: &str, version: &str, o: Arc<Overlay>) {
        let mut overlays = self.overlays.lock().unwrap_or_else(PoisonError::into_inner);
        let list = overlays.entry(name.to_string()).or_default();
        list.retain(|(v, _)| v != version);
        list.push((version.to_string(), o));
        if list.len() > OVERLAY_VERSIONS {
            list.remove(0);
        }
    }

    /// Starts linking `d`'s unlinked items into the version's graph on a thread of its own
    /// (one per collection at a time), extending the newest overlay; the next round attaches
    /// it. Incremental: each item is inserted once, however the delta grows.
    fn maybe_link(self: &Arc<Self>, c: &Arc<Collection>, d: &Arc<Delta>) {
        if !self.opts.link || d.unindexed() == 0 {
            return;
        }
        let name = c.name.clone();
        if !self
            .linking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone())
        {
            return;
        }
        let (this, c, d) = (self.clone(), c.clone(), d.clone());
        let spawned = std::thread::Builder::new()
            .name("earshot-delta-link".into())
            .spawn(move || {
                // Normal priority: until an item is linked every query scans it exactly, which
                // under load costs the queries more than linking it (BENCHMARKS.md §11).
                this.link(&c, &d);
                this.linking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                this.poke();
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the delta linker: {e}");
        }
    }

    /// Links `d`'s items past the newest overlay's into `c`'s graph, handing the overlay over
    /// every [`LINK_PUBLISH_EVERY`] and at the end; returns the final one.
    fn link(&self, c: &Collection, d: &Delta) -> Arc<Overlay> {
        let g = c.graph();
        let version = d.base_version.as_str();
        let current = self
            .overlay(&c.name, version)
            .filter(|o| o.base_rows() == g.len() && o.len() <= d.appended());
        let mut o = match current {
            Some(o) if o.len() == d.appended() => return o,
            Some(o) => (*o).clone(),
            None => Overlay::new(&g),
        };
        let (first, started) = (o.len(), std::time::Instant::now());
        let ef_c = c.manifest.hnsw.ef_construction as usize;
        let mut scratch = InsertScratch::default();
        let mut handed = std::time::Instant::now();
        while o.len() < d.appended() {
            o.insert(&g, d.new_rows(), ef_c, &mut scratch);
            if handed.elapsed() >= LINK_PUBLISH_EVERY {
                self.put_overlay(&c.name, version, Arc::new(o.clone()));
                self.poke();
                handed = std::time::Instant::now();
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        let (items, rewritten) = (o.len() - first, o.rewritten_rows());
        tracing::info!(collection = %c.name, version, items, linked = o.len(), rewritten, ms, "write-log items linked into the version's graph");
        let o = Arc::new(o);
        self.put_overlay(&c.name, version, o.clone());
        self.poke();
        o
    }

    /// Reads segments `from…` of `name` into the cache until the first absent one; returns
    /// how many were read. A gap (segment `from` absent while the log holds later ones: it
    /// was pruned because a newer version folds it in) is an error until that version is
    /// swapped in.
    async fn read_from(&self, name: &str, from: u64) -> anyhow::Result<usize> {
        let mut seq = from;
        let mut read = 0;
        // Segments are read in windows that double while every read finds one (up to
        // READ_AHEAD at once): an idle tail asks for one segment per round, a replica behind
        // the log catches up without a round trip per segment.
        let mut window = 1;
        while read < MAX_SEGMENTS_PER_ROUND {
            let want: Vec<u64> = (seq..seq + window.min(MAX_SEGMENTS_PER_ROUND - read) as u64)
                .filter(|&q| self.cached(name, q).is_none())
                .collect();
            let fetched =
                futures_util::future::join_all(want.iter().map(|&q| self.log.read(name, q))).await;
            for (q, r) in want.into_iter().zip(fetched) {
                if let Some(s) = r? {
                    self.note_head(name, q);
                    self.cache_put(name, s);
                }
            }
            let end = seq + window as u64;
            while seq < end && self.cached(name, seq).is_some() {
                seq += 1;
                read += 1;
            }
            if seq < end {
                break; // `seq` is missing
            }
            window = (window * 2).min(READ_AHEAD);
        }
        if read == 0 && (!self.caught_up() || self.time_to_check_gap(name, seq)) {
            let head = self.log.head(name).await?;
            // A store may list a segment before an earlier one reads back (one being written
            // as it lists): look once more before calling it pruned.
            if head > seq {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(s) = self.log.read(name, seq).await? {
                    self.cache_put(name, s);
                    self.note_head(name, seq);
                    return Ok(1);
                }
                anyhow::bail!(
                    "segment {seq} is gone from the log (head {head}): it was pruned; waiting for the version that folds it in"
                );
            }
            self.note_head(name, head);
        }
        Ok(read)
    }

    /// Whether segment `seq` of `name`, found missing, has been so for [`GAP_CHECK_EVERY`]
    /// since it first was or was last checked (then the clock restarts). Until the log is
    /// caught up at start every round checks, so `/readyz` never passes over a gap.
    fn time_to_check_gap(&self, name: &str, seq: u64) -> bool {
        let now = std::time::Instant::now();
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        match missing.get_mut(name) {
            Some((s, since)) if *s == seq => {
                if now.duration_since(*since) < GAP_CHECK_EVERY {
                    return false;
                }
                *since = now;
                true
            }
            _ => {
                missing.insert(name.to_string(), (seq, now));
                false
            }
        }
    }

    fn cached(&self, name: &str, seq: u64) -> Option<Arc<Segment>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(name)?.get(&seq).cloned()
    }

    fn cache_put(&self, name: &str, s: Arc<Segment>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.entry(name.to_string()).or_default().insert(s.seq, s);
    }

    /// The delta over `c` with the segments after what `prev` (or the version) applied, up
    /// to `through` — never further, so a log growing faster than it is read still gets
    /// applied in steps. Blocking: reads segments not cached from the store.
    fn build_delta(
        &self,
        c: &Collection,
        version: &str,
        prev: Option<&Delta>,
        through: u64,
    ) -> Result<Delta, String> {
        let mut d = match prev.filter(|d| d.base_version == version) {
            Some(d) => d.clone(),
            None => Delta::new(c, version, c.manifest.log_through.unwrap_or(0)),
        };
        let shard = c.manifest.shard.as_ref().map(|s| (s.index, s.count));
        while d.applied < through {
            let seq = d.applied + 1;
            let s = match self.cached(&c.name, seq) {
                Some(s) => s,
                None => match self.runtime.block_on(self.log.read(&c.name, seq)) {
                    Ok(Some(s)) => {
                        self.cache_put(&c.name, s.clone());
                        s
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("{e:#}")),
                },
            };
            let owned = own_part(&s, shard);
            d.apply(c, owned.as_ref().unwrap_or(&s))?;
        }
        d.seal(c);
        if let Some(o) = self.overlay(&c.name, version) {
            d.attach_links(o);
        }
        // Segments every served version includes are no longer needed here.
        self.trim_cache(&c.name, c.manifest.log_through.unwrap_or(0));
        Ok(d)
    }

    fn trim_cache(&self, name: &str, through: u64) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let live = registry.live();
        let oldest = live
            .retained
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|r| r.engine.collections.get(name))
            .map(|c| c.manifest.log_through.unwrap_or(0))
            .fold(through, u64::min);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = cache.get_mut(name) {
            m.retain(|&seq, _| seq > oldest);
        }
    }
}

/// A shard replica keeps only the upserts of IDs it owns (deletes apply everywhere: an ID
/// it does not hold is a no-op). None: the segment applies whole.
fn own_part(s: &Segment, shard: Option<(u32, u32)>) -> Option<Segment> {
    let (index, count) = shard?;
    let Ops::Upsert { dim, items } = &s.ops else {
        return None;
    };
    let items = items
        .iter()
        .filter(|it| shard_of(&it.id, count) == index)
        .cloned()
        .collect();
    Some(Segment {
        ops: Ops::Upsert { dim: *dim, items },
        ..s.clone()
    })
}

impl DeltaSource for Writes {
    fn delta_for(&self, c: &Collection, version: &str) -> Result<Option<Delta>, String> {
        // Up to the newest segment this server has seen: what it acknowledged or applied
        // before the swap is in the new version's view from its first query.
        let mut d = self.build_delta(c, version, None, self.head_hint(&c.name))?;
        // Linked before the swap, on this (low-priority) reload thread while the old version
        // serves: a version that starts with thousands of unlinked items has every query scan
        // them exactly until they are (BENCHMARKS.md §11, soak).
        if self.opts.link && d.unindexed() > 0 {
            d.attach_links(self.link(c, &d));
        }
        self.metrics.delta(&c.name, &d);
        Ok((!d.is_empty() || d.applied > c.manifest.log_through.unwrap_or(0)).then_some(d))
    }
}
