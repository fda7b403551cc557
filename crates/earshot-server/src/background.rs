//! Work that must not slow the queries: verifying and opening a new version, unmapping an
//! old one, checking sampled answers (`recall`). Both run on their own threads at the lowest CPU priority, so on a busy
//! server they take idle CPU rather than the query threads' (the soak of issue 14 §5 saw
//! p99 rise in the second after each swap).

use std::time::{Duration, Instant};

/// Lowers the calling thread to nice 19 (Linux: priorities are per thread). Unprivileged
/// processes cannot raise it back, so only call it on threads made for background work.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread's own ID, no memory passed.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        if rc != 0 {
            tracing::debug!(
                "cannot lower a background thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// CPU time this thread has used (its wall time where that cannot be read).
pub fn thread_cpu() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
        }
    }
    // Without a per-thread clock, count from the first call (busy time then includes waits).
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// Runs `work` on a new low-priority thread and awaits its result (`None` if it panicked).
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_thread();
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the {name} thread: {e}");
        return None;
    }
    rx.await.ok()
}

/// Drops `value` on a new low-priority thread once nothing else holds it: the last
/// reference to a replaced version must not be dropped by a query (unmapping a large
/// collection takes milliseconds of page-table work), so the reaper waits for in-flight
/// queries to let go, then drops it itself.
pub fn reap<T: Send + Sync + 'static>(name: &'static str, value: std::sync::Arc<T>) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_this_thread();
            // Queries hold a snapshot for one request: a few milliseconds, seconds at most.
            while std::sync::Arc::strong_count(&value) > 1 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            drop(value);
        });
    if let Err(e) = spawned {
        // Dropped here instead (the closure, and with it the value, was not moved).
        tracing::warn!("cannot start the {name} thread: {e}");
    }
}
