//! Shards and their replicas: choosing a replica, sending with a deadline, retrying on
//! another replica, hedging, ejecting failing replicas and re-admitting them.
//!
//! The request path takes no lock: a shard's replica list is an `ArcSwap` (replaced whole when
//! DNS answers change), and every counter is atomic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::hedge::{HedgeBudget, LatencyTracker};
use crate::metrics::{OutcomeLabel, ReplicaLabel, RouterMetrics, ShardLabel};
use crate::topology::Source;

/// The version header: answers carry the version they were computed from; a request with
/// it is answered from that version or refused (409 `version_unavailable`).
pub const VERSION_HEADER: &str = "x-earshot-version";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(http)
}

/// Replica health and hedging settings.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Hedge after the shard's recent latency quantile `hedge_quantile` (None: never).
    pub hedge_quantile: Option<f64>,
    /// Hedges per primary request in the long run (0.05 = at most 5 % extra requests).
    pub hedge_ratio: f64,
    /// Never hedge sooner than this.
    pub hedge_min_delay: Duration,
    /// Consecutive failures that take a replica out of rotation (a refused connection does
    /// at once).
    pub eject_after: u32,
    /// First ejection's length; doubles with each further one, up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// `Authorization: Bearer KEY` for the shard servers, if they require keys.
    pub shard_key: Option<String>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            hedge_quantile: Some(0.95),
            hedge_ratio: 0.05,
            hedge_min_delay: Duration::from_millis(1),
            eject_after: 3,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            shard_key: None,
        }
    }
}

/// See [`Replica::decayed_us`].
const EWMA_HALF_LIFE_MS: u64 = 2_000;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// One replica of a shard: a server at `addr`.
pub struct Replica {
    pub addr: String,
    base: String,
    outstanding: AtomicUsize,
    /// Recent latency in µs (see [`Replica::cost`]) and when it was last measured.
    ewma_us: AtomicU64,
    ewma_at_ms: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// `now_ms()` until which it is out of rotation (0: in rotation; u64::MAX: until a
    /// `/readyz` check passes).
    ejected_until: AtomicU64,
    latency: Histogram,
    ok: Counter,
    error: Counter,
    failed: Counter,
    ejected: Counter,
}

impl Replica {
    fn new(addr: String, collection: &str, shard: u32, m: &RouterMetrics) -> Self {
        let label = ReplicaLabel {
            collection: collection.to_string(),
            shard,
            replica: addr.clone(),
        };
        let outcome = |outcome| {
            m.outcomes
                .get_or_create(&OutcomeLabel {
                    collection: collection.to_string(),
                    shard,
                    replica: addr.clone(),
                    outcome,
                })
                .clone()
        };
        Self {
            base: format!("http://{addr}"),
            outstanding: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            latency: m.latency.get_or_create(&label).clone(),
            ok: outcome("ok"),
            error: outcome("error"),
            failed: outcome("failed"),
            ejected: m.ejections.get_or_create(&label).clone(),
            addr,
        }
    }

    pub fn is_live(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || (until != u64::MAX && until <= now_ms())
    }

    fn eject(&self, opts: &UpstreamOptions, why: &str) {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = opts
            .eject_base
            .saturating_mul(1u32 << n.min(10))
            .min(opts.eject_max);
        self.ejected_until
            .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        self.ejected.inc();
        tracing::warn!(replica = %self.addr, backoff_ms = backoff.as_millis() as u64, why, "replica ejected");
    }

    /// Folds one answer's latency into the replica's peak-EWMA (Finagle's, as linkerd uses
    /// it): a slower answer is taken at once, a faster one blended in, so a replica that
    /// turns slow loses its traffic after one request. Racy read-modify-write on purpose: a
    /// lost update between two concurrent answers only drops one sample.
    fn observe(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.decayed_us(now_ms());
        let new = if sample >= old {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
        self.ewma_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The EWMA, halved for every [`EWMA_HALF_LIFE_MS`] without a measurement, so a replica
    /// that was slow is tried again now and then (and re-measured) instead of never.
    fn decayed_us(&self, now: u64) -> u64 {
        let v = self.ewma_us.load(Ordering::Relaxed);
        let idle = now.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed));
        v >> (idle / EWMA_HALF_LIFE_MS).min(63)
    }

