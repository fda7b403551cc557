//! The front door's connections: the accept loop shared by `serve` and `route`.
//!
//! What `axum::serve` does not: a cap on open connections (so a flood of clients cannot
//! take every file descriptor: past the cap a new connection is closed at once and
//! counted, and the server keeps answering the ones it has), a header-read timeout and an
//! idle keep-alive timeout (see [`watch`]), and counters for all of it in `/metrics`.
//! HTTP/1.1, as before (gRPC has its own port).

mod watch;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

pub use watch::Timeouts;
use watch::{ConnState, Watched};

/// `--header-read-timeout-ms`, `--idle-timeout-ms`, `--max-connections`.
#[derive(Clone, Debug)]
pub struct ConnOptions {
    pub timeouts: Timeouts,
    /// `None`: [`DEFAULT_MAX_CONNECTIONS`], lowered to fit the open-file limit.
    pub max_connections: Option<usize>,
}

/// Enough for a large fleet of pooled callers; each idle connection costs ~10–20 KB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            timeouts: Timeouts {
                header_read: Duration::from_secs(10),
                // Above the 90 s idle expiry of common client pools (hyper, Go), so the
                // client, not the server, closes an idle pooled connection: no request is
                // sent on a connection the server is closing at that moment.
                idle: Duration::from_secs(120),
            },
            max_connections: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `earshot_connections_*`, registered once per process by [`crate::metrics::Metrics`].
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    open: Gauge,
    limit: Gauge,
    accepted: Counter,
    closed: Family<ReasonLabel, Counter>,
    accept_errors: Counter,
}

impl ConnMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for reason in ["header_timeout", "idle_timeout", "over_limit"] {
            let _ = m.closed.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "connections_open",
            "Open client connections",
            m.open.clone(),
        );
        registry.register(
            "connections_limit",
            "Most client connections held open at once (--max-connections, fitted to the open-file limit)",
            m.limit.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Client connections the server closed: header_timeout (no whole request head in \
             time), idle_timeout (kept alive and unused), over_limit (accepted past --max-connections)",
            m.closed.clone(),
        );
        registry.register(
            "connections_accept_errors",
            "Failed accepts (e.g. out of file descriptors); the listener retries after a pause",
            m.accept_errors.clone(),
        );
        m
    }

    fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Raises the soft open-file limit to the hard one (as nginx and most servers do) and
/// returns the connection cap: the asked-for or default cap, lowered to leave room for
/// the mapped files, logs and upstream connections (a quarter of the limit, at most 256).
/// Refuses an explicit cap the limit cannot hold, saying what to change.
pub fn fit_connection_limit(asked: Option<usize>) -> anyhow::Result<usize> {
    let nofile = raise_open_file_limit();
    let room = nofile.saturating_sub((nofile / 4).min(256)) as usize;
    match asked {
        Some(0) => anyhow::bail!("--max-connections must be at least 1"),
        Some(n) if n > room => anyhow::bail!(
            "--max-connections {n} does not fit the open-file limit {nofile} (at most {room} \
             leave room for the index files and logs): raise `ulimit -n` or lower --max-connections"
        ),
        Some(n) => Ok(n),
        None => {
            if room < DEFAULT_MAX_CONNECTIONS {
                tracing::info!(
                    open_file_limit = nofile,
                    max_connections = room,
                    "connection cap lowered to fit the open-file limit (raise `ulimit -n` for more)"
                );
            }
            Ok(room.clamp(1, DEFAULT_MAX_CONNECTIONS))
        }
    }
}

#[cfg(unix)]
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
    let soft = lim.rlim_cur as u64;
    soft
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> u64 {
    DEFAULT_MAX_CONNECTIONS as u64 * 2
}

/// The process's connection budget, shared by every listener (HTTP, gRPC): one cap on the
/// descriptors client connections may hold, whichever port they came in on.
#[derive(Clone)]
pub struct Slots {
    free: Arc<Semaphore>,
    metrics: ConnMetrics,
    /// The timeouts every listener applies (gRPC: the header-read one to its preface, the
    /// idle one to the time without a call).
    pub timeouts: Timeouts,
}

/// A connection's place in [`Slots`], given back (and counted) when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: ConnMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

impl Slots {
    /// `limit` comes from [`fit_connection_limit`].
    pub fn new(limit: usize, timeouts: Timeouts, metrics: ConnMetrics) -> Self {
        metrics.limit.set(limit as i64);
        Self {
            free: Arc::new(Semaphore::new(limit)),
            metrics,
            timeouts,
        }
    }

    /// A connection closed for not sending a whole request head (or HTTP/2 preface) in time.
    pub fn header_timed_out(&self) {
        self.metrics.closed("header_timeout");
    }

    /// A connection closed for going without a request (or gRPC call) for the idle timeout.
    pub fn idle_timed_out(&self) {
        self.metrics.closed("idle_timeout");
    }

    /// A place for a connection just accepted, or `None`: then drop it at once (counted as
    /// `over_limit`) rather than leave it in the backlog — the client learns now and can
    /// try another replica.
    pub fn admit(&self) -> Option<Slot> {
        self.metrics.accepted.inc();
        match self.free.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.open.inc();
                Some(Slot {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.closed("over_limit");
                None
            }
        }
    }

    /// A failed accept (out of descriptors, say): counted, warned about at most every 10 s.
    pub fn accept_failed(&self, e: &io::Error, warned: &mut Option<tokio::time::Instant>) {
        self.metrics.accept_errors.inc();
        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(error = %e, "accept failed; retrying in 50 ms");
            *warned = Some(tokio::time::Instant::now());
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the open requests (idle connections are closed at once).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    slots: Slots,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let metrics = slots.metrics.clone();
    let timeouts = slots.timeouts;
    let graceful = GracefulShutdown::new();
    let builder = http1::Builder::new();
    let mut accept_warned: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: nothing to accept with until a connection
                    // closes; pausing keeps the loop from spinning on the same error.
                    slots.accept_failed(&e, &mut accept_warned);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = ConnState::new();
        let io = TokioIo::new(Watched::new(
            stream,
            state.clone(),
            timeouts,
            metrics.clone(),
        ));
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let in_flight = state.begin();
                let answer = app.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let resp = answer.await;
                    drop(in_flight);
                    resp
                }
            });
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out, malformed): already counted
            // where they are ours to count.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
