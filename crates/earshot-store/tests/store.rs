//! earshot-store against a real S3 server (s3s-fs, from earshot-testkit) and a real
//! `file://` store: publish, CURRENT, versions, fetch, roll-back, races between publishers,
//! shards, a store that lies, a store that goes down, a store that ignores conditions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use earshot_build::{build_collection, build_shard, Dataset, Settings};
use earshot_core::collection::Collection;
use earshot_core::format::Verify;
use earshot_core::layout;
use earshot_core::metric::Metric;
use earshot_core::shard::ShardSpec;
use earshot_store::{FetchOptions, PublishOptions, Store, StoreError, Syncer};
use earshot_testkit::S3Server;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

fn dataset(n: usize, seed: u64) -> Dataset {
    dataset_dim(n, 8, seed)
}

fn dataset_dim(n: usize, dim: usize, seed: u64) -> Dataset {
    let (data, _) = earshot_build::synthetic::catalogue(n, dim, 0, seed);
    data
}

fn settings() -> Settings {
    Settings {
        source: "earshot-store test".into(),
        quantize: true,
        taste_history: None,
        ..Settings::small(Metric::Cosine)
    }
}

/// A collection of `n` synthetic items built into `root/name`.
fn build(root: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let out = root.join(name);
    build_collection(dataset(n, seed), &out, &settings()).unwrap();
    out
}

fn s3(server: &S3Server, prefix: &str) -> Store {
    Store::open_with_env(&server.url(prefix), &server.env()).unwrap()
}

fn opts(version: &str) -> PublishOptions {
    PublishOptions {
        version: Some(version.into()),
        ..Default::default()
    }
}

fn syncer(store: &Store, cache: &Path) -> Syncer {
    Syncer {
        store: store.clone(),
        cache_root: cache.to_path_buf(),
        shard: None,
        keep: 2,
        max_fetch_bytes_per_sec: None,
    }
}

