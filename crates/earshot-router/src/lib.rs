//! `earshot route`: one endpoint over sharded and replicated `earshot serve` processes, with
//! the same HTTP API and OpenAPI document as `serve` (README "Sharding and the router").
//!
//! Modules, each depending only on those above it:
//! - `estimate`: how many hits to ask each shard for (Vespa's `TopKEstimator`);
//! - `failure`: how a routed query fails (shard errors passed on, unavailable shards);
//! - `hedge`: recent-latency quantiles and the hedging budget, lock-free;
//! - `topology`: the TOML file naming each collection's shards and replicas;
//! - `metrics`: per shard and replica latency, hedges, ejections, partial answers;
//! - `upstream`: a shard's replicas — choice, deadlines, retries, hedging, ejection;
//! - `cluster`: the routed collections, what their shards report, the background loops;
//! - `validate`: `serve`'s request checks, made before any shard is asked;
//! - `pool`: the merged candidate pool (one creator key across shards) and the merge;
//! - `query`: similar, search, taste and items across shards, merged and picked with
//!   `earshot_recommend::select` on one version;
//! - `http`: the handlers; `grpc`: the same queries over gRPC (`route --grpc-addr`);
//!   this file: the router and its life cycle.

pub mod cluster;
pub mod estimate;
pub mod failure;
pub mod grpc;
pub mod hedge;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod query;
pub mod topology;
pub mod upstream;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

pub use cluster::ClusterOptions;
pub use earshot_server::overload::LimitOptions;
pub use topology::Topology;
pub use upstream::UpstreamOptions;

use earshot_server::overload::Limiter;

use cluster::Cluster;
use http::RouterState;

/// `earshot route`'s options.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub topology: PathBuf,
    pub addr: SocketAddr,
    pub cluster: ClusterOptions,
    /// API keys for clients (as `serve --api-keys`; also `EARSHOT_QUERY_KEYS`).
    pub api_keys: Option<PathBuf>,
    /// How long `/readyz` reports 503 before the listener stops.
    pub drain: Duration,
    /// The front door's bounds (as `serve`'s): requests routed at once, waiting, and how
    /// long; past them an immediate 503 `overloaded` instead of a queue without end.
    pub limits: LimitOptions,
    /// Connection bounds, as `serve`'s (header-read and idle timeouts, a cap).
    pub conns: earshot_server::conn::ConnOptions,
    /// The gRPC listener's address (`--grpc-addr`), off when `None`.
    pub grpc_addr: Option<SocketAddr>,
}

pub fn router(state: Arc<RouterState>, keys: Arc<earshot_server::auth::Keys>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/{collection}/{id}/similar",
            get(http::similar).post(http::similar_post),
        )
        .route("/v1/{collection}/{id}", get(http::item))
        .route("/v1/{collection}/items", post(http::items))
        .route("/v1/taste/{collection}", post(http::taste))
        .route("/v1/search", post(http::search))
        .route("/v1/batch", post(http::batch))
        .route("/v1/collections", get(http::collections))
        .route_layer(from_fn_with_state(
            state.limiter.clone(),
            earshot_server::overload::limit,
        ))
        .route_layer(from_fn_with_state(
            keys.clone(),
            earshot_server::auth::query,
        ));
    // Writes are forwarded with the caller's admin key, which the router checks first too.
    let admin = Router::new()
        .route(
            "/admin/{collection}/items",
            post(http::write)
                .delete(http::write)
                .layer(axum::extract::DefaultBodyLimit::max(
                    earshot_server::writes::http::MAX_WRITE_BODY_BYTES,
                )),
        )
        .route_layer(from_fn_with_state(keys, earshot_server::auth::admin));
    let app = Router::new()
        .merge(v1)
        .merge(admin)
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/openapi.json", get(earshot_server::openapi::serve));
    earshot_server::outer_layers(app, state.metrics.clone()).with_state(state)
}

