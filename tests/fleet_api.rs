//! The server side of `earshot route`'s contract, on real servers and sockets: item lookups
//! (`GET /v1/{collection}/{id}`, `POST /v1/{collection}/items`), the `x-earshot-version`
//! answer header and version pinning across a swap, pool mode of `/v1/search`, and the
//! `shard` of a sharded collection in `/v1/collections`.
//!
//! Store mode's readiness (an empty index root, expected collections) is tested in
//! `crates/earshot-server/src/state.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Fixture: `tracks` (cosine, creators and popularity) behind one server

static FIXTURE: OnceLock<Tracks> = OnceLock::new();

fn fx() -> &'static Tracks {
    FIXTURE.get_or_init(|| Tracks::serve(catalogue(11, 600, 8, 4, 40, 10, 7)))
}

fn version_of(s: &Server, collection: &str) -> String {
    let v = s.get("/v1/collections").ok_json();
    v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == collection)
        .unwrap_or_else(|| panic!("no {collection} in {v}"))["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn post_with(s: &Server, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    http(
        "POST",
        &s.url(path),
        &h,
        Some(body.to_string().into_bytes()),
    )
}

// ---------------------------------------------------------------------------------------
// Item lookups

#[test]
fn item_lookup_returns_metadata_and_the_stored_vector() {
    let f = fx();
    let s = &f.server;
    let version = version_of(s, "tracks");
    // Row 0 has a creator and a popularity; row 9 has no creator (every 10th).
    for row in [0usize, 9, 3] {
        let id = &f.cat.ids[row];
        let r = s.get(&format!("/v1/tracks/{}", encode_segment(id)));
        let v = r.ok_json();
        assert_eq!(
            r.header("x-earshot-version"),
            Some(version.as_str()),
            "{r:?}"
        );
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "creator",
                "creator_popularity",
                "id",
                "popularity",
                "vector"
            ]
        );
        assert_eq!(v["id"], id.as_str());
        // Cosine: the stored vector is the input normalised.
        let got = floats(&v["vector"]);
        let want = normalized(f.cat.row(row));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "row {row}: {got:?} vs {want:?}");
        }
        let creator = &f.cat.creators[row];
        if creator.is_empty() {
            assert!(
                v["creator"].is_null() && v["creator_popularity"].is_null(),
                "{v}"
            );
        } else {
            assert_eq!(v["creator"], creator.as_str());
            assert!(v["creator_popularity"].as_f64().is_some(), "{v}");
        }
        match f.cat.popularity[row] {
            Some(p) => assert_eq!(v["popularity"].as_f64(), Some(p as f64)),
            None => assert!(v["popularity"].is_null(), "{v}"),
        }
    }
    // The vector a shard returns searches back to the item itself.
    let id = &f.cat.ids[5];
    let item = s.get(&format!("/v1/tracks/{id}")).ok_json();
    let found = s
        .post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": item["vector"], "k": 1}),
        )
        .ok_json();
    assert_eq!(results(&found)[0]["id"], id.as_str());
    assert!((results(&found)[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5);
}

#[test]
fn item_lookup_errors() {
    let s = &fx().server;
    let r = s.get("/v1/tracks/no-such-id");
    r.assert_error(404, "unknown_id");
    // An error about an existing collection still names the version that answered.
    assert!(r.header("x-earshot-version").is_some(), "{r:?}");
    let r = s.get("/v1/nope/trk-00001");
    r.assert_error(404, "unknown_collection");
    assert_eq!(r.header("x-earshot-version"), None);
    s.get("/v1/..bad/trk-00001")
        .assert_error(400, "invalid_collection");
    // `items` is the batch route: an item of that ID is reached percent-encoded.
    s.get("/v1/tracks/items")
        .assert_error(405, "method_not_allowed");
    s.get("/v1/tracks/%69tems").assert_error(404, "unknown_id");
}

#[test]
fn items_lookup_lists_found_and_missing_in_request_order() {
    let f = fx();
    let s = &f.server;
    let ids = [
        f.cat.ids[4].as_str(),
        "missing-1",
        f.cat.ids[2].as_str(),
        f.cat.ids[4].as_str(),
        "missing-2",
    ];
    let r = s.post_json("/v1/tracks/items", &json!({ "ids": ids }));
    let v = r.ok_json();
    assert_eq!(
        r.header("x-earshot-version"),
        Some(version_of(s, "tracks").as_str())
    );
    let got: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0], ids[2], ids[3]]);
    assert_eq!(v["missing"], json!(["missing-1", "missing-2"]));
    // Each item is exactly what the single lookup answers.
    let one = s.get(&format!("/v1/tracks/{}", ids[2])).ok_json();
    assert_eq!(v["items"][1], one);

    let all: Vec<&str> = f.cat.ids.iter().map(String::as_str).collect();
    let r = s.post_json("/v1/tracks/items", &json!({ "ids": all }));
    assert_eq!(r.ok_json()["items"].as_array().unwrap().len(), f.cat.len());
}

