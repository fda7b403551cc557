//! Compaction end to end, with the real binary and real stores: `earshot build --base DIR
//! --apply-log URL/NAME` folds a collection's write log (segments appended with
//! `earshot_store::Log`) into the next full version; missing and bad segments are refused by
//! name; `earshot publish` of a compacted version prunes the log through what the previous
//! CURRENT includes, and `earshot activate --store` refuses a version the log no longer
//! covers (over a real S3 server, s3s-fs).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::*;
use earshot_core::collection::Collection;
use earshot_core::format::log::{segment_name, LogItem, Ops};
use earshot_core::format::Verify;
use earshot_store::{Log, Store};
use earshot_testkit::S3Server;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Builds a 300 × 8 cosine catalogue (with creators and popularity) into `out`.
fn build_base(dir: &Path, out: &Path) {
    let cat = catalogue(5, 300, 8, 4, 10, 7, 1000);
    let (npy, csv) = cat.write(dir, "tracks");
    earshot(build_args(&npy, Some(&csv), "cosine", out)).assert_ok();
}

/// A vector as a writer sends it: not unit length.
fn raw(seed: u64) -> Vec<f32> {
    Rng::new(seed).gauss_vec(8, 3.0)
}

fn unit(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    assert!(earshot_core::distance::normalize(&mut v));
    v
}

fn item(id: &str, vector: Vec<f32>, creator: Option<&str>, popularity: Option<f32>) -> LogItem {
    LogItem {
        id: id.into(),
        vector,
        creator: creator.map(str::to_string),
        popularity,
    }
}

fn upsert(items: Vec<LogItem>) -> Ops {
    Ops::Upsert { dim: 8, items }
}

