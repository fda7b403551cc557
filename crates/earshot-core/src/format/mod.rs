//! The on-disk index format. `docs/format.md` is its one description; keep them in step.
//!
//! A collection is a directory: `manifest.json` plus one array file per array
//! (see [`array_file`]). Every array is little-endian and read in place from mmap.

pub mod array_file;
pub mod manifest;
pub mod strings;

use std::path::PathBuf;

pub use array_file::{ArrayFile, Verify};
pub use manifest::Manifest;

/// A file of an index that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
}

impl FormatError {
    pub fn file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// File names inside a collection directory.
pub mod names {
    pub const MANIFEST: &str = "manifest.json";
    pub const VECTORS: &str = "vectors.bin";
    pub const LEVEL0: &str = "graph_level0.bin";
    pub const UPPER: &str = "graph_upper.bin";
    pub const UPPER_START: &str = "graph_upper_start.bin";
    pub const IDS: &str = "ids";
    pub const CREATOR_OF: &str = "item_creator.bin";
    pub const POPULARITY: &str = "item_popularity.bin";
    pub const CREATORS: &str = "creators";
    pub const CREATOR_ITEM_OFFSETS: &str = "creator_items_offsets.bin";
    pub const CREATOR_ITEMS: &str = "creator_items.bin";
    pub const CREATOR_POPULARITY: &str = "creator_popularity.bin";
    pub const VECTORS_I8: &str = "vectors_i8.bin";
    pub const QUANT_SCALE: &str = "quant_scale.bin";
    pub const QUANT_OFFSET: &str = "quant_offset.bin";
    pub const SQNORMS: &str = "vector_sqnorms.bin";
}

/// Marks "no value" in u32 columns (no creator, no upper layers).
pub const NONE_U32: u32 = u32::MAX;
