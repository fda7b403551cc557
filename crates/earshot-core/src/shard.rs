//! Which shard an item belongs to: the one stable hash every builder, server and router
//! agrees on (docs/format.md, "Shards").
//!
//! Shard of an ID = xxh3-64 (seed 0) of its UTF-8 bytes, modulo the shard count. It depends
//! on nothing but the ID, so a shard job can decide alone which rows it keeps, a router can
//! find an item's owner without asking anyone, and going from N to 2·N shards splits each
//! shard I into I and I + N (no item moves between unrelated shards).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of the hash, as recorded in manifests (a reader refuses any other).
pub const SHARD_HASH: &str = "xxh3-64";

/// Most shards a collection may be split into.
pub const MAX_SHARDS: u32 = 4096;

/// The shard (`0 … count-1`) that owns `id` when a collection is split into `count` shards.
#[inline]
pub fn shard_of(id: &str, count: u32) -> u32 {
    debug_assert!(count > 0);
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(count.max(1))) as u32
}

/// Shard `index` of `count` (`I/N` on command lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    /// Which shard, from 0.
    pub index: u32,
    /// How many shards the collection is split into.
    pub count: u32,
}

impl ShardSpec {
    /// Whether this shard owns `id`.
    #[inline]
    pub fn owns(&self, id: &str) -> bool {
        shard_of(id, self.count) == self.index
    }

    /// `shard-I-of-N`: the directory of this shard inside a published version.
    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// What a manifest records for this shard.
    pub fn info(&self) -> ShardInfo {
        ShardInfo {
            index: self.index,
            count: self.count,
            hash: SHARD_HASH.to_string(),
        }
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardSpec {
    type Err = String;

    /// `I/N` with `0 <= I < N <= MAX_SHARDS`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid shard {s:?}: expected I/N with 0 <= I < N <= {MAX_SHARDS} \
                 (e.g. 0/4 for the first of four shards)"
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// The `shard` field of a sharded collection's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// Which shard, from 0.
    pub index: u32,
    /// How many shards the collection is split into.
    pub count: u32,
    /// The hash that assigned rows to shards ([`SHARD_HASH`]).
    pub hash: String,
}

impl ShardInfo {
    /// The shard as a [`ShardSpec`], or why this reader cannot trust it.
    pub fn spec(&self) -> Result<ShardSpec, String> {
        if self.hash != SHARD_HASH {
            return Err(format!(
                "shard hash {:?} is not supported (this earshot knows {SHARD_HASH:?})",
                self.hash
            ));
        }
        if self.count == 0 || self.count > MAX_SHARDS || self.index >= self.count {
            return Err(format!("invalid shard {}/{}", self.index, self.count));
        }
        Ok(ShardSpec {
            index: self.index,
            count: self.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "2/4".parse::<ShardSpec>().unwrap(),
            ShardSpec { index: 2, count: 4 }
        );
        for bad in ["4/4", "0/0", "x/2", "1", "-1/2", "1/5000", ""] {
            let e = bad.parse::<ShardSpec>().unwrap_err();
            assert!(e.contains("expected I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned values: changing them re-shards every published collection. The first is
        // xxHash's own reference value for empty input (any xxh3 implementation agrees).
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"track-1"),
            10_407_349_004_567_024_562
        );
        assert_eq!(
            shard_of("track-1", 4),
            (10_407_349_004_567_024_562u64 % 4) as u32
        );
    }

    #[test]
    fn doubling_splits_each_shard() {
        for i in 0..1000 {
            let id = format!("t{i}");
            let (a, b) = (shard_of(&id, 4), shard_of(&id, 8));
            assert!(b == a || b == a + 4);
        }
    }

    #[test]
    fn every_row_has_exactly_one_owner() {
        let n = 5;
        for i in 0..500 {
            let id = format!("id-{i}");
            let owners = (0..n)
                .filter(|&s| ShardSpec { index: s, count: n }.owns(&id))
                .count();
            assert_eq!(owners, 1);
        }
    }
}
