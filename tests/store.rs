//! Versions in object storage, end to end with real processes and a real S3 server (s3s-fs
//! on loopback, from earshot-testkit): `earshot publish` → `earshot serve --store` downloads
//! and serves it → a new version is swapped in → `earshot activate --store` rolls back; the
//! store going down does not disturb serving; a sharded version becomes CURRENT only once
//! every shard is in, and each replica serves its own shard.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use earshot_testkit::S3Server;

/// A small catalogue's inputs (seed decides the vectors, so two seeds give two versions
/// with different answers).
fn inputs(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let cat = catalogue(seed, 2_000, 16, 8, 20, 1000, 1000);
    cat.write(dir, &format!("tracks{seed}"))
}

/// Builds `tracks` (optionally one shard of it) into `dir/NAME/tracks`.
fn build(dir: &Path, name: &str, seed: u64, shard: Option<&str>) -> PathBuf {
    let (npy, csv) = inputs(dir, seed);
    let out = dir.join(name).join("tracks");
    let mut args = build_args(&npy, Some(&csv), "cosine", &out);
    if let Some(s) = shard {
        args.extend(["--shard".into(), s.into()]);
    }
    earshot(args).assert_ok();
    out
}

/// The version that answered a similar-items query for `id`.
fn answering_version(s: &Server, id: &str) -> String {
    let r = http(
        "GET",
        &s.url(&format!("/v1/tracks/{}/similar?k=3", encode_segment(id))),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("x-earshot-version")
        .expect("every answer names its version")
        .to_string()
}

fn ready(s: &Server) -> bool {
    http("GET", &s.url("/readyz"), &[], None).status == 200
}

#[test]
fn publish_serve_swap_and_roll_back_over_s3() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let v1 = build(dir.path(), "b1", 1, None);
    let v2 = build(dir.path(), "b2", 2, None);

    // A replica started before anything is published is alive but not ready.
    let cache = dir.path().join("cache");
    let server = serve_s3(&s3, &cache, &[]);
    assert_eq!(http("GET", &server.url("/healthz"), &[], None).status, 200);
    let r = http("GET", &server.url("/readyz"), &[], None);
    assert_eq!(r.status, 503, "{}", r.body);

    let out = publish_s3(&s3, &v1, "20260101T000000Z");
    assert_eq!(out["current"], true, "{out}");
    assert_eq!(out["name"], "tracks");
    eventually(
        "ready after the first publish",
        Duration::from_secs(30),
        || ready(&server).then_some(()),
    );
    let id = first_id(&server);
    assert_eq!(answering_version(&server, &id), "20260101T000000Z");

    // A new version: downloaded, verified and swapped in without a restart.
    publish_s3(&s3, &v2, "20260102T000000Z");
    eventually("v2 served", Duration::from_secs(30), || {
        (answering_version(&server, &id) == "20260102T000000Z").then_some(())
    });

    // Roll back across the fleet by moving CURRENT; the cache still holds v1 (--keep 2).
    let link = format!("{}/tracks", s3.url("fleet"));
    earshot_env(
        ["activate", "--store", &link, "20260101T000000Z"],
        &s3.env(),
    )
    .assert_ok();
    eventually("rolled back to v1", Duration::from_secs(30), || {
        (answering_version(&server, &id) == "20260101T000000Z").then_some(())
    });
    let listed = earshot_env(["versions", "--store", &link], &s3.env());
    listed.assert_ok();
    let marked: Vec<&str> = listed
        .stdout
        .lines()
        .filter(|l| l.starts_with('*'))
        .collect();
    assert_eq!(marked.len(), 1, "{}", listed.stdout);
    assert!(marked[0].contains("20260101T000000Z"), "{}", listed.stdout);
    // A version every replica would refuse (its files verify, its graph cannot find its own
    // items) is refused by publish itself: nothing uploaded, CURRENT stays.
    let broken = dir.path().join("broken").join("tracks");
    copy_dir(&v2, &broken);
    break_graph(&broken);
    earshot_env(
        [
            OsString::from("publish"),
            broken.clone().into(),
            "--store".into(),
            s3.url("fleet").into(),
            "--version".into(),
            "20260105T000000Z".into(),
        ],
        &s3.env(),
    )
    .assert_fails_with(&["nothing was published", "sanity query", "graph_level0.bin"]);
    assert_eq!(answering_version(&server, &id), "20260101T000000Z");
    // An unknown version is refused and CURRENT stays.
    earshot_env(
        ["activate", "--store", &link, "19990101T000000Z"],
        &s3.env(),
    )
    .assert_fails_with(&["19990101T000000Z"]);
    assert_eq!(answering_version(&server, &id), "20260101T000000Z");

    // The store goes down: serving goes on, the failures are counted; when it is back the
    // next version lands.
    let mut s3 = s3;
    s3.stop();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(answering_version(&server, &id), "20260101T000000Z");
        assert!(
            ready(&server),
            "a replica stays ready while the store is down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = metric(&server, "earshot_store_sync_errors_total");
    assert!(
        errors > 0.0,
        "sync errors are counted while the store is down"
    );
    s3.restart().unwrap();
    publish_s3(&s3, &v2, "20260103T000000Z");
    eventually(
        "the next version after the store returns",
        Duration::from_secs(60),
        || (answering_version(&server, &id) == "20260103T000000Z").then_some(()),
    );
    assert_no_panic(&server.stderr());
}

#[test]
fn sharded_versions_become_current_when_complete() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| build(dir.path(), &format!("s{i}"), 1, Some(&format!("{i}/3"))))
        .collect();
    let link = format!("{}/tracks", s3.url("fleet"));
    // Two of three shards: uploaded, but CURRENT does not move.
    for s in &shards[..2] {
        let out = publish_s3(&s3, s, "20260101T000000Z");
        assert_eq!(out["current"], false, "{out}");
    }
    let cache0 = dir.path().join("cache0");
    let replica0 = serve_s3(&s3, &cache0, &["--shard", "0/3"]);
    std::thread::sleep(Duration::from_millis(600));
    assert!(!ready(&replica0), "no CURRENT yet: not ready");
    let listed = earshot_env(["versions", "--store", &link], &s3.env());
    assert!(!listed.stdout.contains('*'), "{}", listed.stdout);

    let out = publish_s3(&s3, &shards[2], "20260101T000000Z");
    assert_eq!(
        out["current"], true,
        "the last shard completes the set: {out}"
    );
    eventually("shard 0 ready", Duration::from_secs(30), || {
        ready(&replica0).then_some(())
    });
    // The replica serves shard 0 only: every answer is owned by shard 0.
    let body = serde_json::json!({"collection": "tracks", "vector": vec![0.1f32; 16], "k": 20});
    let r = replica0.post_json("/v1/search", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 20);
    for item in results {
        let id = item["id"].as_str().unwrap();
        assert_eq!(earshot_core::shard::shard_of(id, 3), 0, "{id}");
    }
    // A replica configured for another shard count is refused with a message naming both.
    let cache_bad = dir.path().join("cache-bad");
    let wrong = serve_s3(&s3, &cache_bad, &["--shard", "0/2"]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(!ready(&wrong));
    let log = wrong.stderr();
    assert!(
        log.contains("--shard 0/2") && log.contains("split into 3 shards"),
        "{log}"
    );
    assert_no_panic(&replica0.stderr());
}

fn first_id(s: &Server) -> String {
    let body = serde_json::json!({"collection": "tracks", "vector": vec![0.1f32; 16], "k": 1});
    let r = s.post_json("/v1/search", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["results"][0]["id"].as_str().unwrap().to_string()
}

fn metric(s: &Server, name: &str) -> f64 {
    let r = http("GET", &s.url("/metrics"), &[], None);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