#[test]
fn items_lookup_errors() {
    let s = &fx().server;
    s.post_json("/v1/tracks/items", &json!({"ids": []}))
        .assert_error(400, "invalid_ids");
    let many: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    let m = s
        .post_json("/v1/tracks/items", &json!({ "ids": many }))
        .assert_error(400, "invalid_ids");
    assert!(m.contains("1000") || m.contains("1,000"), "{m}");
    s.post_json("/v1/nope/items", &json!({"ids": ["a"]}))
        .assert_error(404, "unknown_collection");
    s.post_json("/v1/tracks/items", &json!({"ids": ["a"], "k": 3}))
        .assert_error(422, "invalid_request");
    s.post_json("/v1/tracks/items", &json!({"ids": "a"}))
        .assert_error(422, "invalid_request");
    http(
        "POST",
        &s.url("/v1/tracks/items"),
        &[("content-type", "application/json")],
        Some(b"{\"ids\": [".to_vec()),
    )
    .assert_error(400, "malformed_json");
    http(
        "POST",
        &s.url("/v1/tracks/items"),
        &[],
        Some(b"{\"ids\": [\"a\"]}".to_vec()),
    )
    .assert_error(415, "unsupported_media_type");
}

#[test]
fn the_other_query_routes_still_answer_beside_the_item_routes() {
    let f = fx();
    let s = &f.server;
    let id = &f.cat.ids[1];
    let version = version_of(s, "tracks");
    let answers = [
        s.get(&format!("/v1/tracks/{id}/similar?k=3")),
        s.post_json(&format!("/v1/tracks/{id}/similar"), &json!({"k": 3})),
        s.post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": id}], "k": 3}),
        ),
        s.post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": f.cat.row(1), "k": 3}),
        ),
    ];
    for r in &answers {
        assert_eq!(check_results(&r.ok_json()).len(), 3, "{r:?}");
        assert_eq!(
            r.header("x-earshot-version"),
            Some(version.as_str()),
            "{r:?}"
        );
    }
    let b = s
        .post_json(
            "/v1/batch",
            &json!({"queries": [{"type": "similar", "collection": "tracks", "id": id, "k": 2}]}),
        )
        .ok_json();
    assert_eq!(b["responses"][0]["results"].as_array().unwrap().len(), 2);
    let c = s.get("/v1/collections").ok_json();
    let tracks = &c["collections"][0];
    assert_eq!(tracks["name"], "tracks");
    assert!(tracks.get("shard").is_none(), "{tracks}");
    assert_eq!(tracks["retained"], json!([]));
}

// ---------------------------------------------------------------------------------------
// Pool mode

