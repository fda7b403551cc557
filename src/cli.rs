//! Every command-line flag of `earshot`, in one place (as ripgrep keeps its flags): clap types
//! live here and nowhere else, and are turned into the libraries' plain option structs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use earshot_bench::bench::BenchOptions;
use earshot_bench::loadgen::HttpBenchOptions;
use earshot_build::{BuildWalk, GraphBuilder};
use earshot_core::metric::Metric;

#[derive(Parser)]
#[command(
    name = "earshot",
    version,
    about = "ANN vector search for music recommendation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log lines as plain text, or as one JSON object per line (for log collectors). The
    /// level filter is EARSHOT_LOG (default `info`).
    #[arg(long, global = true, env = "EARSHOT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build a collection (HNSW index + metadata) from vectors and metadata.
    Build(BuildArgs),
    /// Serve every collection under an index root over HTTP.
    Serve(ServeArgs),
    /// Route queries over sharded, replicated `serve` processes: one endpoint with the same
    /// API (fan-out, merge, version pinning, hedging; README "Sharding and the router").
    Route(RouteArgs),
    /// Measure recall@k and queries/s of a built collection against ground truth.
    Bench(BenchArgs),
    /// Measure HTTP latency percentiles of a running server under open-loop load.
    BenchHttp(HttpBenchArgs),
    /// List the versions of a versioned collection (`*` marks the active one).
    Versions {
        /// The collection link (e.g. indexes/tracks).
        #[arg(required_unless_present = "store", conflicts_with = "store")]
        dir: Option<PathBuf>,
        /// List the versions of a collection in object storage instead: URL/NAME, e.g.
        /// s3://bucket/prefix/tracks or file:///srv/store/tracks (`+` marks complete ones).
        #[arg(long, value_name = "URL/NAME")]
        store: Option<String>,
    },
    /// Point a versioned collection at one of its versions (roll back or forward). Servers
    /// switch on SIGHUP, POST /admin/reload or their next --watch-interval poll.
    Activate {
        /// The collection link (e.g. indexes/tracks); with --store, give only the version.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A version listed by `earshot versions`, or `previous` (the one before the active one).
        #[arg(value_name = "VERSION")]
        version: Option<String>,
        /// Activate it even if it fails verification (servers will still refuse it).
        #[arg(long, conflicts_with = "store")]
        force: bool,
        /// Move a collection's CURRENT in object storage instead (every replica follows on its
        /// next poll): URL/NAME, e.g. s3://bucket/prefix/tracks. Only a complete version is
        /// accepted; the move is a compare-and-swap, as for publish.
        #[arg(long, value_name = "URL/NAME")]
        store: Option<String>,
    },
    /// Upload a built collection to object storage as a new version (verified first, COMPLETE
    /// written last), then point NAME/CURRENT at it by a conditional write. Prints one JSON line.
    Publish(PublishArgs),
    /// Check every file of a built collection (headers, lengths, checksums, graph).
    Verify {
        /// Collection directory (e.g. indexes/tracks).
        dir: PathBuf,
    },
    /// Write a deterministic synthetic catalogue (tracks.npy, tracks.csv, queries.npy).
    Generate(GenerateArgs),
    /// Generate a synthetic catalogue into the index root if absent, build it, and serve it
    /// (what `cargo run --release` does with no arguments).
    Demo(DemoArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// The collection directory (or versioned link) to publish.
    pub dir: PathBuf,
    /// The store: s3://bucket/prefix (credentials, region and endpoint from the AWS_*
    /// environment variables; AWS_ALLOW_HTTP=true for plain http) or file:///path.
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// The version's name (default: the active version of a versioned link, else the build
    /// time). Required for a shard: every shard of one build is published under one version.
    #[arg(long)]
    pub version: Option<String>,
    /// The collection's name in the store (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Upload at most this fast (megabytes per second; 0, the default: uncapped) — for a
    /// publisher that shares a host with serving replicas.
    #[arg(long, default_value_t = 0.0)]
    pub upload_mb_per_s: f64,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Vectors: .npy (float32, 2-D), .jsonl/.ndjson ({"id","vector","creator","popularity"}), or .fvecs.
    #[arg(long, required_unless_present_any = ["base", "from_store"])]
    pub vectors: Option<PathBuf>,
    /// Compaction: build the next version from this built collection (a collection
    /// directory or a versioned link) with the write log applied (--apply-log). Its metric,
    /// IDs, creators, popularity and shard are kept.
    #[arg(long, value_name = "DIR", requires = "apply_log",
          conflicts_with_all = ["vectors", "meta", "id_column", "creator_column", "popularity_column", "creators_out", "from_store", "taste_history"])]
    pub base: Option<PathBuf>,
    /// Compaction: like --base, with the store's CURRENT version of URL/NAME as the base
    /// (downloaded and verified into a hidden directory beside --out, deleted afterwards;
    /// --shard I/N picks the shard of a sharded version).
    #[arg(long, value_name = "URL/NAME", requires = "apply_log",
          conflicts_with_all = ["vectors", "meta", "id_column", "creator_column", "popularity_column", "creators_out", "taste_history"])]
    pub from_store: Option<String>,
    /// Compaction: the write log to fold in (URL/NAME, e.g. s3://bucket/prefix/tracks):
    /// segments after the base's log_through, up to --through, applied in order; the new
    /// manifest records log_through (docs/format.md "Write log").
    #[arg(long, value_name = "URL/NAME")]
    pub apply_log: Option<String>,
    /// With --apply-log: the last segment to apply (default: the log's newest at start).
    #[arg(long, value_name = "P", requires = "apply_log")]
    pub through: Option<u64>,
    /// With --from-store: download the base at most this fast (megabytes per second; 0,
    /// the default: uncapped) — for a compaction that shares a host with serving replicas.
    #[arg(long, default_value_t = 0.0, requires = "from_store")]
    pub fetch_mb_per_s: f64,
    /// CSV with a header row; row i describes vector row i (.npy/.fvecs only).
    #[arg(long)]
    pub meta: Option<PathBuf>,
    /// CSV column holding the item IDs (strings). Without --meta, IDs are row numbers.
    #[arg(long)]
    pub id_column: Option<String>,
    /// CSV column naming each item's creator.
    #[arg(long)]
    pub creator_column: Option<String>,
    /// CSV column with each item's popularity (a number; empty = unknown).
    #[arg(long)]
    pub popularity_column: Option<String>,
    /// With --base / --from-store: optional, and must be the base's.
    #[arg(long, value_enum, required_unless_present_any = ["base", "from_store"])]
    pub metric: Option<MetricArg>,
    /// Output collection directory; its name is the collection's name (e.g. indexes/tracks).
    #[arg(long)]
    pub out: PathBuf,
    /// Also derive a creators collection here from the creator column (mean of each
    /// creator's track vectors; see docs/format.md).
    #[arg(long)]
    pub creators_out: Option<PathBuf>,
    /// HNSW links per node on the upper levels (level 0 keeps 2·m).
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// Beam width while building: higher builds slower and finds better links.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Build threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Graph builder: earshot's own (native, the default) or the hnsw_rs crate. Same layout
    /// and algorithm; native builds 2.7–4.8× faster (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = GraphBuilderArg::Native)]
    pub graph_builder: GraphBuilderArg,
    /// What the native builder's beam search measures: 8-bit codes (int8, faster; the links
    /// are still chosen on exact distances) or the f32 vectors.
    #[arg(long, value_enum, default_value_t = BuildWalkArg::Int8)]
    pub build_walk: BuildWalkArg,
    /// Replace an existing output directory (or, with --versioned, turn a plain one into a
    /// versioned collection, keeping the old build as a version).
    #[arg(long)]
    pub force: bool,
    /// Write a new version under ROOT/.versions/NAME/ and switch the symlink ROOT/NAME to it
    /// once complete. Implied when --out already is a versioned collection.
    #[arg(long)]
    pub versioned: bool,
    /// Versions to keep per versioned collection (the active one is never deleted).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// Also store 8-bit vectors (default): the graph walk reads 4× fewer bytes and the final
    /// candidates are re-ranked with the exact f32 vectors, so scores stay exact. `none`:
    /// f32 only (d + 4 fewer bytes per item on disk). The int8 walk gave the f32 walk's
    /// recall at the same ef on every real set measured, 1.0–2× faster (BENCHMARKS.md §1).
    #[arg(long, default_value = "int8", value_parser = ["int8", "none"])]
    pub quantize: String,
    /// Build only shard I of N: the rows whose ID hashes to I (xxh3-64 of the ID mod N;
    /// docs/format.md "Shards"). Creator popularity stays the whole catalogue's. In a
    /// Kubernetes Indexed Job: --shard $(JOB_COMPLETION_INDEX)/N.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<earshot_core::shard::ShardSpec>,
    /// Taste requests that name no history_collection read the history from NAME (vectors of the same IDs; README "Two-tower taste").
    #[arg(long, value_name = "NAME", value_parser = |s: &str| earshot_core::layout::check_name(s).map(|()| s.to_string()))]
    pub taste_history: Option<String>,
}

