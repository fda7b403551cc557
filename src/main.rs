//! The `earshot` binary: a thin CLI over the library.

mod cli;
mod compact;
mod demo;
mod store_mode;

use std::process::ExitCode;

use clap::Parser;
use cli::{BuildArgs, Cli, Command, RouteArgs, ServeArgs};
use earshot_build::{self as build, writer, GraphParams, InputSpec};
use earshot_core::collection::Collection;
use earshot_core::format::{Manifest, Verify};
use earshot_core::layout;
use earshot_core::metric::Metric;

// The server allocates small, short-lived buffers per request (parsing, JSON) on one thread and
// often frees them on another; mimalloc handles that better than glibc malloc (+10–15 % queries
// per server CPU-second, BENCHMARKS.md §6).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("EARSHOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // With the span's fields (a request's id, method and URI) on every line.
        cli::LogFormat::Json => logs.json().with_current_span(true).init(),
        cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let result = match cli.command {
        None => demo::run(cli::DemoArgs::default()),
        Some(Command::Demo(a)) => demo::run(a),
        Some(Command::Build(a)) => run_build(a),
        Some(Command::Serve(a)) => run_serve(a),
        Some(Command::Route(a)) => run_route(a),
        Some(Command::Bench(a)) => earshot_bench::bench::run(&a.into_options()),
        Some(Command::BenchHttp(a)) => earshot_bench::loadgen::run(&a.into_options()),
        Some(Command::Verify { dir }) => run_verify(&dir),
        Some(Command::Versions { dir, store }) => match (dir, store) {
            (_, Some(store)) => run_store_versions(&store),
            (Some(dir), None) => run_versions(&dir),
            (None, None) => Err(anyhow::anyhow!("give a collection link or --store URL/NAME")),
        },
        Some(Command::Activate {
            dir,
            version,
            force,
            store,
        }) => match (store, dir, version) {
            (Some(store), Some(v), None) => run_store_activate(&store, &v.to_string_lossy()),
            (Some(_), _, _) => Err(anyhow::anyhow!(
                "with --store URL/NAME give only the version: earshot activate --store URL/NAME VERSION"
            )),
            (None, Some(dir), Some(v)) => run_activate(&dir, &v, force),
            (None, _, _) => Err(anyhow::anyhow!(
                "give the collection link and the version: earshot activate DIR VERSION"
            )),
        },
        Some(Command::Publish(a)) => run_publish(a),
        Some(Command::Generate(a)) => demo::generate_files(&a),
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
    if a.apply_log.is_some() {
        return compact::run(a);
    }
    let (Some(vectors), Some(metric)) = (a.vectors.clone(), a.metric.map(Metric::from)) else {
        anyhow::bail!("give --vectors and --metric (or --base DIR --apply-log URL/NAME)");
    };
    let spec = InputSpec {
        vectors: vectors.clone(),
        meta: a.meta.clone(),
        id_column: a.id_column.clone(),
        creator_column: a.creator_column.clone(),
        popularity_column: a.popularity_column.clone(),
    };
    if a.creators_out.is_some() && a.creator_column.is_none() && a.meta.is_some() {
        anyhow::bail!("--creators-out needs --creator-column");
    }
    let params = graph_params(&a);
    tracing::info!("reading {}", vectors.display());
    let data = build::input::load(&spec, metric)?;
    tracing::info!(rows = data.len(), dim = data.dim, "read inputs");
    let derived = match &a.creators_out {
        Some(_) => Some(build::creators::derive(&data, metric)?),
        None => None,
    };
    let source = match &a.meta {
        Some(m) => format!("{} + {}", vectors.display(), m.display()),
        None => vectors.display().to_string(),
    };
    // Where each output goes is settled (and refused if it must be) before the long build.
    let out = writer::plan_output(&a.out, a.versioned, a.force)?;
    let creators_out = match &a.creators_out {
        Some(p) => Some(writer::plan_output(p, a.versioned, a.force)?),
        None => None,
    };
    let mut settings = build::Settings {
        metric,
        params,
        force: out.replaces(a.force),
        source,
        quantize: a.quantize == "int8",
        taste_history: a.taste_history.clone(),
    };
    // A shard keeps the rows it owns; a derived creators collection is sharded by creator.
    let build_one = |data, dir: &std::path::Path, settings: &build::Settings| match a.shard {
        Some(shard) => build::build_shard(data, dir, settings, shard),
        None => build::build_collection(data, dir, settings),
    };
    let m = build_one(data, out.build_dir(), &settings)?;
    report(out.build_dir(), &m);
    if let (Some(c_out), Some(creators)) = (&creators_out, derived) {
        settings.source = format!("creators derived from {}", a.out.display());
        settings.taste_history = None;
        settings.force = c_out.replaces(a.force);
        let m = build_one(creators, c_out.build_dir(), &settings)?;
        report(c_out.build_dir(), &m);
    }
    // New versions go live together, once every build has succeeded.
    for o in std::iter::once(&out).chain(creators_out.as_ref()) {
        writer::finish_output(o, a.keep as usize)?;
    }
    Ok(())
}

