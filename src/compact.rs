//! `earshot build --base DIR --apply-log URL/NAME`: the one place compaction's two halves
//! meet — earshot-store lists and reads the write log, earshot-build applies the segments
//! to the base's rows and builds the next version (`earshot_build::compact`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use earshot_build::compact::{check_range, Compaction};
use earshot_build::{self as build, writer};
use earshot_core::metric::Metric;
use earshot_store::{split_collection_url, FetchOptions, Store};

use crate::cli::BuildArgs;

pub fn run(a: BuildArgs) -> anyhow::Result<()> {
    let log_url = a.apply_log.clone().expect("called with --apply-log");
    anyhow::ensure!(
        a.base.is_some() || a.from_store.is_some(),
        "--apply-log needs a base version: --base DIR (a built collection) or --from-store URL/NAME"
    );
    anyhow::ensure!(
        a.shard.is_none() || a.from_store.is_some(),
        "--shard does not go with --base: the base's manifest says which shard it is"
    );
    let (store_url, name) = split_collection_url(&log_url)?;
    let log = Store::open(&store_url)?.log(&name)?;
    let rt = crate::store_runtime()?;
    // Where the output goes is settled (and refused if it must be) before the long build.
    let out = writer::plan_output(&a.out, a.versioned, a.force)?;

    let fetched = match &a.from_store {
        Some(url) => Some(fetch_base(&rt, url, &a)?),
        None => None,
    };
    let base_dir = match &fetched {
        Some(f) => f.dir.clone(),
        None => a.base.clone().expect("--base or --from-store"),
    };
    let result = compact(&rt, &a, &base_dir, &log, &log_url, &out);
    if let Some(f) = fetched {
        let _ = std::fs::remove_dir_all(&f.root);
    }
    result?;
    writer::finish_output(&out, a.keep as usize)?;
    Ok(())
}

fn compact(
    rt: &tokio::runtime::Runtime,
    a: &BuildArgs,
    base_dir: &Path,
    log: &earshot_store::Log,
    log_url: &str,
    out: &writer::Output,
) -> anyhow::Result<()> {
    tracing::info!("reading the base {}", base_dir.display());
    let mut c = Compaction::read_base(base_dir)?;
    if let Some(m) = a.metric.map(Metric::from) {
        anyhow::ensure!(
            m == c.metric(),
            "--metric {m:?}, but the base {} is {:?}: a compacted version keeps the base's metric (drop --metric)",
            base_dir.display(),
            c.metric()
        );
    }
    let mut listed = rt.block_on(log.list())?;
    let head = listed.last().copied().unwrap_or(0);
    let from = c.log_through().unwrap_or(0);
    let through = a.through.unwrap_or(head);
    // A listing taken while writers append may miss a segment it shows a later one of (a
    // store listing a directory as it changes): ask for the missing numbers one by one
    // before calling them a gap.
    for seq in from + 1..=through.min(head) {
        if listed.binary_search(&seq).is_err() && rt.block_on(log.exists(seq))? {
            let at = listed.partition_point(|&s| s < seq);
            listed.insert(at, seq);
        }
    }
    let log_dir = format!("{log_url}/{}", earshot_store::LOG_DIR);
    check_range(from, through, &listed, &log_dir)?;
    if through == from {
        tracing::info!(
            through,
            "the base already includes the whole log: building it again as a new version"
        );
    }
    for seq in from + 1..=through {
        let segment = rt.block_on(log.read(seq))?.with_context(|| {
            format!(
                "{} disappeared while compacting: the write log from {seq} was pruned meanwhile; run the compaction again from a newer base",
                log.segment_url(seq)
            )
        })?;
        c.apply(&segment, &log.segment_url(seq))?;
    }
    tracing::info!(
        from = from + 1,
        through,
        stats = ?c.stats(),
        rows = c.len(),
        "write log applied"
    );
    let settings = build::Settings {
        metric: c.metric(),
        params: crate::graph_params(a),
        force: out.replaces(a.force),
        source: format!(
            "{} + write log {log_url} {}..={through}",
            a.from_store
                .clone()
                .unwrap_or_else(|| base_dir.display().to_string()),
            from + 1
        ),
        quantize: a.quantize == "int8",
        taste_history: c.taste_history().map(str::to_string),
    };
    let m = c.build(through, out.build_dir(), &settings)?;
    crate::report(out.build_dir(), &m);
    Ok(())
}

/// A base downloaded from a store, and the hidden directory holding it.
struct Fetched {
    root: PathBuf,
    dir: PathBuf,
}

/// Downloads the CURRENT version of `url` (URL/NAME) into a hidden directory beside --out.
fn fetch_base(rt: &tokio::runtime::Runtime, url: &str, a: &BuildArgs) -> anyhow::Result<Fetched> {
    let (store_url, name) = split_collection_url(url)?;
    let store = Store::open(&store_url)?;
    let current = rt
        .block_on(store.current(&name))?
        .with_context(|| format!("{url} has no CURRENT version to compact from"))?;
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let root = parent.join(format!(".earshot-base-{}", std::process::id()));
    tracing::info!(version = current.version, "downloading the base from {url}");
    let opts = FetchOptions {
        shard: a.shard,
        max_bytes_per_sec: crate::mb_per_s("fetch-mb-per-s", a.fetch_mb_per_s)?,
        ..Default::default()
    };
    match rt.block_on(store.fetch(&name, &current, &root, &opts)) {
        Ok(report) => Ok(Fetched {
            root,
            dir: report.dir,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&root);
            Err(e)
        }
    }
}
