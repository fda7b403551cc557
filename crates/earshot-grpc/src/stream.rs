//! `SimilarStream`: `Similar` over one long-lived bidirectional stream. The stream's
//! metadata carry the key (checked once), the version pin and the request ID; each message
//! is then answered exactly as a `Similar` call — same conversion, same engine, its own
//! execution slot from the shared limiter (waited for at most `--request-timeout-ms`; work
//! sent to the blocking pool is bounded by it too) — in order.
//! What a message saves against a call is the per-call transport work (an HTTP/2 stream,
//! header blocks both ways, trailers, a task), the ~50 µs a small HTTP request costs
//! besides its search (BENCHMARKS.md §6).

use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_server::auth::{check_key, Role};
use earshot_server::error::ApiError;
use earshot_server::exec;
use earshot_server::extract::{Pin, VERSION_HEADER};
use earshot_server::metrics::{GrpcLabels, Metrics};
use earshot_server::state::AppState;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::pb::similar_answer::Outcome;
use crate::service::{pinned, request_span, small, REQUEST_ID};
use crate::{convert, pb, status};

/// The answers of one stream.
pub type AnswerStream = ReceiverStream<Result<pb::SimilarAnswer, Status>>;

/// Answers waiting to be written before the stream stops reading requests.
const BUFFERED: usize = 32;

/// Messages already received are answered back to back and their answers handed to the
/// transport together, which writes them with one syscall instead of one each: on one
/// core, the loopback write of each answer and the cache misses of switching between
/// query and socket work cost as much as a third of a small query (BENCHMARKS.md §6,
/// "gRPC"). An answer waits for at most this many others (32 rather than 16: one write
/// per 32 answers gave 0.88× in-process queries per CPU-second against 0.86×, §6 "Cheaper
/// recall checks, longer rounds, answers written in place")…
const GATHER_MAX: usize = 32;
/// …or this long after its round began (32 small 384-d queries take ~1.5 ms): pipelining
/// clients trade this much latency for throughput; a client with one message in flight
/// never waits.
const GATHER: Duration = Duration::from_millis(2);

pub async fn open(
    state: &Arc<AppState>,
    req: Request<Streaming<pb::SimilarRequest>>,
) -> Result<Response<AnswerStream>, Status> {
    let (metadata, _, mut incoming) = req.into_parts();
    let headers = metadata.into_headers();
    let api = |e: ApiError| status::from_api(&e);
    check_key(&state.keys, &headers, Role::Query).map_err(api)?;
    let pin = Pin(headers.get(VERSION_HEADER).cloned());
    let pin = pin.version().map_err(api)?.map(str::to_owned);
    let (id, span) = request_span(&headers, "SimilarStream");
    let (tx, rx) = mpsc::channel(BUFFERED);
    let state = state.clone();
    tokio::spawn(
        async move {
            let mut gathered: Vec<pb::SimilarAnswer> = Vec::with_capacity(GATHER_MAX);
            let mut ended = None;
            while ended.is_none() {
                // Wait for a message, then answer it and every message already received
                // before handing the answers over together.
                let since = Instant::now();
                let mut next = incoming.message().await;
                loop {
                    match next {
                        Ok(Some(m)) => gathered.push(answer(&state, pin.clone(), m).await),
                        Ok(None) => ended = Some(None),
                        Err(s) => ended = Some(Some(s)),
                    }
                    if ended.is_some() || gathered.len() == GATHER_MAX || since.elapsed() >= GATHER
                    {
                        break;
                    }
                    match incoming.message().now_or_never() {
                        Some(m) => next = m,
                        None => break,
                    }
                }
                for a in gathered.drain(..) {
                    if tx.send(Ok(a)).await.is_err() {
                        return; // the client went away
                    }
                }
                // Small messages run inline without yielding one by one (`one`): the
                // round yields once, so the worker stalls for at most one round.
                tokio::task::yield_now().await;
            }
            if let Some(Some(s)) = ended {
                let _ = tx.send(Err(s)).await;
            }
        }
        .instrument(span),
    );
    let mut r = Response::new(ReceiverStream::new(rx));
    let h: &mut http::HeaderMap = r.metadata_mut().as_mut();
    h.insert(REQUEST_ID, id);
    Ok(r)
}

/// One message answered (or refused) and counted as a `Similar` call is.
async fn answer(state: &AppState, pin: Option<String>, m: pb::SimilarRequest) -> pb::SimilarAnswer {
    let started = Instant::now();
    let answered = one(state, pin, m).await;
    message_answer(&state.metrics, started, answered)
}

/// A `SimilarStream` message's answer, or its error in place of it, counted in the gRPC
/// metrics as a `Similar` call (`serve`'s streams and the router's).
pub fn message_answer(
    metrics: &Metrics,
    started: Instant,
    answered: Result<Outcome, ApiError>,
) -> pb::SimilarAnswer {
    let (code, outcome) = match answered {
        Ok(o) => ("OK", o),
        Err(e) => (
            status::code_name(status::grpc_code(e.code)),
            Outcome::Error(convert::batch_error(e.code, e.message)),
        ),
    };
    let labels = GrpcLabels {
        method: "SimilarStream",
        code,
    };
    metrics
        .grpc_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics.grpc_requests.get_or_create(&labels).inc();
    pb::SimilarAnswer {
        outcome: Some(outcome),
    }
}

/// One message: a `Similar` call's work, under its own slot and the server's timeout.
async fn one(
    state: &AppState,
    pin: Option<String>,
    m: pb::SimilarRequest,
) -> Result<Outcome, ApiError> {
    let limiter = &state.limiter;
    let deadline = tokio::time::Instant::now() + limiter.options().request_timeout;
    let live = state.live();
    let (collection, id, req) = convert::similar(m, false);
    let small = small(&live, &collection, req.spec());
    let permit = limiter.acquire(deadline).await?;
    let work = move || {
        pinned(&live, &collection, pin.as_deref(), |e| {
            let answer = e.similar(&collection, &id, &req)?;
            Ok(convert::stream_outcome(&answer))
        })
    };
    if small {
        // Back to back with the round's other messages, no timer: inline work cannot be
        // interrupted by the timeout anyway, and its round yields to the runtime once.
        return exec::run_inline(Some(permit), work).map(|(results, _)| results);
    }
    match tokio::time::timeout_at(deadline, exec::run_with(Some(permit), false, work)).await {
        Ok(r) => r.map(|(results, _)| results),
        Err(_) => Err(limiter.rejection("timeout")),
    }
}