fn delete(ids: &[&str]) -> Ops {
    Ops::Delete {
        ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn append(rt: &tokio::runtime::Runtime, log: &Log, ops: Ops) -> u64 {
    rt.block_on(log.append(ops, 0)).unwrap()
}

fn compact_args(base: &Path, log_url: &str, out: &Path) -> Vec<OsString> {
    vec![
        "build".into(),
        "--base".into(),
        base.into(),
        "--apply-log".into(),
        log_url.into(),
        "--out".into(),
        out.into(),
        "--threads".into(),
        "1".into(),
    ]
}

/// The first hit of a search for `v` in `c`.
fn nearest(c: &Collection, v: &[f32]) -> String {
    let mut out = Vec::new();
    let g = c.graph();
    earshot_core::search::with_scratch(|s| g.search(v, 5, 64, |_| true, false, s, &mut out));
    c.id(out[0].row).to_string()
}

#[test]
fn compaction_folds_the_log_into_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("a/tracks");
    build_base(dir.path(), &base);
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let log_url = format!("file://{}/tracks", store_dir.display());
    let rt = runtime();
    let log = Store::open(&format!("file://{}", store_dir.display()))
        .unwrap()
        .log("tracks")
        .unwrap();
    let new: Vec<LogItem> = (0..5)
        .map(|i| {
            item(
                &format!("new-{i}"),
                raw(100 + i),
                Some("artist-new"),
                Some(i as f32 + 1.0),
            )
        })
        .collect();
    assert_eq!(append(&rt, &log, upsert(new)), 1);
    let moved = raw(200);
    let update = item("trk-00003", moved.clone(), Some("artist-moved"), Some(42.0));
    append(&rt, &log, upsert(vec![update]));
    append(
        &rt,
        &log,
        delete(&["trk-00000", "trk-00001", "no-such-id", "new-4"]),
    );
    append(&rt, &log, upsert(vec![item("new-5", raw(300), None, None)]));

    let out = dir.path().join("b/tracks");
    earshot(compact_args(&base, &log_url, &out)).assert_ok();
    let before = Collection::open(&base, Verify::Full).unwrap();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.manifest.log_through, Some(4), "the head at start");
    assert_eq!(c.len(), 300 + 5 - 2 - 1 + 1);
    for gone in ["trk-00000", "trk-00001", "new-4"] {
        assert!(c.row_of(gone).is_none(), "{gone} was deleted");
    }
    // Upserted vectors are prepared as `build` prepares input: normalised under cosine.
    for i in 0..4 {
        let row = c.row_of(&format!("new-{i}")).expect("upserted");
        assert_eq!(c.vector(row), unit(&raw(100 + i)).as_slice());
        assert_eq!(c.creator(row), Some("artist-new"));
        assert_eq!(c.popularity(row), Some(i as f32 + 1.0));
    }
    let n5 = c.row_of("new-5").unwrap();
    assert_eq!((c.creator(n5), c.popularity(n5)), (None, None));
    let r3 = c.row_of("trk-00003").unwrap();
    assert_eq!(c.vector(r3), unit(&moved).as_slice());
    assert_eq!(
        (c.creator(r3), c.popularity(r3)),
        (Some("artist-moved"), Some(42.0))
    );
    // The base's rows keep their (already unit) vectors, creators and popularity.
    for row in 0..before.len() as u32 {
        let id = before.id(row);
        let Some(r) = c.row_of(id).filter(|_| id != "trk-00003") else {
            continue;
        };
        for (a, b) in before.vector(row).iter().zip(c.vector(r)) {
            assert!((a - b).abs() <= 1e-6, "{id}: {a} vs {b}");
        }
        assert_eq!(before.creator(row), c.creator(r), "{id}");
        assert_eq!(before.popularity(row), c.popularity(r), "{id}");
    }
    // Creator popularity is recomputed over the resulting rows.
    for ci in 0..c.creator_count() as u32 {
        let known: Vec<f32> = c
            .creator_items(ci)
            .iter()
            .filter_map(|&r| c.popularity(r))
            .collect();
        let expect = (!known.is_empty()).then(|| known.iter().sum::<f32>());
        assert_eq!(c.creator_popularity(ci), expect, "{}", c.creators.get(ci));
    }
    let ci = c.creators.find("artist-new").unwrap();
    assert_eq!(c.creator_popularity(ci), Some(10.0));
    // The graph finds what the log added.
    for id in ["new-2", "trk-00003", "new-5"] {
        let row = c.row_of(id).unwrap();
        assert_eq!(nearest(&c, c.vector(row)), id);
    }

    // --through stops early: the deletes of segment 3 are not applied.
    let partial = dir.path().join("c/tracks");
    let mut args = compact_args(&base, &log_url, &partial);
    args.extend(["--through".into(), "2".into()]);
    earshot(args).assert_ok();
    let p = Collection::open(&partial, Verify::Full).unwrap();
    assert_eq!(p.manifest.log_through, Some(2));
    assert_eq!(p.len(), 305);
    assert!(p.row_of("trk-00000").is_some() && p.row_of("new-4").is_some());
    assert!(p.row_of("new-5").is_none());

    // An empty range (the base already includes the head) still builds: the same rows.
    let again = dir.path().join("d/tracks");
    earshot(compact_args(&out, &log_url, &again)).assert_ok();
    let d = Collection::open(&again, Verify::Full).unwrap();
    assert_eq!((d.len(), d.manifest.log_through), (c.len(), Some(4)));
    // A later segment is applied on top of a compacted base; a base past --through is refused.
    append(&rt, &log, delete(&["new-0"]));
    let next = dir.path().join("e/tracks");
    earshot(compact_args(&out, &log_url, &next)).assert_ok();
    let e = Collection::open(&next, Verify::Full).unwrap();
    assert_eq!((e.len(), e.manifest.log_through), (c.len() - 1, Some(5)));
    let mut args = compact_args(&out, &log_url, &dir.path().join("f/tracks"));
    args.extend(["--through".into(), "3".into()]);
    earshot(args).assert_fails_with(&["already includes the write log through 4"]);
    // A base's metric is kept; contradicting it is refused.
    let mut args = compact_args(&base, &log_url, &dir.path().join("g/tracks"));
    args.extend(["--metric".into(), "l2".into()]);
    earshot(args).assert_fails_with(&["keeps the base's metric"]);
}

