//! `earshot route` on real processes and sockets: a synthetic catalogue built once unsharded
//! and once as 3 shards (`build --shard I/3`), 3 shards × 2 replicas of `earshot serve`, and
//! a router in front. Through the router, similar / search / taste / batch / items answer
//! like the one unsharded server (same IDs and scores; a large `ef` on small data makes the
//! walks exact), `max_per_creator` and the emerging quota hold on the merged pool, errors
//! carry the same codes; a shard without replicas is 503 `shard_unavailable`, or a partial
//! answer with `coverage` when the request allows it; killing a replica under load loses no
//! request.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SHARDS: usize = 3;
const N: usize = 3000;
const EF: usize = 400;

struct Fixture {
    dir: PathBuf,
    cat: Catalogue,
    /// Shard roots, by shard.
    shard_roots: Vec<PathBuf>,
    single: Server,
    /// replicas[shard] = its two servers.
    replicas: Vec<Vec<Server>>,
    router: Server,
    /// Creators' popularity (sum over their items), by name.
    creator_popularity: HashMap<String, f64>,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn topology(dir: &Path, name: &str, shards: &[Vec<String>]) -> PathBuf {
    topology_of(dir, name, &["tracks"], shards)
}

/// A topology where every collection of `collections` has the same shards.
fn topology_of(dir: &Path, name: &str, collections: &[&str], shards: &[Vec<String>]) -> PathBuf {
    let lists: Vec<String> = shards
        .iter()
        .map(|r| {
            let urls: Vec<String> = r.iter().map(|a| format!("\"http://{a}\"")).collect();
            format!("[{}]", urls.join(", "))
        })
        .collect();
    let path = dir.join(name);
    let shards = lists.join(", ");
    let text: String = collections
        .iter()
        .map(|c| format!("[collections.{c}]\nshards = [{shards}]\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.keep();
        let cat = catalogue(11, N, 16, 8, 120, 50, 40);
        let (npy, csv) = cat.write(&dir, "tracks");
        // A second table of the same IDs, in another space: the history side of a two-tower
        // taste (`history_collection`), as tools/ease_factors.py makes them.
        let (hnpy, hcsv) = catalogue(12, N, 16, 8, 120, 50, 40).write(&dir, "history");
        let single_root = dir.join("single");
        let mut shard_roots = Vec::new();
        for shard in [None].into_iter().chain((0..SHARDS).map(Some)) {
            let root = match shard {
                None => single_root.clone(),
                Some(i) => dir.join(format!("shard{i}")),
            };
            // `linked`: the tracks again, reading taste histories from `history` by default.
            for (name, npy, csv, metric) in [
                ("tracks", &npy, &csv, "cosine"),
                ("history", &hnpy, &hcsv, "dot"),
                ("linked", &npy, &csv, "cosine"),
            ] {
                let mut args = build_args(npy, Some(csv), metric, &root.join(name));
                if name == "linked" {
                    args.extend(["--taste-history".into(), "history".into()]);
                }
                if let Some(i) = shard {
                    args.push("--shard".into());
                    args.push(format!("{i}/{SHARDS}").into());
                }
                earshot(args).assert_ok();
            }
            if shard.is_some() {
                shard_roots.push(root);
            }
        }
        let single = Server::start(&single_root, &[]);
        let replicas: Vec<Vec<Server>> = shard_roots
            .iter()
            .map(|r| vec![Server::start(r, &[]), Server::start(r, &[])])
            .collect();
        let addrs: Vec<Vec<String>> = replicas
            .iter()
            .map(|r| r.iter().map(|s| s.addr.clone()).collect())
            .collect();
        let topo = topology_of(
            &dir,
            "topology.toml",
            &["tracks", "history", "linked"],
            &addrs,
        );
        let router = Server::start_route(&topo, &["--health-interval", "0.3"]);
        let mut pids = vec![single.pid(), router.pid()];
        pids.extend(replicas.iter().flatten().map(|s| s.pid()));
        let reaper = reap_at_exit(&pids, &[&dir]);
        let mut creator_popularity: HashMap<String, f64> = HashMap::new();
        for i in 0..cat.len() {
            if !cat.creators[i].is_empty() {
                *creator_popularity
                    .entry(cat.creators[i].clone())
                    .or_default() += cat.popularity[i].unwrap_or(0.0) as f64;
            }
        }
        Fixture {
            dir,
            cat,
            shard_roots,
            single,
            replicas,
            router,
            creator_popularity,
            _reaper: reaper,
        }
    })
}

/// IDs and scores of a result list.
fn listed(v: &Value) -> Vec<(String, f64)> {
    check_results(v)
}

/// Compares the router's list with the single server's: returns (common, total) IDs, and
/// checks that common IDs have the same score.
fn compare(router: &Value, single: &Value) -> (usize, usize) {
    let r = listed(router);
    let s = listed(single);
    let scores: HashMap<&str, f64> = s.iter().map(|(id, sc)| (id.as_str(), *sc)).collect();
    let mut common = 0;
    for (id, score) in &r {
        if let Some(want) = scores.get(id.as_str()) {
            common += 1;
            assert!(
                (score - want).abs() < 1e-4,
                "{id}: score {score} through the router, {want} from one server"
            );
        }
    }
    assert_eq!(r.len(), s.len(), "list lengths differ:\n{r:?}\n{s:?}");
    (common, s.len())
}

struct Overlap(usize, usize);

impl Overlap {
    fn add(&mut self, (c, t): (usize, usize)) {
        self.0 += c;
        self.1 += t;
    }
    fn check(&self, what: &str) {
        let r = self.0 as f64 / self.1.max(1) as f64;
        eprintln!("{what}: overlap {r:.4} ({} of {})", self.0, self.1);
        assert!(r >= 0.95, "{what}: overlap {r} < 0.95");
    }
}

fn both_get(f: &Fixture, path: &str) -> (Resp, Resp) {
    (f.router.get(path), f.single.get(path))
}

fn both_post(f: &Fixture, path: &str, body: &Value) -> (Resp, Resp) {
    (
        f.router.post_json(path, body),
        f.single.post_json(path, body),
    )
}

fn query_vector(f: &Fixture, i: usize) -> Vec<f32> {
    let mut rng = Rng::new(1000 + i as u64);
    let base = f.cat.row(rng.below(f.cat.len()));
    around(&mut rng, base, 0.3)
}

#[test]
fn similar_matches_one_server() {
    let f = fixture();
    let mut plain = Overlap(0, 0);
    let mut shaped = Overlap(0, 0);
    for i in (0..N).step_by(150) {
        let id = encode_segment(&f.cat.ids[i]);
        let path = format!("/v1/tracks/{id}/similar?k=10&ef={EF}");
        let (r, s) = both_get(f, &path);
        let rv = r.ok_json();
        plain.add(compare(&rv, &s.ok_json()));
        assert!(
            listed(&rv).iter().all(|(x, _)| x != &f.cat.ids[i]),
            "the item itself"
        );
        // Constraints on the merged pool: one per creator, none by the item's creator.
        let body = json!({"k": 10, "ef": EF, "max_per_creator": 1, "exclude_same_creator": true});
        let (r, s) = both_post(f, &format!("/v1/tracks/{id}/similar"), &body);
        let rv = r.ok_json();
        shaped.add(compare(&rv, &s.ok_json()));
        let creators: Vec<&str> = results(&rv)
            .iter()
            .filter_map(|x| x["creator"].as_str())
            .collect();
        let distinct: HashSet<&&str> = creators.iter().collect();
        assert_eq!(
            distinct.len(),
            creators.len(),
            "max_per_creator 1: {creators:?}"
        );
        if !f.cat.creators[i].is_empty() {
            assert!(!creators.contains(&f.cat.creators[i].as_str()));
        }
    }
    plain.check("similar");
    shaped.check("similar, max_per_creator + exclude_same_creator");
}

#[test]
fn search_with_filters_and_the_emerging_quota_matches_one_server() {
    let f = fixture();
    // Emerging: creators at or below the median popularity.
    let mut pops: Vec<f64> = f.creator_popularity.values().copied().collect();
    pops.sort_by(f64::total_cmp);
    let median = pops[pops.len() / 2];
    let mut filtered = Overlap(0, 0);
    let mut shaped = Overlap(0, 0);
    for i in 0..12 {
        let v = query_vector(f, i);
        let body = json!({"collection": "tracks", "vector": v, "k": 20, "ef": EF,
                          "filter": {"min_popularity": 2000.0}});
        let (r, s) = both_post(f, "/v1/search", &body);
        let rv = r.ok_json();
        filtered.add(compare(&rv, &s.ok_json()));
        assert!(results(&rv)
            .iter()
            .all(|x| x["popularity"].as_f64().is_some_and(|p| p >= 2000.0)));
        let body = json!({"collection": "tracks", "vector": v, "k": 10, "ef": EF,
                          "max_per_creator": 2, "explain": true,
                          "emerging": {"max_popularity": median, "min_share": 0.4, "boost": 0.2}});
        let (r, s) = both_post(f, "/v1/search", &body);
        let (rv, sv) = (r.ok_json(), s.ok_json());
        shaped.add(compare(&rv, &sv));
        assert_eq!(
            rv["explain"]["emerging_slots_reserved"], sv["explain"]["emerging_slots_reserved"],
            "{rv}\n{sv}"
        );
        assert_eq!(rv["explain"]["emerging_slots_requested"], 4);
        assert_eq!(rv["emerging_slots_reserved"], sv["emerging_slots_reserved"]);
        let emerging = results(&rv)
            .iter()
            .filter(|x| x["explain"]["emerging_quota"] == true)
            .count();
        assert!(emerging as u64 >= rv["explain"]["emerging_slots_reserved"].as_u64().unwrap());
        let mut per: HashMap<&str, usize> = HashMap::new();
        for x in results(&rv) {
            if let Some(c) = x["creator"].as_str() {
                *per.entry(c).or_default() += 1;
            }
        }
        assert!(per.values().all(|&n| n <= 2), "{per:?}");
        // Explanations match field by field where the lists agree.
        for (a, b) in results(&rv).iter().zip(results(&sv)) {
            if a["id"] == b["id"] {
                let fields = ["emerging_quota", "emerging_boost", "in_share", "moved_by"];
                for field in fields.into_iter().chain(["rank"]) {
                    assert_eq!(
                        a["explain"][field], b["explain"][field],
                        "{field}: {a} vs {b}"
                    );
                }
            }
        }
    }
    filtered.check("search with a popularity filter");
    shaped.check("search with max_per_creator and emerging");
}

#[test]
fn taste_and_batch_match_one_server() {
    let f = fixture();
    let mut overlap = Overlap(0, 0);
    for u in 0..8 {
        let mut rng = Rng::new(500 + u);
        let history: Vec<Value> = (0..6)
            .map(|j| {
                let event = ["play", "like", "skip", "save", "play", "dislike"][j];
                json!({"id": f.cat.ids[rng.below(N)], "event": event})
            })
            .collect();
        // The seed-based strategies run in the router too (the same aggregation and pick).
        let strategies = [(1, "mean"), (2, "mean"), (1, "neighbours")];
        for (centroids, strategy) in strategies.into_iter().chain([(1, "best_score")]) {
            let body = json!({"history": history, "k": 10, "ef": EF, "centroids": centroids,
                              "strategy": strategy, "max_per_creator": 2, "explain": true});
            let (r, s) = both_post(f, "/v1/taste/tracks", &body);
            if s.status != 200 {
                // e.g. too_many_centroids for a history with one positive item: same error.
                let code = s.json()["error"]["code"].as_str().unwrap().to_string();
                r.assert_error(s.status, &code);
                continue;
            }
            overlap.add(compare(&r.ok_json(), &s.ok_json()));
        }
    }
    overlap.check("taste");
    // Two-tower: the history's vectors come from another collection (fetched from its own
    // shards), the history's IDs excluded by `exclude`.
    let mut overlap = Overlap(0, 0);
    for u in 0..8 {
        let mut rng = Rng::new(700 + u);
        let ids: Vec<&str> = (0..5).map(|_| f.cat.ids[rng.below(N)].as_str()).collect();
        let history: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
        let body = json!({"history": history, "history_collection": "history", "exclude": ids,
                          "k": 10, "ef": EF});
        let (r, s) = both_post(f, "/v1/taste/tracks", &body);
        let (rv, sv) = (r.ok_json(), s.ok_json());
        assert!(listed(&sv)
            .iter()
            .all(|(id, _)| !ids.contains(&id.as_str())));
        overlap.add(compare(&rv, &sv));
        // A collection built with `--taste-history history` does the same by default: no
        // history_collection, no exclude.
        let plain = json!({"history": history, "k": 10, "ef": EF});
        let (lr, ls) = both_post(f, "/v1/taste/linked", &plain);
        let ls = ls.ok_json();
        let ids_of = |v: &Value| listed(v).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids_of(&ls), ids_of(&sv), "one server: linked vs named");
        overlap.add(compare(&lr.ok_json(), &sv));
    }
    overlap.check("two-tower taste");
    // The pair must be served: a linked collection without it says which one is missing.
    let root = f.dir.join("unpaired");
    let mut args = build_args(
        &f.dir.join("tracks.npy"),
        Some(&f.dir.join("tracks.csv")),
        "cosine",
        &root.join("alone"),
    );
    args.extend(["--taste-history".into(), "missing".into()]);
    earshot(args).assert_ok();
    let alone = Server::start(&root, &[]);
    let body = json!({"history": [{"id": f.cat.ids[3]}], "k": 5});
    let r = alone.post_json("/v1/taste/alone", &body);
    r.assert_error(404, "unknown_collection");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("\"missing\"") && msg.contains("--taste-history"),
        "{msg}"
    );
    let v = query_vector(f, 99);
    let body = json!({"queries": [
        {"type": "similar", "collection": "tracks", "id": f.cat.ids[7], "k": 5, "ef": EF},
        {"type": "search", "collection": "tracks", "vector": v, "k": 5, "ef": EF},
        {"type": "taste", "collection": "tracks", "history": [{"id": f.cat.ids[8]}, {"id": f.cat.ids[9]}], "k": 5, "ef": EF},
        {"type": "similar", "collection": "tracks", "id": "no-such-id"},
        {"type": "search", "collection": "nope", "vector": v},
    ]});
    let (r, s) = both_post(f, "/v1/batch", &body);
    let (rv, sv) = (r.ok_json(), s.ok_json());
    let (ra, sa) = (
        rv["responses"].as_array().unwrap(),
        sv["responses"].as_array().unwrap(),
    );
    assert_eq!(ra.len(), 5);
    for (a, b) in ra.iter().zip(sa) {
        if b.get("results").is_some() {
            let (c, t) = compare(a, b);
            assert!(c + 1 >= t, "{a}\n{b}");
        } else {
            assert_eq!(a["status"], b["status"]);
            assert_eq!(a["error"]["code"], b["error"]["code"]);
        }
    }
}

