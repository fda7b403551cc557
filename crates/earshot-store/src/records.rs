//! The two JSON records earshot writes into a store besides the collection's own files.

use std::collections::BTreeMap;

use earshot_core::shard::ShardInfo;
use serde::{Deserialize, Serialize};

/// `NAME/CURRENT`: the version replicas serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Current {
    /// The version directory under `NAME/`.
    pub version: String,
    /// The number of shards of a sharded version (`NAME/V/shard-I-of-N/`), or `None`.
    pub shards: Option<u32>,
    /// RFC 3339, UTC.
    pub published_at: String,
    /// `host/pid` of the process that moved CURRENT.
    pub publisher: String,
}

/// `NAME/V/COMPLETE` (or `NAME/V/shard-I-of-N/COMPLETE`): written last, after every object
/// of the version (or shard) is uploaded. A version without it is not complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Complete {
    /// The collection's name.
    pub collection: String,
    /// The version.
    pub version: String,
    /// The manifest's `shard` field, for one shard of a sharded version.
    #[serde(default)]
    pub shard: Option<ShardInfo>,
    /// Every object beside COMPLETE (`manifest.json` and each array file): its size and the
    /// hex xxh3-64 of the whole object, header included.
    pub files: BTreeMap<String, ObjectEntry>,
    /// The manifest's own per-file checksums (xxh3-64 of each array file's payload), as
    /// `manifest.json` lists them.
    pub manifest_xxh3: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    pub completed_at: String,
    /// `host/pid` of the publisher.
    pub publisher: String,
}

/// One object of a version as COMPLETE records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Size in bytes.
    pub bytes: u64,
    /// Hex xxh3-64 (16 digits) of the whole object.
    pub xxh3: String,
}

impl Complete {
    /// Total bytes of the version's objects.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }
}

/// `host/pid`, for the records' `publisher` fields.
pub(crate) fn publisher() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// Now as RFC 3339 (UTC, seconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Hex xxh3-64 as the manifest writes it.
pub(crate) fn hex(h: u64) -> String {
    format!("{h:016x}")
}
