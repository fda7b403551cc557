//! An opened collection: the manifest plus every array mapped in place.

use std::path::{Path, PathBuf};

use crate::distance::DistanceFn;
use crate::format::strings::StringTable;
use crate::format::{names, ArrayFile, FormatError, Manifest, Verify, NONE_U32};
use crate::search::{Graph, LinkLayout, Quantized};

/// A collection opened from its directory, every array read in place from its mapping.
pub struct Collection {
    /// The directory's name (the collection's name when served).
    pub name: String,
    /// The directory it was opened from.
    pub dir: PathBuf,
    /// Its `manifest.json`.
    pub manifest: Manifest,
    vectors: ArrayFile,
    level0: ArrayFile,
    upper: ArrayFile,
    upper_start: ArrayFile,
    /// Item IDs by row.
    pub ids: StringTable,
    creator_of: ArrayFile,
    popularity: ArrayFile,
    /// Creator names by creator index.
    pub creators: StringTable,
    creator_item_offsets: ArrayFile,
    creator_items: ArrayFile,
    creator_popularity: ArrayFile,
    quant: Option<QuantFiles>,
    dist: DistanceFn,
}

/// The optional 8-bit copy of the vectors.
struct QuantFiles {
    codes: ArrayFile,
    scale: ArrayFile,
    offset: ArrayFile,
    sqnorms: ArrayFile,
}

impl Collection {
    /// Opens the collection in `dir`. Every length is checked against the manifest before
    /// anything is read through the mappings, and every ID and creator name is proven UTF-8
    /// (a small pass that keeps [`id`](Self::id) infallible); `Verify::Full` also checks
    /// every checksum and every graph link.
    pub fn open(dir: &Path, verify: Verify) -> Result<Self, FormatError> {
        let manifest = Manifest::read(dir)?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = manifest.count as usize;
        let dim = manifest.dim as usize;
        let h = &manifest.hnsw;
        let layout = LinkLayout::of(h);
        layout
            .check_degree_bound()
            .map_err(|problem| FormatError::file(dir.join(names::MANIFEST), problem))?;
        if let Some(shard) = &manifest.shard {
            shard
                .spec()
                .map_err(|problem| FormatError::file(dir.join(names::MANIFEST), problem))?;
        }
        let open_u32 = |file: &str, expect: usize| -> Result<ArrayFile, FormatError> {
            let f = ArrayFile::open::<u32>(&dir.join(file), verify)?;
            expect_len(&f, expect)?;
            Ok(f)
        };
        let vectors = ArrayFile::open::<f32>(&dir.join(names::VECTORS), verify)?;
        expect_len(&vectors, n * dim)?;
        let level0 = open_u32(names::LEVEL0, layout.level0_len(n))?;
        let upper = open_u32(names::UPPER, layout.upper_len(h.upper_blocks as usize))?;
        let upper_start = open_u32(names::UPPER_START, n)?;
        let ids = StringTable::open(dir, names::IDS, n, verify)?;
        let creator_of = open_u32(names::CREATOR_OF, n)?;
        let popularity = ArrayFile::open::<f32>(&dir.join(names::POPULARITY), verify)?;
        expect_len(&popularity, n)?;
        let c = manifest.creators as usize;
        let creators = StringTable::open(dir, names::CREATORS, c, verify)?;
        let creator_item_offsets =
            ArrayFile::open::<u64>(&dir.join(names::CREATOR_ITEM_OFFSETS), verify)?;
        expect_len(&creator_item_offsets, c + 1)?;
        let creator_items = ArrayFile::open::<u32>(&dir.join(names::CREATOR_ITEMS), verify)?;
        let creator_popularity =
            ArrayFile::open::<f32>(&dir.join(names::CREATOR_POPULARITY), verify)?;
        expect_len(&creator_popularity, c)?;
        let quant = match manifest.quantization.as_deref() {
            None => None,
            Some("int8") => {
                let codes = ArrayFile::open::<i8>(&dir.join(names::VECTORS_I8), verify)?;
                expect_len(&codes, n * dim)?;
                let scale = ArrayFile::open::<f32>(&dir.join(names::QUANT_SCALE), verify)?;
                expect_len(&scale, dim)?;
                let offset = ArrayFile::open::<f32>(&dir.join(names::QUANT_OFFSET), verify)?;
                expect_len(&offset, dim)?;
                let sqnorms = ArrayFile::open::<f32>(&dir.join(names::SQNORMS), verify)?;
                expect_len(&sqnorms, n)?;
                Some(QuantFiles {
                    codes,
                    scale,
                    offset,
                    sqnorms,
                })
            }
            Some(other) => {
                return Err(FormatError::file(
                    dir.join(names::MANIFEST),
                    format!("unknown quantization {other:?}"),
                ))
            }
        };
        if h.entry_point as usize >= n || h.max_level > 64 {
            return Err(FormatError::file(
                dir.join(names::MANIFEST),
                "entry point or max level out of range",
            ));
        }
        if h.max_level > 0 && upper_start.as_slice::<u32>()[h.entry_point as usize] == NONE_U32 {
            return Err(FormatError::file(
                dir.join(names::UPPER_START),
                "entry point has no upper-level links",
            ));
        }
        let this = Self {
            name,
            dir: dir.to_path_buf(),
            dist: DistanceFn::new(manifest.metric),
            manifest,
            vectors,
            level0,
            upper,
            upper_start,
            ids,
            creator_of,
            popularity,
            creators,
            creator_item_offsets,
            creator_items,
            creator_popularity,
            quant,
        };
        this.check_manifest_checksums()?;
        if verify == Verify::Full {
            this.check_graph()?;
        }
        Ok(this)
    }

