//! The checker's thread: one dedicated OS thread (never a tokio worker) at the lowest
//! priority, checking samples one at a time and sleeping to stay within its CPU budget.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use earshot_core::collection::Collection;

use super::{check, RecallMetrics, RecallOptions, Sample};
use crate::background;
use crate::metrics::CollectionLabel;
use crate::registry::Registry;

/// The estimate is the mean over this many most recent samples of the version in service
/// (a plain window rather than an exponential mean: its standard error is the textbook one).
pub(super) const WINDOW: usize = 1000;
/// Fewer samples than this are not judged against the floor.
pub(super) const MIN_JUDGED: usize = 100;
/// At most one floor warning per collection this often.
const WARN_EVERY: Duration = Duration::from_secs(300);
/// Without samples, look this often for versions no longer in service (their estimate is
/// withdrawn).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Recent recalls of one version of a collection.
pub(super) struct Window {
    /// The version measured (compared by address; the weak reference keeps the address
    /// from being reused, not the mapping alive).
    version: Weak<Collection>,
    recalls: VecDeque<f64>,
    last_warning: Option<Instant>,
}

impl Window {
    pub(super) fn new(c: &Arc<Collection>) -> Self {
        Self {
            version: Arc::downgrade(c),
            recalls: VecDeque::with_capacity(WINDOW),
            last_warning: None,
        }
    }

    fn is(&self, c: &Arc<Collection>) -> bool {
        std::ptr::eq(self.version.as_ptr(), Arc::as_ptr(c))
    }

    pub(super) fn push(&mut self, recall: f64) {
        if self.recalls.len() == WINDOW {
            self.recalls.pop_front();
        }
        self.recalls.push_back(recall);
    }

    /// Mean and its standard error (0 with one sample).
    pub(super) fn estimate(&self) -> (f64, f64) {
        let n = self.recalls.len() as f64;
        let mean = self.recalls.iter().sum::<f64>() / n;
        if self.recalls.len() < 2 {
            return (mean, 0.0);
        }
        let var = self.recalls.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, (var / n).sqrt())
    }
}

pub(super) fn run(
    rx: Receiver<Sample>,
    registry: Weak<Registry>,
    m: RecallMetrics,
    opts: RecallOptions,
) {
    crate::background::lower_this_thread();
    let mut windows: HashMap<String, Window> = HashMap::new();
    loop {
        let sample = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(s) => s,
            Err(RecvTimeoutError::Timeout) => {
                let Some(r) = registry.upgrade() else { return };
                sweep(&r, &mut windows, &m);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(r) = registry.upgrade() else { return };
        sweep(&r, &mut windows, &m);
        let name = sample.collection.name.clone();
        // A version replaced between the query and now is not measured: its estimate is
        // gone, and mixing it into the new one's would blur a change of quality.
        let version = {
            let live = r.live();
            let current = live.engine.collections.get(&name);
            if !current.is_some_and(|c| Arc::ptr_eq(c, &sample.collection)) {
                m.drop_one(&name);
                continue;
            }
            live.versions
                .get(&name)
                .map_or_else(String::new, |v| v.version.clone())
        };
        drop(r);
        let (started, cpu_started) = (Instant::now(), background::thread_cpu());
        let recall = check::recall(&sample);
        let (busy, cpu) = (
            started.elapsed(),
            background::thread_cpu().saturating_sub(cpu_started),
        );
        if let Some(recall) = recall {
            let w = windows
                .entry(name.clone())
                .or_insert_with(|| Window::new(&sample.collection));
            if !w.is(&sample.collection) {
                *w = Window::new(&sample.collection);
            }
            w.push(recall);
            let (mean, stderr) = w.estimate();
            let label = CollectionLabel {
                collection: name.clone(),
            };
            m.samples.get_or_create(&label).inc();
            m.estimate.get_or_create(&label).set(mean);
            m.stderr.get_or_create(&label).set(stderr);
            m.window.get_or_create(&label).set(w.recalls.len() as i64);
            let judged = w.recalls.len() >= MIN_JUDGED;
            if judged
                && mean < opts.floor
                && w.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY)
            {
                w.last_warning = Some(Instant::now());
                tracing::warn!(
                    collection = %name,
                    version = %version,
                    recall = mean,
                    stderr,
                    samples = w.recalls.len(),
                    floor = opts.floor,
                    "live recall estimate below the floor: the served ANN answers miss exact \
                     neighbours (rebuild with a larger --m / --ef-construction, or raise ef)"
                );
            }
        }
        // Let go of the version before sleeping: a swapped-out one is unmapped sooner.
        drop(sample);
        // One cycle lasts cpu / budget: the check used `budget` of it. (Waiting for a core
        // while busy counts as part of the cycle, so on a loaded machine the share is lower.)
        let cycle = cpu.div_f64(opts.cpu_budget);
        std::thread::sleep(cycle.saturating_sub(busy));
    }
}

/// Withdraws the estimate of every collection whose measured version is no longer in
/// service (the sample counters stay: they only ever grow).
fn sweep(r: &Registry, windows: &mut HashMap<String, Window>, m: &RecallMetrics) {
    let live = r.live();
    windows.retain(|name, w| {
        let current = live.engine.collections.get(name).is_some_and(|c| w.is(c));
        if !current {
            let label = CollectionLabel {
                collection: name.clone(),
            };
            m.estimate.remove(&label);
            m.stderr.remove(&label);
            m.window.remove(&label);
        }
        current
    });
}
