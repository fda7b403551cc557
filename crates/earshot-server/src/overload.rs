//! Bounded concurrency for the query API: at most `max_concurrent` requests execute, at most
//! `max_queue` wait (each no longer than `queue_timeout`, or `queue_burst` through a burst),
//! and every request finishes within `request_timeout`. Past that the answer is an immediate
//! 503 with `Retry-After: 1` instead of latency that grows without bound.
//!
//! A burst and an overload look alike for 100 ms; CoDel's idea tells them apart: while some
//! request got its slot within `queue_timeout` in the last `queue_burst`, the queue is a burst
//! (a host stalled by a neighbour for 150 ms) and a newcomer may wait up to `queue_burst`;
//! once none has for that long, the queue is standing (overload) and newcomers are shed after
//! `queue_timeout`. Measured: a 2-core host shared with a version download failed 3–35 queries
//! per soak at one instant each with the fixed 100 ms (BENCHMARKS.md §11).
//!
//! The body is read before a slot is taken (a slow client holds a connection, not an execution
//! slot). The slot is a [`Permit`] held until the answer is made, and also handed by the
//! handler to the blocking task that runs the query, so a request that timed out keeps its
//! slot until its computation really ends.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::limits::MAX_BODY_BYTES;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LimitOptions {
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    /// The longest wait through a burst (see the module; ≤ `queue_timeout`: none).
    pub queue_burst: Duration,
    pub request_timeout: Duration,
}

impl Default for LimitOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            max_concurrent: 4 * cores,
            max_queue: 256,
            queue_timeout: Duration::from_millis(100),
            queue_burst: Duration::from_millis(500),
            request_timeout: Duration::from_millis(5000),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// An execution slot, shared by the request and the blocking task computing its answer.
#[derive(Clone)]
pub struct Permit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

pub struct Limiter {
    opts: LimitOptions,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    /// When a request last got its slot within `queue_timeout` (ms since `epoch`).
    last_good: AtomicU64,
    epoch: tokio::time::Instant,
    rejected: Family<ReasonLabel, Counter>,
    queued_gauge: Gauge<i64, AtomicI64>,
}

impl Limiter {
    pub fn new(opts: LimitOptions, m: &mut Metrics) -> Self {
        let rejected = Family::<ReasonLabel, Counter>::default();
        for reason in ["queue_full", "queue_timeout", "timeout"] {
            let _ = rejected.get_or_create(&ReasonLabel { reason });
        }
        let queued_gauge = Gauge::<i64, AtomicI64>::default();
        m.registry.register(
            "rejected",
            "Requests answered 503: queue_full / queue_timeout (overloaded) or timeout",
            rejected.clone(),
        );
        m.registry.register(
            "queued_requests",
            "Requests waiting for an execution slot",
            queued_gauge.clone(),
        );
        let max_concurrent = opts.max_concurrent.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            opts: LimitOptions {
                max_concurrent,
                ..opts
            },
            queued: AtomicUsize::new(0),
            last_good: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            rejected,
            queued_gauge,
        }
    }

    pub fn options(&self) -> &LimitOptions {
        &self.opts
    }

    /// A slot now, or after waiting in the bounded queue; `Err` when overloaded.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, &'static str> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            self.mark_good();
            return Ok(p);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.opts.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err("queue_full");
        }
        self.queued_gauge.inc();
        // Leaves the queue however this future ends (also when the client goes away).
        struct Leave<'a>(&'a Limiter);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.queued.fetch_sub(1, Ordering::AcqRel);
                self.0.queued_gauge.dec();
            }
        }
        let _leave = Leave(self);
        let entered = tokio::time::Instant::now();
        let burst = self.opts.queue_burst > self.opts.queue_timeout
            && self
                .ms(entered)
                .saturating_sub(self.last_good.load(Ordering::Relaxed))
                < self.opts.queue_burst.as_millis() as u64;
        let wait = if burst {
            self.opts.queue_burst
        } else {
            self.opts.queue_timeout
        };
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => {
                if entered.elapsed() <= self.opts.queue_timeout {
                    self.mark_good();
                }
                Ok(p)
            }
            _ => Err("queue_timeout"),
        }
    }

    fn ms(&self, t: tokio::time::Instant) -> u64 {
        t.duration_since(self.epoch).as_millis() as u64
    }

    fn mark_good(&self) {
        let now = self.ms(tokio::time::Instant::now());
        self.last_good.fetch_max(now, Ordering::Relaxed);
    }

    /// A slot by `deadline` (the admission of both transports); `Err` is `overloaded` or
    /// `timeout`, counted in `earshot_rejected_total`.
    pub async fn acquire(&self, deadline: tokio::time::Instant) -> Result<Permit, ApiError> {
        match tokio::time::timeout_at(deadline, self.admit()).await {
            Err(_) => Err(self.rejection("timeout")),
            Ok(Err(reason)) => Err(self.rejection(reason)),
            Ok(Ok(p)) => Ok(Permit(Arc::new(p))),
        }
    }

    /// Counts a refusal (`queue_full`, `queue_timeout` or `timeout`) in
    /// `earshot_rejected_total`.
    pub fn count_rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The error a refusal answers (counted): `timeout` past `request_timeout`, otherwise
    /// `overloaded`.
    pub fn rejection(&self, reason: &'static str) -> ApiError {
        self.count_rejected(reason);
        if reason == "timeout" {
            ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request did not finish within {} ms; retry later or ask for less",
                    self.opts.request_timeout.as_millis()
                ),
            )
        } else {
            ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "the server is at capacity ({} executing, {} queued); retry after a second",
                    self.opts.max_concurrent, self.opts.max_queue
                ),
            )
        }
    }

    fn reject(&self, reason: &'static str) -> Response {
        retry_later(self.rejection(reason))
    }
}

