//! earshot-store: everything earshot knows about object storage (docs/format.md, "Object
//! storage").
//!
//! A store holds published versions of collections and, per collection, a `CURRENT` pointer
//! moved only by conditional writes:
//!
//! ```text
//! URL/NAME/CURRENT                           {"version", "shards", "published_at", "publisher"}
//! URL/NAME/V/<manifest.json + array files>   an unsharded version
//! URL/NAME/V/COMPLETE                        written last: every object's size and xxh3-64
//! URL/NAME/V/shard-I-of-N/<files> + COMPLETE one shard of a sharded version
//! ```
//!
//! - [`Store`]: open a store by URL (`s3://bucket/prefix`, `file:///path`), probe its
//!   conditional writes, [`publish`](Store::publish) a built collection, read
//!   [`current`](Store::current) and [`versions`](Store::versions),
//!   [`activate`](Store::activate) a version (roll-back), list
//!   [`collections`](Store::collections), and [`fetch`](Store::fetch) a version into a local
//!   index root (`earshot_core::layout`).
//! - [`Log`]: a collection's write log (`URL/NAME/log/SEQ.seg`): append by create-if-absent,
//!   read in order, prune what every served version includes.
//! - [`Syncer`]: one poll of a replica's cache against the store (fetch, activate, prune).
//!
//! Every operation is async (object_store runs on tokio); the CLI drives them with a runtime.

#![warn(missing_docs)]

mod error;
mod fetch;
mod local;
mod log;
mod pace;
mod publish;
mod records;
mod store;
mod sync;
mod url;

pub use error::StoreError;
pub use fetch::{FetchOptions, FetchReport};
pub use log::{Log, LOG_DIR};
pub use publish::{PublishOptions, PublishReport};
pub use records::{Complete, Current, ObjectEntry};
pub use store::{Store, VersionInfo, COMPLETE, CURRENT};
pub use sync::{SyncChange, SyncError, SyncReport, Syncer};
pub use url::split_collection_url;
