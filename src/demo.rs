//! The embedded default: a deterministic synthetic music catalogue, built and served.
//!
//! Tracks sit in genre-like clusters: 32 genre centres, creators scattered around a genre,
//! tracks scattered around their creator. Creator popularity is power-law (Pareto), and a
//! track's popularity is a share of its creator's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Pareto, StandardNormal};

use crate::build::{self, Dataset, GraphParams};
use crate::metric::Metric;

#[derive(clap::Args, Debug, Clone)]
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

#[derive(clap::Args, Debug, Clone)]
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

const GENRES: usize = 32;
const TRACKS_PER_CREATOR: usize = 8;

/// A synthetic catalogue plus `queries` extra vectors drawn the same way.
pub fn catalogue(tracks: usize, dim: usize, queries: usize, seed: u64) -> (Dataset, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let gauss = |rng: &mut rand::rngs::StdRng, scale: f32| -> f32 {
        let x: f32 = StandardNormal.sample(rng);
        x * scale
    };
    let genres: Vec<f32> = (0..GENRES * dim).map(|_| gauss(&mut rng, 1.0)).collect();
    let n_creators = tracks.div_ceil(TRACKS_PER_CREATOR).max(1);
    let pareto = Pareto::new(1.0f32, 1.2).expect("valid Pareto parameters");
    let mut creator_centres = Vec::with_capacity(n_creators * dim);
    let mut creator_pop = Vec::with_capacity(n_creators);
    for _ in 0..n_creators {
        let g = rng.random_range(0..GENRES);
        for d in 0..dim {
            creator_centres.push(genres[g * dim + d] + gauss(&mut rng, 0.6));
        }
        creator_pop.push(pareto.sample(&mut rng).min(10_000.0) * 100.0);
    }
    let draw = |rng: &mut rand::rngs::StdRng, c: usize, out: &mut Vec<f32>| {
        for d in 0..dim {
            out.push(creator_centres[c * dim + d] + gauss(rng, 0.45));
        }
    };
    let mut vectors = Vec::with_capacity(tracks * dim);
    let mut ids = Vec::with_capacity(tracks);
    let mut creators = Vec::with_capacity(tracks);
    let mut popularity = Vec::with_capacity(tracks);
    for i in 0..tracks {
        // Creators own runs of tracks of random length around TRACKS_PER_CREATOR.
        let c = (i / TRACKS_PER_CREATOR + rng.random_range(0..3)).min(n_creators - 1);
        draw(&mut rng, c, &mut vectors);
        ids.push(format!("demo:track:{i:07}"));
        creators.push(Some(format!("demo:artist:{c:06}")));
        let share: f32 = rng.random_range(0.05..1.0);
        popularity.push(Some((creator_pop[c] * share).round()));
    }
    let mut qs = Vec::with_capacity(queries * dim);
    for _ in 0..queries {
        let c = rng.random_range(0..n_creators);
        draw(&mut rng, c, &mut qs);
    }
    (
        Dataset {
            dim,
            vectors,
            ids,
            creators: Some(creators),
            popularity: Some(popularity),
        },
        qs,
    )
}

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
    crate::npy::write_f32(&a.out.join("queries.npy"), a.queries, a.dim, &queries)?;
    eprintln!(
        "wrote {} tracks ({}-d) and {} queries to {}",
        a.tracks,
        a.dim,
        a.queries,
        a.out.display()
    );
    Ok(())
}

fn write_catalogue(dir: &Path, data: &Dataset) -> anyhow::Result<()> {
    crate::npy::write_f32(&dir.join("tracks.npy"), data.len(), data.dim, &data.vectors)?;
    let mut w = csv::Writer::from_path(dir.join("tracks.csv"))?;
    w.write_record(["track_id", "creator", "popularity"])?;
    let creators = data.creators.as_ref().expect("catalogue has creators");
    let pop = data.popularity.as_ref().expect("catalogue has popularity");
    for i in 0..data.len() {
        w.write_record([
            data.ids[i].as_str(),
            creators[i].as_deref().unwrap_or(""),
            &pop[i].map(|p| p.to_string()).unwrap_or_default(),
        ])?;
    }
    w.flush()?;
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
            quantize: false,
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
    let opts = crate::server::ServeOptions {
        index_root: a.index_root,
        addr: a.addr,
        default_ef: 64,
        lazy: false,
        drain: std::time::Duration::ZERO,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::server::serve(opts))
}
