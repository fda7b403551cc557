//! `earshot bench-http`: HTTP latency under load, measured open-loop.
//!
//! First a closed-loop burst (`--connections` clients back to back) estimates the maximum rate,
//! then 3-second open-loop probes walk down from it in 10 % steps to the highest rate the server
//! sustains (no errors, 97 % of the target achieved, p99 under `--sustain-p99-ms`). Then, for
//! each fraction of that (`--fractions 0.25,0.5,0.75,0.9`), requests
//! are sent on a fixed schedule and each latency is measured from the request's *intended*
//! send time, so a server that falls behind shows its queueing instead of hiding it
//! (no coordinated omission). Latencies go into an HDR histogram; one JSON line per rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use earshot_core::collection::Collection;
use earshot_core::format::Verify;

mod http1;
use http1::{Conn, Endpoint};

#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    /// Server base URL.
    pub url: String,
    /// A local copy of the served collection, to draw real item IDs from.
    pub index: std::path::PathBuf,
    /// `similar` (GET …/similar) or `taste` (POST /v1/taste with a 10-item history).
    pub mode: String,
    pub k: usize,
    /// `ef` sent with each request (default: the server's).
    pub ef: Option<usize>,
    /// Seconds per measured rate.
    pub duration: f64,
    /// Keep-alive connections: the closed loop's clients, and the most requests in flight
    /// in the open loop (a request waits for a free one, and that wait counts as latency).
    pub connections: usize,
    /// A request not answered within this counts as an error and its connection is dropped.
    pub timeout_ms: u64,
    /// Fractions of the maximum rate to measure at.
    pub fractions: Vec<f64>,
    /// Take the item IDs from these rows of the collection (.npy of row numbers, like
    /// `earshot bench --query-rows`), to compare with in-process numbers on the same queries.
    /// Default: 4,096 rows spread evenly over the collection.
    pub query_rows: Option<std::path::PathBuf>,
    /// Queries per request: above 1, each request is a `POST /v1/batch` of this many `--mode`
    /// queries (rates stay in requests/s; `queries_per_request` says how to convert).
    pub batch: u16,
    /// A probe rate counts as sustained when all its requests succeed, it achieves 97 % of
    /// its target and its p99 stays under this (a growing queue shows up here first).
    pub sustain_p99_ms: f64,
    /// Skip the search for the maximum and use this as the maximum rate (requests/s).
    pub max_rate: Option<f64>,
    /// Also draw p50/p90/p99/p99.9 latency against the achieved rate into this SVG file.
    pub plot: Option<std::path::PathBuf>,
}

struct Target {
    endpoint: Endpoint,
    timeout: Duration,
    /// Encoded requests, sent in turn.
    requests: Vec<Vec<u8>>,
    batch: bool,
}

impl Target {
    fn conn(&self) -> Conn {
        Conn::new(self.endpoint.addr, self.timeout)
    }

    /// Sends request `i` (cycling) on `conn`; Ok(true) on a 2xx answer.
    async fn send(&self, conn: &mut Conn, i: usize) -> std::io::Result<bool> {
        let (status, body) = conn.send(&self.requests[i % self.requests.len()]).await?;
        // A batch answers 200 even when some of its queries failed; those count as errors.
        Ok((200..300).contains(&status) && !(self.batch && contains(body, b"\"error\":")))
    }
}

