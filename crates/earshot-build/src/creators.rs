//! Deriving a creators collection from a tracks data set.
//!
//! Each creator's vector is the mean of its tracks' vectors; under cosine the tracks are
//! unit-normalised first and the mean is normalised again (so every track counts equally
//! and the creator sits at the centre of its tracks' directions). Under l2 and dot the plain
//! mean is kept, since those metrics rank by magnitude too. A creator's popularity is the
//! sum of its tracks' popularity when the tracks have one, else its number of tracks.

use std::collections::HashMap;

use super::input::Dataset;
use earshot_core::distance;
use earshot_core::metric::Metric;

pub fn derive(tracks: &Dataset, metric: Metric) -> anyhow::Result<Dataset> {
    let creators = tracks.creators.as_ref().ok_or_else(|| {
        anyhow::anyhow!("deriving creators needs a creator column (--creator-column)")
    })?;
    let dim = tracks.dim;
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    let mut sums: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut pop: Vec<f32> = Vec::new();
    let mut unit = vec![0f32; dim];
    for (row, c) in creators.iter().enumerate() {
        let Some(c) = c.as_deref().filter(|c| !c.is_empty()) else {
            continue;
        };
        let ci = *index.entry(c).or_insert_with(|| {
            ids.push(c.to_string());
            sums.resize(sums.len() + dim, 0.0);
            counts.push(0);
            pop.push(0.0);
            ids.len() - 1
        });
        unit.copy_from_slice(tracks.row(row));
        if metric == Metric::Cosine {
            distance::normalize(&mut unit);
        }
        for (s, x) in sums[ci * dim..(ci + 1) * dim].iter_mut().zip(&unit) {
            *s += x;
        }
        counts[ci] += 1;
        pop[ci] += match &tracks.popularity {
            Some(p) => p[row].unwrap_or(0.0),
            None => 1.0,
        };
    }
    anyhow::ensure!(!ids.is_empty(), "no track has a creator: nothing to derive");
    for (ci, v) in sums.chunks_exact_mut(dim).enumerate() {
        let inv = 1.0 / counts[ci] as f32;
        v.iter_mut().for_each(|x| *x *= inv);
        if metric == Metric::Cosine && !distance::normalize(v) {
            anyhow::bail!(
                "creator {:?}: its tracks' vectors cancel out (zero mean), so it has no cosine direction",
                ids[ci]
            );
        }
    }
    Ok(Dataset {
        dim,
        vectors: sums,
        creators: Some(ids.iter().cloned().map(Some).collect()),
        ids,
        popularity: Some(pop.into_iter().map(Some).collect()),
    })
}