/// A shard base keeps the upserts whose ID it owns, and stays the same shard.
#[test]
fn a_shard_base_keeps_only_its_own_upserts() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(5, 300, 8, 4, 10, 7, 1000);
    let (npy, csv) = cat.write(dir.path(), "tracks");
    let base = dir.path().join("a/tracks");
    let mut args = build_args(&npy, Some(&csv), "cosine", &base);
    args.extend(["--shard".into(), "1/2".into()]);
    earshot(args).assert_ok();
    let before = Collection::open(&base, Verify::Full).unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store_url = format!("file://{}", store_dir.display());
    let rt = runtime();
    let log = Store::open(&store_url).unwrap().log("tracks").unwrap();
    let items: Vec<LogItem> = (0..20)
        .map(|i| item(&format!("s{i}"), raw(i), Some("artist-new"), Some(1.0)))
        .collect();
    let mine = items
        .iter()
        .filter(|it| earshot_core::shard::shard_of(&it.id, 2) == 1)
        .count();
    assert!(mine > 0 && mine < 20);
    append(&rt, &log, upsert(items));
    // A base row of this shard: its creator's catalogue-wide popularity loses its share.
    let victim = before.id(0).to_string();
    let victim_pop = before.popularity(0);
    let victim_creator = before
        .creator_index(0)
        .map(|c| before.creators.get(c).to_string());
    append(&rt, &log, delete(&[&victim]));
    let out = dir.path().join("b/tracks");
    earshot(compact_args(&base, &format!("{store_url}/tracks"), &out)).assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.manifest.shard, before.manifest.shard);
    assert_eq!(c.manifest.log_through, Some(2));
    assert_eq!(c.len(), before.len() + mine - 1);
    for row in 0..c.len() as u32 {
        assert_eq!(
            earshot_core::shard::shard_of(c.id(row), 2),
            1,
            "{}",
            c.id(row)
        );
    }
    let ci = c.creators.find("artist-new").unwrap();
    assert_eq!(c.creator_popularity(ci), Some(mine as f32));
    if let (Some(name), Some(p)) = (victim_creator, victim_pop) {
        let was = before
            .creator_popularity(before.creators.find(&name).unwrap())
            .unwrap();
        if let Some(now) = c.creators.find(&name) {
            let now = c.creator_popularity(now).unwrap();
            assert!(
                (now - (was - p)).abs() <= 1e-3 * was.abs().max(1.0),
                "{name}: {was} - {p} vs {now}"
            );
        }
    }
}

#[test]
fn missing_damaged_or_mismatched_segments_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("a/tracks");
    build_base(dir.path(), &base);
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store_url = format!("file://{}", store_dir.display());
    let rt = runtime();
    let log = Store::open(&store_url).unwrap().log("tracks").unwrap();
    append(&rt, &log, upsert(vec![item("n1", raw(1), None, None)]));
    append(&rt, &log, delete(&["trk-00005"]));
    append(&rt, &log, upsert(vec![item("n3", raw(3), None, None)]));
    let seg_dir = store_dir.join("tracks/log");
    let log_url = format!("{store_url}/tracks");
    let out = dir.path().join("b/tracks");

    // Past the head.
    let mut args = compact_args(&base, &log_url, &out);
    args.extend(["--through".into(), "9".into()]);
    earshot(args).assert_fails_with(&["has no segment 4 yet (its newest is 3)"]);
    // A gap in the middle.
    let two = seg_dir.join(segment_name(2));
    let two_bytes = std::fs::read(&two).unwrap();
    std::fs::remove_file(&two).unwrap();
    earshot(compact_args(&base, &log_url, &out)).assert_fails_with(&[
        "segment 2 of",
        "tracks/log is missing",
        "pruned or deleted",
        "writes after 0 cannot be replayed",
    ]);
    // The log's start pruned away.
    let one = seg_dir.join(segment_name(1));
    let mut one_bytes = std::fs::read(&one).unwrap();
    std::fs::remove_file(&one).unwrap();
    earshot(compact_args(&base, &log_url, &out)).assert_fails_with(&[
        "the write log from 1 was pruned",
        "starts at segment 3",
        "--from-store",
    ]);

    // Damaged bytes: the segment is named.
    *one_bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&one, &one_bytes).unwrap();
    std::fs::write(&two, &two_bytes).unwrap();
    earshot(compact_args(&base, &log_url, &out))
        .assert_fails_with(&["00000000000000000001.seg", "checksum"]);

    // Another dimension, or a zero vector under cosine: refused naming the segment.
    let other = dir.path().join("store2");
    std::fs::create_dir_all(&other).unwrap();
    let other_url = format!("file://{}", other.display());
    let log2 = Store::open(&other_url).unwrap().log("tracks").unwrap();
    let wide = Ops::Upsert {
        dim: 4,
        items: vec![item("w", vec![1.0; 4], None, None)],
    };
    append(&rt, &log2, wide);
    earshot(compact_args(&base, &format!("{other_url}/tracks"), &out)).assert_fails_with(&[
        "tracks/log/00000000000000000001.seg",
        "dimension 4",
        "dimension 8",
    ]);
    let other = dir.path().join("store3");
    std::fs::create_dir_all(&other).unwrap();
    let other_url = format!("file://{}", other.display());
    let log3 = Store::open(&other_url).unwrap().log("tracks").unwrap();
    append(
        &rt,
        &log3,
        upsert(vec![item("z", vec![0.0; 8], None, None)]),
    );
    earshot(compact_args(&base, &format!("{other_url}/tracks"), &out)).assert_fails_with(&[
        "tracks/log/00000000000000000001.seg",
        "\"z\"",
        "zero vector",
    ]);
    assert!(!out.exists(), "nothing is written by a refused compaction");
}

