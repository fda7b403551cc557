//! `earshot build`: inputs → HNSW graph → a collection directory.

pub mod compact;
pub mod creators;
pub mod graph;
pub mod hnsw;
pub mod input;
pub mod progress;
pub mod synthetic;
pub mod writer;

#[cfg(test)]
mod overlay_tests;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use earshot_core::distance;
use earshot_core::format::{manifest::HnswParams, strings::StringTableData, Manifest, NONE_U32};
use earshot_core::metric::Metric;
use earshot_core::shard::ShardSpec;

pub use graph::{BuildWalk, GraphBuilder, GraphParams};
pub use input::{npy, Dataset, InputSpec};

/// How to build a collection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub metric: Metric,
    pub params: GraphParams,
    /// Replace an existing output.
    pub force: bool,
    /// Provenance recorded in the manifest.
    pub source: String,
    /// Also store 8-bit vectors for the graph walk (see `quant`).
    pub quantize: bool,
    /// Recorded in the manifest: the collection holding this one's taste histories.
    pub taste_history: Option<String>,
}

impl Settings {
    /// For the small collections of tests: `m` 8, `ef_construction` 32, one thread (so
    /// reproducible), no 8-bit vectors, `source` "unit test".
    pub fn small(metric: Metric) -> Self {
        Self {
            metric,
            params: GraphParams {
                m: 8,
                ef_construction: 32,
                threads: 1,
                builder: Default::default(),
                walk: Default::default(),
            },
            force: false,
            source: "unit test".into(),
            quantize: false,
            taste_history: None,
        }
    }
}

/// Builds `data` into the collection directory `out` and returns its manifest.
pub fn build_collection(
    data: Dataset,
    out: &Path,
    settings: &Settings,
) -> anyhow::Result<Manifest> {
    build(data, out, settings, None, None)
}

/// Builds shard `shard` of `data` into `out`: only the rows whose ID
/// [`earshot_core::shard::shard_of`] assigns to it. Creator popularity stays that of the whole
/// catalogue, so "emerging" means the same on every shard as on one unsharded collection.
pub fn build_shard(
    data: Dataset,
    out: &Path,
    settings: &Settings,
    shard: ShardSpec,
) -> anyhow::Result<Manifest> {
    let popularity = creator_popularity_by_name(&data);
    let n = data.len();
    let data = keep_rows(data, |id| shard.owns(id));
    anyhow::ensure!(
        !data.is_empty(),
        "shard {shard} holds none of the {n} input rows: use fewer shards for a catalogue this small"
    );
    build(data, out, settings, Some((shard, popularity)), None)
}

/// Builds `data` into `out`. A shard carries every creator's catalogue-wide popularity;
/// `log_through` is the write log folded into the rows (`compact`), recorded in the manifest.
fn build(
    mut data: Dataset,
    out: &Path,
    settings: &Settings,
    shard: Option<(ShardSpec, HashMap<String, f32>)>,
    log_through: Option<u64>,
) -> anyhow::Result<Manifest> {
    let (metric, params, force, source) = (
        settings.metric,
        settings.params,
        settings.force,
        settings.source.as_str(),
    );
    let started = Instant::now();
    let n = data.len();
    let dim = data.dim;
    anyhow::ensure!(n > 0, "no vectors to index");
    anyhow::ensure!(n < NONE_U32 as usize, "at most 2^32-2 items per collection");
    if metric == Metric::Cosine {
        for (row, v) in data.vectors.chunks_exact_mut(dim).enumerate() {
            anyhow::ensure!(
                distance::normalize(v),
                "row {row}: cosine needs non-zero, finite vectors"
            );
        }
    }
    let label = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "build".into());
    let bar = progress::Progress::new(&label, n);
    let g = graph::build(&data.vectors, dim, metric, params, &|done| bar.set(done))?;
    bar.finish();

    let ids = StringTableData::build(&data.ids);
    let meta = Metadata::from_dataset(&data);
    let creators = StringTableData::build(&meta.creator_names);
    let popularity: Vec<f32> = match &data.popularity {
        Some(p) => p.iter().map(|x| x.unwrap_or(f32::NAN)).collect(),
        None => vec![f32::NAN; n],
    };
    // A creator's popularity: the sum of its items' known popularity (NaN if none known),
    // over the whole catalogue when this is a shard.
    let creator_popularity: Vec<f32> = match &shard {
        Some((_, global)) => meta
            .creator_names
            .iter()
            .map(|name| global.get(name).copied().unwrap_or(f32::NAN))
            .collect(),
        None => (0..meta.creator_names.len())
            .map(|c| {
                let rows =
                    &meta.items[meta.item_offsets[c] as usize..meta.item_offsets[c + 1] as usize];
                known_sum(rows.iter().map(|&r| popularity[r as usize]))
            })
            .collect(),
    };
    let quant = settings.quantize.then(|| {
        let (p, codes) = earshot_core::quant::quantize(&data.vectors, dim);
        let sqnorms: Vec<f32> = data
            .vectors
            .chunks_exact(dim)
            .map(|v| distance::dot(v, v))
            .collect();
        (p, codes, sqnorms)
    });
    let arrays = writer::CollectionArrays {
        vectors: &data.vectors,
        level0: &g.level0,
        upper: &g.upper,
        upper_start: &g.upper_start,
        ids: &ids,
        creator_of: &meta.creator_of,
        popularity: &popularity,
        creators: &creators,
        creator_item_offsets: &meta.item_offsets,
        creator_items: &meta.items,
        creator_popularity: &creator_popularity,
        quant: quant
            .as_ref()
            .map(|(p, codes, sqnorms)| writer::QuantArrays {
                codes,
                scale: &p.scale,
                offset: &p.offset,
                sqnorms,
            }),
    };
    let mut manifest = Manifest {
        format_version: earshot_core::format::array_file::FORMAT_VERSION,
        metric,
        dim: dim as u32,
        count: n as u64,
        hnsw: HnswParams {
            m: params.m as u32,
            ef_construction: params.ef_construction as u32,
            level0_degree: g.level0_degree as u32,
            upper_degree: g.upper_degree as u32,
            max_level: g.max_level,
            entry_point: g.entry_point,
            upper_blocks: g.upper_blocks() as u64,
        },
        creators: meta.creator_names.len() as u64,
        has_popularity: data.popularity.is_some(),
        built_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        build_seconds: 0.0,
        builder: format!(
            "earshot {} ({} graph builder)",
            env!("CARGO_PKG_VERSION"),
            params.builder.name()
        ),
        source: source.to_string(),
        quantization: settings.quantize.then(|| "int8".to_string()),
        shard: shard.as_ref().map(|(spec, _)| spec.info()),
        log_through,
        taste_history: settings.taste_history.clone(),
        files: Default::default(),
    };
    manifest.build_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    writer::write_collection(out, &arrays, &mut manifest, force)?;
    Ok(manifest)
}

