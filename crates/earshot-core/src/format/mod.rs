//! The on-disk index format. `docs/format.md` is its one description; keep them in step.
//!
//! A collection is a directory: `manifest.json` plus one array file per array
//! (see [`array_file`]). Every array is little-endian and read in place from mmap.

pub mod array_file;
pub mod log;
pub mod manifest;
pub mod strings;

use std::path::PathBuf;

pub use array_file::{ArrayFile, Verify};
pub use manifest::Manifest;

/// A file of an index that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// `path` cannot be used because of `problem`.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it, for a person to read.
        problem: String,
    },
}

impl FormatError {
    /// A [`FormatError::File`].
    pub fn file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// File names inside a collection directory (docs/format.md describes each file).
pub mod names {
    /// What the collection is and which files make it up.
    pub const MANIFEST: &str = "manifest.json";
    /// f32 vectors, row-major.
    pub const VECTORS: &str = "vectors.bin";
    /// Level-0 link blocks.
    pub const LEVEL0: &str = "graph_level0.bin";
    /// Upper-level link blocks.
    pub const UPPER: &str = "graph_upper.bin";
    /// Each node's first upper block.
    pub const UPPER_START: &str = "graph_upper_start.bin";
    /// Stem of the item ID string table.
    pub const IDS: &str = "ids";
    /// Each item's creator index.
    pub const CREATOR_OF: &str = "item_creator.bin";
    /// Each item's popularity.
    pub const POPULARITY: &str = "item_popularity.bin";
    /// Stem of the creator name string table.
    pub const CREATORS: &str = "creators";
    /// Where each creator's rows start in [`CREATOR_ITEMS`].
    pub const CREATOR_ITEM_OFFSETS: &str = "creator_items_offsets.bin";
    /// Rows grouped by creator.
    pub const CREATOR_ITEMS: &str = "creator_items.bin";
    /// Each creator's summed popularity.
    pub const CREATOR_POPULARITY: &str = "creator_popularity.bin";
    /// 8-bit codes of the vectors.
    pub const VECTORS_I8: &str = "vectors_i8.bin";
    /// Per-dimension scale of the codes.
    pub const QUANT_SCALE: &str = "quant_scale.bin";
    /// Per-dimension offset of the codes.
    pub const QUANT_OFFSET: &str = "quant_offset.bin";
    /// Exact squared norm of each vector.
    pub const SQNORMS: &str = "vector_sqnorms.bin";
}

/// Marks "no value" in u32 columns (no creator, no upper layers).
pub const NONE_U32: u32 = u32::MAX;
