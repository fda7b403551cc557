//! `file://` stores: object_store's `LocalFileSystem`, plus the compare-and-swap it lacks.
//!
//! `LocalFileSystem` creates objects atomically and exclusively (`PutMode::Create`: a hard
//! link that fails when the name exists) but refuses `PutMode::Update`. Here an update takes
//! an exclusive `flock` on `ROOT/.earshot-cas.lock`, compares the object's ETag (inode, size
//! and mtime) with the expected one and renames the new object over it, so every earshot on
//! the machine (or on a file system with working locks) sees one order of updates.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A `LocalFileSystem` whose `PutMode::Update` works (see the module docs).
#[derive(Debug)]
pub(crate) struct LocalCas {
    inner: LocalFileSystem,
    lock: PathBuf,
    root: PathBuf,
}

impl LocalCas {
    pub(crate) fn new(root: &Path) -> anyhow::Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| anyhow::anyhow!("cannot open the file store {}: {e}", root.display()))?;
        Ok(Self {
            inner: inner.with_automatic_cleanup(true).with_fsync(true),
            lock: root.join(".earshot-cas.lock"),
            root: root.to_path_buf(),
        })
    }
}

impl fmt::Display for LocalCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file://{}", self.root.display())
    }
}

/// An exclusive `flock`, released when dropped (the file is closed).
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn exclusive(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: `flock` on a descriptor we own and keep open for the call.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Self(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    }
}

#[async_trait]
impl ObjectStore for LocalCas {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let PutMode::Update(expected) = &opts.mode else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let expected = expected.e_tag.clone();
        let lock = self.lock.clone();
        let _guard = tokio::task::spawn_blocking(move || FileLock::exclusive(&lock))
            .await?
            .map_err(generic)?;
        let precondition = |why: String| object_store::Error::Precondition {
            path: location.to_string(),
            source: why.into(),
        };
        match self.inner.head(location).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(precondition("the object does not exist".into()))
            }
            Err(e) => return Err(e),
            Ok(meta) if expected.is_some() && meta.e_tag != expected => {
                return Err(precondition(format!(
                    "ETag {:?} does not match {:?}",
                    meta.e_tag, expected
                )))
            }
            Ok(_) => {}
        }
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            ..opts
        };
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<ObjPath>>,
    ) -> BoxStream<'static, Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjPath, to: &ObjPath, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
