//! `earshot serve`: loads every collection under the index root and answers HTTP.
//!
//! Modules, each depending only on those above it:
//! - `limits`, `error_code`: request bounds and the API's error codes;
//! - `api`: the wire format (request and response bodies, their OpenAPI schemas);
//! - `engine`: what a query means, over the collections and `earshot_recommend`; no HTTP;
//! - `error`, `extract`: the one HTTP error type (from engine errors and rejections), and
//!   the JSON extractor that rejects with it;
//! - `metrics`, `registry`: Prometheus metrics; the served collections and their hot swap;
//! - `auth`, `overload`, `exec`: API keys, the concurrency limiter, where a query runs;
//! - `recall`: the live recall estimate, a sampler the engine calls and a checker thread
//!   (which reads the registry to tell current versions from replaced ones);
//! - `state`, then the handlers `routes` and `admin`;
//! - `openapi`: the document, from the handlers and types above;
//! - this file: the router and the server's life cycle.

pub mod access_log;
pub mod admin;
pub mod api;
pub mod auth;
pub mod background;
pub mod conn;
pub mod engine;
pub mod error;
pub mod error_code;
pub mod exec;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod overload;
pub mod process_metrics;
pub mod recall;
pub mod registry;
pub mod routes;
pub mod sidecar;
pub mod state;
pub mod writes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use earshot_core::format::Verify;
use registry::{Registry, RegistryOptions, Trigger};
use state::AppState;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub index_root: PathBuf,
    pub addr: SocketAddr,
    pub default_ef: usize,
    /// Skip checksum verification at start-up (headers and lengths are still checked).
    pub lazy: bool,
    /// How long `/readyz` reports 503 before the listener stops, so load balancers drain.
    pub drain: Duration,
}

/// Production settings: limits, reloads, keys (see README "Operations").
#[derive(Debug, Clone)]
pub struct OpsOptions {
    pub limits: overload::LimitOptions,
    /// Poll the index root for new versions this often (`None`: only SIGHUP / admin reload).
    pub watch_interval: Option<Duration>,
    /// Accept a new version whose dimension or metric differs from the served one.
    pub allow_schema_change: bool,
    /// `--api-keys FILE` (keys also come from `EARSHOT_QUERY_KEYS` / `EARSHOT_ADMIN_KEYS`).
    pub api_keys: Option<PathBuf>,
    /// `--retain-previous`: keep a replaced version loaded this long after a swap, for
    /// requests pinned to it with `x-earshot-version` (default 120 s; zero: unload at once).
    pub retain_previous: Duration,
    /// Store mode: start with an empty (or missing: created) index root that fills while
    /// serving; an entry that cannot be served is logged instead of stopping start-up;
    /// `/readyz` waits for at least one collection and every [`OpsOptions::expect`]ed one;
    /// the store metrics ([`metrics::StoreMetrics`]) appear in `/metrics`.
    pub allow_empty: bool,
    /// Collections `/readyz` waits for (more can be added later: [`AppState::expect`]).
    pub expect: Vec<String>,
    /// The front door's connection bounds: header-read and idle timeouts, a cap.
    pub conns: conn::ConnOptions,
    /// The live recall estimate (`--recall-*`; README "Live recall").
    pub recall: recall::RecallOptions,
}

/// How long a replaced version stays loaded by default (`--retain-previous`).
pub const DEFAULT_RETAIN_PREVIOUS: Duration = Duration::from_secs(120);

impl Default for OpsOptions {
    fn default() -> Self {
        Self {
            limits: Default::default(),
            watch_interval: None,
            allow_schema_change: false,
            api_keys: None,
            retain_previous: DEFAULT_RETAIN_PREVIOUS,
            allow_empty: false,
            expect: Vec::new(),
            conns: Default::default(),
            recall: Default::default(),
        }
    }
}

#[derive(Clone, Default)]
struct CounterId;

impl MakeRequestId for CounterId {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<RequestId> {
        // A String becomes a header value without a copy.
        Some(RequestId::new(
            HeaderValue::try_from(new_request_id()).ok()?,
        ))
    }
}

/// A request ID for a request that brought none: `PID-N`, N counting the process's
/// requests over every transport (HTTP and gRPC share the counter, so IDs never repeat).
pub fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-{n}", std::process::id())
}

