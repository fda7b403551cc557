//! earshot-core: everything needed to read and search a built collection, and nothing that
//! serves, builds or parses command lines.
//!
//! - [`format`](mod@format): the on-disk format (array files, manifest, strings);
//!   docs/format.md is its spec.
//! - [`layout`]: where collections and their versions live under an index root.
//! - [`collection`]: one collection mapped in place, checked on open.
//! - [`shard`]: the stable hash that assigns an item to a shard.
//! - [`search`]: the graph layout and the one HNSW beam search (queries and the builder).
//! - [`distance`], [`quant`], [`metric`]: f32 distances, 8-bit codes, metrics; the SIMD
//!   kernels under both are picked once per process in the private `simd` module.

#![warn(missing_docs)]

pub mod collection;
pub mod delta;
pub mod distance;
pub mod format;
pub mod layout;
pub mod metric;
pub mod quant;
pub mod search;
pub mod shard;
mod simd;