#[test]
fn items_collections_and_errors_are_those_of_serve() {
    let f = fixture();
    for i in [0, 1, 2, 1234, N - 1] {
        let path = format!("/v1/tracks/{}", encode_segment(&f.cat.ids[i]));
        let (r, s) = both_get(f, &path);
        assert_eq!(r.ok_json(), s.ok_json());
        // The owner shard's version (shards built apart each have their own).
        assert!(r.header("x-earshot-version").is_some(), "{r:?}");
    }
    let ids: Vec<&str> = vec![&f.cat.ids[5], "missing-1", &f.cat.ids[6], &f.cat.ids[2000]];
    let (r, s) = both_post(f, "/v1/tracks/items", &json!({ "ids": ids }));
    assert_eq!(r.ok_json(), s.ok_json());
    // The collection as a whole: the shards' counts summed, no shard field.
    let rv = f.router.get("/v1/collections").ok_json();
    let all = rv["collections"].as_array().unwrap();
    let c = all.iter().find(|c| c["name"] == "tracks").expect("tracks");
    assert_eq!(all.len(), 3, "{rv}");
    let linked = all.iter().find(|c| c["name"] == "linked").expect("linked");
    assert_eq!(linked["taste_history"], "history", "{linked}");
    assert!(c.get("taste_history").is_none(), "{c}");
    assert_eq!(c["count"], N as u64);
    assert!(c.get("shard").is_none(), "{c}");
    // The same OpenAPI document.
    let (r, s) = both_get(f, "/openapi.json");
    assert_eq!(r.ok_json(), s.ok_json());
    // The same errors.
    let v = query_vector(f, 1);
    let posts: Vec<(&str, Value)> = vec![
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": [1.0, 2.0]}),
        ),
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": v, "k": 0}),
        ),
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": v, "ef": 5000}),
        ),
        ("/v1/search", json!({"collection": "nope", "vector": v})),
        ("/v1/search", json!({"collection": "../x", "vector": v})),
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": v, "max_per_creator": 0}),
        ),
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": v, "bogus": 1}),
        ),
        (
            "/v1/search",
            json!({"collection": "tracks", "vector": v,
                              "filter": {"creators": ["a"], "exclude_creators": ["a"]}}),
        ),
        ("/v1/taste/tracks", json!({"history": []})),
        ("/v1/taste/tracks", json!({"history": [{"id": "nope"}]})),
        (
            "/v1/taste/tracks",
            json!({"history": [{"id": f.cat.ids[1], "event": "skip"}]}),
        ),
        (
            "/v1/taste/tracks",
            json!({"history": [{"id": f.cat.ids[1]}], "centroids": 2}),
        ),
        (
            "/v1/taste/tracks",
            json!({"history": [{"id": f.cat.ids[1], "weight": -1}]}),
        ),
        ("/v1/tracks/nope/similar", json!({"k": 3})),
        ("/v1/tracks/x/similar", json!({"collection": "tracks"})),
        ("/v1/batch", json!({"queries": []})),
        ("/v1/tracks/items", json!({"ids": []})),
    ];
    for (path, body) in posts {
        let (r, s) = both_post(f, path, &body);
        assert!(s.status >= 400, "{path} {body}: {s:?}");
        let code = s.json()["error"]["code"].as_str().unwrap().to_string();
        r.assert_error(s.status, &code);
    }
    for path in [
        "/v1/tracks/nope/similar",
        "/v1/tracks/nope",
        "/v2/nothing",
        "/v1/nope/x/similar",
    ] {
        let (r, s) = both_get(f, path);
        let code = s.json()["error"]["code"].as_str().unwrap().to_string();
        r.assert_error(s.status, &code);
    }
    let r = http(
        "POST",
        &f.router.url("/v1/search"),
        &[("content-type", "application/json")],
        Some(b"{not json".to_vec()),
    );
    r.assert_error(400, "malformed_json");
    let r = http(
        "POST",
        &f.router.url("/v1/search"),
        &[],
        Some(b"{}".to_vec()),
    );
    r.assert_error(415, "unsupported_media_type");
    assert_eq!(f.router.get("/readyz").status, 200);
    let metrics = f.router.get("/metrics").body;
    for name in [
        "earshot_router_upstream_duration_seconds",
        "earshot_router_upstream_requests_total",
        "earshot_http_requests_total",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

#[test]
fn a_shard_without_replicas_is_unavailable_unless_partial_answers_are_allowed() {
    let f = fixture();
    let mut shards: Vec<Vec<String>> = f.replicas.iter().map(|r| vec![r[0].addr.clone()]).collect();
    shards[2] = vec![dead_addr(), dead_addr()];
    let topo = topology(&f.dir, "one-shard-down.toml", &shards);
    let router = Server::start_route(&topo, &["--health-interval", "0.3"]);
    let v = query_vector(f, 3);
    let body = json!({"collection": "tracks", "vector": v, "k": 10, "ef": EF});
    router
        .post_json("/v1/search", &body)
        .assert_error(503, "shard_unavailable");
    let mut partial = body.clone();
    partial["allow_partial"] = json!(true);
    let r = router.post_json("/v1/search", &partial).ok_json();
    assert_eq!(r["coverage"], json!({"shards": 3, "answered": 2}));
    assert_eq!(results(&r).len(), 10);
    // Every result comes from a live shard.
    for x in results(&r) {
        let id = x["id"].as_str().unwrap();
        assert_ne!(earshot_core::shard::shard_of(id, 3), 2, "{id}");
    }
    let r = router.get("/readyz");
    r.assert_error(503, "not_ready");
    // The batch form answers per query.
    let r = router
        .post_json("/v1/batch", &json!({"queries": [
            {"type": "search", "collection": "tracks", "vector": v, "k": 3},
            {"type": "search", "collection": "tracks", "vector": v, "k": 3, "allow_partial": true},
        ]}))
        .ok_json();
    assert_eq!(r["responses"][0]["status"], 503);
    assert_eq!(r["responses"][0]["error"]["code"], "shard_unavailable");
    assert_eq!(r["responses"][1]["coverage"]["answered"], 2);
}

#[test]
fn killing_a_replica_under_load_loses_no_request() {
    let f = fixture();
    // An extra replica of shard 0 (its own process, killed below), beside one of the fixture's.
    let mut extra = Server::start(&f.shard_roots[0], &[]);
    let mut shards: Vec<Vec<String>> = f.replicas.iter().map(|r| vec![r[1].addr.clone()]).collect();
    shards[0].push(extra.addr.clone());
    let topo = topology(&f.dir, "kill.toml", &shards);
    let router = Arc::new(Server::start_route(&topo, &["--health-interval", "0.3"]));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let (router, stop, done) = (router.clone(), stop.clone(), done.clone());
            let ids: Vec<String> = (0..50).map(|i| f.cat.ids[(i * 53 + t * 7) % N].clone()).collect();
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = if i % 2 == 0 {
                        router.get(&format!("/v1/tracks/{}/similar?k=10", encode_segment(&ids[i % ids.len()])))
                    } else {
                        router.post_json(
                            "/v1/taste/tracks",
                            &json!({"history": [{"id": ids[i % ids.len()]}, {"id": ids[(i + 1) % ids.len()]}], "k": 10}),
                        )
                    };
                    if r.status != 200 {
                        failures.push(format!("{}: {}", r.status, r.body));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                failures
            })
        })
        .collect();
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < 100 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(20));
    }
    signal(extra.pid(), "KILL");
    let before = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < before + 300 && started.elapsed() < Duration::from_secs(60)
    {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let total = done.load(Ordering::Relaxed);
    eprintln!("{total} requests, {} after the kill", total - before);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= before + 300, "the load stalled after the kill");
    assert!(extra.wait_exit(Duration::from_secs(10)).is_some());
    let metrics = router.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("earshot_router_ejections_total{") && !l.ends_with(" 0")),
        "no ejection counted:\n{metrics}"
    );
}

