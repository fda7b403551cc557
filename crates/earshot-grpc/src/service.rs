//! The `earshot.v1.Earshot` service: each RPC converts its message into the HTTP API's
//! request type and runs the same engine call through the same gates, in the order the
//! HTTP middleware applies them: API key, version pin, execution slot (the shared
//! [`Limiter`](earshot_server::overload::Limiter)), then inline or on the blocking pool
//! ([`exec::run_with`]), all within the request's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_server::auth::{check_key, Role};
use earshot_server::engine::{check_batch, QueryError};
use earshot_server::error::ApiError;
use earshot_server::error_code::ErrorCode;
use earshot_server::exec::{self, Work};
use earshot_server::extract::{Pin, VERSION_HEADER};
use earshot_server::metrics::{GrpcLabels, Metrics};
use earshot_server::overload::{Limiter, Permit};
use earshot_server::registry::Live;
use earshot_server::state::AppState;
use earshot_server::writes::http::{write_delete, write_upsert, WriteItem, WriteResponse};
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::calls::ConnInfo;
use crate::pb::batch_entry::Outcome;
use crate::pb::batch_query::Query;
use crate::{convert, pb, status};

pub struct Earshot {
    pub state: Arc<AppState>,
}

/// What an RPC's work returns: its answer and the version that answered it (for the
/// `x-earshot-version` response metadata).
pub(crate) type Answered<T> = Result<(T, Option<HeaderValue>), ApiError>;

/// The RPC's work, planned: whether it is small enough to run inline, and the work.
type Planned<W> = Result<(bool, W), ApiError>;

/// How much earlier than the client's deadline we give up: our DEADLINE_EXCEEDED (with
/// its details) must reach the client before its own timer ends the call, and beat tonic's
/// server-side timer (started a moment earlier on the same `grpc-timeout`, it cancels the
/// call bare). An answer that late could not have reached the client in time anyway.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// A call's request ID (the caller's `x-request-id`, else a new one from the counter HTTP
/// uses too) and its log span, as HTTP's: id, trace id, and the RPC for the method.
pub fn request_span(headers: &HeaderMap, rpc: &'static str) -> (HeaderValue, tracing::Span) {
    let id = match headers.get(REQUEST_ID) {
        Some(v) => v.clone(),
        None => HeaderValue::try_from(earshot_server::new_request_id())
            .unwrap_or(HeaderValue::from_static("-")),
    };
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or("-"),
        trace = earshot_server::trace_id(headers).unwrap_or("-"),
        rpc,
    );
    (id, span)
}

fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When a call must be answered: the client's deadline (`grpc-timeout`, less
/// [`DEADLINE_MARGIN`]) when it is sooner than the server's `--request-timeout-ms`.
pub struct CallDeadline {
    pub at: tokio::time::Instant,
    theirs: Option<Duration>,
}

impl CallDeadline {
    pub fn of(headers: &HeaderMap, started: Instant, limiter: &Limiter) -> Self {
        let ours = limiter.options().request_timeout;
        let theirs = grpc_timeout(headers).filter(|t| *t < ours);
        let at = started + theirs.map_or(ours, |t| t.saturating_sub(DEADLINE_MARGIN));
        Self {
            at: tokio::time::Instant::from_std(at),
            theirs,
        }
    }

    /// The status of a call whose deadline passed: DEADLINE_EXCEEDED for the client's,
    /// HTTP's `timeout` for ours.
    pub fn passed(&self, limiter: &Limiter) -> Status {
        match self.theirs {
            Some(t) => {
                limiter.count_rejected("timeout");
                status::deadline_exceeded(t)
            }
            None => status::from_api(&limiter.rejection("timeout")),
        }
    }

    /// A slot from `limiter`, waiting at most until the deadline.
    pub async fn acquire(&self, limiter: &Limiter) -> Result<Permit, Status> {
        match limiter.acquire(self.at).await {
            Ok(p) => Ok(p),
            Err(e) if e.code == ErrorCode::Timeout && self.theirs.is_some() => {
                Err(self.passed(limiter))
            }
            Err(e) => Err(status::from_api(&e)),
        }
    }
}

/// A unary call's end: its answer (or status) with the request ID (and the version that
/// answered) in the response metadata, counted in the gRPC metrics and logged at debug.
pub fn respond<T>(
    metrics: &Metrics,
    method: &'static str,
    started: Instant,
    (id, span): (HeaderValue, tracing::Span),
    result: Result<(T, Option<HeaderValue>), Status>,
) -> Result<Response<T>, Status> {
    let (result, code) = match result {
        Ok((answer, version)) => {
            let mut r = Response::new(answer);
            let h: &mut HeaderMap = r.metadata_mut().as_mut();
            h.insert(REQUEST_ID, id);
            if let Some(v) = version {
                h.insert(VERSION_HEADER, v);
            }
            (Ok(r), tonic::Code::Ok)
        }
        Err(mut s) => {
            let h: &mut HeaderMap = s.metadata_mut().as_mut();
            h.insert(REQUEST_ID, id);
            let code = s.code();
            (Err(s), code)
        }
    };
    let labels = GrpcLabels {
        method,
        code: status::code_name(code),
    };
    metrics
        .grpc_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics.grpc_requests.get_or_create(&labels).inc();
    span.in_scope(|| tracing::debug!(code = labels.code, "answered"));
    result
}

