//! Writes between builds, end to end: two replicas serve a published version from a real S3
//! server (s3s-fs); upserts and deletes sent to one are acknowledged once in the store's
//! write log and show up in (or vanish from) the answers of both; a replica started later
//! applies the log before it says ready; bad writes are refused whole, naming the item.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use earshot_testkit::S3Server;
use serde_json::{json, Value};

const DIM: usize = 16;

fn publish_tracks(s3: &S3Server, dir: &Path) -> Catalogue {
    let cat = catalogue(3, 2_000, DIM, 8, 20, 1000, 1000);
    let (npy, csv) = cat.write(dir, "tracks");
    let out = dir.join("built").join("tracks");
    earshot(build_args(&npy, Some(&csv), "cosine", &out)).assert_ok();
    publish_s3(s3, &out, "v1");
    cat
}

fn replica(s3: &S3Server, cache: &Path) -> Server {
    serve_s3(s3, cache, &["--log-poll-ms", "100"])
}

fn ready(s: &Server) -> bool {
    s.get("/readyz").status == 200
}

fn send(s: &Server, method: &str, body: &Value) -> Resp {
    http(
        method,
        &s.url("/admin/tracks/items"),
        &[("content-type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
}

/// IDs of the `k` nearest to `v`.
fn search(s: &Server, v: &[f32], k: usize, extra: Value) -> Vec<String> {
    let mut body = json!({"collection": "tracks", "vector": v, "k": k});
    if let Value::Object(m) = extra {
        body.as_object_mut().unwrap().extend(m);
    }
    let r = s.post_json("/v1/search", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

fn metric(s: &Server, name: &str) -> f64 {
    s.get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn writes_reach_every_replica_and_takedowns_vanish() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cat = publish_tracks(&s3, dir.path());
    let a = replica(&s3, &dir.path().join("cache-a"));
    let b = replica(&s3, &dir.path().join("cache-b"));
    eventually("both ready", Duration::from_secs(60), || {
        (ready(&a) && ready(&b)).then_some(())
    });

    // A new item, placed exactly where an existing one is: a search there finds it.
    let target = cat.row(7).to_vec();
    let r = send(
        &a,
        "POST",
        &json!({"items": [{"id": "new-1", "vector": target, "creator": "brand-new", "popularity": 2.0}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seq = r.json()["seq"].as_u64().unwrap();
    assert_eq!(seq, 1);
    let acked = Instant::now();
    for s in [&a, &b] {
        eventually("the upsert is searchable", Duration::from_secs(10), || {
            search(s, &target, 2, json!({}))
                .contains(&"new-1".to_string())
                .then_some(())
        });
        let item = s.get("/v1/tracks/new-1");
        assert_eq!(item.status, 200, "{}", item.body);
        assert_eq!(item.json()["creator"], "brand-new");
        // The new creator is a filter like any other.
        let only = search(
            s,
            &target,
            5,
            json!({"filter": {"creators": ["brand-new"]}}),
        );
        assert_eq!(only, ["new-1"]);
    }
    eprintln!(
        "upsert visible on both replicas {:?} after the ack",
        acked.elapsed()
    );

    // A takedown: the item nearest to its own vector disappears from every answer.
    let gone = cat.ids[11].clone();
    let its = cat.row(11).to_vec();
    assert_eq!(search(&b, &its, 1, json!({}))[0], gone);
    let r = send(&b, "DELETE", &json!({"ids": [gone, "never-existed"]}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["seq"], 2);
    for s in [&a, &b] {
        eventually("the takedown is applied", Duration::from_secs(10), || {
            (!search(s, &its, 50, json!({})).contains(&gone)).then_some(())
        });
        assert_eq!(s.get(&format!("/v1/tracks/{gone}")).status, 404);
        let sim = s.get(&format!("/v1/tracks/{}/similar?k=50", cat.ids[12]));
        assert_eq!(sim.status, 200);
        assert!(!sim.body.contains(&format!("\"{gone}\"")), "{}", sim.body);
    }

    // An update moves an existing item: it is found at its new place, once.
    let moved = cat.ids[20].clone();
    let r = send(
        &a,
        "POST",
        &json!({"items": [{"id": moved, "vector": cat.row(30)}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("the update is applied", Duration::from_secs(10), || {
        let ids = search(&b, cat.row(30), 3, json!({}));
        (ids.iter().filter(|i| **i == moved).count() == 1).then_some(())
    });
    assert!(metric(&b, "earshot_log_applied_segment{collection=\"tracks\"}") >= 3.0);
    assert_eq!(
        metric(&b, "earshot_delta_tombstones{collection=\"tracks\"}"),
        2.0
    );

    // A replica started now applies the log before it says ready.
    let c = replica(&s3, &dir.path().join("cache-c"));
    eventually("the late replica is ready", Duration::from_secs(60), || {
        ready(&c).then_some(())
    });
    assert!(search(&c, &target, 2, json!({})).contains(&"new-1".to_string()));
    assert!(!search(&c, &its, 50, json!({})).contains(&gone));

    // Bad writes are refused whole and change nothing.
    let bad = |body: Value, status: u16, code: &str, words: &str| {
        let r = send(&a, "POST", &body);
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{}", r.body);
        assert!(r.body.contains(words), "{}", r.body);
    };
    let ok = json!({"id": "fine", "vector": vec![0.5f32; DIM]});
    bad(
        json!({"items": [ok, {"id": "short", "vector": [1.0, 2.0]}]}),
        422,
        "dimension_mismatch",
        "items[1]",
    );
    bad(
        json!({"items": [{"id": "z", "vector": vec![0.0f32; DIM]}]}),
        422,
        "invalid_vector",
        "zero",
    );
    bad(
        json!({"items": [{"id": "big", "vector": vec![1e39f64; DIM]}]}),
        422,
        "invalid_vector",
        "finite",
    );
    bad(
        json!({"items": [ok, ok]}),
        400,
        "invalid_write_batch",
        "twice",
    );
    bad(
        json!({"items": []}),
        400,
        "invalid_write_batch",
        "1 to 1000",
    );
    bad(
        json!({"items": [{"id": "", "vector": vec![0.5f32; DIM]}]}),
        422,
        "invalid_item",
        "empty",
    );
    bad(
        json!({"items": [{"id": "p", "vector": vec![0.5f32; DIM], "popularity": -1}]}),
        422,
        "invalid_item",
        "popularity",
    );
    let r = http(
        "POST",
        &a.url("/admin/nope/items"),
        &[("content-type", "application/json")],
        Some(json!({"items": [ok]}).to_string().into_bytes()),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        a.get("/v1/tracks/fine").status,
        404,
        "a refused batch wrote nothing"
    );
    // Nothing refused reached the log.
    assert_eq!(
        metric(&a, "earshot_log_head_segment{collection=\"tracks\"}"),
        3.0
    );

    // Eight clients writing at once to one server: every write acknowledged at the first
    // attempt, each with a number of its own, the numbers without a gap.
    let mut seqs: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let a = &a;
                scope.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let v = vec![0.25f32 + t as f32; DIM];
                            let body = json!({"items": [{"id": format!("c{t}-{i}"), "vector": v}]});
                            let r = send(a, "POST", &body);
                            assert_eq!(r.status, 200, "{}", r.body);
                            r.json()["seq"].as_u64().unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (4..84).collect::<Vec<u64>>());
    eventually(
        "every concurrent write applied",
        Duration::from_secs(10),
        || (b.get("/v1/tracks/c7-9").status == 200).then_some(()),
    );
}

#[test]
fn a_server_without_a_store_refuses_writes_and_an_unreachable_store_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(5, 300, DIM, 4, 10, 1000, 1000);
    let (npy, csv) = cat.write(dir.path(), "tracks");
    let root = dir.path().join("idx");
    earshot(build_args(&npy, Some(&csv), "cosine", &root.join("tracks"))).assert_ok();
    let plain = Server::start(&root, &[]);
    let r = send(
        &plain,
        "POST",
        &json!({"items": [{"id": "x", "vector": vec![0.5f32; DIM]}]}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "writes_disabled");

    let mut s3 = S3Server::start();
    let cat = publish_tracks(&s3, dir.path());
    let a = replica(&s3, &dir.path().join("cache"));
    eventually("ready", Duration::from_secs(60), || ready(&a).then_some(()));
    s3.stop();
    let r = send(
        &a,
        "POST",
        &json!({"items": [{"id": "x", "vector": cat.row(0)}]}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "log_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Queries go on while the store is down.
    assert_eq!(search(&a, cat.row(0), 1, json!({}))[0], cat.ids[0]);
    s3.restart().unwrap();
    let r = send(
        &a,
        "POST",
        &json!({"items": [{"id": "x", "vector": cat.row(0)}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["seq"], 1, "the refused write took no number");
}

#[test]
fn a_large_delta_is_indexed_and_a_compacted_version_replaces_it() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cat = publish_tracks(&s3, dir.path());
    let a = replica(&s3, &dir.path().join("cache"));
    eventually("ready", Duration::from_secs(60), || ready(&a).then_some(()));

    // 600 new items, linked into the version's graph by the replica.
    let mut rng = Rng::new(77);
    let new: Vec<(String, Vec<f32>)> = (0..600)
        .map(|i| (format!("fresh-{i}"), normalized(&rng.gauss_vec(DIM, 1.0))))
        .collect();
    let items: Vec<Value> = new
        .iter()
        .map(|(id, v)| json!({"id": id, "vector": v, "creator": "newcomer", "popularity": 1.0}))
        .collect();
    let r = send(&a, "POST", &json!({ "items": items }));
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("the delta is indexed", Duration::from_secs(60), || {
        (metric(&a, "earshot_delta_indexed_items{collection=\"tracks\"}") == 600.0).then_some(())
    });
    assert_eq!(
        metric(&a, "earshot_delta_items{collection=\"tracks\"}"),
        600.0
    );

    // Recall@10 over catalogue + delta against an exact scan of both.
    let mut all: Vec<(String, Vec<f32>)> = (0..cat.len())
        .map(|i| (cat.ids[i].clone(), normalized(cat.row(i))))
        .collect();
    all.extend(new.iter().cloned());
    let (mut found, mut total) = (0, 0);
    for q in 0..60 {
        let v = if q % 2 == 0 {
            new[q * 7].1.clone()
        } else {
            normalized(&rng.gauss_vec(DIM, 1.0))
        };
        let mut exact: Vec<(f64, &str)> = all
            .iter()
            .map(|(id, w)| (-dot64(&v, w), id.as_str()))
            .collect();
        exact.sort_by(|x, y| x.0.total_cmp(&y.0));
        let got = search(&a, &v, 10, json!({"ef": 64}));
        if q % 2 == 0 {
            assert_eq!(got[0], new[q * 7].0, "an upserted item is its own nearest");
        }
        total += 10;
        found += exact[..10]
            .iter()
            .filter(|(_, id)| got.iter().any(|g| g == id))
            .count();
    }
    let recall = found as f64 / total as f64;
    eprintln!("recall@10 over catalogue + indexed delta: {recall:.3}");
    assert!(recall >= 0.95, "recall@10 {recall}");

    // Compaction folds the log into v2; the replica swaps to it and drops its delta.
    let v2 = dir.path().join("v2").join("tracks");
    earshot_env(
        [
            OsString::from("build"),
            "--base".into(),
            dir.path().join("built").join("tracks").into(),
            "--apply-log".into(),
            format!("{}/tracks", s3.url("fleet")).into(),
            "--out".into(),
            v2.clone().into(),
        ],
        &s3.env(),
    )
    .assert_ok();
    // 300 more after the compaction read the log: v2 does not fold them in, so the replica
    // carries them over, linked into v2's graph before v2 serves.
    let later: Vec<(String, Vec<f32>)> = (0..300)
        .map(|i| (format!("later-{i}"), normalized(&rng.gauss_vec(DIM, 1.0))))
        .collect();
    let items: Vec<Value> = later
        .iter()
        .map(|(id, v)| json!({"id": id, "vector": v}))
        .collect();
    let r = send(&a, "POST", &json!({ "items": items }));
    assert_eq!(r.status, 200, "{}", r.body);
    publish_s3(&s3, &v2, "v2");
    eventually("v2 answers", Duration::from_secs(60), || {
        let r = a.post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": new[3].1, "k": 1}),
        );
        (r.header("x-earshot-version") == Some("v2")).then_some(())
    });
    assert_eq!(
        metric(&a, "earshot_delta_items{collection=\"tracks\"}"),
        300.0
    );
    assert_eq!(
        metric(&a, "earshot_delta_indexed_items{collection=\"tracks\"}"),
        300.0,
        "the carried-over items are linked into v2's graph before it serves"
    );
    assert_eq!(search(&a, &new[3].1, 1, json!({}))[0], new[3].0);
    for (id, v) in later.iter().step_by(37) {
        assert_eq!(&search(&a, v, 1, json!({"ef": 32}))[0], id);
    }
    // A write after the swap lands on top of v2.
    let r = send(&a, "DELETE", &json!({"ids": [new[3].0]}));
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("deleted on top of v2", Duration::from_secs(10), || {
        (search(&a, &new[3].1, 1, json!({}))[0] != new[3].0).then_some(())
    });
}

#[test]
fn writes_through_the_router_reach_the_owner_shard() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(9, 1_500, DIM, 6, 20, 1000, 1000);
    let (npy, csv) = cat.write(dir.path(), "tracks");
    for i in 0..2 {
        let out = dir.path().join(format!("s{i}")).join("tracks");
        let mut args = build_args(&npy, Some(&csv), "cosine", &out);
        args.extend(["--shard".into(), format!("{i}/2").into()]);
        earshot(args).assert_ok();
        publish_s3(&s3, &out, "v1");
    }
    let shards: Vec<Server> = (0..2)
        .map(|i| {
            let cache = dir.path().join(format!("cache{i}"));
            let shard = format!("{i}/2");
            serve_s3(&s3, &cache, &["--shard", &shard, "--log-poll-ms", "100"])
        })
        .collect();
    eventually("shards ready", Duration::from_secs(60), || {
        shards.iter().all(ready).then_some(())
    });
    let topo = dir.path().join("topology.toml");
    std::fs::write(
        &topo,
        format!(
            "[collections.tracks]\nshards = [[\"http://{}\"], [\"http://{}\"]]\n",
            shards[0].addr, shards[1].addr
        ),
    )
    .unwrap();
    let router = Server::start_route(&topo, &["--health-interval", "0.3"]);
    eventually("router ready", Duration::from_secs(30), || {
        ready(&router).then_some(())
    });

    // Ten new items through the router: each lands on the shard that owns it, and the router
    // finds every one.
    let mut rng = Rng::new(5);
    let new: Vec<(String, Vec<f32>)> = (0..10)
        .map(|i| {
            (
                format!("via-router-{i}"),
                normalized(&rng.gauss_vec(DIM, 1.0)),
            )
        })
        .collect();
    let items: Vec<Value> = new
        .iter()
        .map(|(id, v)| json!({"id": id, "vector": v, "creator": "routed"}))
        .collect();
    let r = send(&router, "POST", &json!({ "items": items }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["count"], 10);
    for (id, v) in &new {
        let owner = earshot_core::shard::shard_of(id, 2) as usize;
        eventually("the owner shard has it", Duration::from_secs(10), || {
            (shards[owner].get(&format!("/v1/tracks/{id}")).status == 200).then_some(())
        });
        assert_eq!(
            shards[1 - owner].get(&format!("/v1/tracks/{id}")).status,
            404
        );
        assert_eq!(search(&router, v, 1, json!({}))[0], *id);
    }
    // A takedown through the router hides the item on its shard.
    let r = send(&router, "DELETE", &json!({"ids": [new[0].0]}));
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("gone through the router", Duration::from_secs(10), || {
        (search(&router, &new[0].1, 1, json!({}))[0] != new[0].0).then_some(())
    });
    // The shards' own validation answers through the router.
    let r = send(
        &router,
        "POST",
        &json!({"items": [{"id": "x", "vector": [1.0]}]}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "dimension_mismatch");
    let r = send(
        &router,
        "POST",
        &json!({"items": [{"id": "x", "vector": vec![0.5f32; DIM]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        "POST",
        &router.url("/admin/nope/items"),
        &[("content-type", "application/json")],
        Some(b"{\"items\": []}".to_vec()),
    );
    assert_eq!(r.status, 404, "{}", r.body);
}
