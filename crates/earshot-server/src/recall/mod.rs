//! The live recall estimate (`--recall-sample-rate`): how good the served ANN answers are,
//! measured on real traffic.
//!
//! A small share of queries is sampled in the query path ([`Sampler::pick`]: a thread-local
//! random draw, no lock, no allocation when the draw says no). A sampled query's vector, the
//! rows the graph walk served and its hard filter go into a bounded queue (`try_send`: a
//! full queue drops the sample and counts it). One background OS thread at the lowest
//! priority (`worker.rs`) computes each sample's exact top-k over the same mapped version,
//! with the same metric, filter and `k`, and keeps the recall@k of the served rows over a
//! window of recent samples per collection; it sleeps after each check so that it uses at
//! most `--recall-cpu-budget` of one core. Results are the `earshot_recall_*` metrics and a
//! warning log line when the estimate falls below `--recall-floor`.
//!
//! Only lists taken straight from one walk are sampled (`similar`, `search`, `taste` with
//! the mean strategy and one centroid; no `max_per_creator` or `emerging`, which reorder the
//! walk's candidates): what is measured is the walk's own top-k.

mod check;
mod worker;

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};

use earshot_core::collection::Collection;
use earshot_recommend::constraints::HardFilter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{CollectionLabel, Metrics};
use crate::registry::Registry;

/// Default share of queries checked. One exact check reads every vector of the collection,
/// as much work as several hundred walks on a large one, so sampling must be rare; 1 in
/// 1,000 still gives a few thousand samples a day at one query a second. The CPU budget, not
/// the rate, bounds the checker's cost: past it, samples are dropped.
pub const DEFAULT_SAMPLE_RATE: f64 = 0.001;
/// Default estimate below which a warning is logged.
pub const DEFAULT_FLOOR: f64 = 0.9;
/// Default share of one core the checker may use. Nice 19 does not make it free: on a
/// saturated one-core server, 5 % cost 7 % of the queries answered per CPU-second (its scans
/// also evict the walk's working set from the cache; BENCHMARKS.md §6). At 1 %, a check of
/// 75k × 384 rows (~2 ms) runs 5 times a second: the window of 1,000 fills in minutes.
pub const DEFAULT_CPU_BUDGET: f64 = 0.01;

/// Samples waiting for their check; more are dropped (and counted).
const QUEUE: usize = 256;

/// `--recall-sample-rate`, `--recall-floor`, `--recall-cpu-budget`.
#[derive(Debug, Clone, Copy)]
pub struct RecallOptions {
    /// Share of eligible queries checked, 0 … 1 (0: off: no thread, no metrics).
    pub sample_rate: f64,
    /// Log a warning when the estimate over enough samples is below this (0 … 1).
    pub floor: f64,
    /// Share of one core the checker may use, above 0 and at most 1.
    pub cpu_budget: f64,
}

impl Default for RecallOptions {
    fn default() -> Self {
        Self {
            sample_rate: DEFAULT_SAMPLE_RATE,
            floor: DEFAULT_FLOOR,
            cpu_budget: DEFAULT_CPU_BUDGET,
        }
    }
}

impl RecallOptions {
    /// Every value in range (NaN is not); the CLI's parsers check the same.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--recall-sample-rate", self.sample_rate),
            ("--recall-floor", self.floor),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} must be a number from 0 to 1 (got {v})"
            );
        }
        anyhow::ensure!(
            self.cpu_budget > 0.0 && self.cpu_budget <= 1.0,
            "--recall-cpu-budget must be above 0 and at most 1 (a share of one core; got {})",
            self.cpu_budget
        );
        Ok(())
    }
}

/// One sampled query: what it was served from, what it asked and what it got.
pub(crate) struct Sample {
    /// The version the answer came from, kept mapped until the check is done.
    collection: Arc<Collection>,
    query: Vec<f32>,
    /// Rows the walk returned, nearest first.
    served: Vec<u32>,
    filter: HardFilter,
    k: usize,
}

/// The `earshot_recall_*` metrics.
#[derive(Clone, Default)]
struct RecallMetrics {
    estimate: Family<CollectionLabel, Gauge<f64, AtomicU64>>,
    stderr: Family<CollectionLabel, Gauge<f64, AtomicU64>>,
    window: Family<CollectionLabel, Gauge>,
    samples: Family<CollectionLabel, Counter>,
    dropped: Family<CollectionLabel, Counter>,
}