impl Earshot {
    /// One unary call: checks, plans (`plan` gets the live collections, the pinned version
    /// and the message), runs, and answers with the request ID (and the version) in the
    /// response metadata, counting it in the gRPC metrics.
    async fn unary<M, T, W>(
        &self,
        method: &'static str,
        req: Request<M>,
        plan: impl FnOnce(Arc<Live>, Option<String>, M) -> Planned<W>,
    ) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        W: FnOnce() -> Answered<T> + Send + 'static,
    {
        let started = Instant::now();
        let (metadata, _, msg) = req.into_parts();
        let headers = metadata.into_headers();
        let (id, span) = request_span(&headers, method);
        let m = &self.state.metrics;
        m.grpc_in_flight.inc();
        let result = self
            .run(&headers, started, msg, plan)
            .instrument(span.clone())
            .await;
        m.grpc_in_flight.dec();
        respond(m, method, started, (id, span), result)
    }

    async fn run<M, T, W>(
        &self,
        headers: &HeaderMap,
        started: Instant,
        msg: M,
        plan: impl FnOnce(Arc<Live>, Option<String>, M) -> Planned<W>,
    ) -> Result<(T, Option<HeaderValue>), Status>
    where
        T: Send + 'static,
        W: FnOnce() -> Answered<T> + Send + 'static,
    {
        let api = |e: ApiError| status::from_api(&e);
        check_key(&self.state.keys, headers, Role::Query).map_err(api)?;
        let limiter = &self.state.limiter;
        let deadline = CallDeadline::of(headers, started, limiter);
        let pin = Pin(headers.get(VERSION_HEADER).cloned());
        let pin = pin.version().map_err(api)?.map(str::to_owned);
        let (small, work) = plan(self.state.live(), pin, msg).map_err(api)?;
        let permit = deadline.acquire(limiter).await?;
        // Work that starts past the deadline is wasted (an inline query, once started,
        // runs to its end).
        if tokio::time::Instant::now() >= deadline.at {
            return Err(deadline.passed(limiter));
        }
        match tokio::time::timeout_at(deadline.at, exec::run_with(Some(permit), small, work)).await
        {
            Ok(r) => r.map_err(api),
            Err(_) => Err(deadline.passed(limiter)),
        }
    }
}

pub(crate) fn small(
    live: &Live,
    collection: &str,
    spec: earshot_server::api::ListSpec<'_>,
) -> bool {
    Work {
        collection,
        spec,
        probes: 1,
        history: 0,
    }
    .is_small(&live.engine)
}

/// Runs `f` on the engine `pin` selects for `collection` (as HTTP's `pinned`).
pub(crate) fn pinned<T>(
    live: &Live,
    collection: &str,
    pin: Option<&str>,
    f: impl FnOnce(&earshot_server::engine::Engine) -> Result<T, QueryError>,
) -> Answered<T> {
    let (engine, served) = live.pinned(collection, pin)?;
    Ok((f(engine)?, served.map(|s| s.header.clone())))
}

#[tonic::async_trait]
impl pb::earshot_server::Earshot for Earshot {
    async fn similar(
        &self,
        req: Request<pb::SimilarRequest>,
    ) -> Result<Response<pb::Results>, Status> {
        self.unary("Similar", req, |live, pin, m| {
            let (collection, id, req) = convert::similar(m, false);
            let small = small(&live, &collection, req.spec());
            Ok((small, move || {
                pinned(&live, &collection, pin.as_deref(), |e| {
                    Ok(convert::results(&e.similar(&collection, &id, &req)?))
                })
            }))
        })
        .await
    }

