//! The `earshot` binary: a thin CLI over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use earshot::build::{self, writer, GraphParams, InputSpec};
use earshot::metric::Metric;

// The server allocates small, short-lived buffers per request (parsing, JSON) on one thread and
// often frees them on another; mimalloc handles that better than glibc malloc (+10–15 % queries
// per server CPU-second, BENCHMARKS.md §6).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "earshot",
    version,
    about = "ANN vector search for music recommendation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Build a collection (HNSW index + metadata) from vectors and metadata.
    Build(BuildArgs),
    /// Serve every collection under an index root over HTTP.
    Serve(ServeArgs),
    /// Measure recall@k and queries/s of a built collection against ground truth.
    Bench(earshot::bench::BenchArgs),
    /// Measure HTTP latency percentiles of a running server under open-loop load.
    BenchHttp(earshot::loadgen::HttpBenchArgs),
    /// List the versions of a versioned collection (`*` marks the active one).
    Versions {
        /// The collection link (e.g. indexes/tracks).
        dir: PathBuf,
    },
    /// Point a versioned collection at one of its versions (roll back or forward). Servers
    /// switch on SIGHUP, POST /admin/reload or their next --watch-interval poll.
    Activate {
        /// The collection link (e.g. indexes/tracks).
        dir: PathBuf,
        /// A version listed by `earshot versions`, or `previous` (the one before the active one).
        version: String,
        /// Activate it even if it fails verification (servers will still refuse it).
        #[arg(long)]
        force: bool,
    },
    /// Check every file of a built collection (headers, lengths, checksums, graph).
    Verify {
        /// Collection directory (e.g. indexes/tracks).
        dir: PathBuf,
    },
    /// Write a deterministic synthetic catalogue (tracks.npy, tracks.csv, queries.npy).
    Generate(earshot::demo::GenerateArgs),
    /// Generate a synthetic catalogue into the index root if absent, build it, and serve it
    /// (what `cargo run --release` does with no arguments).
    Demo(earshot::demo::DemoArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Vectors: .npy (float32, 2-D), .jsonl/.ndjson ({"id","vector","creator","popularity"}), or .fvecs.
    #[arg(long)]
    vectors: PathBuf,
    /// CSV with a header row; row i describes vector row i (.npy/.fvecs only).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// CSV column holding the item IDs (strings). Without --meta, IDs are row numbers.
    #[arg(long)]
    id_column: Option<String>,
    /// CSV column naming each item's creator.
    #[arg(long)]
    creator_column: Option<String>,
    /// CSV column with each item's popularity (a number; empty = unknown).
    #[arg(long)]
    popularity_column: Option<String>,
    #[arg(long, value_enum)]
    metric: Metric,
    /// Output collection directory; its name is the collection's name (e.g. indexes/tracks).
    #[arg(long)]
    out: PathBuf,
    /// Also derive a creators collection here from the creator column (mean of each
    /// creator's track vectors; see docs/format.md).
    #[arg(long)]
    creators_out: Option<PathBuf>,
    /// HNSW links per node on the upper levels (level 0 keeps 2·m).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// Beam width while building: higher builds slower and finds better links.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Build threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Graph builder: earshot's own (native, the default) or the hnsw_rs crate. Same layout
    /// and algorithm; native builds 2.7–4.8× faster (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = build::Builder::Native)]
    graph_builder: build::Builder,
    /// What the native builder's beam search measures: 8-bit codes (int8, faster; the links
    /// are still chosen on exact distances) or the f32 vectors.
    #[arg(long, value_enum, default_value_t = build::BuildWalk::Int8)]
    build_walk: build::BuildWalk,
    /// Replace an existing output directory (or, with --versioned, turn a plain one into a
    /// versioned collection, keeping the old build as a version).
    #[arg(long)]
    force: bool,
    /// Write a new version under ROOT/.versions/NAME/ and switch the symlink ROOT/NAME to it
    /// once complete. Implied when --out already is a versioned collection.
    #[arg(long)]
    versioned: bool,
    /// Versions to keep per versioned collection (the active one is never deleted).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    keep: u64,
    /// Also store 8-bit vectors: the graph walk reads 4× fewer bytes and the final
    /// candidates are re-ranked with the exact f32 vectors.
    #[arg(long, value_parser = ["int8"])]
    quantize: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Directory whose subdirectories are collections.
    #[arg(long, default_value = "indexes")]
    index_root: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// Beam width used when a request gives no `ef`.
    #[arg(long, default_value_t = 64)]
    default_ef: usize,
    /// Skip checksum verification at start-up for a fast restart (headers and lengths are
    /// still checked; pages are read on first use).
    #[arg(long)]
    lazy: bool,
    /// Seconds /readyz reports 503 on SIGTERM before the listener closes.
    #[arg(long, default_value_t = 0.0)]
    drain_seconds: f64,
    /// Async worker threads (default: one per core available to the process). Small queries
    /// run on them; larger ones and batches on a separate blocking pool.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// Query requests executing at once (default: 4 × cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_concurrent: Option<u64>,
    /// Query requests waiting for a slot; past that they get 503 `overloaded` at once.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Longest wait for a slot before 503 `overloaded`.
    #[arg(long, default_value_t = 100)]
    queue_timeout_ms: u64,
    /// Longest a query request may take (body, queue and execution) before 503 `timeout`.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// Also look for new collection versions every this many seconds (0: only on SIGHUP
    /// and POST /admin/reload).
    #[arg(long, default_value_t = 0.0)]
    watch_interval: f64,
    /// Accept new versions whose dimension or metric differ from the served ones.
    #[arg(long)]
    allow_schema_change: bool,
    /// API keys file: lines `query KEY` / `admin KEY` (`#` comments). Keys are also read from
    /// EARSHOT_QUERY_KEYS / EARSHOT_ADMIN_KEYS (comma-separated).
    #[arg(long)]
    api_keys: Option<PathBuf>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EARSHOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => earshot::demo::run(earshot::demo::DemoArgs::default()),
        Some(Command::Demo(a)) => earshot::demo::run(a),
        Some(Command::Build(a)) => run_build(a),
        Some(Command::Serve(a)) => run_serve(a),
        Some(Command::Bench(a)) => earshot::bench::run(&a),
        Some(Command::BenchHttp(a)) => earshot::loadgen::run(&a),
        Some(Command::Verify { dir }) => run_verify(&dir),
        Some(Command::Versions { dir }) => run_versions(&dir),
        Some(Command::Activate {
            dir,
            version,
            force,
        }) => run_activate(&dir, &version, force),
        Some(Command::Generate(a)) => earshot::demo::generate_files(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    let spec = InputSpec {
        vectors: a.vectors.clone(),
        meta: a.meta.clone(),
        id_column: a.id_column.clone(),
        creator_column: a.creator_column.clone(),
        popularity_column: a.popularity_column.clone(),
    };
    if a.creators_out.is_some() && a.creator_column.is_none() && a.meta.is_some() {
        anyhow::bail!("--creators-out needs --creator-column");
    }
    let params = GraphParams {
        m: a.m,
        ef_construction: a.ef_construction,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        builder: a.graph_builder,
        walk: a.build_walk,
    };
    tracing::info!("reading {}", a.vectors.display());
    let data = build::input::load(&spec, a.metric)?;
    tracing::info!(rows = data.len(), dim = data.dim, "read inputs");
    let derived = match &a.creators_out {
        Some(_) => Some(build::creators::derive(&data, a.metric)?),
        None => None,
    };
    let source = match &a.meta {
        Some(m) => format!("{} + {}", a.vectors.display(), m.display()),
        None => a.vectors.display().to_string(),
    };
    // Where each output goes is settled (and refused if it must be) before the long build.
    let out = writer::plan_output(&a.out, a.versioned, a.force)?;
    let creators_out = match &a.creators_out {
        Some(p) => Some(writer::plan_output(p, a.versioned, a.force)?),
        None => None,
    };
    let mut settings = build::Settings {
        metric: a.metric,
        params,
        force: out.replaces(a.force),
        source,
        quantize: a.quantize.is_some(),
    };
    let m = build::build_collection(data, out.build_dir(), &settings)?;
    report(out.build_dir(), &m);
    if let (Some(c_out), Some(creators)) = (&creators_out, derived) {
        settings.source = format!("creators derived from {}", a.out.display());
        settings.force = c_out.replaces(a.force);
        let m = build::build_collection(creators, c_out.build_dir(), &settings)?;
        report(c_out.build_dir(), &m);
    }
    // New versions go live together, once every build has succeeded.
    for o in std::iter::once(&out).chain(creators_out.as_ref()) {
        writer::finish_output(o, a.keep as usize)?;
    }
    Ok(())
}

fn run_versions(link: &std::path::Path) -> anyhow::Result<()> {
    for v in writer::list_versions(link)? {
        let facts = match earshot::format::Manifest::read(&v.dir) {
            Ok(m) => format!(
                "{} items, dim {}, {:?}, built {}",
                m.count, m.dim, m.metric, m.built_at
            ),
            Err(e) => format!("unreadable: {e}"),
        };
        let mark = if v.active { '*' } else { ' ' };
        println!("{mark} {}  {facts}", v.name);
    }
    Ok(())
}

fn run_activate(link: &std::path::Path, version: &str, force: bool) -> anyhow::Result<()> {
    let v = writer::find_version(link, version)?;
    // The same checks a server makes before it swaps a version in.
    let checked = earshot::collection::Collection::open(&v.dir, earshot::format::Verify::Full)
        .map_err(anyhow::Error::from)
        .and_then(|c| earshot::server::registry::sanity_check(&c).map_err(anyhow::Error::msg));
    if let Err(e) = checked {
        if !force {
            return Err(e.context(format!(
                "version {} fails verification (--force activates it anyway; servers will refuse it)",
                v.name
            )));
        }
        eprintln!(
            "warning: activating {} although it fails verification: {e:#}",
            v.name
        );
    }
    writer::activate(link, &v.name)?;
    println!(
        "{} now points to {}; servers switch on SIGHUP, POST /admin/reload or their next \
         --watch-interval poll",
        link.display(),
        v.name
    );
    Ok(())
}

fn report(out: &std::path::Path, m: &earshot::format::Manifest) {
    tracing::info!(
        out = %out.display(),
        count = m.count,
        dim = m.dim,
        seconds = m.build_seconds,
        "built"
    );
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=earshot::server::limits::MAX_EF).contains(&a.default_ef),
        "--default-ef must be between 1 and {}",
        earshot::server::limits::MAX_EF
    );
    anyhow::ensure!(
        a.drain_seconds.is_finite() && a.watch_interval.is_finite() && a.watch_interval >= 0.0,
        "--drain-seconds and --watch-interval must be finite, non-negative numbers of seconds"
    );
    let opts = earshot::server::ServeOptions {
        index_root: a.index_root,
        addr: a.addr,
        default_ef: a.default_ef,
        lazy: a.lazy,
        drain: std::time::Duration::from_secs_f64(a.drain_seconds.max(0.0)),
    };
    let mut limits = earshot::server::overload::LimitOptions {
        max_queue: a.max_queue,
        queue_timeout: std::time::Duration::from_millis(a.queue_timeout_ms),
        request_timeout: std::time::Duration::from_millis(a.request_timeout_ms),
        ..Default::default()
    };
    if let Some(n) = a.max_concurrent {
        limits.max_concurrent = n as usize;
    }
    let ops = earshot::server::OpsOptions {
        limits,
        watch_interval: (a.watch_interval > 0.0)
            .then(|| std::time::Duration::from_secs_f64(a.watch_interval)),
        allow_schema_change: a.allow_schema_change,
        api_keys: a.api_keys,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.workers {
        rt.worker_threads(n as usize);
    }
    let rt = rt.enable_all().build()?;
    let result = rt.block_on(earshot::server::serve_with(opts, ops));
    // Queries still computing for requests that timed out get a moment, not forever.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    result
}

fn run_verify(dir: &std::path::Path) -> anyhow::Result<()> {
    let c = earshot::collection::Collection::open(dir, earshot::format::Verify::Full)?;
    c.check_graph()?;
    println!(
        "{}: ok ({} items, dim {}, {} files, {} bytes)",
        dir.display(),
        c.len(),
        c.dim(),
        c.files().len(),
        c.mapped_bytes()
    );
    Ok(())
}