pub fn run(a: &HttpBenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.duration > 0.0 && a.connections > 0,
        "--duration and --connections must be positive"
    );
    anyhow::ensure!(
        a.fractions.iter().all(|f| f.is_finite() && *f > 0.0)
            && a.max_rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "--fractions and --max-rate must be positive numbers"
    );
    let c = Collection::open(&a.index, Verify::Lazy)?;
    let name = &c.name;
    let rows: Vec<u32> = match &a.query_rows {
        Some(path) => earshot_build::npy::read_int(path)?
            .data
            .iter()
            .map(|&r| {
                u32::try_from(r)
                    .ok()
                    .filter(|&r| (r as usize) < c.len())
                    .with_context(|| format!("query row {r} out of range"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => (0..c.len() as u32)
            .step_by((c.len() / 4096).max(1))
            .collect(),
    };
    anyhow::ensure!(!rows.is_empty(), "no query rows");
    let ids: Vec<String> = rows.iter().map(|&r| c.id(r).to_string()).collect();
    let batch = a.batch > 1;
    let endpoint = Endpoint::parse(&a.url)?;
    let requests = if batch {
        batch_requests(a, name, &ids)?
    } else {
        single_requests(a, name, &ids)?
    };
    let requests = requests
        .iter()
        .map(|(path, body)| endpoint.encode(path, body.as_deref()))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let target = Arc::new(Target {
            endpoint,
            timeout: Duration::from_millis(a.timeout_ms),
            requests,
            batch,
        });
        target
            .send(&mut target.conn(), 0)
            .await
            .with_context(|| format!("the server at {} did not answer", a.url))?;
        let mut head = serde_json::json!({"mode": a.mode, "connections": a.connections,
                                          "queries_per_request": a.batch});
        let max = match a.max_rate {
            Some(r) => r,
            None => {
                let burst = Duration::from_secs_f64(a.duration.min(5.0));
                let closed = closed_loop(&target, a.connections, burst).await;
                anyhow::ensure!(
                    closed >= 1.0,
                    "no request succeeded in the closed-loop burst: is --index a copy of a \
                     collection the server serves? (the server's log says why it refused)"
                );
                head["closed_loop_rps"] = closed.round().into();
                let (max, probes) = sustainable(&target, a, closed).await?;
                head["probes"] = probes.into();
                max
            }
        };
        head["max_rps"] = max.round().into();
        head["max_queries_per_s"] = (max * a.batch as f64).round().into();
        println!("{head}");
        let mut lines = Vec::new();
        for &f in &a.fractions {
            let mut line = open_loop(
                &target,
                a.connections,
                max * f,
                Duration::from_secs_f64(a.duration),
            )
            .await?;
            line["fraction"] = f.into();
            line["mode"] = a.mode.clone().into();
            line["queries_per_request"] = a.batch.into();
            println!("{line}");
            lines.push(line);
        }
        if let Some(path) = &a.plot {
            plot(path, &a.mode, &lines)?;
            eprintln!("plot written to {}", path.display());
        }
        anyhow::Ok(())
    })
}

/// One request per query: `GET …/similar` or `POST /v1/taste` with 10 consecutive IDs.
fn single_requests(
    a: &HttpBenchOptions,
    name: &str,
    ids: &[String],
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let ef = a.ef.map(|e| format!("&ef={e}")).unwrap_or_default();
    Ok(match a.mode.as_str() {
        "similar" => ids
            .iter()
            .map(|id| {
                let path = format!("/v1/{name}/{}/similar?k={}{ef}", encode(id), a.k);
                (path, None)
            })
            .collect(),
        "taste" => ids
            .chunks(10)
            .map(|h| {
                let history: Vec<_> = h.iter().map(|id| serde_json::json!({"id": id})).collect();
                let mut body = serde_json::json!({"history": history, "k": a.k});
                if let Some(e) = a.ef {
                    body["ef"] = e.into();
                }
                (format!("/v1/taste/{name}"), Some(body.to_string()))
            })
            .collect(),
        other => anyhow::bail!("--mode must be similar or taste (got {other:?})"),
    })
}

/// `POST /v1/batch` requests of `--batch` queries each, over the same IDs as single requests.
fn batch_requests(
    a: &HttpBenchOptions,
    name: &str,
    ids: &[String],
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let query = |ids: &[String]| {
        let mut q = match a.mode.as_str() {
            "similar" => serde_json::json!({"type": "similar", "id": ids[0]}),
            _ => serde_json::json!({"type": "taste",
                "history": ids.iter().map(|id| serde_json::json!({"id": id})).collect::<Vec<_>>()}),
        };
        q["collection"] = name.into();
        q["k"] = a.k.into();
        if let Some(e) = a.ef {
            q["ef"] = e.into();
        }
        q
    };
    let per_query = match a.mode.as_str() {
        "similar" => 1,
        "taste" => 10,
        other => anyhow::bail!("--mode must be similar or taste (got {other:?})"),
    };
    let queries: Vec<_> = ids.chunks(per_query).map(query).collect();
    let n = a.batch as usize;
    // Wraps around so every request is full even when the rows do not divide evenly.
    Ok((0..queries.len().div_ceil(n))
        .map(|r| {
            let qs: Vec<_> = (0..n)
                .map(|j| &queries[(r * n + j) % queries.len()])
                .collect();
            let body = serde_json::json!({ "queries": qs });
            ("/v1/batch".to_string(), Some(body.to_string()))
        })
        .collect())
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Latency percentiles (ms) against the achieved rate, one line per percentile.
fn plot(path: &std::path::Path, mode: &str, lines: &[serde_json::Value]) -> anyhow::Result<()> {
    let series = [
        ("p50", "p50_us"),
        ("p90", "p90_us"),
        ("p99", "p99_us"),
        ("p99.9", "p999_us"),
    ]
    .iter()
    .map(|(label, key)| crate::plot::Series {
        label: label.to_string(),
        points: lines
            .iter()
            .filter_map(|l| Some((l["achieved_rps"].as_f64()?, l[key].as_f64()? / 1000.0)))
            .collect(),
    })
    .collect::<Vec<_>>();
    let title = format!("{mode}: latency (from intended send time) vs request rate");
    crate::plot::latency(path, &title, &series)
}

/// Requests/s that `connections` back-to-back clients achieve.
async fn closed_loop(target: &Arc<Target>, connections: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|w| {
            let (t, done) = (target.clone(), done.clone());
            tokio::spawn(async move {
                let mut conn = t.conn();
                let mut i = w * 7919;
                while start.elapsed() < duration {
                    if let Ok(true) = t.send(&mut conn, i).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The highest open-loop rate the server sustains, searched down from the closed-loop
/// maximum in 10 % steps with 3-second probes. The closed loop overstates it: its clients
/// slow down with the server, so it never builds a queue, and it spends less load-generator
/// CPU than paced sending. Returns the rate and one line per probe.
async fn sustainable(
    target: &Arc<Target>,
    a: &HttpBenchOptions,
    closed: f64,
) -> anyhow::Result<(f64, Vec<serde_json::Value>)> {
    const MAX_PROBES: usize = 8;
    let probe = Duration::from_secs_f64(a.duration.min(3.0));
    let mut probes = Vec::new();
    let mut rate = closed;
    for _ in 0..MAX_PROBES {
        let p = open_loop(target, a.connections, rate, probe).await?;
        let num = |k: &str| p[k].as_f64().unwrap_or(0.0);
        let sustained = num("errors") == 0.0
            && num("achieved_rps") >= 0.97 * rate.round()
            && num("p99_us") <= a.sustain_p99_ms * 1000.0;
        probes.push(serde_json::json!({"target_rps": rate.round(), "achieved_rps": p["achieved_rps"],
                                        "errors": p["errors"], "p99_us": p["p99_us"], "sustained": sustained}));
        if sustained {
            return Ok((rate, probes));
        }
        rate *= 0.9;
    }
    anyhow::bail!(
        "no rate down to {:.0} requests/s was sustained (errors, or p99 over --sustain-p99-ms {}); \
         see the server's log, or pass --max-rate",
        rate / 0.9,
        a.sustain_p99_ms
    )
}

/// Sends at `rate` for `duration` over `connections` keep-alive connections; latencies from
/// each request's intended send time. A request waits client-side for a free connection when
/// all are busy, and that wait counts in its latency (a server that falls behind shows it).
async fn open_loop(
    target: &Arc<Target>,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as usize;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (t, rx) = (target.clone(), rx.clone());
            tokio::spawn(async move {
                let mut conn = t.conn();
                let mut hist = new_histogram();
                let mut errors = 0u64;
                loop {
                    // The lock is held only while waiting for the next request.
                    let Some((i, intended)) = rx.lock().await.recv().await else {
                        break;
                    };
                    match t.send(&mut conn, i).await {
                        Ok(true) => {
                            hist.saturating_record((intended.elapsed().as_micros() as u64).max(1))
                        }
                        _ => errors += 1,
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(50);
    // Paced by a thread of its own: tokio's timer has 1 ms resolution, so requests would leave
    // up to 1 ms after their intended time and that wait would count as server latency.
    let pacer = std::thread::spawn(move || {
        precise_sleeps();
        let mut lag = new_histogram();
        for i in 0..total {
            let intended = start + interval * i as u32;
            sleep_until(intended);
            lag.saturating_record((intended.elapsed().as_micros() as u64).max(1));
            if tx.send((i, intended)).is_err() {
                break;
            }
        }
        lag
    });
    let mut hist = new_histogram();
    let mut errors = 0u64;
    // Each worker ends once the pacer has dropped its sender and the queue is empty.
    for w in workers {
        let (h, e) = w.await.context("a load generator task failed")?;
        hist.add(h).context("merging latency histograms")?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let lag = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    Ok(serde_json::json!({
        "target_rps": rate.round(),
        "achieved_rps": (hist.len() as f64 / secs).round(),
        "ok": hist.len(), "errors": errors,
        "p50_us": hist.value_at_quantile(0.5),
        "p90_us": hist.value_at_quantile(0.9),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
        // How late requests left (included in the latencies above).
        "send_lag_p50_us": lag.value_at_quantile(0.5),
        "send_lag_p99_us": lag.value_at_quantile(0.99),
    }))
}

/// Latencies in µs, 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Sleeps until `t` (returns at once if it has passed).
fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// Lets this thread's sleeps end on time: Linux otherwise may defer a timer by the 50 µs
/// default timer slack to batch wake-ups.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// What `encode` escapes: every byte but RFC 3986's unreserved characters and `:` (a
/// pchar, legal in a path segment). Bytes outside ASCII are always escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// Percent-encodes an ID for a path segment (upper-case hex, UTF-8 bytes).
fn encode(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}
