//! `manifest.json`: what a collection is and which files make it up.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{array_file::FORMAT_VERSION, names, FormatError};
use crate::metric::Metric;

/// A collection's `manifest.json` (docs/format.md lists every field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the build.
    pub format_version: u32,
    /// How the collection is searched (and whether its vectors were normalised).
    pub metric: Metric,
    /// Vector dimension.
    pub dim: u32,
    /// Items (rows).
    pub count: u64,
    /// The graph's shape.
    pub hnsw: HnswParams,
    /// Distinct creators (0 when the input had no creator column).
    pub creators: u64,
    /// Whether the input had a popularity column.
    pub has_popularity: bool,
    /// RFC 3339, UTC.
    pub built_at: String,
    /// Wall-clock time the build took.
    pub build_seconds: f64,
    /// `earshot <version>`.
    pub builder: String,
    /// Where the vectors came from (paths as given to the builder, or the tracks
    /// collection a derived creators collection was made from).
    pub source: String,
    /// `"int8"` when the collection carries 8-bit vectors for the graph walk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Set when the collection is one shard of a larger one (`build --shard I/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::ShardInfo>,
    /// The write log folded into this version: every segment up to and including this
    /// sequence number (`build --apply-log`; docs/format.md "Write log"). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_through: Option<u64>,
    /// The collection whose vectors of the same IDs are this one's taste histories when a
    /// request names none (`build --taste-history`: a two-tower pair). Absent: this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taste_history: Option<String>,
    /// Every array file: its element count, size in bytes and xxh3-64 checksum.
    pub files: BTreeMap<String, FileEntry>,
}

/// The HNSW parameters the graph was built with, and where its walk starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node on the upper levels (`--m`).
    pub m: u32,
    /// Beam width while building (`--ef-construction`).
    pub ef_construction: u32,
    /// Links stored per node on level 0 (2·m).
    pub level0_degree: u32,
    /// Links stored per node on the upper levels (m).
    pub upper_degree: u32,
    /// The highest level (0 when the graph has only level 0).
    pub max_level: u32,
    /// The row every walk starts from, on `max_level`.
    pub entry_point: u32,
    /// Blocks in `graph_upper.bin` (one per node per upper level).
    pub upper_blocks: u64,
}

/// One array file as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File size, header included.
    pub bytes: u64,
    /// Hex xxh3-64 of the payload (the same value as in the file's header).
    pub xxh3: String,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`; every refusal names the file.
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

    /// Writes `dir/manifest.json` (pretty-printed, newline-terminated) and fsyncs it.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(names::MANIFEST);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        std::fs::write(&path, text)?;
        std::fs::File::open(&path)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            metric: Metric::L2,
            dim: 8,
            count: 100,
            hnsw: HnswParams {
                m: 16,
                ef_construction: 200,
                level0_degree: 32,
                upper_degree: 16,
                max_level: 2,
                entry_point: 7,
                upper_blocks: 9,
            },
            creators: 3,
            has_popularity: true,
            built_at: "2025-01-01T00:00:00Z".into(),
            build_seconds: 0.25,
            builder: "earshot 0.1.0".into(),
            source: "tracks.npy".into(),
            quantization: Some("int8".into()),
            shard: None,
            log_through: None,
            taste_history: None,
            files: BTreeMap::from([(
                "vectors.bin".into(),
                FileEntry {
                    bytes: 3264,
                    xxh3: "0123456789abcdef".into(),
                },
            )]),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        // Without quantisation the field is left out, and reads back as None.
        let plain = Manifest {
            quantization: None,
            shard: None,
            log_through: None,
            taste_history: None,
            ..sample()
        };
        plain.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(names::MANIFEST)).unwrap();
        assert!(
            !text.contains("quantization") && text.ends_with("}\n"),
            "{text}"
        );
        assert_eq!(Manifest::read(dir.path()).unwrap(), plain);
    }

    #[test]
    fn refusals_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(names::MANIFEST);
        for (m, words) in [
            (
                Manifest {
                    format_version: 2,
                    ..sample()
                },
                "format version 2",
            ),
            (
                Manifest {
                    count: 0,
                    ..sample()
                },
                "must be positive",
            ),
        ] {
            m.write(dir.path()).unwrap();
            let e = Manifest::read(dir.path()).err().unwrap().to_string();
            assert!(e.contains("manifest.json") && e.contains(words), "{e}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen('{', "{\"extra\": 1, ", 1)).unwrap();
        let e = Manifest::read(dir.path()).err().unwrap().to_string();
        assert!(e.contains("invalid manifest") && e.contains("extra"), "{e}");
    }
}
