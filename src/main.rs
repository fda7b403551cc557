//! The `earshot` binary: a thin CLI over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use earshot::build::{self, GraphParams, InputSpec};
use earshot::metric::Metric;

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
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
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
        Some(Command::Verify { dir }) => run_verify(&dir),
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
    let m = build::build_collection(data, a.metric, params, &a.out, a.force, &source)?;
    report(&a.out, &m);
    if let (Some(out), Some(creators)) = (&a.creators_out, derived) {
        let source = format!("creators derived from {}", a.out.display());
        let m = build::build_collection(creators, a.metric, params, out, a.force, &source)?;
        report(out, &m);
    }
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
    let opts = earshot::server::ServeOptions {
        index_root: a.index_root,
        addr: a.addr,
        default_ef: a.default_ef,
        lazy: a.lazy,
        drain: std::time::Duration::from_secs_f64(a.drain_seconds.max(0.0)),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(earshot::server::serve(opts))
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
