//! Prometheus metrics (`GET /metrics`, text format).

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The request's method (see [`method_label`]).
    pub method: &'static str,
    /// A route template (see [`route_label`]).
    pub route: &'static str,
    pub status: u16,
}

/// A gRPC call's labels: the RPC (`Similar`, …) and its status code (`OK`, `NOT_FOUND`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectionLabel {
    pub collection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
    pub kernels: String,
}

pub struct Metrics {
    /// earshot's own metrics (`earshot_…`).
    pub registry: Registry,
    /// The standard `process_…` metrics, unprefixed as every client library names them.
    process: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<RouteStatus, Histogram>,
    pub in_flight: Gauge<i64, AtomicI64>,
    /// gRPC calls (`earshot serve --grpc-addr`): count and latency by RPC and status code.
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_latency: Family<GrpcLabels, Histogram>,
    pub grpc_in_flight: Gauge<i64, AtomicI64>,
    pub items: Family<CollectionLabel, Gauge>,
    pub mapped_bytes: Family<CollectionLabel, Gauge>,
    /// The front door's connections (`crate::conn`).
    pub conns: crate::conn::ConnMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("earshot");
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteStatus, Histogram>::new_with_constructor(|| {
            // 25 µs … ~3.3 s
            Histogram::new(exponential_buckets(25e-6, 2.0, 18))
        });
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        let grpc_latency = Family::<GrpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(25e-6, 2.0, 18))
        });
        let grpc_in_flight = Gauge::<i64, AtomicI64>::default();
        let items = Family::<CollectionLabel, Gauge>::default();
        let mapped_bytes = Family::<CollectionLabel, Gauge>::default();
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").into(),
                kernels: earshot_core::distance::kernel_name().into(),
            })
            .set(1);
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            latency.clone(),
        );
        registry.register(
            "http_in_flight_requests",
            "HTTP requests being served",
            in_flight.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency by method and status code",
            grpc_latency.clone(),
        );
        registry.register(
            "grpc_in_flight_requests",
            "gRPC calls being served",
            grpc_in_flight.clone(),
        );
        registry.register("collection_items", "Items per collection", items.clone());
        registry.register(
            "collection_mapped_bytes",
            "Bytes memory-mapped per collection",
            mapped_bytes.clone(),
        );
        registry.register("build_info", "earshot version and SIMD kernels", build_info);
        let conns = crate::conn::ConnMetrics::register(&mut registry);
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Self {
            registry,
            process,
            requests,
            latency,
            in_flight,
            grpc_requests,
            grpc_latency,
            grpc_in_flight,
            items,
            mapped_bytes,
            conns,
        }
    }

    /// `GET /metrics`' answer, rendered on a low-priority thread of its own: encoding every
    /// family costs ~0.5 ms and more with many label sets, and on the async worker a scrape
    /// held up the queries queued behind it (the soak's `/metrics` polls alone raised p99
    /// in their windows, BENCHMARKS.md §6 "p99 around a swap").
    pub async fn response(self: Arc<Self>) -> Response {
        use axum::response::IntoResponse;
        match crate::background::run("earshot-metrics", move || self.encode()).await {
            Some(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            None => crate::error::ApiError::new(
                crate::error_code::ErrorCode::Internal,
                "the metrics could not be rendered",
            )
            .into_response(),
        }
    }

    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Records count, status and latency of every request under its route template.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    m.in_flight.inc();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.in_flight.dec();
    let labels = RouteStatus {
        method,
        route,
        status: resp.status().as_u16(),
    };
    m.latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    m.requests.get_or_create(&labels).inc();
    resp
}

/// The method as a `&'static str` (no allocation per request); any but the standard ones
/// is `other`, so a client cannot grow the label set.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The route template as a `&'static str`, so labelling a request allocates nothing. Templates
/// are the router's few fixed ones (never raw paths), so each is leaked once, on first use.
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    static TEMPLATES: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());
    let Some(path) = path.map(MatchedPath::as_str) else {
        return "unmatched";
    };
    let known = |t: &[&'static str]| t.iter().copied().find(|t| *t == path);
    if let Some(t) = known(&TEMPLATES.read().unwrap_or_else(PoisonError::into_inner)) {
        return t;
    }
    let mut templates = TEMPLATES.write().unwrap_or_else(PoisonError::into_inner);
    known(&templates).unwrap_or_else(|| {
        let t: &'static str = Box::leak(path.into());
        templates.push(t);
        t
    })
}

/// The object-store sync's metrics (`earshot serve --store`): bumped by the sync loop,
/// registered into `/metrics` by [`StoreMetrics::register`] in store mode only.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// Sync rounds that completed (every collection checked, new versions downloaded).
    pub sync_ok: Counter,
    /// Sync rounds that failed (store unreachable, a download or verification failed).
    pub sync_errors: Counter,
    /// Collection versions downloaded.
    pub downloads: Counter,
    /// Bytes downloaded.
    pub download_bytes: Counter,
    /// Unix time (seconds) of the last sync round that completed.
    pub last_sync_success_timestamp: Gauge<f64, AtomicU64>,
}

impl StoreMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "store_syncs_ok",
            "Object-store sync rounds that completed",
            self.sync_ok.clone(),
        );
        r.register(
            "store_sync_errors",
            "Object-store sync rounds that failed (serving goes on with what is loaded)",
            self.sync_errors.clone(),
        );
        r.register(
            "store_downloads",
            "Collection versions downloaded from the object store",
            self.downloads.clone(),
        );
        r.register(
            "store_download_bytes",
            "Bytes downloaded from the object store",
            self.download_bytes.clone(),
        );
        r.register(
            "store_last_sync_success_timestamp_seconds",
            "Unix time of the last object-store sync round that completed",
            self.last_sync_success_timestamp.clone(),
        );
    }
}