const V1: &str = "20250101T000001Z";
const V2: &str = "20250101T000002Z";
const V3: &str = "20250101T000003Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_and_roll_back() {
    let server = S3Server::start();
    let store = s3(&server, "fleet");
    let work = tempfile::tempdir().unwrap();
    let a = build(&work.path().join("a"), "tracks", 300, 1);
    let b = build(&work.path().join("b"), "tracks", 400, 2);

    assert_eq!(store.current("tracks").await.unwrap(), None);
    let r = store.publish(&a, &opts(V1)).await.unwrap();
    assert_eq!((r.name.as_str(), r.version.as_str()), ("tracks", V1));
    assert!(r.current && r.shard.is_none() && r.files > 5 && r.bytes > 0);
    let line = serde_json::to_value(&r).unwrap();
    for field in [
        "store", "name", "version", "shard", "files", "bytes", "seconds", "current",
    ] {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(store.current("tracks").await.unwrap().unwrap().version, V1);

    // Published versions are never rewritten.
    let e = store.publish(&a, &opts(V1)).await.unwrap_err();
    assert!(format!("{e:#}").contains("already published"), "{e:#}");

    store.publish(&b, &opts(V2)).await.unwrap();
    let versions = store.versions("tracks").await.unwrap();
    let names: Vec<_> = versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(names, [V1, V2]);
    assert!(versions.iter().all(|v| v.complete && v.shards.is_none()));
    assert!(!versions[0].current && versions[1].current);
    assert_eq!(store.collections().await.unwrap(), ["tracks"]);

    // A replica's cache follows CURRENT.
    let cache = work.path().join("cache");
    let sync = syncer(&store, &cache);
    let report = sync.sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.expected, ["tracks"]);
    assert_eq!(report.changed.len(), 1);
    assert_eq!(report.changed[0].to, V2);
    let link = cache.join("tracks");
    assert_eq!(layout::active_version(&link).as_deref(), Some(V2));
    let c = Collection::open(&link, Verify::Full).unwrap();
    assert_eq!(c.len(), 400);
    drop(c);
    let again = sync.sync_once().await;
    assert!(again.changed.is_empty() && again.errors.is_empty());

    // Roll back across the fleet: the same CAS, and the replica follows.
    let rolled = store.activate("tracks", "previous").await.unwrap();
    assert_eq!(rolled.version, V1);
    let report = sync.sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.changed[0].from.as_deref(), Some(V2));
    assert_eq!(layout::active_version(&link).as_deref(), Some(V1));
    assert_eq!(Collection::open(&link, Verify::Full).unwrap().len(), 300);

    // Absent and incomplete versions are refused.
    let e = store.activate("tracks", "nope").await.unwrap_err();
    assert!(e.downcast_ref::<StoreError>().is_some(), "{e:#}");
    assert!(format!("{e}").contains("no version \"nope\""), "{e}");
    let e = store.activate("tracks", "previous").await.unwrap_err();
    assert!(format!("{e}").contains("no complete version before"), "{e}");
    assert_eq!(store.current("tracks").await.unwrap().unwrap().version, V1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_and_resumed_ranged_fetch() {
    let server = S3Server::start();
    let store = s3(&server, "");
    let work = tempfile::tempdir().unwrap();
    // 11,000 × 128 f32: 5.6 MB of vectors, two parts of S3's smallest size (5 MiB).
    let dir = work.path().join("tracks");
    build_collection(dataset_dim(11_000, 128, 3), &dir, &settings()).unwrap();
    let big = std::fs::metadata(dir.join("vectors.bin")).unwrap().len();
    assert!(big > 5 << 20, "{big}");
    let o = PublishOptions {
        part_size: 5 << 20,
        ..opts(V1)
    };
    store.publish(&dir, &o).await.unwrap();
    let current = store.current("tracks").await.unwrap().unwrap();

    // An interrupted download: half of vectors.bin already in the partial directory.
    let cache = work.path().join("cache");
    let partial = cache
        .join(".versions/tracks")
        .join(format!(".{V1}.partial"));
    std::fs::create_dir_all(&partial).unwrap();
    let bytes = std::fs::read(dir.join("vectors.bin")).unwrap();
    std::fs::write(partial.join("vectors.bin"), &bytes[..bytes.len() / 2]).unwrap();
    let total: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let f = FetchOptions {
        range_size: 1 << 20,
        ..Default::default()
    };
    let r = store.fetch("tracks", &current, &cache, &f).await.unwrap();
    assert!(!r.cached);
    assert_eq!(r.downloaded, total - (bytes.len() / 2) as u64);
    assert!(!partial.exists());
    assert_eq!(
        std::fs::read(r.dir.join("vectors.bin")).unwrap(),
        bytes,
        "resumed file differs"
    );
    let again = store.fetch("tracks", &current, &cache, &f).await.unwrap();
    assert!(again.cached && again.downloaded == 0);

    // A capped fetch takes at least bytes ÷ rate (a lower bound: a slow machine only adds).
    let capped = work.path().join("capped");
    let rate = 4_000_000;
    let f = FetchOptions {
        range_size: 1 << 20,
        max_bytes_per_sec: Some(rate),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let r = store.fetch("tracks", &current, &capped, &f).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(r.downloaded, total);
    let floor = 0.9 * total as f64 / rate as f64;
    assert!(
        took >= floor,
        "{total} bytes at {rate} B/s in {took:.2} s (< {floor:.2})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_never_interleave() {
    let server = S3Server::start();
    let store = s3(&server, "race");
    let work = tempfile::tempdir().unwrap();
    let a = build(&work.path().join("a"), "tracks", 300, 4);
    let b = build(&work.path().join("b"), "tracks", 300, 5);
    // Two publishers, each with its own client.
    let other = s3(&server, "race");
    let (o1, o2) = (opts(V1), opts(V2));
    let (ra, rb) = tokio::join!(store.publish(&a, &o1), other.publish(&b, &o2));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let current = store.current("tracks").await.unwrap().unwrap().version;
    assert!(current == V1 || current == V2, "{current}");
    assert!(ra.current || rb.current);
    let versions = store.versions("tracks").await.unwrap();
    assert!(versions.iter().all(|v| v.complete), "{versions:?}");

    // Many concurrent roll-backs and roll-forwards: each is one CAS that retries on a lost
    // race; all succeed and CURRENT ends at one of them.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let v = if i % 2 == 0 { V1 } else { V2 };
        tasks.push(tokio::spawn(async move { s.activate("tracks", v).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let current = store.current("tracks").await.unwrap().unwrap().version;
    assert!(current == V1 || current == V2);

    // A publisher that dies mid-upload leaves a version without COMPLETE: never CURRENT.
    let c = build(&work.path().join("c"), "tracks", 300, 6);
    let failing = Store::from_object_store(
        Arc::new(Faulty {
            inner: raw_s3(&server),
            ignore_modes: false,
            fail_puts_containing: Some("graph_level0".into()),
        }),
        "race",
        "s3://earshot/race (faulty)",
    );
    let e = failing.publish(&c, &opts(V3)).await.unwrap_err();
    assert!(format!("{e:#}").contains("graph_level0"), "{e:#}");
    assert_eq!(
        store.current("tracks").await.unwrap().unwrap().version,
        current
    );
    let v3 = store
        .versions("tracks")
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.version == V3)
        .expect("V3's objects are listed");
    assert!(!v3.complete && !v3.current);
    let e = store.activate("tracks", V3).await.unwrap_err();
    assert!(format!("{e}").contains("not complete"), "{e}");
    // Publishing it again (a retry) completes it.
    let r = store.publish(&c, &opts(V3)).await.unwrap();
    assert!(r.current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_versions_move_current_after_the_last_shard() {
    let server = S3Server::start();
    let store = s3(&server, "sharded");
    let work = tempfile::tempdir().unwrap();
    let data = dataset(900, 7);
    let shard_dirs: Vec<PathBuf> = (0..3)
        .map(|i| {
            let out = work.path().join(format!("s{i}")).join("tracks");
            build_shard(
                data.clone(),
                &out,
                &settings(),
                ShardSpec { index: i, count: 3 },
            )
            .unwrap();
            out
        })
        .collect();

    // A shard needs an explicit version (all shards of a build share it).
    let e = store
        .publish(&shard_dirs[0], &PublishOptions::default())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("--version"), "{e:#}");

    // Shards 0 and 1: CURRENT waits.
    let o1 = opts(V1);
    let (r0, r1) = tokio::join!(
        store.publish(&shard_dirs[0], &o1),
        store.publish(&shard_dirs[1], &o1)
    );
    assert!(!r0.unwrap().current && !r1.unwrap().current);
    assert_eq!(store.current("tracks").await.unwrap(), None);
    let v = &store.versions("tracks").await.unwrap()[0];
    assert_eq!(
        (v.shards, v.shards_complete, v.complete),
        (Some(3), 2, false)
    );
    let e = store.activate("tracks", V1).await.unwrap_err();
    assert!(format!("{e}").contains("2 of its 3 shards"), "{e}");
    let r2 = store.publish(&shard_dirs[2], &opts(V1)).await.unwrap();
    assert!(r2.current);
    assert_eq!(r2.shard.as_deref(), Some("2/3"));
    let c = store.current("tracks").await.unwrap().unwrap();
    assert_eq!((c.version.as_str(), c.shards), (V1, Some(3)));

    // Three concurrent shard publishers of V2: whoever completes the set commits it.
    let tasks: Vec<_> = shard_dirs
        .iter()
        .cloned()
        .map(|d| {
            let s = s3(&server, "sharded");
            tokio::spawn(async move { s.publish(&d, &opts(V2)).await })
        })
        .collect();
    let mut committed = 0;
    for t in tasks {
        committed += usize::from(t.await.unwrap().unwrap().current);
    }
    assert!(committed >= 1);
    let c = store.current("tracks").await.unwrap().unwrap();
    assert_eq!((c.version.as_str(), c.shards), (V2, Some(3)));

    // A replica of shard 1 fetches shard-1-of-3; a replica of another split is refused.
    let cache = work.path().join("cache");
    let mut sync = syncer(&store, &cache);
    sync.shard = Some(ShardSpec { index: 1, count: 3 });
    let report = sync.sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let opened = Collection::open(&cache.join("tracks"), Verify::Full).unwrap();
    let info = opened.manifest.shard.clone().unwrap();
    assert_eq!((info.index, info.count), (1, 3));
    drop(opened);
    let f = FetchOptions {
        shard: Some(ShardSpec { index: 1, count: 4 }),
        ..Default::default()
    };
    let e = store
        .fetch("tracks", &c, &work.path().join("other"), &f)
        .await
        .unwrap_err();
    let msg = format!("{e}");
    assert!(msg.contains("1/4") && msg.contains("3 shards"), "{msg}");
    let e = store
        .fetch(
            "tracks",
            &c,
            &work.path().join("other"),
            &FetchOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(format!("{e}").contains("--shard I/3"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lies_is_refused_and_the_cache_kept() {
    let server = S3Server::start();
    let store = s3(&server, "lies");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let sync = syncer(&store, &cache);
    store
        .publish(&build(&work.path().join("a"), "tracks", 300, 8), &opts(V1))
        .await
        .unwrap();
    assert!(sync.sync_once().await.errors.is_empty());
    let link = cache.join("tracks");
    let v2_dir = build(&work.path().join("b"), "tracks", 300, 9);
    store.publish(&v2_dir, &opts(V2)).await.unwrap();

    let object = |f: &str| server.data_dir().join("lies/tracks").join(V2).join(f);
    let partial = cache
        .join(".versions/tracks")
        .join(format!(".{V2}.partial"));
    let expect_refused = |what: &str, needle: &str| {
        // Each lie on a fresh download (a resumed one keeps the objects it already checked).
        let _ = std::fs::remove_dir_all(&partial);
        let report = futures_executor_block(sync.sync_once());
        assert_eq!(report.errors.len(), 1, "{what}: {:?}", report.errors);
        let msg = format!("{:#}", report.errors[0].error);
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            report.errors[0]
                .error
                .downcast_ref::<StoreError>()
                .is_some(),
            "{what}: {msg}"
        );
        assert!(report.changed.is_empty());
        // Nothing activated, the cached version untouched.
        assert_eq!(layout::active_version(&link).as_deref(), Some(V1), "{what}");
        assert!(!cache.join(".versions/tracks").join(V2).exists(), "{what}");
        Collection::open(&link, Verify::Full).unwrap();
    };

    // Other bytes, same length.
    let good = std::fs::read(object("vectors.bin")).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 3;
    bad[at] ^= 0xff;
    std::fs::write(object("vectors.bin"), &bad).unwrap();
    expect_refused("flipped byte", "lies/tracks/20250101T000002Z/vectors.bin");
    std::fs::write(object("vectors.bin"), &good).unwrap();

    // A truncated object.
    let ids = std::fs::read(object("graph_level0.bin")).unwrap();
    std::fs::write(object("graph_level0.bin"), &ids[..ids.len() - 10]).unwrap();
    expect_refused("truncated", "graph_level0.bin");
    std::fs::write(object("graph_level0.bin"), &ids).unwrap();

    // A missing object.
    let up = std::fs::read(object("graph_upper_start.bin")).unwrap();
    std::fs::remove_file(object("graph_upper_start.bin")).unwrap();
    expect_refused("missing", "graph_upper_start.bin: missing from the store");
    std::fs::write(object("graph_upper_start.bin"), &up).unwrap();

    // The manifest of another collection (a consistent COMPLETE would still not match the
    // files: the manifest's list and checksums are checked against COMPLETE's).
    let m = std::fs::read(object("manifest.json")).unwrap();
    std::fs::write(
        object("manifest.json"),
        std::fs::read(work.path().join("a/tracks/manifest.json")).unwrap(),
    )
    .unwrap();
    expect_refused("another manifest", "manifest.json");
    std::fs::write(object("manifest.json"), &m).unwrap();

    // Repaired: the next poll lands it.
    let report = sync.sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(layout::active_version(&link).as_deref(), Some(V2));
}

/// Runs a future to completion from inside a multi-threaded runtime's worker.
fn futures_executor_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_down_fails_cleanly_and_recovers() {
    let mut server = S3Server::start();
    let store = s3(&server, "down");
    let work = tempfile::tempdir().unwrap();
    store
        .publish(&build(&work.path().join("a"), "tracks", 300, 10), &opts(V1))
        .await
        .unwrap();
    let cache = work.path().join("cache");
    let sync = syncer(&store, &cache);
    assert!(sync.sync_once().await.errors.is_empty());
    let v2 = build(&work.path().join("b"), "tracks", 300, 11);

    tokio::task::block_in_place(|| server.stop());
    let report = sync.sync_once().await;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].collection.is_none());
    assert!(report.expected.is_empty());
    assert!(store.publish(&v2, &opts(V2)).await.is_err());
    assert!(store.current("tracks").await.is_err());
    // The cache still serves what it had.
    assert_eq!(
        layout::active_version(&cache.join("tracks")).as_deref(),
        Some(V1)
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    store.publish(&v2, &opts(V2)).await.unwrap();
    let report = sync.sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        layout::active_version(&cache.join("tracks")).as_deref(),
        Some(V2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused() {
    let server = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = build(work.path(), "tracks", 300, 12);
    let store = Store::from_object_store(
        Arc::new(Faulty {
            inner: raw_s3(&server),
            ignore_modes: true,
            fail_puts_containing: None,
        }),
        "garage",
        "s3://garage-like",
    );
    let e = store.publish(&dir, &opts(V1)).await.unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::NoConditionalWrites { .. })
        ),
        "{e:#}"
    );
    let msg = format!("{e}");
    assert!(
        msg.contains("s3://garage-like") && msg.contains("conditional writes"),
        "{msg}"
    );
    assert!(store.activate("tracks", V1).await.is_err());
    // Nothing was uploaded.
    assert!(!server.data_dir().join("garage/tracks").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let url = format!("file://{}", work.path().join("store").display());
    let store = Store::open(&url).unwrap();
    store.check_conditional_writes().await.unwrap();
    let a = build(&work.path().join("a"), "tracks", 300, 13);
    let b = build(&work.path().join("b"), "tracks", 300, 14);
    let (o1, o2) = (opts(V1), opts(V2));
    let (ra, rb) = tokio::join!(store.publish(&a, &o1), store.publish(&b, &o2));
    assert!(ra.unwrap().current || rb.unwrap().current);
    store.activate("tracks", V1).await.unwrap();
    assert_eq!(store.current("tracks").await.unwrap().unwrap().version, V1);
    assert!(work.path().join("store/tracks/CURRENT").is_file());
    assert!(work
        .path()
        .join("store/tracks")
        .join(V2)
        .join("COMPLETE")
        .is_file());
    let cache = work.path().join("cache");
    let report = syncer(&store, &cache).sync_once().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        layout::active_version(&cache.join("tracks")).as_deref(),
        Some(V1)
    );
    let e = Store::open("ftp://x/y").unwrap_err();
    assert!(format!("{e}").contains("accepted: s3://"), "{e}");
}

// ---- a misbehaving object store -------------------------------------------------------

fn raw_s3(server: &S3Server) -> Arc<dyn ObjectStore> {
    let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(server.bucket());
    for (k, v) in server.env() {
        if let Ok(key) = k.to_ascii_lowercase().parse() {
            b = b.with_config(key, v);
        }
    }
    Arc::new(b.build().unwrap())
}

/// Wraps a store: ignores `PutMode` (a store without conditional writes) and/or fails the
/// uploads of keys containing a string (a publisher dying mid-upload).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    ignore_modes: bool,
    fail_puts_containing: Option<String>,
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    fn check(&self, location: &ObjPath) -> object_store::Result<()> {
        match &self.fail_puts_containing {
            Some(s) if location.as_ref().contains(s.as_str()) => {
                Err(object_store::Error::Generic {
                    store: "Faulty",
                    source: format!("injected failure uploading {location}").into(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        if self.ignore_modes {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