#[derive(Args)]
pub struct RouteArgs {
    /// Topology file (TOML): per collection, its shards in order and each shard's replicas
    /// (`http://HOST:PORT`, or `dns://NAME:PORT` re-resolved, every address a replica).
    #[arg(long, env = "EARSHOT_TOPOLOGY")]
    pub topology: PathBuf,
    #[arg(long, env = "EARSHOT_ADDR", default_value = "127.0.0.1:7800")]
    pub addr: SocketAddr,
    /// Also answer over gRPC (serve's service, plaintext HTTP/2, health, reflection).
    #[arg(long, env = "EARSHOT_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Longest a request may take over every shard it asks (each shard request's deadline).
    #[arg(long, env = "EARSHOT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Hedge a shard request to a second replica once it has taken longer than this
    /// quantile of the shard's recent latency (0: never hedge).
    #[arg(long, env = "EARSHOT_HEDGE", default_value_t = 0.95)]
    pub hedge: f64,
    /// Hedged requests are at most this share of shard requests (0.05: 5 % extra load).
    #[arg(long, env = "EARSHOT_HEDGE_BUDGET", default_value_t = 0.05)]
    pub hedge_budget: f64,
    /// Never hedge sooner than this many milliseconds.
    #[arg(long, env = "EARSHOT_HEDGE_MIN_MS", default_value_t = 1.0)]
    pub hedge_min_ms: f64,
    /// Probability that a shard's share of the merged top k is complete: each shard is asked
    /// for k′ = ⌈k/n + t·√(k/n·(1−1/n))⌉ hits, t its normal quantile (1: ask every shard for k).
    #[arg(long, env = "EARSHOT_TOPK_PROBABILITY", default_value_t = 0.999)]
    pub topk_probability: f64,
    /// `similar`: the shards that do not own the queried item walk with this many times the
    /// request's ef — the item is a stranger to their graphs and their walks find its
    /// neighbours less surely. 2 keeps recall through the router at or above one server's at
    /// the same ef for yes-tracks at 2 and 4 shards (BENCHMARKS.md §10); 1: the same ef
    /// everywhere.
    #[arg(long, env = "EARSHOT_SIMILAR_EF_BOOST", default_value_t = 2.0)]
    pub similar_ef_boost: f64,
    /// `search` and `taste` over 2 or more shards: every shard walks with this many times the
    /// request's ef — at the same ef, a walk over part of the catalogue finds its share of the
    /// top k less surely. 1.5 keeps recall through the router above one server's at every ef
    /// for 1M × 128 at 2 and 4 shards (BENCHMARKS.md §10); 1: the request's ef.
    #[arg(long, env = "EARSHOT_SEARCH_EF_BOOST", default_value_t = 1.5)]
    pub search_ef_boost: f64,
    /// Seconds between `/readyz` checks of every replica (and collection info refreshes).
    #[arg(long, env = "EARSHOT_HEALTH_INTERVAL", default_value_t = 2.0)]
    pub health_interval: f64,
    /// Seconds between re-resolutions of `dns://` names.
    #[arg(long, env = "EARSHOT_RESOLVE_INTERVAL", default_value_t = 5.0)]
    pub resolve_interval: f64,
    /// Consecutive failures that take a replica out of rotation (a refused connection: one).
    #[arg(long, env = "EARSHOT_EJECT_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,
    /// First ejection's length in milliseconds; doubles with each further one (up to 30 s).
    #[arg(long, env = "EARSHOT_EJECT_MS", default_value_t = 1000)]
    pub eject_ms: u64,
    /// API keys file for clients, as `serve --api-keys` (the shard servers' key, if they
    /// need one, comes from EARSHOT_SHARD_KEY).
    #[arg(long, env = "EARSHOT_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Seconds /readyz reports 503 on SIGTERM before the listener closes.
    #[arg(long, env = "EARSHOT_DRAIN_SECONDS", default_value_t = 0.0)]
    pub drain_seconds: f64,
    /// Async worker threads (default: one per core available to the process).
    #[arg(long, env = "EARSHOT_WORKERS", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,
    /// Requests routed at once (each mostly waits on its shards, so many more than `serve`).
    #[arg(long, env = "EARSHOT_MAX_CONCURRENT", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent: u64,
    /// Requests waiting for a slot; past that they get 503 `overloaded` at once.
    #[arg(long, env = "EARSHOT_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,
    /// Longest wait for a slot before 503 `overloaded` while the queue is standing (no
    /// request got a slot within this for --queue-burst-ms: an overload).
    #[arg(long, env = "EARSHOT_QUEUE_TIMEOUT_MS", default_value_t = 100)]
    pub queue_timeout_ms: u64,
    /// Longest wait for a slot through a burst (some request got one within
    /// --queue-timeout-ms in the last this many ms); at most --queue-timeout-ms: no burst
    /// allowance.
    #[arg(long, env = "EARSHOT_QUEUE_BURST_MS", default_value_t = 500)]
    pub queue_burst_ms: u64,
    #[command(flatten)]
    pub conns: ConnArgs,
    /// One INFO log line per answer (`all`: status and latency, in the request's span with
    /// its id, trace id, method and URI), only for 5xx answers (`errors`), or none.
    #[arg(long, env = "EARSHOT_ACCESS_LOG", value_enum, default_value_t = AccessLogArg::Errors)]
    pub access_log: AccessLogArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccessLogArg {
    Off,
    Errors,
    All,
}

impl AccessLogArg {
    pub fn level(self) -> earshot_server::access_log::AccessLog {
        use earshot_server::access_log::AccessLog;
        match self {
            Self::Off => AccessLog::Off,
            Self::Errors => AccessLog::Errors,
            Self::All => AccessLog::All,
        }
    }
}

/// The front door's connection bounds (`serve` and `route`): a client that sends nothing,
/// or half a request, or keeps a connection unused, cannot hold it (or a descriptor) forever.
#[derive(Args)]
pub struct ConnArgs {
    /// Close a connection that has not sent a whole request head this many milliseconds
    /// after connecting, or after the head's first byte.
    #[arg(long, env = "EARSHOT_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Close a kept-alive connection unused this many milliseconds (above the 90 s idle
    /// expiry of common client pools, so the client closes first).
    #[arg(long, env = "EARSHOT_IDLE_TIMEOUT_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; past it a new one is closed at once (default
    /// 10,000, lowered to fit the open-file limit, which is raised to its hard limit).
    #[arg(long, env = "EARSHOT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
}

impl ConnArgs {
    pub fn options(&self) -> earshot_server::conn::ConnOptions {
        earshot_server::conn::ConnOptions {
            timeouts: earshot_server::conn::Timeouts {
                header_read: std::time::Duration::from_millis(self.header_read_timeout_ms),
                idle: std::time::Duration::from_millis(self.idle_timeout_ms),
            },
            max_connections: self.max_connections.map(|n| n as usize),
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Directory whose subdirectories are collections.
    #[arg(long, env = "EARSHOT_INDEX_ROOT", default_value = "indexes")]
    pub index_root: PathBuf,
    #[arg(long, env = "EARSHOT_ADDR", default_value = "127.0.0.1:7700")]
    pub addr: SocketAddr,
    /// Also serve the query API over gRPC (plaintext HTTP/2) on this address, with
    /// grpc.health.v1 and reflection (README "gRPC"). Off unless given.
    #[arg(long, env = "EARSHOT_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Beam width used when a request gives no `ef`.
    #[arg(long, env = "EARSHOT_DEFAULT_EF", default_value_t = 64)]
    pub default_ef: usize,
    /// Skip checksum verification at start-up for a fast restart (headers, lengths and the
    /// ID/creator string tables are still checked; other pages are read on first use).
    #[arg(long, env = "EARSHOT_LAZY")]
    pub lazy: bool,
    /// Seconds /readyz reports 503 on SIGTERM before the listener closes.
    #[arg(long, env = "EARSHOT_DRAIN_SECONDS", default_value_t = 0.0)]
    pub drain_seconds: f64,
    /// Async worker threads (default: one per core available to the process). Small queries
    /// run on them; larger ones and batches on a separate blocking pool.
    #[arg(long, env = "EARSHOT_WORKERS", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,
    /// Query requests executing at once (default: 4 × cores).
    #[arg(long, env = "EARSHOT_MAX_CONCURRENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent: Option<u64>,
    /// Query requests waiting for a slot; past that they get 503 `overloaded` at once.
    #[arg(long, env = "EARSHOT_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,
    /// Longest wait for a slot before 503 `overloaded` while the queue is standing (no
    /// request got a slot within this for --queue-burst-ms: an overload).
    #[arg(long, env = "EARSHOT_QUEUE_TIMEOUT_MS", default_value_t = 100)]
    pub queue_timeout_ms: u64,
    /// Longest wait for a slot through a burst (some request got one within
    /// --queue-timeout-ms in the last this many ms); at most --queue-timeout-ms: no burst
    /// allowance.
    #[arg(long, env = "EARSHOT_QUEUE_BURST_MS", default_value_t = 500)]
    pub queue_burst_ms: u64,
    /// Longest a query request may take (body, queue and execution) before 503 `timeout`.
    #[arg(long, env = "EARSHOT_REQUEST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Also look for new collection versions every this many seconds (0: only on SIGHUP
    /// and POST /admin/reload).
    #[arg(long, env = "EARSHOT_WATCH_INTERVAL", default_value_t = 0.0)]
    pub watch_interval: f64,
    /// Accept new versions whose dimension or metric differ from the served ones.
    #[arg(long, env = "EARSHOT_ALLOW_SCHEMA_CHANGE")]
    pub allow_schema_change: bool,
    /// API keys file: lines `query KEY` / `admin KEY` (`#` comments). Keys are also read from
    /// EARSHOT_QUERY_KEYS / EARSHOT_ADMIN_KEYS (comma-separated).
    #[arg(long, env = "EARSHOT_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Keep a replaced version loaded this many seconds after a swap, for requests a router
    /// pinned to it (`x-earshot-version`) during a roll-out (0: unload at once).
    #[arg(long, env = "EARSHOT_RETAIN_PREVIOUS", default_value_t = 120.0)]
    pub retain_previous: f64,
    /// Serve the CURRENT versions of an object store (`s3://bucket/prefix`, credentials and
    /// endpoint from the AWS_* variables, or `file:///path`): --index-root becomes a cache,
    /// filled at start and on every poll (--watch-interval, default 10 s here); /readyz
    /// answers 200 once every collection of the store is loaded.
    #[arg(long, env = "EARSHOT_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With --store: serve shard I of N of every sharded collection (unsharded ones whole).
    #[arg(long, env = "EARSHOT_SHARD", value_name = "I/N", requires = "store")]
    pub shard: Option<earshot_core::shard::ShardSpec>,
    /// With --store: versions kept per collection in the cache (the served one included), so
    /// a roll-back to a recent version needs no download.
    #[arg(long, env = "EARSHOT_KEEP", default_value_t = 2, requires = "store", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// With --store: download new versions at most this fast (megabytes per second; 0:
    /// uncapped). A download at full speed takes CPU and network from the queries beside it.
    #[arg(
        long,
        env = "EARSHOT_FETCH_MB_PER_S",
        default_value_t = 40.0,
        requires = "store"
    )]
    pub fetch_mb_per_s: f64,
    /// With --store: look for new write-log segments this often (writes reach this replica
    /// within it; `POST /admin/log/poll` looks at once).
    #[arg(long, env = "EARSHOT_LOG_POLL_MS", default_value_t = 1000, requires = "store", value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub log_poll_ms: u64,
    #[command(flatten)]
    pub conns: ConnArgs,
    /// One INFO log line per answer (`all`: status and latency, in the request's span with
    /// its id, trace id, method and URI), only for 5xx answers (`errors`), or none.
    #[arg(long, env = "EARSHOT_ACCESS_LOG", value_enum, default_value_t = AccessLogArg::Errors)]
    pub access_log: AccessLogArg,
    /// Share of queries (0 to 1) whose served ANN answer is checked in the background
    /// against an exact scan, for `earshot_recall_estimate` (0: off). The default, 1 in
    /// 1,000, is rare enough to cost the query path nothing measurable and the CPU budget
    /// below caps the checks however busy the server is (README "Live recall").
    #[arg(long, env = "EARSHOT_RECALL_SAMPLE_RATE", value_name = "R",
          default_value_t = earshot_server::recall::DEFAULT_SAMPLE_RATE, value_parser = fraction)]
    pub recall_sample_rate: f64,
    /// Log a warning when the recall estimate (over at least 100 samples) falls below this.
    #[arg(long, env = "EARSHOT_RECALL_FLOOR", value_name = "F",
          default_value_t = earshot_server::recall::DEFAULT_FLOOR, value_parser = fraction)]
    pub recall_floor: f64,
    /// Share of one core the background recall checker may use (above 0, at most 1); it also
    /// runs at the lowest priority. Samples beyond what it can check are dropped and counted.
    #[arg(long, env = "EARSHOT_RECALL_CPU_BUDGET", value_name = "SHARE",
          default_value_t = earshot_server::recall::DEFAULT_CPU_BUDGET, value_parser = cpu_budget)]
    pub recall_cpu_budget: f64,
}