    /// The manifest lists each file's checksum; a file swapped in from another build is refused.
    fn check_manifest_checksums(&self) -> Result<(), FormatError> {
        for f in self.files() {
            let file_name = f
                .path()
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let entry = self.manifest.files.get(&file_name).ok_or_else(|| {
                FormatError::file(
                    self.dir.join(names::MANIFEST),
                    format!("does not list {file_name}"),
                )
            })?;
            if entry.xxh3 != format!("{:016x}", f.checksum())
                || entry.bytes != f.mapped_bytes() as u64
            {
                return Err(FormatError::file(
                    f.path(),
                    "does not match the checksum or size recorded in manifest.json (mixed builds?)",
                ));
            }
        }
        Ok(())
    }

    /// Every array file of the collection.
    pub fn files(&self) -> Vec<&ArrayFile> {
        let mut v = vec![
            &self.vectors,
            &self.level0,
            &self.upper,
            &self.upper_start,
            &self.creator_of,
            &self.popularity,
            &self.creator_item_offsets,
            &self.creator_items,
            &self.creator_popularity,
        ];
        if let Some(q) = &self.quant {
            v.extend([&q.codes, &q.scale, &q.offset, &q.sqnorms]);
        }
        v.extend(self.ids.files());
        v.extend(self.creators.files());
        v
    }

    /// Checks that every link points at an existing node and every upper block exists.
    /// (Search also bounds-checks links, so a lazily opened damaged graph cannot crash it.)
    pub fn check_graph(&self) -> Result<(), FormatError> {
        let n = self.len() as u32;
        let h = &self.manifest.hnsw;
        let layout = LinkLayout::of(h);
        let check = |f: &ArrayFile, level: u32| -> Result<(), FormatError> {
            let degree = layout.degree(level);
            let blocks = f.as_slice::<u32>().chunks_exact(layout.stride(level));
            for (b, block) in blocks.enumerate() {
                if block[0] as usize > degree
                    || block[1..=block[0] as usize].iter().any(|&l| l >= n)
                {
                    return Err(FormatError::file(
                        f.path(),
                        format!("block {b} has a bad link count or a link past the last node"),
                    ));
                }
            }
            Ok(())
        };
        check(&self.level0, 0)?;
        check(&self.upper, 1)?;
        let blocks = h.upper_blocks;
        for (row, &s) in self.upper_start.as_slice::<u32>().iter().enumerate() {
            if s != NONE_U32 && s as u64 >= blocks {
                return Err(FormatError::file(
                    self.upper_start.path(),
                    format!("node {row} points past the last upper block"),
                ));
            }
        }
        Ok(())
    }

