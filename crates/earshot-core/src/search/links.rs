//! The graph's link lists: where they sit in the two flat link arrays ([`LinkLayout`]) and
//! how a walk reads them ([`LinkSource`]). docs/format.md describes the same layout.
//!
//! Level 0: `n` fixed-size blocks `[count, link_0 .. link_{d0-1}]` of u32, node `v`'s first.
//! Upper levels: blocks `[count, links ..]` of `1 + d` u32; node `v`'s block for level `l ≥ 1`
//! is `upper_start[v] + l - 1` (`upper_start[v]` is `NONE_U32` for nodes only on level 0).
//! Unused slots are 0.

use std::ops::Range;

use crate::format::manifest::HnswParams;

/// The most level-0 links per node a walk follows: it gathers a node's unvisited neighbours
/// in a stack array of this size. The builder keeps m ≤ 128 (2·m ≤ 256); a collection
/// claiming more is refused at open rather than searched with links silently dropped.
pub const MAX_LEVEL0_DEGREE: usize = 256;

/// The shape of the link blocks: how many links a node keeps on level 0 and above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkLayout {
    /// Link slots per node on level 0 (2·m).
    pub level0_degree: usize,
    /// Link slots per node on each upper level (m).
    pub upper_degree: usize,
}

impl LinkLayout {
    /// hnswlib's shape for `m`: 2·m links on level 0, m on the upper levels.
    pub fn for_m(m: usize) -> Self {
        Self {
            level0_degree: 2 * m,
            upper_degree: m,
        }
    }

    /// The shape a manifest records.
    pub fn of(h: &HnswParams) -> Self {
        Self {
            level0_degree: h.level0_degree as usize,
            upper_degree: h.upper_degree as usize,
        }
    }

    /// u32s per level-0 block (the count, then the slots).
    #[inline(always)]
    pub fn level0_stride(self) -> usize {
        1 + self.level0_degree
    }

    /// u32s per upper-level block.
    #[inline(always)]
    pub fn upper_stride(self) -> usize {
        1 + self.upper_degree
    }

    /// Link slots per node on `level`.
    pub fn degree(self, level: u32) -> usize {
        if level == 0 {
            self.level0_degree
        } else {
            self.upper_degree
        }
    }

    /// u32s per block on `level`.
    pub fn stride(self, level: u32) -> usize {
        1 + self.degree(level)
    }

    /// Length of the level-0 array of `n` nodes.
    pub fn level0_len(self, n: usize) -> usize {
        n * self.level0_stride()
    }

    /// Length of an upper array of `blocks` blocks.
    pub fn upper_len(self, blocks: usize) -> usize {
        blocks * self.upper_stride()
    }

    /// Blocks in an upper array of length `len`.
    pub fn upper_blocks(self, len: usize) -> usize {
        len / self.upper_stride()
    }

    /// Where `row`'s block sits in the level-0 array.
    #[inline(always)]
    pub fn level0_block(self, row: u32) -> Range<usize> {
        let stride = self.level0_stride();
        row as usize * stride..(row as usize + 1) * stride
    }

    /// Where the level-`level` (≥ 1) block of a node whose first upper block is `first`
    /// (its `upper_start`) sits in the upper array.
    #[inline(always)]
    pub fn upper_block(self, first: u32, level: u32) -> Range<usize> {
        let stride = self.upper_stride();
        let b = first as usize + level as usize - 1;
        b * stride..(b + 1) * stride
    }

    /// Refuses a level-0 degree the walk would not follow in full.
    pub fn check_degree_bound(self) -> Result<(), String> {
        if self.level0_degree > MAX_LEVEL0_DEGREE {
            return Err(format!(
                "hnsw.level0_degree is {}, above {MAX_LEVEL0_DEGREE}, the most level-0 links per \
                 node a search follows (graphs built with --m {} or less stay within it)",
                self.level0_degree,
                MAX_LEVEL0_DEGREE / 2
            ));
        }
        Ok(())
    }
}

/// The links a block `[count, links ..]` holds. A count past the block's end (a damaged
/// file) is cut to the block, so a walk never reads a neighbour's block instead.
#[inline(always)]
pub fn block_links(block: &[u32]) -> &[u32] {
    match block.split_first() {
        Some((&count, links)) => &links[..(count as usize).min(links.len())],
        None => &[],
    }
}

/// Read access to the link lists, as the walk needs it. Two sources implement it: the served
/// graph's `&[u32]` arrays mapped from disk ([`Graph`](super::Graph)) and the builder's
/// `AtomicU32` slots, read under per-node locks. The walk is generic over it, so each source
/// gets its own compiled walk: no dynamic dispatch, no copy for the mapped graph.
pub trait LinkSource {
    /// Number of nodes. Links at or past it are skipped (a damaged file can hold any value).
    fn node_count(&self) -> usize;

