//! The failures a caller may want to tell apart (retry later, alert, refuse). Everything
//! else is an `anyhow::Error` with context; these ride inside it (`downcast_ref`).

/// A failure of the store or of what it holds, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one earshot can open.
    #[error("invalid store URL {url:?}: {problem} (accepted: s3://BUCKET[/PREFIX] with credentials, region and endpoint from the AWS_* environment variables, or file:///ABSOLUTE/PATH)")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The store accepted a write that a conditional header should have refused.
    #[error("the store {store} does not honour conditional writes ({problem}): earshot refuses to publish to or activate in it, because two publishers could overwrite each other's CURRENT (Garage 2.5 is one such store; use S3, MinIO, s3s-fs or a file:// store)")]
    NoConditionalWrites {
        /// The store's URL.
        store: String,
        /// Which probe it failed.
        problem: String,
    },
    /// An object holds other bytes than the version's COMPLETE record says (a store that
    /// lies, a damaged upload, or a manifest of another shard).
    #[error("{object}: {problem}")]
    Corrupt {
        /// The object at fault (`URL/NAME/V/...`).
        object: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The version cannot be made CURRENT (absent or incomplete).
    #[error("{0}")]
    NotReady(String),
    /// The cache directory lacks room for a version.
    #[error("not enough disk space in {dir}: {name} {version} needs {need} more bytes, {free} are free (free space, lower --keep, or use a larger disk)")]
    DiskFull {
        /// The cache directory.
        dir: String,
        /// The collection.
        name: String,
        /// Its version.
        version: String,
        /// Bytes still to download.
        need: u64,
        /// Bytes available to this user.
        free: u64,
    },
}