/// A number from 0 to 1 (NaN is not).
fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be a number from 0 to 1 (got {s})"))
    }
}

/// A share of one core: above 0, at most 1.
fn cpu_budget(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "must be above 0 and at most 1, a share of one core (got {s})"
        ))
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Collection directory.
    #[arg(long)]
    pub index: PathBuf,
    /// Query vectors (.npy float32, 2-D). Not needed with --query-rows.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Ground truth: int32/int64 row numbers into the collection, one row per query, best
    /// first. Without it, exact neighbours are computed by brute force first.
    #[arg(long)]
    pub gt: Option<PathBuf>,
    /// Queries are these rows of the collection itself (.npy of row numbers).
    #[arg(long)]
    pub query_rows: Option<PathBuf>,
    /// With --query-rows: leave the query item out of its results (as `similar` does) and
    /// compare with ground-truth ranks 1..=k, since rank 0 is the item itself.
    #[arg(long)]
    pub skip_self: bool,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub ef: Vec<usize>,
    /// Query threads; each runs its share of the queries.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Repeat the query set this many times per ef (steadier timings).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Open without checksum verification.
    #[arg(long)]
    pub lazy: bool,
    /// Walk the graph with the exact f32 vectors even if the collection has 8-bit codes.
    #[arg(long)]
    pub exact_walk: bool,
    /// Also draw the recall–QPS curve into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct HttpBenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// A local copy of the served collection, to draw real item IDs from.
    #[arg(long)]
    pub index: std::path::PathBuf,
    /// `similar` (GET …/similar) or `taste` (POST /v1/taste with a 10-item history).
    #[arg(long, default_value = "similar")]
    pub mode: String,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// `ef` sent with each request (default: the server's).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Seconds per measured rate.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keep-alive connections: the closed loop's clients, and the most requests in flight
    /// in the open loop (a request waits for a free one, and that wait counts as latency).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// A request not answered within this counts as an error and its connection is dropped.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Fractions of the maximum rate to measure at.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9")]
    pub fractions: Vec<f64>,
    /// Take the item IDs from these rows of the collection (.npy of row numbers, like
    /// `earshot bench --query-rows`), to compare with in-process numbers on the same queries.
    /// Default: 4,096 rows spread evenly over the collection.
    #[arg(long)]
    pub query_rows: Option<std::path::PathBuf>,
    /// Queries per request: above 1, each request is a `POST /v1/batch` of this many `--mode`
    /// queries (rates stay in requests/s; `queries_per_request` says how to convert).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
    /// A probe rate counts as sustained when all its requests succeed, it achieves 97 % of
    /// its target and its p99 stays under this (a growing queue shows up here first).
    #[arg(long, default_value_t = 20.0)]
    pub sustain_p99_ms: f64,
    /// Skip the search for the maximum and use this as the maximum rate (requests/s).
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Also draw p50/p90/p99/p99.9 latency against the achieved rate into this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// The library's options for these flags.
    pub fn into_options(self) -> BenchOptions {
        BenchOptions {
            index: self.index,
            queries: self.queries,
            gt: self.gt,
            query_rows: self.query_rows,
            skip_self: self.skip_self,
            k: self.k,
            ef: self.ef,
            threads: self.threads,
            repeat: self.repeat,
            lazy: self.lazy,
            exact_walk: self.exact_walk,
            plot: self.plot,
        }
    }
}

