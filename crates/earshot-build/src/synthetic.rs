//! A deterministic synthetic music catalogue: the embedded default (`earshot demo`,
//! `earshot generate`) and the data of the micro-benchmarks.
//!
//! Tracks sit in genre-like clusters: 32 genre centres, creators scattered around a genre,
//! tracks scattered around their creator. Creator popularity is power-law (Pareto), and a
//! track's popularity is a share of its creator's.

use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Pareto, StandardNormal};

use crate::input::Dataset;

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

/// Writes `data` as `tracks.npy` + `tracks.csv` (track_id, creator, popularity) in `dir`.
pub fn write_catalogue(dir: &Path, data: &Dataset) -> anyhow::Result<()> {
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