    async fn taste(&self, req: Request<pb::TasteRequest>) -> Result<Response<pb::Results>, Status> {
        self.unary("Taste", req, |live, pin, m| {
            let (collection, req) = convert::taste(m, false);
            let small = Work {
                collection: &collection,
                spec: req.spec(),
                probes: req.centroids.unwrap_or(1),
                history: req.history.len(),
            }
            .is_small(&live.engine);
            Ok((small, move || {
                pinned(&live, &collection, pin.as_deref(), |e| {
                    Ok(convert::results(&e.taste(&collection, &req)?))
                })
            }))
        })
        .await
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::Results>, Status> {
        self.unary("Search", req, |live, pin, m| {
            let req = convert::search(m);
            let small = small(&live, &req.collection, req.spec());
            Ok((small, move || {
                pinned(&live, &req.collection, pin.as_deref(), |e| {
                    Ok(convert::results(&e.search(&req)?))
                })
            }))
        })
        .await
    }

    async fn batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        self.unary("Batch", req, |live, _pin, m| {
            check_batch(m.queries.len())?;
            let queries = m
                .queries
                .into_iter()
                .map(|q| q.query.ok_or_else(no_query))
                .collect::<Result<Vec<_>, _>>()?;
            // Up to 256 queries: always on the blocking pool (as HTTP).
            Ok((false, move || {
                let e = &live.engine;
                let responses = queries
                    .into_iter()
                    .map(|q| {
                        let answer = match q {
                            Query::Similar(s) => e.similar_in_batch(&convert::similar(s, true).2),
                            Query::Search(s) => e.search(&convert::search(s)),
                            Query::Taste(t) => e.taste_in_batch(&convert::taste(t, true).1),
                        };
                        let outcome = match answer {
                            Ok(a) => Outcome::Ok(convert::result_list(&a)),
                            Err(err) => Outcome::Error(convert::batch_error(err.code, err.message)),
                        };
                        pb::BatchEntry {
                            outcome: Some(outcome),
                        }
                    })
                    .collect();
                Ok((pb::BatchResponse { responses }, None))
            }))
        })
        .await
    }

    async fn collections(
        &self,
        req: Request<pb::CollectionsRequest>,
    ) -> Result<Response<pb::CollectionsResponse>, Status> {
        self.unary("Collections", req, |live, _pin, _m| {
            Ok((true, move || {
                let c = earshot_server::routes::collections_of(&live);
                Ok((convert::collections(c), None))
            }))
        })
        .await
    }

    type SimilarStreamStream = crate::stream::AnswerStream;

    async fn similar_stream(
        &self,
        req: Request<tonic::Streaming<pb::SimilarRequest>>,
    ) -> Result<Response<Self::SimilarStreamStream>, Status> {
        crate::stream::open(&self.state, req).await
    }

    async fn upsert(
        &self,
        req: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.write("Upsert", req, |state, m| async move {
            let items = m
                .items
                .into_iter()
                .map(|it| WriteItem {
                    id: it.id,
                    vector: it.vector,
                    creator: it.creator,
                    popularity: it.popularity,
                })
                .collect();
            write_upsert(&state, m.collection, items).await
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.write("Delete", req, |state, m| async move {
            write_delete(&state, m.collection, m.ids).await
        })
        .await
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        self.unary("GetItem", req, |live, pin, m| {
            let pb::GetItemRequest { collection, id } = m;
            Ok((true, move || {
                pinned(&live, &collection, pin.as_deref(), |e| {
                    Ok(convert::item(e.item(&collection, &id)?))
                })
            }))
        })
        .await
    }
}

impl Earshot {
    /// One write: the admin key (without keys: loopback callers only, as HTTP's `/admin/*`),
    /// then the HTTP API's own validation and append; counted in the gRPC metrics.
    async fn write<M, F>(
        &self,
        method: &'static str,
        req: Request<M>,
        write: impl FnOnce(Arc<AppState>, M) -> F,
    ) -> Result<Response<pb::WriteResponse>, Status>
    where
        F: std::future::Future<Output = Result<WriteResponse, ApiError>>,
    {
        let started = Instant::now();
        let loopback = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.tcp.remote_addr())
            .is_some_and(|a| a.ip().is_loopback());
        let (metadata, _, msg) = req.into_parts();
        let headers = metadata.into_headers();
        let (id, span) = request_span(&headers, method);
        let result = async {
            if self.state.keys.is_empty() && !loopback {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "writes answer loopback clients only when no API keys are configured",
                ));
            }
            check_key(&self.state.keys, &headers, Role::Admin)?;
            write(self.state.clone(), msg).await
        }
        .instrument(span)
        .await;
        let result = match result {
            Ok(w) => {
                let mut r = Response::new(pb::WriteResponse {
                    collection: w.collection,
                    seq: w.seq,
                    count: w.count as u32,
                });
                r.metadata_mut().as_mut().insert(REQUEST_ID, id);
                Ok(r)
            }
            Err(e) => {
                let mut s = status::from_api(&e);
                s.metadata_mut().as_mut().insert(REQUEST_ID, id);
                Err(s)
            }
        };
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        let labels = GrpcLabels {
            method,
            code: status::code_name(code),
        };
        let m = &self.state.metrics;
        m.grpc_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        m.grpc_requests.get_or_create(&labels).inc();
        result
    }
}

/// A batch entry naming no query kind (HTTP: a body without a valid `type`).
fn no_query() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequest,
        "a batch query must set one of similar, search or taste",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