/// The sum of the known (non-NaN) values, NaN when none is known.
fn known_sum(values: impl Iterator<Item = f32>) -> f32 {
    values
        .filter(|p| !p.is_nan())
        .fold(None, |acc: Option<f32>, p| Some(acc.unwrap_or(0.0) + p))
        .unwrap_or(f32::NAN)
}

/// Every creator's popularity over all of `data` (see [`build_shard`]).
fn creator_popularity_by_name(data: &Dataset) -> HashMap<String, f32> {
    let (Some(creators), Some(popularity)) = (&data.creators, &data.popularity) else {
        return HashMap::new();
    };
    let mut sums: HashMap<&str, Vec<f32>> = HashMap::new();
    for (c, p) in creators.iter().zip(popularity) {
        if let Some(c) = c.as_deref().filter(|c| !c.is_empty()) {
            sums.entry(c).or_default().push(p.unwrap_or(f32::NAN));
        }
    }
    sums.into_iter()
        .map(|(c, ps)| (c.to_string(), known_sum(ps.into_iter())))
        .collect()
}

/// `data` with only the rows whose ID `keep` accepts, in their original order.
fn keep_rows(data: Dataset, keep: impl Fn(&str) -> bool) -> Dataset {
    let dim = data.dim;
    let rows: Vec<usize> = (0..data.len()).filter(|&r| keep(&data.ids[r])).collect();
    let pick = |v: &Vec<Option<String>>| rows.iter().map(|&r| v[r].clone()).collect();
    Dataset {
        dim,
        vectors: rows
            .iter()
            .flat_map(|&r| data.row(r).iter().copied())
            .collect(),
        ids: rows.iter().map(|&r| data.ids[r].clone()).collect(),
        creators: data.creators.as_ref().map(pick),
        popularity: data
            .popularity
            .as_ref()
            .map(|p| rows.iter().map(|&r| p[r]).collect()),
    }
}

/// Creator columns in the stored form: an index per item plus each creator's items.
struct Metadata {
    creator_names: Vec<String>,
    creator_of: Vec<u32>,
    item_offsets: Vec<u64>,
    items: Vec<u32>,
}

impl Metadata {
    fn from_dataset(data: &Dataset) -> Self {
        let n = data.len();
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut creator_names = Vec::new();
        let mut creator_of = vec![NONE_U32; n];
        if let Some(creators) = &data.creators {
            for (row, c) in creators.iter().enumerate() {
                let Some(c) = c.as_deref().filter(|c| !c.is_empty()) else {
                    continue;
                };
                let next = creator_names.len() as u32;
                let ci = *index.entry(c).or_insert_with(|| {
                    creator_names.push(c.to_string());
                    next
                });
                creator_of[row] = ci;
            }
        }
        // Counting sort of rows by creator: rows stay in ascending order within a creator.
        let mut item_offsets = vec![0u64; creator_names.len() + 1];
        for &c in creator_of.iter().filter(|&&c| c != NONE_U32) {
            item_offsets[c as usize + 1] += 1;
        }
        for i in 1..item_offsets.len() {
            item_offsets[i] += item_offsets[i - 1];
        }
        let mut fill = item_offsets.clone();
        let mut items = vec![0u32; *item_offsets.last().unwrap_or(&0) as usize];
        for (row, &c) in creator_of.iter().enumerate() {
            if c != NONE_U32 {
                items[fill[c as usize] as usize] = row as u32;
                fill[c as usize] += 1;
            }
        }
        Self {
            creator_names,
            creator_of,
            item_offsets,
            items,
        }
    }
}