impl HttpBenchArgs {
    /// The library's options for these flags.
    pub fn into_options(self) -> HttpBenchOptions {
        HttpBenchOptions {
            url: self.url,
            index: self.index,
            mode: self.mode,
            k: self.k,
            ef: self.ef,
            duration: self.duration,
            connections: self.connections,
            timeout_ms: self.timeout_ms,
            fractions: self.fractions,
            query_rows: self.query_rows,
            batch: self.batch,
            sustain_p99_ms: self.sustain_p99_ms,
            max_rate: self.max_rate,
            plot: self.plot,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Output directory for tracks.npy, tracks.csv and queries.npy.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub tracks: usize,
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Query vectors (drawn like tracks, not in the catalogue).
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[arg(long, default_value = "indexes")]
    pub index_root: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 100_000)]
    pub tracks: usize,
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            index_root: "indexes".into(),
            addr: "127.0.0.1:7700".parse().expect("valid address"),
            tracks: 100_000,
            dim: 64,
        }
    }
}

/// `--metric`: mirrors [`Metric`] so the core crate needs no clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricArg {
    /// Cosine similarity; vectors are normalised at build time.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Inner product (maximum inner product search).
    Dot,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Self {
        match m {
            MetricArg::Cosine => Metric::Cosine,
            MetricArg::L2 => Metric::L2,
            MetricArg::Dot => Metric::Dot,
        }
    }
}

/// `--graph-builder`: which implementation builds the graph. Both produce the same layout and
/// the same kind of graph (hnswlib's algorithm and neighbour heuristic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphBuilderArg {
    /// earshot's builder, writing the served layout directly.
    Native,
    /// The hnsw_rs crate, flattened into the served layout afterwards.
    HnswRs,
}

impl From<GraphBuilderArg> for GraphBuilder {
    fn from(b: GraphBuilderArg) -> Self {
        match b {
            GraphBuilderArg::Native => GraphBuilder::Native,
            GraphBuilderArg::HnswRs => GraphBuilder::HnswRs,
        }
    }
}

/// `--build-walk`: what the native builder's beam search measures distances on. The links
/// are always chosen with exact distances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuildWalkArg {
    /// Temporary 8-bit codes: 4× fewer bytes per distance, about 1.5× faster on 384-d.
    Int8,
    /// The f32 vectors (as hnswlib does).
    F32,
}

impl From<BuildWalkArg> for BuildWalk {
    fn from(w: BuildWalkArg) -> Self {
        match w {
            BuildWalkArg::Int8 => BuildWalk::Int8,
            BuildWalkArg::F32 => BuildWalk::F32,
        }
    }
}