    /// What sending one more request here is expected to cost: the recent latency times the
    /// requests that would be in flight (0 for a replica not measured yet: it gets one).
    fn cost(&self, now: u64) -> u128 {
        let queued = self.outstanding.load(Ordering::Relaxed) as u128 + 1;
        u128::from(self.decayed_us(now)) * queued
    }

    fn on_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.ejected_until.load(Ordering::Relaxed) == 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    fn on_failure(&self, opts: &UpstreamOptions, refused: bool, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if (refused || n >= opts.eject_after) && self.is_live() {
            self.failures.store(0, Ordering::Relaxed);
            self.eject(opts, why);
        }
    }

    /// The result of an active `/readyz` check.
    pub fn checked(&self, opts: &UpstreamOptions, ready: bool) {
        if ready {
            let until = self.ejected_until.load(Ordering::Relaxed);
            // Back in rotation once its ejection is over (a failed check's at once).
            if until == u64::MAX || (until != 0 && until <= now_ms()) {
                self.ejected_until.store(0, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                if until == u64::MAX {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                tracing::info!(replica = %self.addr, "replica back in rotation");
            }
        } else if self.ejected_until.load(Ordering::Relaxed) != u64::MAX {
            if self.is_live() {
                self.ejected.inc();
                tracing::warn!(replica = %self.addr, "replica out of rotation: /readyz failed");
            }
            self.ejected_until.store(u64::MAX, Ordering::Relaxed);
        }
        let _ = opts;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// Counts a request as outstanding on a replica while it lives (also when cancelled).
struct Outstanding<'a>(&'a Replica);

impl<'a> Outstanding<'a> {
    fn new(r: &'a Replica) -> Self {
        r.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(r)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request to a shard, sent as is to whichever replica answers it.
#[derive(Clone)]
pub struct UpRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/search`.
    pub path: String,
    /// A JSON body.
    pub body: Option<Bytes>,
    /// Answer from this version only.
    pub version: Option<Arc<str>>,
    /// The caller's own credentials (a write's admin key), sent instead of the shard key.
    pub auth: Option<(header::HeaderName, HeaderValue)>,
}

/// A shard's answer.
#[derive(Debug, Clone)]
pub struct UpResponse {
    pub status: StatusCode,
    pub version: Option<String>,
    pub body: Bytes,
}

/// Why a shard gave no usable answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No replica in rotation, or none answered.
    Unavailable(String),
    /// The deadline passed first.
    Timeout,
    /// Every replica tried answered with this 5xx (e.g. `overloaded`).
    Upstream(UpResponse),
}

enum Attempt {
    Done(UpResponse),
    Retry(CallError),
}

/// One shard of a routed collection.
pub struct Shard {
    pub collection: String,
    pub index: u32,
    pub sources: Vec<Source>,
    replicas: ArcSwap<Vec<Arc<Replica>>>,
    latency: LatencyTracker,
    budget: HedgeBudget,
    turn: AtomicUsize,
    metrics: RouterMetrics,
    hedges_sent: Counter,
    hedges_won: Counter,
    live_gauge: Gauge,
}

impl Shard {
    pub fn new(
        collection: &str,
        index: u32,
        sources: Vec<Source>,
        opts: &UpstreamOptions,
        metrics: &RouterMetrics,
    ) -> Self {
        let label = ShardLabel {
            collection: collection.to_string(),
            shard: index,
        };
        let s = Self {
            collection: collection.to_string(),
            index,
            sources,
            replicas: ArcSwap::from_pointee(Vec::new()),
            latency: LatencyTracker::default(),
            budget: HedgeBudget::new(opts.hedge_ratio, 10.0),
            turn: AtomicUsize::new(0),
            metrics: metrics.clone(),
            hedges_sent: metrics.hedges_sent.get_or_create(&label).clone(),
            hedges_won: metrics.hedges_won.get_or_create(&label).clone(),
            live_gauge: metrics.live_replicas.get_or_create(&label).clone(),
        };
        let fixed: Vec<String> = s
            .sources
            .iter()
            .filter_map(|src| match src {
                Source::Fixed(a) => Some(a.clone()),
                Source::Dns { .. } => None,
            })
            .collect();
        s.set_addresses(fixed);
        s
    }

    pub fn replicas(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas.load_full()
    }

    /// Replaces the replica list, keeping the state of replicas still listed.
    pub fn set_addresses(&self, mut addrs: Vec<String>) {
        addrs.sort();
        addrs.dedup();
        let old = self.replicas.load();
        if old.len() == addrs.len() && old.iter().zip(&addrs).all(|(r, a)| &r.addr == a) {
            return;
        }
        let new: Vec<Arc<Replica>> = addrs
            .into_iter()
            .map(|a| {
                old.iter()
                    .find(|r| r.addr == a)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Replica::new(a, &self.collection, self.index, &self.metrics))
                    })
            })
            .collect();
        tracing::info!(
            collection = %self.collection,
            shard = self.index,
            replicas = ?new.iter().map(|r| r.addr.as_str()).collect::<Vec<_>>(),
            "shard replicas"
        );
        self.replicas.store(Arc::new(new));
    }

    /// Re-resolves the shard's `dns://` sources (fixed ones stay). A failed lookup keeps
    /// that name's previous addresses.
    pub async fn resolve(&self) {
        if !self.sources.iter().any(|s| matches!(s, Source::Dns { .. })) {
            return;
        }
        let current = self.replicas();
        let mut addrs = Vec::new();
        for src in &self.sources {
            match src {
                Source::Fixed(a) => addrs.push(a.clone()),
                Source::Dns { name, port } => {
                    match tokio::net::lookup_host((name.as_str(), *port)).await {
                        Ok(found) => addrs.extend(found.map(|a: SocketAddr| a.to_string())),
                        Err(e) => {
                            tracing::warn!(name, error = %e, "cannot resolve; keeping its previous addresses");
                            let suffix = format!(":{port}");
                            addrs.extend(
                                current
                                    .iter()
                                    .filter(|r| r.addr.ends_with(&suffix))
                                    .map(|r| r.addr.clone()),
                            );
                        }
                    }
                }
            }
        }
        self.set_addresses(addrs);
    }

    pub fn live_count(&self) -> usize {
        let n = self.replicas.load().iter().filter(|r| r.is_live()).count();
        self.live_gauge.set(n as i64);
        n
    }

    /// Publishes the hedging quantile from recent latencies.
    pub fn tick(&self, q: f64) {
        self.latency.tick(q, 0.8);
    }

    /// The live replica with the lowest [`Replica::cost`] (recent latency × requests in
    /// flight), not among `tried`; ties rotate. Counting outstanding requests alone spreads
    /// load but keeps sending a share to a replica that answers slowly; weighting by its
    /// latency moves that share to the healthy ones (a shard's p99 then follows them).
    fn pick(&self, tried: &[Arc<Replica>]) -> Option<Arc<Replica>> {
        let list = self.replicas.load();
        let n = list.len();
        if n == 0 {
            return None;
        }
        let now = now_ms();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(&Arc<Replica>, u128)> = None;
        for i in 0..n {
            let r = &list[(start + i) % n];
            if !r.is_live() || tried.iter().any(|t| Arc::ptr_eq(t, r)) {
                continue;
            }
            let cost = r.cost(now);
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((r, cost));
            }
        }
        best.map(|(r, _)| r.clone())
    }

    async fn attempt(
        &self,
        client: &HttpClient,
        opts: &UpstreamOptions,
        r: &Replica,
        req: &UpRequest,
    ) -> Attempt {
        let _out = Outstanding::new(r);
        let started = Instant::now();
        let mut b = Request::builder()
            .method(req.method.clone())
            .uri(r.url(&req.path));
        if req.body.is_some() {
            b = b.header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(v) = &req.version {
            b = b.header(VERSION_HEADER, v.as_ref());
        }
        match &req.auth {
            Some((name, value)) => b = b.header(name, value),
            None => {
                if let Some(k) = &opts.shard_key {
                    b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
                }
            }
        }
        let request = match b.body(Full::new(req.body.clone().unwrap_or_default())) {
            Ok(x) => x,
            Err(e) => return Attempt::Retry(CallError::Unavailable(format!("bad request: {e}"))),
        };
        let result = async {
            let resp = client.request(request).await?;
            let status = resp.status();
            let version = resp
                .headers()
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(UpResponse {
                status,
                version,
                body,
            })
        }
        .await;
        match result {
            Ok(resp) if resp.status.is_server_error() => {
                r.error.inc();
                r.on_failure(opts, false, "5xx answer");
                Attempt::Retry(CallError::Upstream(resp))
            }
            Ok(resp) => {
                let took = started.elapsed();
                r.ok.inc();
                r.latency.observe(took.as_secs_f64());
                r.observe(took);
                r.on_success();
                if resp.status == StatusCode::CONFLICT {
                    // That version is not loaded here; another replica may have it.
                    return Attempt::Retry(CallError::Upstream(resp));
                }
                self.latency.record(took);
                Attempt::Done(resp)
            }
            Err(e) => {
                r.failed.inc();
                let refused = e
                    .downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(|e| e.is_connect());
                let msg = format!("{}: {e}", r.addr);
                r.on_failure(opts, refused, &msg);
                Attempt::Retry(CallError::Unavailable(msg))
            }
        }
    }

    /// `req` answered by one replica: the least loaded live one, hedged to a second after
    /// the shard's recent p95 (within the budget), retried on another replica after a
    /// failure, until `deadline`. Answers below 500 (other than 409) are final.
    pub async fn call(
        &self,
        client: &HttpClient,
        opts: &UpstreamOptions,
        req: &UpRequest,
        deadline: Instant,
    ) -> Result<UpResponse, CallError> {
        let mut tried: Vec<Arc<Replica>> = Vec::with_capacity(2);
        let mut last: Option<CallError> = None;
        self.budget.earn();
        while let Some(first) = self.pick(&tried) {
            tried.push(first.clone());
            let hedge_after = opts
                .hedge_quantile
                .and_then(|_| self.latency.quantile())
                .map(|q| q.max(opts.hedge_min_delay));
            let run = self.race(client, opts, &first, hedge_after, &mut tried, req);
            match tokio::time::timeout_at(deadline.into(), run).await {
                Err(_) => return Err(CallError::Timeout),
                Ok(Attempt::Done(resp)) => return Ok(resp),
                Ok(Attempt::Retry(e)) => last = Some(e),
            }
        }
        match last {
            // A 409 from every replica is the shard's answer.
            Some(CallError::Upstream(r)) if r.status == StatusCode::CONFLICT => Ok(r),
            Some(e) => Err(e),
            None => Err(CallError::Unavailable(format!(
                "collection {:?} shard {} has no live replica",
                self.collection, self.index
            ))),
        }
    }

    async fn race(
        &self,
        client: &HttpClient,
        opts: &UpstreamOptions,
        first: &Replica,
        hedge_after: Option<Duration>,
        tried: &mut Vec<Arc<Replica>>,
        req: &UpRequest,
    ) -> Attempt {
        let started = Instant::now();
        let primary = self.attempt(client, opts, first, req);
        tokio::pin!(primary);
        let Some(delay) = hedge_after else {
            return primary.await;
        };
        tokio::select! {
            biased;
            a = &mut primary => return a,
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(second) = self.pick(tried) else {
            return primary.await;
        };
        if !self.budget.try_spend() {
            return primary.await;
        }
        tried.push(second.clone());
        self.hedges_sent.inc();
        let hedge = self.attempt(client, opts, &second, req);
        tokio::pin!(hedge);
        let (mut p_done, mut h_done) = (false, false);
        loop {
            tokio::select! {
                a = &mut primary, if !p_done => {
                    p_done = true;
                    match a {
                        Attempt::Done(r) => return Attempt::Done(r),
                        e if h_done => return e,
                        _ => {}
                    }
                }
                a = &mut hedge, if !h_done => {
                    h_done = true;
                    match a {
                        Attempt::Done(r) => {
                            self.hedges_won.inc();
                            // The primary is dropped unanswered: it took at least this
                            // long, which its latency estimate must learn.
                            if !p_done {
                                first.observe(started.elapsed());
                            }
                            return Attempt::Done(r);
                        }
                        e if p_done => return e,
                        _ => {}
                    }
                }
            }
        }
    }
}
