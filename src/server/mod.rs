//! `earshot serve`: loads every collection under the index root and answers HTTP.

pub mod error;
pub mod limits;
pub mod metrics;
pub mod query;
pub mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::collection::Collection;
use crate::format::{names, Verify};
use query::Engine;

pub struct AppState {
    pub engine: Engine,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
}

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

/// Opens every collection (each subdirectory of `root` holding a manifest).
pub fn load_collections(
    root: &Path,
    verify: Verify,
) -> anyhow::Result<BTreeMap<String, Arc<Collection>>> {
    let entries = std::fs::read_dir(root).with_context(|| {
        format!(
            "cannot read index root {}: build an index first (earshot build --out {}/NAME …)",
            root.display(),
            root.display()
        )
    })?;
    let mut out = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            !p.file_name()
                .map(|n| n.to_string_lossy().starts_with('.'))
                .unwrap_or(true)
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        if !dir.join(names::MANIFEST).exists() {
            anyhow::bail!(
                "{}: missing; every subdirectory of the index root must be a built collection",
                dir.join(names::MANIFEST).display()
            );
        }
        let started = Instant::now();
        let c = Collection::open(&dir, verify)?;
        tracing::info!(
            collection = %c.name,
            count = c.len(),
            dim = c.dim(),
            metric = ?c.manifest.metric,
            ms = started.elapsed().as_millis() as u64,
            "opened"
        );
        out.insert(c.name.clone(), Arc::new(c));
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no collections under {}: build one with `earshot build --out {}/tracks …`",
        root.display(),
        root.display()
    );
    Ok(out)
}

#[derive(Clone, Default)]
struct CounterId(Arc<AtomicU64>);

impl MakeRequestId for CounterId {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-{n}", std::process::id());
        Some(RequestId::new(id.parse().ok()?))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route(
            "/v1/{collection}/{id}/similar",
            get(routes::similar).post(routes::similar_post),
        )
        .route("/v1/taste/{collection}", post(routes::taste))
        .route("/v1/search", post(routes::search))
        .route("/v1/batch", post(routes::batch))
        .route("/v1/collections", get(routes::collections))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id, method = %req.method(), uri = %req.uri())
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, CounterId::default()))
        .with_state(state)
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let verify = if opts.lazy {
        Verify::Lazy
    } else {
        Verify::Full
    };
    let collections = load_collections(&opts.index_root, verify)?;
    let metrics = metrics::Metrics::new();
    for c in collections.values() {
        if opts.lazy {
            c.warm();
        }
        let label = metrics::CollectionLabel {
            collection: c.name.clone(),
        };
        metrics.items.get_or_create(&label).set(c.len() as i64);
        metrics
            .mapped_bytes
            .get_or_create(&label)
            .set(c.mapped_bytes() as i64);
    }
    let state = Arc::new(AppState {
        engine: Engine {
            collections,
            default_ef: opts.default_ef,
        },
        metrics,
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot listen on {}", opts.addr))?;
    let local = listener.local_addr()?;
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        addr = %local,
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    // A machine-readable line for scripts and tests that start us on port 0.
    println!("listening on http://{local}");
    let app = router(state.clone());
    let drain = opts.drain;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            state.ready.store(false, Ordering::Release);
            tracing::info!("shutting down: /readyz now 503, draining in-flight requests");
            tokio::time::sleep(drain).await;
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