/// Builds shard `i` of 3 as a new version of `ROOT/tracks` named `name`.
fn build_version(f: &Fixture, root: &Path, i: usize, name: &str) {
    let link = root.join("tracks");
    let mut args = build_args(
        &f.dir.join("tracks.npy"),
        Some(&f.dir.join("tracks.csv")),
        "cosine",
        &link,
    );
    for a in [
        "--shard",
        &format!("{i}/3"),
        "--versioned",
        "--threads",
        "1",
    ] {
        args.push(a.into());
    }
    earshot(args).assert_ok();
    let built = earshot_core::layout::active_version(&link).expect("a version");
    let versions = root.join(".versions/tracks");
    std::fs::rename(versions.join(&built), versions.join(name)).unwrap();
    earshot(["activate".as_ref(), link.as_os_str(), name.as_ref()]).assert_ok();
}

#[test]
fn a_roll_out_is_answered_from_one_version() {
    let f = fixture();
    let roots: Vec<PathBuf> = (0..SHARDS)
        .map(|i| f.dir.join(format!("versioned{i}")))
        .collect();
    for (i, root) in roots.iter().enumerate() {
        build_version(f, root, i, "v1");
    }
    let servers: Vec<Server> = roots
        .iter()
        .map(|r| Server::start(r, &["--retain-previous", "600"]))
        .collect();
    let shards: Vec<Vec<String>> = servers.iter().map(|s| vec![s.addr.clone()]).collect();
    let topo = topology(&f.dir, "versioned.toml", &shards);
    let router = Server::start_route(&topo, &["--health-interval", "0.3"]);
    let v = query_vector(f, 5);
    let body = json!({"collection": "tracks", "vector": v, "k": 10, "ef": EF});
    let before = router.post_json("/v1/search", &body);
    assert_eq!(before.header("x-earshot-version"), Some("v1"), "{before:?}");
    let want = before.ok_json();
    // Shard 0 moves to v2 (keeping v1 loaded); the others still serve v1 only.
    build_version(f, &roots[0], 0, "v2");
    let r = http("POST", &servers[0].url("/admin/reload"), &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    for _ in 0..3 {
        let during = router.post_json("/v1/search", &body);
        assert_eq!(during.header("x-earshot-version"), Some("v1"), "{during:?}");
        assert_eq!(during.ok_json(), want);
    }
    // The roll-out completes: every shard on v2, and the router follows.
    for i in 1..SHARDS {
        build_version(f, &roots[i], i, "v2");
        let r = http("POST", &servers[i].url("/admin/reload"), &[], None);
        assert_eq!(r.status, 200, "{r:?}");
    }
    let started = Instant::now();
    loop {
        let after = router.post_json("/v1/search", &body);
        assert_eq!(after.status, 200, "{after:?}");
        if after.header("x-earshot-version") == Some("v2") {
            assert_eq!(after.ok_json(), want);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {after:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dns_sources_are_resolved_to_replicas() {
    let f = fixture();
    let port = |s: &Server| s.addr.rsplit_once(':').unwrap().1.to_string();
    let path = f.dir.join("dns.toml");
    let shards: Vec<String> = f
        .replicas
        .iter()
        .map(|r| format!("[\"dns://localhost:{}\"]", port(&r[0])))
        .collect();
    std::fs::write(
        &path,
        format!("[collections.tracks]\nshards = [{}]\n", shards.join(", ")),
    )
    .unwrap();
    let router = Server::start_route(
        &path,
        &["--health-interval", "0.3", "--resolve-interval", "0.5"],
    );
    let v = query_vector(f, 8);
    let body = json!({"collection": "tracks", "vector": v, "k": 10, "ef": EF});
    // localhost may also resolve to ::1, where nothing listens: that replica is ejected and
    // the request retried on 127.0.0.1.
    for _ in 0..5 {
        let (r, s) = (
            router.post_json("/v1/search", &body),
            f.single.post_json("/v1/search", &body),
        );
        let (c, t) = compare(&r.ok_json(), &s.ok_json());
        assert_eq!(c, t);
    }
    // A bad topology refuses to start, saying why.
    let bad = f.dir.join("bad.toml");
    std::fs::write(&bad, "[collections.tracks]\nshards = [[\"tcp://x:1\"]]\n").unwrap();
    earshot(["route".as_ref(), "--topology".as_ref(), bad.as_os_str()])
        .assert_fails_with(&["unknown scheme", "bad.toml"]);
}

/// One replica of a shard turns slow (a relay adds 100 ms to every chunk it forwards): the
/// router learns its latency and sends the shard's requests to the healthy replica, so the
/// slow one sees a handful of probes, not its half of the load; nothing fails.
#[test]
fn a_slow_replica_loses_its_traffic() {
    let f = fixture();
    let slow = earshot_testkit::relay::Relay::start(f.replicas[0][1].addr.parse().unwrap())
        .expect("relay");
    slow.set_delay(Duration::from_millis(100));
    let mut shards: Vec<Vec<String>> = f.replicas.iter().map(|r| vec![r[0].addr.clone()]).collect();
    shards[0].push(slow.addr().to_string());
    let topo = topology(&f.dir, "slow.toml", &shards);
    let router = Server::start_route(&topo, &["--health-interval", "5"]);
    let ids: Vec<&String> = (0..200).map(|i| &f.cat.ids[(i * 31) % N]).collect();
    for id in &ids {
        let r = router.get(&format!("/v1/tracks/{}/similar?k=10", encode_segment(id)));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let through_slow = slow.stats().chunks;
    eprintln!("{through_slow} chunks went through the slow replica's relay");
    assert!(
        through_slow <= 30,
        "the slow replica still got {through_slow} of ~{} shard-0 requests",
        ids.len() * 2
    );
}

/// The router's front door is bounded like `serve`'s: with one request routed at a time and
/// one waiting (≤ 50 ms), a burst against a slow shard is answered at once with 503
/// `overloaded` and `Retry-After` — never a queue without end — and the others succeed.
#[test]
fn an_overloaded_router_answers_503_overloaded_at_once() {
    let f = fixture();
    let slow = earshot_testkit::relay::Relay::start(f.replicas[0][0].addr.parse().unwrap())
        .expect("relay");
    slow.set_delay(Duration::from_millis(300));
    let mut shards: Vec<Vec<String>> = f.replicas.iter().map(|r| vec![r[0].addr.clone()]).collect();
    shards[0] = vec![slow.addr().to_string()];
    let topo = topology(&f.dir, "bounded.toml", &shards);
    let router = Arc::new(Server::start_route(
        &topo,
        &[
            "--max-concurrent",
            "1",
            "--max-queue",
            "1",
            "--queue-timeout-ms",
            "50",
            "--health-interval",
            "30",
        ],
    ));
    let body = json!({"collection": "tracks", "vector": query_vector(f, 3), "k": 5});
    let started = Instant::now();
    let answers: Vec<Resp> = (0..6)
        .map(|_| {
            let (router, body) = (router.clone(), body.clone());
            thread::spawn(move || router.post_json("/v1/search", &body))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let overloaded: Vec<&Resp> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + overloaded.len(), 6, "only 200 or 503");
    assert!(ok >= 1, "the admitted request is answered");
    assert!(
        overloaded.len() >= 3,
        "{} of 6 refused after {:?}: {:?}",
        overloaded.len(),
        started.elapsed(),
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &overloaded {
        r.assert_error(503, "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Nobody waited for a place in an endless queue (generous bound for a loaded machine:
    // one slow search is ~0.3 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