/// The graph flags of `build`.
pub(crate) fn graph_params(a: &BuildArgs) -> GraphParams {
    GraphParams {
        m: a.m,
        ef_construction: a.ef_construction,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        builder: a.graph_builder.into(),
        walk: a.build_walk.into(),
    }
}

fn run_versions(link: &std::path::Path) -> anyhow::Result<()> {
    for v in layout::list_versions(link)? {
        let facts = match Manifest::read(&v.dir) {
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

/// A runtime for the object-storage commands (object_store is async).
pub(crate) fn store_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run_publish(a: cli::PublishArgs) -> anyhow::Result<()> {
    let store = earshot_store::Store::open(&a.store)?;
    let opts = earshot_store::PublishOptions {
        name: a.name,
        version: a.version,
        max_bytes_per_sec: mb_per_s("upload-mb-per-s", a.upload_mb_per_s)?,
        ..Default::default()
    };
    let report = store_runtime()?.block_on(store.publish(&a.dir, &opts))?;
    println!("{}", report.to_json_line());
    Ok(())
}

fn run_store_versions(url: &str) -> anyhow::Result<()> {
    let (store_url, name) = earshot_store::split_collection_url(url)?;
    let store = earshot_store::Store::open(&store_url)?;
    let versions = store_runtime()?.block_on(store.versions(&name))?;
    anyhow::ensure!(!versions.is_empty(), "{url} has no versions");
    for v in versions {
        println!("{}", v.describe());
    }
    Ok(())
}

fn run_store_activate(url: &str, version: &str) -> anyhow::Result<()> {
    let (store_url, name) = earshot_store::split_collection_url(url)?;
    let store = earshot_store::Store::open(&store_url)?;
    let current = store_runtime()?.block_on(store.activate(&name, version))?;
    println!(
        "{url}/CURRENT now points to {}; replicas switch on their next --watch-interval poll",
        current.version
    );
    Ok(())
}

fn run_activate(link: &std::path::Path, version: &str, force: bool) -> anyhow::Result<()> {
    let v = layout::find_version(link, version)?;
    // Usually run beside a serving process: its checks take idle CPU, not the queries'.
    earshot_server::background::lower_this_thread();
    // The same checks a server makes before it swaps a version in.
    let checked = Collection::open(&v.dir, Verify::Full)
        .map_err(anyhow::Error::from)
        .and_then(|c| earshot_core::collection::sanity_check(&c).map_err(anyhow::Error::msg));
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
    layout::activate(link, &v.name)?;
    println!(
        "{} now points to {}; servers switch on SIGHUP, POST /admin/reload or their next \
         --watch-interval poll",
        link.display(),
        v.name
    );
    Ok(())
}

pub(crate) fn report(out: &std::path::Path, m: &Manifest) {
    tracing::info!(
        out = %out.display(),
        count = m.count,
        dim = m.dim,
        seconds = m.build_seconds,
        "built"
    );
}

fn run_route(a: RouteArgs) -> anyhow::Result<()> {
    earshot_server::access_log::set(a.access_log.level());
    use std::time::Duration;
    anyhow::ensure!(
        (0.0..1.0).contains(&a.hedge),
        "--hedge is a latency quantile: 0 (never hedge) or within 0…1, e.g. 0.95"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.hedge_budget),
        "--hedge-budget is a share of requests within 0…1, e.g. 0.05"
    );
    anyhow::ensure!(
        a.topk_probability > 0.0 && a.topk_probability <= 1.0,
        "--topk-probability must be within (0, 1], e.g. 0.999"
    );
    anyhow::ensure!(
        (1.0..=16.0).contains(&a.similar_ef_boost),
        "--similar-ef-boost multiplies ef on the shards that do not own the item: within 1…16, e.g. 2"
    );
    anyhow::ensure!(
        (1.0..=16.0).contains(&a.search_ef_boost),
        "--search-ef-boost multiplies ef on every shard of a search: within 1…16, e.g. 1.5"
    );
    let upstream = earshot_router::UpstreamOptions {
        hedge_quantile: (a.hedge > 0.0).then_some(a.hedge),
        hedge_ratio: a.hedge_budget,
        hedge_min_delay: secs("hedge-min-ms", a.hedge_min_ms / 1000.0)?,
        eject_after: a.eject_after,
        eject_base: Duration::from_millis(a.eject_ms),
        shard_key: std::env::var("EARSHOT_SHARD_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        ..Default::default()
    };
    let health_interval = secs("health-interval", a.health_interval)?;
    let resolve_interval = secs("resolve-interval", a.resolve_interval)?;
    anyhow::ensure!(
        !health_interval.is_zero() && !resolve_interval.is_zero(),
        "--health-interval and --resolve-interval must be above 0"
    );
    let opts = earshot_router::RouteOptions {
        topology: a.topology,
        addr: a.addr,
        cluster: earshot_router::ClusterOptions {
            upstream,
            topk_probability: a.topk_probability,
            similar_ef_boost: a.similar_ef_boost,
            search_ef_boost: a.search_ef_boost,
            request_timeout: Duration::from_millis(a.timeout_ms),
            health_interval,
            resolve_interval,
        },
        api_keys: a.api_keys,
        drain: secs("drain-seconds", a.drain_seconds)?,
        limits: earshot_router::LimitOptions {
            max_concurrent: a.max_concurrent as usize,
            max_queue: a.max_queue,
            queue_timeout: Duration::from_millis(a.queue_timeout_ms),
            queue_burst: Duration::from_millis(a.queue_burst_ms),
            // A little above the shards' deadline: their timeout answers first.
            request_timeout: Duration::from_millis(a.timeout_ms + 100),
        },
        conns: a.conns.options(),
        grpc_addr: a.grpc_addr,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.workers {
        rt.worker_threads(n as usize);
    }
    let rt = rt.enable_all().build()?;
    let result = rt.block_on(earshot_router::route(opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    earshot_server::access_log::set(a.access_log.level());
    use std::time::Duration;
    anyhow::ensure!(
        (1..=earshot_server::limits::MAX_EF).contains(&a.default_ef),
        "--default-ef must be between 1 and {}",
        earshot_server::limits::MAX_EF
    );
    let watch = secs("watch-interval", a.watch_interval)?;
    let drain = secs("drain-seconds", a.drain_seconds)?;
    let retain_previous = secs("retain-previous", a.retain_previous)?;
    // Store mode: the store is opened (and its URL checked) before anything listens.
    let store = match &a.store {
        Some(url) => Some(earshot_store::Syncer {
            store: earshot_store::Store::open(url)?,
            cache_root: a.index_root.clone(),
            shard: a.shard,
            keep: a.keep as usize,
            max_fetch_bytes_per_sec: mb_per_s("fetch-mb-per-s", a.fetch_mb_per_s)?,
        }),
        None => None,
    };
    let opts = earshot_server::ServeOptions {
        index_root: a.index_root,
        addr: a.addr,
        default_ef: a.default_ef,
        lazy: a.lazy,
        drain,
    };
    let mut limits = earshot_server::overload::LimitOptions {
        max_queue: a.max_queue,
        queue_timeout: Duration::from_millis(a.queue_timeout_ms),
        queue_burst: Duration::from_millis(a.queue_burst_ms),
        request_timeout: Duration::from_millis(a.request_timeout_ms),
        ..Default::default()
    };
    if let Some(n) = a.max_concurrent {
        limits.max_concurrent = n as usize;
    }
    let ops = earshot_server::OpsOptions {
        limits,
        // In store mode the poll is the store's; the index root changes only through it.
        watch_interval: (store.is_none() && !watch.is_zero()).then_some(watch),
        allow_schema_change: a.allow_schema_change,
        api_keys: a.api_keys,
        retain_previous,
        allow_empty: store.is_some(),
        conns: a.conns.options(),
        recall: earshot_server::recall::RecallOptions {
            sample_rate: a.recall_sample_rate,
            floor: a.recall_floor,
            cpu_budget: a.recall_cpu_budget,
        },
        ..Default::default()
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.workers {
        rt.worker_threads(n as usize);
    }
    let rt = rt.enable_all().build()?;
    let poll = if watch.is_zero() {
        store_mode::DEFAULT_POLL
    } else {
        watch
    };
    let sidecars = a.grpc_addr.map(earshot_grpc::sidecar).into_iter().collect();
    let log_poll = Duration::from_millis(a.log_poll_ms);
    let started = |state: std::sync::Arc<earshot_server::state::AppState>| {
        if let Some(syncer) = store {
            store_mode::start_writes(&state, syncer.store.clone(), log_poll);
            store_mode::spawn(state, syncer, poll);
        }
    };
    let result = rt.block_on(earshot_server::serve_with_sidecars(
        opts, ops, started, sidecars,
    ));
    // Queries still computing for requests that timed out get a moment, not forever.
    rt.shutdown_timeout(Duration::from_secs(10));
    result
}

/// A `--NAME SECONDS` flag as a duration (finite, not negative).
fn secs(name: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        v.is_finite() && v >= 0.0,
        "--{name} must be a finite, non-negative number of seconds"
    );
    Ok(std::time::Duration::from_secs_f64(v))
}

/// A `--NAME` rate in megabytes per second as bytes per second (0: None, uncapped).
fn mb_per_s(name: &str, v: f64) -> anyhow::Result<Option<u64>> {
    anyhow::ensure!(
        v.is_finite() && v >= 0.0,
        "--{name} must be a finite, non-negative number of megabytes per second (0: uncapped)"
    );
    Ok((v > 0.0).then(|| (v * 1e6).max(1.0) as u64))
}

fn run_verify(dir: &std::path::Path) -> anyhow::Result<()> {
    let c = Collection::open(dir, Verify::Full)?;
    c.check_graph()?;
    // What `serve`, `activate` and a replica's fetch check before they take a version: a graph
    // that passes its checksums but cannot find its own items fails here too, not only there.
    earshot_core::collection::sanity_check(&c).map_err(anyhow::Error::msg)?;
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