#[test]
fn publish_prunes_the_log_and_activate_refuses_versions_it_no_longer_covers() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Store::open_with_env(&s3.url("fleet"), &s3.env()).unwrap();
    let log = store.log("tracks").unwrap();
    let link = format!("{}/tracks", s3.url("fleet"));
    let segments = || rt.block_on(log.list()).unwrap();

    let v1 = dir.path().join("v1/tracks");
    build_base(dir.path(), &v1);
    let out = publish_s3(&s3, &v1, "20260101T000000Z");
    assert_eq!(out["current"], true, "{out}");
    assert_eq!(out["log_pruned_through"], serde_json::Value::Null, "{out}");
    for i in 0..3 {
        let id = format!("w{i}");
        append(&rt, &log, upsert(vec![item(&id, raw(i), None, None)]));
    }

    // v2 folds in 1..=3; v1 (still served until the replicas' next poll) includes none of
    // it, so nothing may be pruned yet.
    let v2 = dir.path().join("v2/tracks");
    earshot_env(compact_args(&v1, &link, &v2), &s3.env()).assert_ok();
    let out = publish_s3(&s3, &v2, "20260102T000000Z");
    assert_eq!(out["log_pruned_through"], serde_json::Value::Null, "{out}");
    assert_eq!(segments(), [1, 2, 3]);

    // v3 from the store's CURRENT (v2) folds in 4..=5; publishing it prunes through v2's 3.
    append(&rt, &log, delete(&["w0"]));
    append(&rt, &log, delete(&["trk-00009"]));
    let v3 = dir.path().join("v3/tracks");
    let mut args = compact_args(Path::new("unused"), &link, &v3);
    args.splice(1..3, ["--from-store".into(), OsString::from(&link)]);
    earshot_env(args, &s3.env()).assert_ok();
    let c = Collection::open(&v3, Verify::Full).unwrap();
    assert_eq!(c.manifest.log_through, Some(5));
    assert_eq!(c.len(), 300 + 3 - 2);
    assert!(c.row_of("w1").is_some() && c.row_of("w0").is_none());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path().join("v3"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the downloaded base is removed: {leftovers:?}"
    );
    let out = publish_s3(&s3, &v3, "20260103T000000Z");
    assert_eq!(out["log_pruned_through"], 3, "{out}");
    assert_eq!(out["log_segments_pruned"], 3, "{out}");
    assert_eq!(segments(), [4, 5]);

    // v2 still has every segment after its 3: it may be activated. v1 would need 1..=3.
    earshot_env(
        ["activate", "--store", &link, "20260102T000000Z"],
        &s3.env(),
    )
    .assert_ok();
    earshot_env(
        ["activate", "--store", &link, "20260101T000000Z"],
        &s3.env(),
    )
    .assert_fails_with(&[
        "20260101T000000Z",
        "the write log after 0 was pruned",
        "starts at segment 4",
        "build a new version with --apply-log",
    ]);
    earshot_env(
        ["activate", "--store", &link, "20260103T000000Z"],
        &s3.env(),
    )
    .assert_ok();
    let current = rt.block_on(store.current("tracks")).unwrap().unwrap();
    assert_eq!(current.version, "20260103T000000Z");
    // `log` is the log's directory, never listed as a version.
    let listed = earshot_env(["versions", "--store", &link], &s3.env());
    assert!(!listed.stdout.contains(" log"), "{}", listed.stdout);
}