    /// Checksums every file (reading every page).
    pub fn verify(&self) -> Result<(), FormatError> {
        self.files().iter().try_for_each(|f| f.verify_checksum())
    }

    /// Bytes mapped for all its files.
    pub fn mapped_bytes(&self) -> u64 {
        self.files().iter().map(|f| f.mapped_bytes() as u64).sum()
    }

    /// The graph, walking 8-bit codes when the collection has them.
    pub fn graph(&self) -> Graph<'_> {
        self.graph_with(true)
    }

    /// The graph; `quantized = false` walks the exact f32 vectors even when codes exist.
    pub fn graph_with(&self, quantized: bool) -> Graph<'_> {
        let h = &self.manifest.hnsw;
        let quant = self
            .quant
            .as_ref()
            .filter(|_| quantized)
            .map(|q| Quantized {
                codes: q.codes.as_slice(),
                scale: q.scale.as_slice(),
                offset: q.offset.as_slice(),
                sqnorms: q.sqnorms.as_slice(),
                metric: self.manifest.metric,
            });
        Graph {
            vectors: self.vectors.as_slice(),
            dim: self.manifest.dim as usize,
            level0: self.level0.as_slice(),
            level0_degree: h.level0_degree as usize,
            upper: self.upper.as_slice(),
            upper_degree: h.upper_degree as usize,
            upper_start: self.upper_start.as_slice(),
            entry_point: h.entry_point,
            max_level: h.max_level,
            dist: self.dist,
            quant,
        }
    }

    /// The metric's exact f32 distance.
    pub fn dist(&self) -> &DistanceFn {
        &self.dist
    }
    /// Items (rows).
    pub fn len(&self) -> usize {
        self.manifest.count as usize
    }
    /// True when it holds no item (never, for an opened collection).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.manifest.dim as usize
    }

    /// The row of the item with ID `id`.
    pub fn row_of(&self, id: &str) -> Option<u32> {
        self.ids.find(id)
    }
    /// The ID of `row` (checked at open, so never a damaged ""); "" past the last row.
    pub fn id(&self, row: u32) -> &str {
        self.ids.get(row)
    }
    /// The stored vector of `row` (unit length under cosine); panics past the last row.
    pub fn vector(&self, row: u32) -> &[f32] {
        let dim = self.dim();
        let start = row as usize * dim;
        &self.vectors.as_slice::<f32>()[start..start + dim]
    }
    /// The creator index of `row`, if it has one.
    pub fn creator_index(&self, row: u32) -> Option<u32> {
        let c = *self.creator_of.as_slice::<u32>().get(row as usize)?;
        (c != NONE_U32 && (c as usize) < self.creators.len()).then_some(c)
    }
    /// The creator name of `row`, if it has one.
    pub fn creator(&self, row: u32) -> Option<&str> {
        self.creator_index(row).map(|c| self.creators.get(c))
    }
    /// Starts loading what an answer reads of each of `rows` (ID, creator, popularity). A
    /// result list's rows are scattered over the files: prefetched together, their cache
    /// misses overlap instead of following one another (measured: the answer's metadata
    /// reads were 4.4 % of a server's CPU under single `similar` queries). Each pass starts
    /// the loads the previous pass's make addressable: row → ID offsets and creator index →
    /// ID bytes and creator-name offsets → creator-name bytes (without the last two, the
    /// creator names' misses were 2.6 % of a server's CPU under one stream of `similar`).
    pub fn prefetch_rows(&self, rows: impl Iterator<Item = u32> + Clone) {
        use crate::search::prefetch_range;
        for r in rows.clone() {
            self.ids.prefetch_offsets(r);
            prefetch_range(self.creator_of.as_slice::<u32>(), r as usize, 1);
            prefetch_range(self.popularity.as_slice::<f32>(), r as usize, 1);
        }
        for r in rows.clone() {
            self.ids.prefetch_bytes(r);
            if let Some(c) = self.creator_index(r) {
                self.creators.prefetch_offsets(c);
            }
        }
        for r in rows {
            if let Some(c) = self.creator_index(r) {
                self.creators.prefetch_bytes(c);
            }
        }
    }

    /// The popularity of `row`, if known.
    pub fn popularity(&self, row: u32) -> Option<f32> {
        let p = *self.popularity.as_slice::<f32>().get(row as usize)?;
        (!p.is_nan()).then_some(p)
    }
    /// Popularity of creator `c` (sum over its items), if known.
    pub fn creator_popularity(&self, c: u32) -> Option<f32> {
        let p = *self.creator_popularity.as_slice::<f32>().get(c as usize)?;
        (!p.is_nan()).then_some(p)
    }
    /// Distinct creators.
    pub fn creator_count(&self) -> usize {
        self.creators.len()
    }
    /// Rows of the creator with index `c`.
    pub fn creator_items(&self, c: u32) -> &[u32] {
        let offs = self.creator_item_offsets.as_slice::<u64>();
        let items = self.creator_items.as_slice::<u32>();
        match (offs.get(c as usize), offs.get(c as usize + 1)) {
            (Some(&a), Some(&b)) => items.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Pages the vectors and graph in ahead of the first queries.
    pub fn warm(&self) {
        for f in self.files() {
            f.advise_willneed();
        }
    }
}

/// A few stored items searched for themselves: each must come back at rank 0, or something at
/// least as close (a duplicate, or under `dot` a longer vector). Catches a graph that passes
/// its checksums but cannot find its own items.
///
/// An approximate graph may miss a single item at the serving beam (seen once: one of the 8
/// probes of a 500k-row shard of the synthetic 1M × 128 set, int8 walk at ef 128, while the
/// graph's recall@10 is 0.97), so a probe that misses is asked again with the exact f32 walk
/// and a beam of 1,024 before the collection is refused; a broken graph misses either way.
pub fn sanity_check(c: &Collection) -> Result<(), String> {
    const PROBES: usize = 8;
    let n = c.len();
    let k = n.min(10);
    let finds = |row: u32, quantized: bool, ef: usize| {
        let v = c.vector(row);
        let self_dist = c.dist().distance(v, v);
        let mut out = Vec::new();
        let g = c.graph_with(quantized);
        crate::search::with_scratch(|s| g.search(v, k, ef.max(k), |_| true, false, s, &mut out));
        let tolerance = 1e-4 * self_dist.abs().max(1.0);
        let ok = out
            .first()
            .is_some_and(|h| h.row == row || h.dist <= self_dist + tolerance);
        (ok, out.first().copied(), self_dist)
    };
    for i in 0..PROBES.min(n) {
        let row = ((i * n) / PROBES.min(n)) as u32;
        let (ok, first, self_dist) = finds(row, true, 128);
        if !ok && !finds(row, false, 1024).0 {
            let found = first
                .map(|h| format!("{:?} at distance {}", c.id(h.row), h.dist))
                .unwrap_or_else(|| "nothing".into());
            return Err(format!(
                "{}: sanity query for item {:?} found {found} but the item itself is at \
                 distance {self_dist}: the graph does not find its own items",
                c.dir.join(names::LEVEL0).display(),
                c.id(row)
            ));
        }
    }
    Ok(())
}

fn expect_len(f: &ArrayFile, expect: usize) -> Result<(), FormatError> {
    if f.len() != expect {
        return Err(FormatError::file(
            f.path(),
            format!(
                "holds {} elements but the manifest implies {expect}",
                f.len()
            ),
        ));
    }
    Ok(())
}
