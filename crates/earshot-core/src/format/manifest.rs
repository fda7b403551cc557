//! `manifest.json`: what a collection is and which files make it up.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{array_file::FORMAT_VERSION, names, FormatError};
use crate::metric::Metric;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub metric: Metric,
    pub dim: u32,
    pub count: u64,
    pub hnsw: HnswParams,
    /// Distinct creators (0 when the input had no creator column).
    pub creators: u64,
    pub has_popularity: bool,
    /// RFC 3339, UTC.
    pub built_at: String,
    pub build_seconds: f64,
    /// `earshot <version>`.
    pub builder: String,
    /// Where the vectors came from (paths as given to the builder, or the tracks
    /// collection a derived creators collection was made from).
    pub source: String,
    /// `"int8"` when the collection carries 8-bit vectors for the graph walk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Every array file: its element count, size in bytes and xxh3-64 checksum.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HnswParams {
    pub m: u32,
    pub ef_construction: u32,
    /// Links stored per node on level 0 (2·m) and on the upper levels (m).
    pub level0_degree: u32,
    pub upper_degree: u32,
    pub max_level: u32,
    pub entry_point: u32,
    /// Blocks in `graph_upper.bin` (one per node per upper level).
    pub upper_blocks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub bytes: u64,
    /// Hex xxh3-64 of the payload (the same value as in the file's header).
    pub xxh3: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, FormatError> {
        let path = dir.join(names::MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| FormatError::file(&path, format!("cannot read: {e}")))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| FormatError::file(&path, format!("invalid manifest: {e}")))?;
        if m.format_version != FORMAT_VERSION {
            return Err(FormatError::file(
                &path,
                format!(
                    "format version {} but this earshot reads version {FORMAT_VERSION}: rebuild the index",
                    m.format_version
                ),
            ));
        }
        if m.dim == 0 || m.count == 0 || m.count > u32::MAX as u64 - 1 {
            return Err(FormatError::file(
                &path,
                "dimension and count must be positive (count < 2^32-1)",
            ));
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(names::MANIFEST);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        std::fs::write(&path, text)?;
        std::fs::File::open(&path)?.sync_all()
    }
}
