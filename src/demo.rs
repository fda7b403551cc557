//! The embedded default: the synthetic catalogue of [`earshot_build::synthetic`], built and
//! served (`cargo run --release`, `earshot demo`), or written as files (`earshot generate`).

use anyhow::Context;
use earshot_build::synthetic::{catalogue, write_catalogue};
use earshot_build::{self as build, GraphParams};
use earshot_core::metric::Metric;

use crate::cli::{DemoArgs, GenerateArgs};

/// `earshot generate`: writes the catalogue as files the builder reads.
pub fn generate_files(a: &GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.tracks > 0 && a.dim > 0,
        "--tracks and --dim must be positive"
    );
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let (data, queries) = catalogue(a.tracks, a.dim, a.queries, a.seed);
    write_catalogue(&a.out, &data)?;
    earshot_build::npy::write_f32(&a.out.join("queries.npy"), a.queries, a.dim, &queries)?;
    eprintln!(
        "wrote {} tracks ({}-d) and {} queries to {}",
        a.tracks,
        a.dim,
        a.queries,
        a.out.display()
    );
    Ok(())
}

/// `cargo run --release`: build the demo collections if absent, then serve them.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let tracks_dir = a.index_root.join("tracks");
    let creators_dir = a.index_root.join("creators");
    if !tracks_dir.join("manifest.json").exists() || !creators_dir.join("manifest.json").exists() {
        eprintln!(
            "earshot demo: generating a synthetic catalogue of {} tracks ({}-d) into {}",
            a.tracks,
            a.dim,
            a.index_root.display()
        );
        let (data, _) = catalogue(a.tracks, a.dim, 0, 42);
        let creators = build::creators::derive(&data, Metric::Cosine)?;
        let params = GraphParams {
            m: 16,
            ef_construction: 200,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            builder: Default::default(),
            walk: Default::default(),
        };
        let mut settings = build::Settings {
            metric: Metric::Cosine,
            params,
            force: true,
            source: "synthetic demo catalogue (seed 42)".into(),
            // As `earshot build` by default: int8 walk, exact f32 re-ranking.
            quantize: true,
            taste_history: None,
        };
        build::build_collection(data, &tracks_dir, &settings)?;
        settings.source = "creators derived from the demo tracks".into();
        build::build_collection(creators, &creators_dir, &settings)?;
    }
    let base = format!("http://{}", a.addr);
    println!(
        "\nearshot demo: try these while it runs (Ctrl-C stops it)\n\
         curl -s '{base}/v1/collections'\n\
         curl -s '{base}/v1/tracks/demo:track:0000042/similar?k=5'\n\
         curl -s '{base}/v1/creators/demo:artist:000005/similar?k=5'\n\
         curl -s -X POST '{base}/v1/taste/tracks' -H 'content-type: application/json' \\\n  \
           -d '{{\"history\":[{{\"id\":\"demo:track:0000042\",\"weight\":3}},{{\"id\":\"demo:track:0001234\"}}],\"k\":5}}'\n\
         curl -s -X POST '{base}/v1/taste/creators' -H 'content-type: application/json' \\\n  \
           -d '{{\"history\":[{{\"id\":\"demo:track:0000042\"}}],\"history_collection\":\"tracks\",\"k\":5}}'\n\
         curl -s '{base}/metrics' | head\n"
    );
    let opts = earshot_server::ServeOptions {
        index_root: a.index_root,
        addr: a.addr,
        default_ef: 64,
        lazy: false,
        drain: std::time::Duration::ZERO,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(earshot_server::serve(opts))
}