    /// Calls `f` with each of `row`'s links on `level`, in order (none if it has no list
    /// there). A source that is being written to holds the node's lock meanwhile, so `f` must
    /// be quick: the walk only marks and gathers neighbours in it.
    fn for_each_link(&self, row: u32, level: u32, f: impl FnMut(u32));

    /// Starts loading `row`'s link block on `level` into cache.
    fn prefetch_links(&self, row: u32, level: u32);
}

/// A graph in the served layout, owned: a build's output, before it is written.
pub struct FlatGraph {
    /// Level-0 link blocks, one per row.
    pub level0: Vec<u32>,
    /// Link slots per level-0 block (2·m).
    pub level0_degree: usize,
    /// Upper-level link blocks.
    pub upper: Vec<u32>,
    /// Link slots per upper-level block (m).
    pub upper_degree: usize,
    /// Each row's first upper block, `NONE_U32` for rows only on level 0.
    pub upper_start: Vec<u32>,
    /// Where searches start (a node on the top level).
    pub entry_point: u32,
    /// The top level.
    pub max_level: u32,
}

impl FlatGraph {
    /// The shape of the link blocks.
    pub fn layout(&self) -> LinkLayout {
        LinkLayout {
            level0_degree: self.level0_degree,
            upper_degree: self.upper_degree,
        }
    }

    /// Rows it covers.
    pub fn len(&self) -> usize {
        self.upper_start.len()
    }

    /// Whether it covers no row.
    pub fn is_empty(&self) -> bool {
        self.upper_start.is_empty()
    }

    /// Blocks in `upper`.
    pub fn upper_blocks(&self) -> usize {
        self.layout().upper_blocks(self.upper.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::Collection;
    use crate::format::manifest::Manifest;
    use crate::format::{array_file::FORMAT_VERSION, FormatError, Verify};
    use crate::metric::Metric;

    #[test]
    fn blocks_sit_where_the_format_says() {
        let layout = LinkLayout::for_m(4);
        assert_eq!((layout.level0_degree, layout.upper_degree), (8, 4));
        assert_eq!(layout.level0_block(0), 0..9);
        assert_eq!(layout.level0_block(3), 27..36);
        assert_eq!(layout.level0_len(5), 45);
        // Node with first upper block 2: level 1 is block 2, level 3 is block 4.
        assert_eq!(layout.upper_block(2, 1), 10..15);
        assert_eq!(layout.upper_block(2, 3), 20..25);
        assert_eq!(layout.upper_len(6), 30);
        assert_eq!(layout.upper_blocks(30), 6);
        assert_eq!((layout.degree(0), layout.degree(2)), (8, 4));
    }

    #[test]
    fn a_count_past_the_block_is_cut_to_it() {
        assert_eq!(block_links(&[2, 7, 8, 0]), &[7, 8]);
        assert_eq!(block_links(&[9, 7, 8, 0]), &[7, 8, 0]);
        assert_eq!(block_links(&[]), &[] as &[u32]);
    }

    #[test]
    fn degrees_above_the_walk_bound_are_refused() {
        let at_bound = LinkLayout {
            level0_degree: MAX_LEVEL0_DEGREE,
            upper_degree: MAX_LEVEL0_DEGREE / 2,
        };
        assert!(at_bound.check_degree_bound().is_ok());
        let above = LinkLayout {
            level0_degree: MAX_LEVEL0_DEGREE + 1,
            ..at_bound
        };
        let err = above.check_degree_bound().unwrap_err();
        assert!(err.contains("257") && err.contains("256"), "{err}");
    }

    /// Open refuses the collection from its manifest alone, naming the manifest, before it
    /// reads any graph file.
    #[test]
    fn open_refuses_a_level0_degree_above_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            metric: Metric::L2,
            dim: 2,
            count: 4,
            hnsw: HnswParams {
                m: 150,
                ef_construction: 200,
                level0_degree: 300,
                upper_degree: 150,
                max_level: 0,
                entry_point: 0,
                upper_blocks: 0,
            },
            creators: 0,
            has_popularity: false,
            built_at: String::new(),
            build_seconds: 0.0,
            builder: String::new(),
            source: String::new(),
            quantization: None,
            shard: None,
            log_through: None,
            taste_history: None,
            files: Default::default(),
        };
        manifest.write(dir.path()).unwrap();
        let Err(FormatError::File { path, problem }) = Collection::open(dir.path(), Verify::Full)
        else {
            panic!("a level-0 degree of 300 was accepted");
        };
        assert!(path.ends_with("manifest.json"), "{}", path.display());
        assert!(problem.contains("level0_degree is 300"), "{problem}");
    }
}