#[test]
fn pool_mode_adds_creator_popularity_and_refuses_list_shaping() {
    let f = fx();
    let s = &f.server;
    let query = json!({"collection": "tracks", "vector": f.cat.row(7), "k": 20});
    let plain = s.post_json("/v1/search", &query).ok_json();
    for r in results(&plain) {
        assert!(r.get("creator_popularity").is_none(), "{r}");
    }
    let mut pooled = query.clone();
    pooled["pool"] = json!(true);
    let pool = s.post_json("/v1/search", &pooled).ok_json();
    // Same results, each with its creator's popularity (null without a creator).
    let ids = |v: &Value| -> Vec<String> {
        results(v)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&plain), ids(&pool));
    let mut without_creator = 0;
    for r in results(&pool) {
        let item = s
            .get(&format!("/v1/tracks/{}", r["id"].as_str().unwrap()))
            .ok_json();
        assert_eq!(r["creator_popularity"], item["creator_popularity"], "{r}");
        without_creator += r["creator"].is_null() as usize;
    }
    assert!(without_creator < 20);
    // Filters and exclusions still apply in pool mode.
    let first = ids(&pool)[0].clone();
    let mut excluding = pooled.clone();
    excluding["exclude"] = json!([first]);
    excluding["filter"] = json!({"min_popularity": 10.0});
    let v = s.post_json("/v1/search", &excluding).ok_json();
    for r in results(&v) {
        assert_ne!(r["id"], first.as_str());
        assert!(r["popularity"].as_f64().unwrap() >= 10.0, "{r}");
        assert!(r.get("creator_popularity").is_some(), "{r}");
    }
    // The router applies these on the merged pool.
    for extra in [
        json!({"max_per_creator": 1}),
        json!({"emerging": {"max_popularity": 100.0}}),
    ] {
        let mut body = pooled.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let m = s
            .post_json("/v1/search", &body)
            .assert_error(400, "invalid_request");
        assert!(m.contains("merged pool"), "{m}");
    }
    // In a batch too.
    let b = s
        .post_json(
            "/v1/batch",
            &json!({"queries": [{"type": "search", "collection": "tracks", "vector": f.cat.row(7), "k": 3, "pool": true}]}),
        )
        .ok_json();
    assert!(b["responses"][0]["results"][0]
        .get("creator_popularity")
        .is_some());
}

