//! Rate caps for bulk transfers beside serving replicas (`--fetch-mb-per-s`,
//! `--upload-mb-per-s`).

/// Holds a transfer (all the objects of one fetch or publish) to an average rate: each chunk
/// moves the time the bytes so far are due at, and a task that is ahead of it waits.
pub(crate) struct Pace {
    start: tokio::time::Instant,
    bytes: std::sync::atomic::AtomicU64,
    per_sec: Option<u64>,
}

impl Pace {
    pub(crate) fn new(per_sec: Option<u64>) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            bytes: Default::default(),
            per_sec: per_sec.filter(|&r| r > 0),
        }
    }

    /// Counts `n` more bytes, waiting until they are due.
    pub(crate) async fn took(&self, n: u64) {
        let Some(rate) = self.per_sec else { return };
        let total = self
            .bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            + n;
        let due = self.start + std::time::Duration::from_secs_f64(total as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}