pub fn router(state: Arc<AppState>) -> Router {
    // The query API: API key (if configured), then the concurrency limiter.
    let v1 = Router::new()
        .route(
            "/v1/{collection}/{id}/similar",
            get(routes::similar).post(routes::similar_post),
        )
        // Static segments win over `{id}`: `GET /v1/C/items` is not an item lookup (an item
        // whose ID is `items` is fetched with a percent-encoded segment, or by POST).
        .route("/v1/{collection}/items", post(routes::items))
        .route("/v1/{collection}/{id}", get(routes::item))
        .route("/v1/taste/{collection}", post(routes::taste))
        .route("/v1/search", post(routes::search))
        .route("/v1/batch", post(routes::batch))
        .route("/v1/collections", get(routes::collections))
        .route_layer(from_fn_with_state(state.limiter.clone(), overload::limit))
        .route_layer(from_fn_with_state(state.keys.clone(), auth::query));
    let admin = Router::new()
        .route("/admin/reload", post(admin::reload))
        .route("/admin/log/poll", post(writes::http::poll))
        .route(
            "/admin/{collection}/items",
            post(writes::http::upsert)
                .delete(writes::http::delete)
                // Write batches are larger than queries (1,000 items of up to 1,024 dims).
                .layer(DefaultBodyLimit::max(writes::http::MAX_WRITE_BODY_BYTES)),
        )
        .route_layer(from_fn_with_state(state.keys.clone(), auth::admin));
    // Probes and metrics stay open and outside the limiter.
    let app = Router::new()
        .merge(v1)
        .merge(admin)
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(openapi::serve));
    outer_layers(app, state.metrics.clone()).with_state(state)
}

/// What `serve` and `route` wrap around all their routes: the 404 and 405 answers, the
/// metrics middleware, the body limit, and request IDs (the client's `x-request-id`, else
/// one made here; echoed in the response and named in the request's trace span).
pub fn outer_layers<S>(app: Router<S>, m: Arc<metrics::Metrics>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let request_id = HeaderName::from_static("x-request-id");
    app.fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(from_fn_with_state(m, metrics::track))
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let trace = trace_id(req.headers()).unwrap_or("-");
                    tracing::info_span!("request", id, trace, method = %req.method(), uri = %req.uri())
                })
                .on_response(access_log::on_response)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(request_id, CounterId))
}

/// The trace ID of a valid W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`, IDs not
/// all zero), so a request's log lines can be joined with the caller's trace.
pub fn trace_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    ok.then_some(trace)
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    serve_with(opts, OpsOptions::default()).await
}

pub async fn serve_with(opts: ServeOptions, ops: OpsOptions) -> anyhow::Result<()> {
    serve_with_state(opts, ops, |_| {}).await
}

/// [`serve_with`], calling `started` with the server's state once the index root is loaded
/// and before the listener opens: store mode starts its sync loop there (downloads into the
/// index root, then `state.reload(Trigger::Store)`, `state.expect(names)`, `state.store`).
pub async fn serve_with_state(
    opts: ServeOptions,
    ops: OpsOptions,
    started_hook: impl FnOnce(Arc<AppState>),
) -> anyhow::Result<()> {
    serve_with_sidecars(opts, ops, started_hook, Vec::new()).await
}