#[test]
fn pool_mode_similar_returns_the_item_with_the_owner_shards_pool() {
    let f = fx();
    let s = &f.server;
    let id = f.cat.ids[11].clone();
    let path = format!("/v1/tracks/{id}/similar");
    let plain = s.post_json(&path, &json!({"k": 15})).ok_json();
    assert!(plain.get("item").is_none(), "{plain}");
    let pool = s
        .post_json(
            &path,
            &json!({"k": 15, "pool": true, "exclude_same_creator": true}),
        )
        .ok_json();
    // The item as `GET /v1/{collection}/{id}` returns it, vector bit for bit.
    let item = s.get(&format!("/v1/tracks/{id}")).ok_json();
    assert_eq!(pool["item"], item);
    let creator = item["creator"].clone();
    assert!(!creator.is_null());
    for r in results(&pool) {
        assert!(r.get("creator_popularity").is_some(), "{r}");
        assert_ne!(r["id"], id.as_str());
        assert_ne!(
            r["creator"], creator,
            "exclude_same_creator holds in pool mode"
        );
    }
    let unshaped = s
        .post_json(&path, &json!({"k": 15, "pool": true}))
        .ok_json();
    let scores = |v: &Value| -> Vec<f64> {
        results(v)
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(scores(&plain), scores(&unshaped));
    let m = s
        .post_json(&path, &json!({"k": 15, "pool": true, "max_per_creator": 1}))
        .assert_error(400, "invalid_request");
    assert!(m.contains("merged pool"), "{m}");
}

// ---------------------------------------------------------------------------------------
// Version pinning across a swap

fn build_version(dir: &Path, root: &Path, seed: u64) -> String {
    let cat = catalogue(seed, 300, 8, 4, 30, 10, 7);
    let name = format!("tracks-{seed}");
    let (npy, csv) = cat.write(dir, &name);
    let link = root.join("tracks");
    let mut args = build_args(&npy, Some(&csv), "cosine", &link);
    args.push("--versioned".into());
    earshot(&args).assert_ok();
    earshot_core::layout::active_version(&link).expect("an active version")
}

#[test]
fn pinned_requests_answer_from_the_retained_version_after_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("indexes");
    let v1 = build_version(dir.path(), &root, 1);
    let s = Server::start(&root, &[]);
    let item = |pin: Option<&str>| -> Resp {
        let headers: Vec<(&str, &str)> =
            pin.map(|p| ("x-earshot-version", p)).into_iter().collect();
        http("GET", &s.url("/v1/tracks/trk-00001"), &headers, None)
    };
    let r = item(None);
    assert_eq!(r.header("x-earshot-version"), Some(v1.as_str()));
    let vector_v1 = r.ok_json()["vector"].clone();
    assert_eq!(item(Some(&v1)).ok_json()["vector"], vector_v1);
    let m = item(Some("no-such-version")).assert_error(409, "version_unavailable");
    assert!(
        m.contains(&v1),
        "the message lists the loaded versions: {m}"
    );

    // A new version with other vectors goes live.
    let v2 = build_version(dir.path(), &root, 2);
    assert_ne!(v1, v2);
    s.post_json("/admin/reload", &json!({})).ok_json();
    let r = item(None);
    assert_eq!(r.header("x-earshot-version"), Some(v2.as_str()));
    let vector_v2 = r.ok_json()["vector"].clone();
    assert_ne!(vector_v1, vector_v2);
    // Pinned to v1 (still retained): answered from v1, and says so.
    let r = item(Some(&v1));
    assert_eq!(r.header("x-earshot-version"), Some(v1.as_str()));
    assert_eq!(r.ok_json()["vector"], vector_v1);
    let r = item(Some(&v2));
    assert_eq!(r.ok_json()["vector"], vector_v2);
    // Every query kind honours the pin.
    let pinned = [("x-earshot-version", v1.as_str())];
    let search = json!({"collection": "tracks", "vector": vector_v1, "k": 1});
    let r = post_with(&s, "/v1/search", &pinned, &search);
    assert_eq!(r.header("x-earshot-version"), Some(v1.as_str()));
    assert_eq!(results(&r.ok_json())[0]["id"], "trk-00001");
    let r = post_with(&s, "/v1/search", &[], &search);
    assert_eq!(r.header("x-earshot-version"), Some(v2.as_str()));
    let r = post_with(
        &s,
        "/v1/tracks/items",
        &pinned,
        &json!({"ids": ["trk-00001"]}),
    );
    assert_eq!(r.ok_json()["items"][0]["vector"], vector_v1);
    let r = http(
        "GET",
        &s.url("/v1/tracks/trk-00001/similar?k=2"),
        &pinned,
        None,
    );
    assert_eq!(r.header("x-earshot-version"), Some(v1.as_str()));
    r.ok_json();
    let r = post_with(
        &s,
        "/v1/taste/tracks",
        &pinned,
        &json!({"history": [{"id": "trk-00001"}], "k": 2}),
    );
    assert_eq!(r.header("x-earshot-version"), Some(v1.as_str()));
    r.ok_json();
    // /v1/collections lists what a pin can still use.
    let c = s.get("/v1/collections").ok_json();
    assert_eq!(c["collections"][0]["version"], v2.as_str());
    assert_eq!(c["collections"][0]["retained"], json!([v1]));
    // An unknown pin lists both.
    let m = item(Some("v0")).assert_error(409, "version_unavailable");
    assert!(m.contains(&v1) && m.contains(&v2), "{m}");
}

// ---------------------------------------------------------------------------------------
// Shards

#[test]
fn a_shard_says_which_it_is_and_holds_only_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(5, 400, 8, 4, 30, 10, 7);
    let (npy, csv) = cat.write(dir.path(), "tracks");
    let root = dir.path().join("indexes");
    let mut args = build_args(&npy, Some(&csv), "cosine", &root.join("tracks"));
    args.extend(["--shard".into(), "1/2".into()]);
    earshot(&args).assert_ok();
    let s = Server::start(&root, &[]);
    let c = s.get("/v1/collections").ok_json();
    let tracks = &c["collections"][0];
    assert_eq!(
        tracks["shard"],
        json!({"index": 1, "count": 2, "hash": "xxh3-64"})
    );
    let owned: Vec<&String> = cat
        .ids
        .iter()
        .filter(|id| earshot_core::shard::shard_of(id, 2) == 1)
        .collect();
    assert_eq!(tracks["count"], owned.len());
    let all: Vec<&str> = cat.ids.iter().map(String::as_str).collect();
    let v = s
        .post_json("/v1/tracks/items", &json!({ "ids": all }))
        .ok_json();
    assert_eq!(v["items"].as_array().unwrap().len(), owned.len());
    assert_eq!(
        v["missing"].as_array().unwrap().len(),
        cat.len() - owned.len()
    );
}