/// Builds the router's state from a topology (DNS resolved, health and collection info
/// fetched once) without listening: for `route` and for tests.
pub async fn start(
    topology: &Topology,
    opts: ClusterOptions,
    limits: LimitOptions,
) -> anyhow::Result<Arc<RouterState>> {
    let mut metrics = earshot_server::metrics::Metrics::new();
    let limiter = Arc::new(Limiter::new(limits, &mut metrics));
    let rm = metrics::RouterMetrics::register(&mut metrics.registry);
    let cluster = Arc::new(Cluster::new(topology, opts, rm));
    cluster.resolve_all().await;
    cluster.check_all().await;
    cluster.refresh_all().await;
    for c in cluster.collections.values() {
        if let Some(m) = c.meta() {
            metrics
                .items
                .get_or_create(&earshot_server::metrics::CollectionLabel {
                    collection: c.name.clone(),
                })
                .set(m.count as i64);
        }
    }
    cluster.spawn_loops();
    Ok(Arc::new(RouterState {
        cluster,
        metrics: Arc::new(metrics),
        ready: AtomicBool::new(false),
        limiter,
    }))
}

pub async fn route(opts: RouteOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let topology = Topology::load(&opts.topology)?;
    let keys = Arc::new(earshot_server::auth::Keys::load(opts.api_keys.as_deref())?);
    let mut stop = stop_signals()?;
    let state = start(&topology, opts.cluster.clone(), opts.limits.clone()).await?;
    let max_connections = earshot_server::conn::fit_connection_limit(opts.conns.max_connections)?;
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot listen on {}", opts.addr))?;
    let local = listener.local_addr()?;
    let grpc = match opts.grpc_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (--grpc-addr)"))?,
        ),
        None => None,
    };
    state.ready.store(true, Ordering::Release);
    let shards: usize = state
        .cluster
        .collections
        .values()
        .map(|c| c.shards.len())
        .sum();
    tracing::info!(
        addr = %local,
        collections = state.cluster.collections.len(),
        shards,
        ready = state.cluster.ready(),
        startup_ms = started.elapsed().as_millis() as u64,
        "routing"
    );
    let drain = opts.drain;
    let slots = earshot_server::conn::Slots::new(
        max_connections,
        opts.conns.timeouts,
        state.metrics.conns.clone(),
    );
    // Both listeners stop together, after the drain.
    let (stopped, stopping) = tokio::sync::watch::channel(false);
    let grpc = grpc.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "grpc listening");
            println!("grpc listening on http://{a}");
        }
        tokio::spawn(serve_grpc(
            l,
            state.clone(),
            keys.clone(),
            slots.clone(),
            stopping,
        ))
    });
    println!("listening on http://{local}");
    let app = router(state.clone(), keys);
    let ready = state.clone();
    let served = earshot_server::conn::serve(listener, app, slots, async move {
        stop.recv().await;
        ready.ready.store(false, Ordering::Release);
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "shutting down: /readyz now 503"
        );
        tokio::time::sleep(drain).await;
    })
    .await;
    let _ = stopped.send(true);
    if let Some(g) = grpc {
        match g.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the gRPC listener failed"),
            Err(e) => tracing::error!(error = %e, "the gRPC listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC listener (`grpc::RoutedGrpc`) until `stop` turns true; its health service
/// reports what `/readyz` does.
async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: Arc<RouterState>,
    keys: Arc<earshot_server::auth::Keys>,
    slots: earshot_server::conn::Slots,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limits = state.limiter.options().clone();
    let s = state.clone();
    let readiness: earshot_grpc::Readiness = Box::new(move || {
        let names = s.cluster.collections.keys().cloned().collect();
        (s.ready.load(Ordering::Acquire) && s.cluster.ready(), names)
    });
    let service =
        earshot_grpc::pb::earshot_server::EarshotServer::new(grpc::RoutedGrpc { state, keys });
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    earshot_grpc::serve_service(listener, slots, &limits, readiness, service, shutdown).await
}

struct Stop {
    rx: tokio::sync::mpsc::Receiver<()>,
}

impl Stop {
    async fn recv(&mut self) {
        let _ = self.rx.recv().await;
    }
}

/// SIGTERM / SIGINT, listened for from the moment this returns.
fn stop_signals() -> anyhow::Result<Stop> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(()).await;
    });
    Ok(Stop { rx })
}