/// [`serve_with_state`], also serving `sidecars` (the gRPC transport) on their own
/// listeners, on the same state, with the same shutdown ([`sidecar`]).
pub async fn serve_with_sidecars(
    opts: ServeOptions,
    ops: OpsOptions,
    started_hook: impl FnOnce(Arc<AppState>),
    sidecars: Vec<sidecar::Sidecar>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // From here on SIGHUP means "reload" (one arriving while loading is acted on once ready)
    // instead of terminating the process.
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    // Installed before anything is announced, so a SIGTERM that arrives right after the
    // `listening on` line still drains instead of killing the process.
    let mut stop = StopSignals::install()?;
    let verify = if opts.lazy {
        Verify::Lazy
    } else {
        Verify::Full
    };
    let keys = auth::Keys::load(ops.api_keys.as_deref())?;
    let mut metrics = metrics::Metrics::new();
    let swap_metrics = registry::SwapMetrics::new(&mut metrics);
    let limiter = overload::Limiter::new(ops.limits.clone(), &mut metrics);
    let recall = recall::Checker::new(&ops.recall, &mut metrics)?;
    let store = metrics::StoreMetrics::default();
    let log_metrics = writes::LogMetrics::default();
    if ops.allow_empty {
        store.register(&mut metrics.registry);
        log_metrics.register(&mut metrics.registry);
    }
    let registry = Arc::new(Registry::open(
        &opts.index_root,
        &RegistryOptions {
            verify,
            default_ef: opts.default_ef,
            allow_schema_change: ops.allow_schema_change,
            retain_previous: ops.retain_previous,
            allow_empty: ops.allow_empty,
            recall: recall.as_ref().map(recall::Checker::sampler),
        },
        swap_metrics,
    )?);
    if let Some(checker) = recall {
        checker.start(&registry)?;
    }
    let (query_keys, admin_keys) = keys.counts();
    let state = Arc::new(AppState {
        registry: registry.clone(),
        metrics: Arc::new(metrics),
        limiter: Arc::new(limiter),
        keys: Arc::new(keys),
        ready: AtomicBool::new(false),
        expected: Default::default(),
        wait_for_collections: ops.allow_empty,
        store,
        writes: Default::default(),
        log_metrics,
    });
    state.expect(ops.expect.iter().cloned());
    started_hook(state.clone());
    #[cfg(unix)]
    {
        let r = registry.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading collections");
                r.reload(Trigger::Signal).await;
            }
        });
    }
    if let Some(every) = ops.watch_interval.filter(|d| !d.is_zero()) {
        let r = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                r.reload(Trigger::Watch).await;
            }
        });
    }
    let max_connections = conn::fit_connection_limit(ops.conns.max_connections)?;
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot listen on {}", opts.addr))?;
    let local = listener.local_addr()?;
    let sidecars = sidecar::bind(sidecars).await?;
    if !local.ip().is_loopback() && query_keys + admin_keys == 0 {
        tracing::warn!(
            addr = %local,
            "listening beyond loopback without API keys: anyone who reaches this port can query \
             (admin endpoints still answer loopback clients only)"
        );
    }
    state.ready.store(true, Ordering::Release);
    let lim = state.limiter.options();
    tracing::info!(
        addr = %local,
        startup_ms = started.elapsed().as_millis() as u64,
        max_concurrent = lim.max_concurrent,
        max_queue = lim.max_queue,
        max_connections,
        query_keys,
        admin_keys,
        "ready"
    );
    // One connection budget for every port (HTTP and the sidecars').
    let slots = conn::Slots::new(
        max_connections,
        ops.conns.timeouts,
        state.metrics.conns.clone(),
    );
    let sidecars = sidecar::start(sidecars, &state, &slots);
    // A machine-readable line for scripts and tests that start us on port 0.
    println!("listening on http://{local}");
    let app = router(state.clone());
    let stop_sidecars = sidecars.stop_handle();
    let drain = opts.drain;
    conn::serve(
        listener,
        app,
        slots,
        async move {
        stop.recv().await;
        state.ready.store(false, Ordering::Release);
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "shutting down: /readyz now 503; in-flight requests will finish (a second signal stops at once)"
        );
        tokio::spawn(async move {
            stop.recv().await;
            tracing::warn!("second signal: stopping without draining");
            std::process::exit(1);
        });
        tokio::time::sleep(drain).await;
        stop_sidecars.stop();
        tracing::info!("listener closed; waiting for in-flight requests");
        },
    )
    .await?;
    sidecars.join().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment they are installed.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())
                    .context("cannot install the SIGTERM handler")?,
                int: signal(SignalKind::interrupt())
                    .context("cannot install the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id;
    use axum::http::{HeaderMap, HeaderValue};

    fn tp(v: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(v).unwrap());
        trace_id(&h).map(str::to_string)
    }

    #[test]
    fn traceparent_gives_its_trace_id_only_when_valid() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            tp(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may append fields; version 00 may not.
        assert!(tp(&format!("01{}-extra", &good[2..])).is_some());
        assert!(tp(&format!("{good}-extra")).is_none());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(tp(bad), None, "{bad}");
        }
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