impl RecallMetrics {
    fn register(m: &mut Metrics) -> Self {
        let s = Self::default();
        let r = &mut m.registry;
        r.register(
            "recall_estimate",
            "Mean recall@k of the served ANN answers against an exact scan, over the last \
             (up to 1,000) checked samples of the version in service",
            s.estimate.clone(),
        );
        r.register(
            "recall_estimate_stderr",
            "Standard error of earshot_recall_estimate",
            s.stderr.clone(),
        );
        r.register(
            "recall_window_samples",
            "Checked samples behind earshot_recall_estimate",
            s.window.clone(),
        );
        r.register(
            "recall_samples",
            "Sampled queries checked against an exact scan",
            s.samples.clone(),
        );
        r.register(
            "recall_samples_dropped",
            "Sampled queries not checked: the queue was full (CPU budget spent) or the \
             version was replaced before the check",
            s.dropped.clone(),
        );
        s
    }

    fn drop_one(&self, collection: &str) {
        self.dropped
            .get_or_create(&CollectionLabel {
                collection: collection.to_string(),
            })
            .inc();
    }
}

/// The query path's side: decides whether to sample, and hands samples to the checker.
/// Cheap to clone (every engine holds one).
#[derive(Clone)]
pub struct Sampler(Arc<SamplerInner>);

struct SamplerInner {
    /// A draw below this samples (`u64::MAX`: every query).
    threshold: u64,
    tx: SyncSender<Sample>,
    metrics: RecallMetrics,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("threshold", &self.0.threshold)
            .finish()
    }
}

thread_local! {
    /// This thread's xorshift state (0: not seeded yet).
    static DRAW: Cell<u64> = const { Cell::new(0) };
}

/// A uniform 64-bit draw from this thread's generator.
#[inline]
fn draw() -> u64 {
    DRAW.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// A non-zero seed that differs between threads and processes (once per thread).
#[cold]
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() | 1
}

impl Sampler {
    /// Whether this query is sampled (no lock, no allocation).
    #[inline]
    pub fn pick(&self) -> bool {
        let t = self.0.threshold;
        t == u64::MAX || (t != 0 && draw() < t)
    }

    /// Queues a sampled query for its check; drops (and counts) it when the queue is full.
    pub fn offer(
        &self,
        collection: &Arc<Collection>,
        query: &[f32],
        served: impl Iterator<Item = u32>,
        filter: &HardFilter,
        k: usize,
    ) {
        let sample = Sample {
            collection: collection.clone(),
            query: query.to_vec(),
            served: served.collect(),
            filter: filter.clone(),
            k,
        };
        match self.0.tx.try_send(sample) {
            Ok(()) => {}
            Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => {
                self.0.metrics.drop_one(&s.collection.name)
            }
        }
    }
}

/// The checker before it starts: made before the registry (whose engines hold its
/// [`Sampler`]), started once the registry exists.
pub struct Checker {
    sampler: Sampler,
    rx: Receiver<Sample>,
    opts: RecallOptions,
}

impl Checker {
    /// `None` when sampling is off (rate 0): then nothing is registered or started.
    pub fn new(opts: &RecallOptions, metrics: &mut Metrics) -> anyhow::Result<Option<Self>> {
        opts.validate()?;
        if opts.sample_rate == 0.0 {
            return Ok(None);
        }
        let threshold = if opts.sample_rate >= 1.0 {
            u64::MAX
        } else {
            // Rounds to 0 only for rates below 2⁻⁶⁴.
            (opts.sample_rate * u64::MAX as f64) as u64
        };
        let (tx, rx) = sync_channel(QUEUE);
        let metrics = RecallMetrics::register(metrics);
        Ok(Some(Self {
            sampler: Sampler(Arc::new(SamplerInner {
                threshold,
                tx,
                metrics,
            })),
            rx,
            opts: *opts,
        }))
    }

    pub fn sampler(&self) -> Sampler {
        self.sampler.clone()
    }

    /// Starts the checker's thread. It reads the registry only to tell whether a sample's
    /// version is still the one in service, and ends with the registry (whose engines hold
    /// the queue's senders).
    pub fn start(self, registry: &Arc<Registry>) -> anyhow::Result<()> {
        let metrics = self.sampler.0.metrics.clone();
        let registry: Weak<Registry> = Arc::downgrade(registry);
        drop(self.sampler);
        let (rx, opts) = (self.rx, self.opts);
        std::thread::Builder::new()
            .name("earshot-recall".into())
            .spawn(move || worker::run(rx, registry, metrics, opts))?;
        tracing::info!(
            sample_rate = opts.sample_rate,
            floor = opts.floor,
            cpu_budget = opts.cpu_budget,
            "live recall estimate on"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
