//! Where a query runs: inline on the async worker when it is small, on the blocking pool
//! otherwise.
//!
//! A plain `similar`/`taste`/`search` at a moderate `ef` takes ~0.1–0.3 ms. Handing it to the
//! blocking pool costs about as much CPU again in thread wake-ups and context switches (profiled:
//! ~25 % of the server's CPU at saturation on one core), so such queries run on the worker that
//! parsed them. A worker stalls no longer than one small query, which keeps probes and 503s
//! prompt. Anything that can take much longer — a large `ef × dimension`, several taste
//! centroids, long histories or exclusion lists, filters and list shaping (their pools can grow
//! to the whole collection), batches — still goes to the blocking pool, where
//! `--request-timeout-ms` can answer 503 while the computation finishes on its own thread.

use std::panic::AssertUnwindSafe;

use axum::extract::Extension;
use axum::response::Response;

use crate::api::ListSpec;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::error_code::ErrorCode;
use crate::limits::DEFAULT_K;
use crate::overload::Permit;

/// Largest `ef × probes × dimension` answered inline: ef 128 at 384-d (~0.25 ms here).
pub const INLINE_BUDGET: usize = 128 * 384;
/// Longest taste history or `exclude` list answered inline (both are checked per item).
const INLINE_MAX_ITEMS: usize = 256;

/// What a query asks for, enough to tell its cost before running it.
pub struct Work<'a> {
    pub collection: &'a str,
    pub spec: ListSpec<'a>,
    /// Graph walks: 1, or the taste centroids.
    pub probes: usize,
    /// Taste history items (0 otherwise).
    pub history: usize,
}

impl Work<'_> {
    /// Cheap enough to run on the async worker (see the module docs).
    pub fn is_small(&self, engine: &Engine) -> bool {
        let s = &self.spec;
        let shaped = s.filter.is_some() || s.max_per_creator.is_some() || s.emerging.is_some();
        let items = self.history.max(s.exclude.map_or(0, <[String]>::len));
        if shaped || items > INLINE_MAX_ITEMS {
            return false;
        }
        // An unknown collection is an error, answered at once either way.
        let dim = engine.collection(self.collection).map_or(0, |c| c.dim());
        let ef =
            s.ef.unwrap_or(engine.default_ef)
                .max(s.k.unwrap_or(DEFAULT_K));
        ef.saturating_mul(self.probes.max(1)).saturating_mul(dim) <= INLINE_BUDGET
    }
}

/// Runs a query, holding the request's execution slot until it ends (a blocking one keeps it
/// even when the request timed out meanwhile, so timeouts never oversubscribe the CPU).
pub async fn run<F>(
    permit: Option<Extension<Permit>>,
    small: bool,
    f: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<Response, ApiError> + Send + 'static,
{
    run_with(permit.map(|Extension(p)| p), small, f).await
}

/// [`run`] for any answer type: the one place both transports (HTTP here, gRPC in
/// `earshot-grpc`) execute queries.
pub async fn run_with<T, F>(held: Option<Permit>, small: bool, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    if small {
        // Let the other ready requests reach the limiter first: it then sees the whole
        // backlog (and refuses past its queue) instead of requests piling up unseen in the
        // runtime's run queue behind inline work.
        tokio::task::yield_now().await;
        return run_inline(held, f);
    }
    tokio::task::spawn_blocking(move || {
        let _held = held;
        f()
    })
    .await
    .unwrap_or_else(|e| Err(failed(&e)))
}

/// A small query run right here on the calling thread, holding its slot until it ends; a
/// panic is answered as an internal error. Callers yield to the runtime themselves (as
/// [`run_with`] does per query, a stream once per round of messages).
pub fn run_inline<T, F>(held: Option<Permit>, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError>,
{
    let r = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        Err(failed(&what))
    });
    drop(held);
    r
}

/// A query that panicked: logged, answered 500 like any other error.
fn failed(what: &dyn std::fmt::Display) -> ApiError {
    tracing::error!("query failed: {what}");
    ApiError::new(
        ErrorCode::Internal,
        "the query failed unexpectedly; see the server log",
    )
}