/// A refusal as HTTP answers it: with `Retry-After: 1`.
fn retry_later(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Middleware for the query routes: read the body, take a slot, run within the deadline.
pub async fn limit(State(limiter): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + limiter.opts.request_timeout;
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::payload_too_large().into_response();
    }
    let bytes =
        match tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY_BYTES).collect()).await
        {
            Err(_) => return limiter.reject("timeout"),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return ApiError::payload_too_large().into_response()
            }
            Ok(Err(e)) => {
                return ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("cannot read the request body: {e}"),
                )
                .into_response()
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
    // Held here until the answer is made as well: a handler that does not take the permit
    // out of the extensions (the router's, which only awaits its shards) must not let
    // axum drop it when the request is taken apart, before the handler has even run.
    let permit = match limiter.acquire(deadline).await {
        Ok(p) => p,
        Err(e) => return retry_later(e),
    };
    parts.extensions.insert(permit.clone());
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => limiter.reject("timeout"),
    };
    drop(permit);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{sleep, Instant};

    fn limiter() -> Arc<Limiter> {
        let opts = LimitOptions {
            max_concurrent: 1,
            max_queue: 8,
            queue_timeout: Duration::from_millis(100),
            queue_burst: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
        };
        Arc::new(Limiter::new(opts, &mut Metrics::new()))
    }

    /// Holds the only slot for `d`, then lets it go.
    async fn hold(l: &Arc<Limiter>, d: Duration) -> tokio::task::JoinHandle<()> {
        let p = l.admit().await.unwrap();
        tokio::spawn(async move {
            sleep(d).await;
            drop(p);
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_past_the_queue_timeout_and_a_standing_queue_is_shed_at_it() {
        let l = limiter();
        // A healthy queue stalls for 300 ms: the waiting request gets the slot.
        let h = hold(&l, Duration::from_millis(300)).await;
        let t = Instant::now();
        let p = l.admit().await.expect("a burst waits up to queue_burst");
        assert_eq!(t.elapsed(), Duration::from_millis(300));
        drop(p);
        h.await.unwrap();

        // Overload: the slot stays taken. The first newcomers still count as a burst
        // (waiting up to 500 ms); once no one got a slot within 100 ms for 500 ms,
        // newcomers are refused after 100 ms.
        let _h = hold(&l, Duration::from_secs(60)).await;
        let t = Instant::now();
        assert_eq!(l.admit().await.unwrap_err(), "queue_timeout");
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        let t = Instant::now();
        assert_eq!(l.admit().await.unwrap_err(), "queue_timeout");
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_burst_allowance_the_queue_timeout_holds() {
        let opts = LimitOptions {
            queue_burst: Duration::ZERO,
            ..limiter().opts.clone()
        };
        let l = Arc::new(Limiter::new(opts, &mut Metrics::new()));
        let _h = hold(&l, Duration::from_millis(300)).await;
        let t = Instant::now();
        assert_eq!(l.admit().await.unwrap_err(), "queue_timeout");
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }
}
