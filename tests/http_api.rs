//! The HTTP API end to end: one index root (tracks + derived creators + a small l2
//! collection) built once with the real CLI, one real server shared by the tests, every
//! endpoint's success path checked against brute force and the input CSV, and every
//! documented error checked for status, code and body shape.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use earshot_core::metric::Metric;
use serde_json::{json, Value};

const DIM: usize = 24;
const TRACKS: usize = 3000;
const SMALL_DIM: usize = 8;
const SMALL_N: usize = 200;
/// An ID that needs CSV quoting and URL encoding.
const ODD_ID: &str = "café, 7";
const ODD_ROW: usize = 7;

struct Fixture {
    cat: Catalogue,
    /// The tracks' vectors scaled to unit length (what cosine compares).
    unit: Vec<f32>,
    /// Creators as the test derives them: id → (unit mean of its tracks' unit vectors,
    /// summed popularity).
    creator_ids: Vec<String>,
    creator_unit: Vec<f32>,
    creator_pop: Vec<f32>,
    small: Vec<f32>,
    root: PathBuf,
    server: Server,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = catalogue(7, TRACKS, DIM, 24, 300, 50, 23);
        cat.ids[ODD_ROW] = ODD_ID.to_string();
        // Two opposite vectors: a history of both has no direction under cosine.
        let v = Rng::new(99).gauss_vec(DIM, 1.0);
        for (id, sign) in [("anti-a", 1.0f32), ("anti-b", -1.0)] {
            cat.vectors.extend(v.iter().map(|x| x * sign));
            cat.ids.push(id.to_string());
            cat.creators.push(String::new());
            cat.popularity.push(None);
        }
        let root = build_tracks(dir.path(), &cat, true);

        let mut rng = Rng::new(5);
        let small_centres = centres(&mut rng, 4, SMALL_DIM);
        let small = clustered(&mut rng, &small_centres, SMALL_N, 0.3);
        let small_npy = dir.path().join("small.npy");
        write_npy(&small_npy, SMALL_DIM, &small);
        earshot(build_args(&small_npy, None, "l2", &root.join("small"))).assert_ok();

        let unit = normalized_rows(&cat.vectors, DIM);
        // Creators in first-appearance order, as the builder numbers them.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut creator_ids = Vec::new();
        let mut sums: Vec<Vec<f64>> = Vec::new();
        let mut creator_pop = Vec::new();
        for (row, c) in cat.creators.iter().enumerate() {
            if c.is_empty() {
                continue;
            }
            let ci = *index.entry(c).or_insert_with(|| {
                creator_ids.push(c.clone());
                sums.push(vec![0.0; DIM]);
                creator_pop.push(0f32);
                creator_ids.len() - 1
            });
            for (s, &x) in sums[ci].iter_mut().zip(&unit[row * DIM..(row + 1) * DIM]) {
                *s += x as f64;
            }
            creator_pop[ci] += cat.popularity[row].unwrap_or(0.0);
        }
        let creator_unit: Vec<f32> = sums
            .iter()
            .flat_map(|s| normalized(&s.iter().map(|&x| x as f32).collect::<Vec<_>>()))
            .collect();

        let (server, reaper) = serve_fixture(&root, dir.path());
        Fixture {
            cat,
            unit,
            creator_ids,
            creator_unit,
            creator_pop,
            small,
            root,
            server,
            _dir: dir,
            _reaper: reaper,
        }
    })
}

impl Fixture {
    fn unit_row(&self, row: usize) -> &[f32] {
        &self.unit[row * DIM..(row + 1) * DIM]
    }

    fn row(&self, id: &str) -> usize {
        self.cat
            .row_of(id)
            .unwrap_or_else(|| panic!("{id} is not a track"))
    }

    fn creator_row(&self, id: &str) -> usize {
        self.creator_ids
            .iter()
            .position(|c| c == id)
            .unwrap_or_else(|| panic!("{id} is not a creator"))
    }

    fn similar_path(&self, collection: &str, id: &str, query: &str) -> String {
        format!("/v1/{collection}/{}/similar{query}", encode_segment(id))
    }

    /// Checks each track result's creator and popularity against the CSV.
    fn check_track_metadata(&self, v: &Value) {
        for r in results(v) {
            let row = self.row(r["id"].as_str().unwrap());
            assert!(
                r.get("creator").is_some() && r.get("popularity").is_some(),
                "creator and popularity must be present (null when unknown): {r}"
            );
            let creator = &self.cat.creators[row];
            if creator.is_empty() {
                assert!(r["creator"].is_null(), "row {row} has no creator: {r}");
            } else {
                assert_eq!(r["creator"].as_str(), Some(creator.as_str()), "{r}");
            }
            match self.cat.popularity[row] {
                None => assert!(r["popularity"].is_null(), "row {row}: {r}"),
                Some(p) => assert_eq!(r["popularity"].as_f64(), Some(p as f64), "{r}"),
            }
        }
    }
}

/// Fraction of the exact top-k (IDs) found in `got`.
fn recall(exact: &[String], got: &[(String, f64)]) -> (usize, usize) {
    let got: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    (
        exact.iter().filter(|id| got.contains(id.as_str())).count(),
        exact.len(),
    )
}

fn assert_recall(hits: usize, total: usize, min: f64, what: &str) {
    let r = hits as f64 / total as f64;
    assert!(
        r >= min,
        "{what}: recall {r:.3} ({hits}/{total}) below {min}"
    );
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-4,
        "{what}: score {got} but the exact value is {want}"
    );
}

/// Weighted mean of unit vectors, as a taste query (the server normalises it).
fn taste_vector(rows: &[(&[f32], f32)]) -> Vec<f32> {
    let mut t = [0f64; DIM];
    let total: f64 = rows.iter().map(|(_, w)| *w as f64).sum();
    for (v, w) in rows {
        for (t, &x) in t.iter_mut().zip(v.iter()) {
            *t += *w as f64 * x as f64;
        }
    }
    normalized(&t.iter().map(|x| (x / total) as f32).collect::<Vec<_>>())
}

// ---------------------------------------------------------------------------------------
// Success paths

#[test]
fn similar_agrees_with_brute_force_and_csv() {
    let f = fx();
    let ids: Vec<String> = [0, ODD_ROW, 17, 1234, 2345, TRACKS - 1]
        .iter()
        .map(|&r| f.cat.ids[r].clone())
        .chain(["anti-a".to_string()])
        .collect();
    let (mut hits, mut total) = (0, 0);
    for id in &ids {
        let row = f.row(id);
        let resp = f.server.get(&f.similar_path("tracks", id, "?k=10"));
        assert!(resp.request_id.is_some(), "no x-request-id: {resp:?}");
        let v = resp.ok_json();
        let items = check_results(&v);
        assert_eq!(items.len(), 10, "{v}");
        assert!(
            items.iter().all(|(r, _)| r != id),
            "similar({id}) contains the item itself: {v}"
        );
        for (rid, score) in &items {
            let want = dot64(f.unit_row(row), f.unit_row(f.row(rid)));
            assert_close(*score, want, &format!("similar({id}) → {rid}"));
        }
        f.check_track_metadata(&v);
        let exact: Vec<String> =
            exact_top_k(Metric::Cosine, &f.unit, DIM, f.unit_row(row), 10, |r| {
                r == row
            })
            .into_iter()
            .map(|(_, r)| f.cat.ids[r].clone())
            .collect();
        let (h, t) = recall(&exact, &items);
        hits += h;
        total += t;
    }
    assert_recall(hits, total, 0.9, "similar vs brute force");
}

#[test]
fn similar_k_and_ef_parameters() {
    let f = fx();
    let id = &f.cat.ids[42];
    let v = f
        .server
        .get(&f.similar_path("tracks", id, "?k=5&ef=300"))
        .ok_json();
    assert_eq!(check_results(&v).len(), 5);
    // Without k: the documented default of 10.
    let v = f.server.get(&f.similar_path("tracks", id, "")).ok_json();
    assert_eq!(check_results(&v).len(), 10);
    // The largest k: every result distinct and in order, the item itself absent.
    let v = f
        .server
        .get(&f.similar_path("tracks", id, "?k=1000"))
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 1000);
    assert!(items.iter().all(|(r, _)| r != id));
    // ef=1 is raised to k.
    let v = f
        .server
        .get(&f.similar_path("tracks", id, "?k=20&ef=1"))
        .ok_json();
    assert_eq!(check_results(&v).len(), 20);
    // A collection smaller than k returns everything but the item.
    let v = f.server.get("/v1/small/3/similar?k=1000").ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), SMALL_N - 1);
    assert!(items.iter().all(|(r, _)| r != "3"));
}

#[test]
fn similar_on_derived_creators() {
    let f = fx();
    let (mut hits, mut total) = (0, 0);
    for ci in [0, 5, 77, f.creator_ids.len() - 1] {
        let id = &f.creator_ids[ci];
        let v = f
            .server
            .get(&f.similar_path("creators", id, "?k=10"))
            .ok_json();
        let items = check_results(&v);
        assert_eq!(items.len(), 10);
        assert!(items.iter().all(|(r, _)| r != id));
        let q = &f.creator_unit[ci * DIM..(ci + 1) * DIM];
        for r in results(&v) {
            let rid = r["id"].as_str().unwrap();
            let rc = f.creator_row(rid);
            // A creator's creator is itself; its popularity the sum of its tracks'.
            assert_eq!(r["creator"].as_str(), Some(rid), "{r}");
            assert_eq!(
                r["popularity"].as_f64(),
                Some(f.creator_pop[rc] as f64),
                "{r}"
            );
            let want = dot64(q, &f.creator_unit[rc * DIM..(rc + 1) * DIM]);
            assert_close(r["score"].as_f64().unwrap(), want, rid);
        }
        let exact: Vec<String> =
            exact_top_k(Metric::Cosine, &f.creator_unit, DIM, q, 10, |r| r == ci)
                .into_iter()
                .map(|(_, r)| f.creator_ids[r].clone())
                .collect();
        let (h, t) = recall(&exact, &items);
        hits += h;
        total += t;
    }
    assert_recall(hits, total, 0.9, "creators similar vs brute force");
}

#[test]
fn search_agrees_with_brute_force() {
    let f = fx();
    let mut rng = Rng::new(1234);
    let (mut hits, mut total) = (0, 0);
    for i in 0..8 {
        // A perturbed catalogue vector, scaled: cosine ignores the length.
        let base = f.cat.row(rng.below(f.cat.len()));
        let q: Vec<f32> = base
            .iter()
            .map(|&x| (x + (rng.gauss() * 0.3) as f32) * 3.5)
            .collect();
        let v = f
            .server
            .post_json(
                "/v1/search",
                &json!({"collection": "tracks", "vector": q, "k": 10}),
            )
            .ok_json();
        let items = check_results(&v);
        assert_eq!(items.len(), 10, "query {i}: {v}");
        f.check_track_metadata(&v);
        let qu = normalized(&q);
        for (rid, score) in &items {
            assert_close(*score, dot64(&qu, f.unit_row(f.row(rid))), rid);
        }
        let exact: Vec<String> = exact_top_k(Metric::Cosine, &f.unit, DIM, &qu, 10, |_| false)
            .into_iter()
            .map(|(_, r)| f.cat.ids[r].clone())
            .collect();
        let (h, t) = recall(&exact, &items);
        hits += h;
        total += t;
    }
    assert_recall(hits, total, 0.9, "search vs brute force");
}

#[test]
fn search_on_l2_collection() {
    let f = fx();
    // Under l2 a zero vector is a valid query.
    let q = vec![0f32; SMALL_DIM];
    let v = f
        .server
        .post_json(
            "/v1/search",
            &json!({"collection": "small", "vector": q, "k": 7}),
        )
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 7);
    let exact = exact_top_k(Metric::L2, &f.small, SMALL_DIM, &q, 7, |_| false);
    let exact_ids: Vec<String> = exact.iter().map(|(_, r)| r.to_string()).collect();
    let (h, t) = recall(&exact_ids, &items);
    assert_recall(h, t, 6.0 / 7.0, "l2 search vs brute force");
    for r in results(&v) {
        // IDs are row numbers without --meta; no creator or popularity.
        let row: usize = r["id"].as_str().unwrap().parse().unwrap();
        assert!(r.get("creator") == Some(&Value::Null), "{r}");
        assert!(r.get("popularity") == Some(&Value::Null), "{r}");
        let want = score_of(
            Metric::L2,
            l2sq64(&q, &f.small[row * SMALL_DIM..(row + 1) * SMALL_DIM]),
        );
        assert_close(r["score"].as_f64().unwrap(), want, "l2 score");
    }
}

#[test]
fn taste_excludes_history_by_default() {
    let f = fx();
    let (a, b) = (&f.cat.ids[10], &f.cat.ids[2000]);
    let (ra, rb) = (f.row(a), f.row(b));
    let v = f
        .server
        .post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": a, "weight": 3.0}, {"id": b}], "k": 10}),
        )
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 10);
    assert!(
        items.iter().all(|(r, _)| r != a && r != b),
        "history items in taste results: {v}"
    );
    f.check_track_metadata(&v);
    let q = taste_vector(&[(f.unit_row(ra), 3.0), (f.unit_row(rb), 1.0)]);
    for (rid, score) in &items {
        assert_close(*score, dot64(&q, f.unit_row(f.row(rid))), rid);
    }
    let exact: Vec<String> =
        exact_top_k(Metric::Cosine, &f.unit, DIM, &q, 10, |r| r == ra || r == rb)
            .into_iter()
            .map(|(_, r)| f.cat.ids[r].clone())
            .collect();
    let (h, t) = recall(&exact, &items);
    assert_recall(h, t, 0.9, "taste vs brute force");
}

#[test]
fn taste_includes_history_when_asked() {
    let f = fx();
    let a = &f.cat.ids[321];
    let v = f
        .server
        .post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": a}], "k": 5, "exclude_history": false}),
        )
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 5);
    assert_eq!(
        &items[0].0, a,
        "the only history item is its own nearest: {v}"
    );
    assert_close(items[0].1, 1.0, "self similarity");
    let v = f
        .server
        .post_json("/v1/taste/tracks", &json!({"history": [{"id": a}], "k": 5}))
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|(r, _)| r != a), "{v}");
}

#[test]
fn taste_weights_are_relative_at_any_scale() {
    // Weights are documented as relative (any finite number > 0): scaling them all by the
    // same factor must not change the answer.
    let f = fx();
    let (a, b) = (&f.cat.ids[10], &f.cat.ids[2000]);
    let taste = |wa: f64, wb: f64| {
        f.server.post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": a, "weight": wa}, {"id": b, "weight": wb}], "k": 10}),
        )
    };
    let ids =
        |v: &Value| -> Vec<String> { check_results(v).into_iter().map(|(id, _)| id).collect() };
    let equal = ids(&taste(1.0, 1.0).ok_json());
    let skewed = ids(&taste(2.0, 1.0).ok_json());
    for (wa, wb, want) in [
        (1e30, 1e30, &equal),
        (2e-30, 1e-30, &skewed),
        // Each weight is a valid f32; only their sum or products leave its range.
        (3e38, 3e38, &equal),
        (2e-40, 1e-40, &skewed),
    ] {
        let r = taste(wa, wb);
        assert_eq!(
            r.status, 200,
            "weights {wa:e} and {wb:e} (valid: finite and > 0) were refused: {}",
            r.body
        );
        assert_eq!(
            &ids(&r.json()),
            want,
            "weights {wa:e} and {wb:e} rank differently from the same weights at scale 1"
        );
    }
}

#[test]
fn taste_across_collections() {
    let f = fx();
    let (mut hits, mut total) = (0, 0);
    for (a, b) in [(3, 4), (100, 2500), (999, 1000)] {
        let (ia, ib) = (&f.cat.ids[a], &f.cat.ids[b]);
        let v = f
            .server
            .post_json(
                "/v1/taste/creators",
                &json!({"history": [{"id": ia}, {"id": ib, "weight": 0.5}],
                        "history_collection": "tracks", "k": 10}),
            )
            .ok_json();
        let items = check_results(&v);
        assert_eq!(items.len(), 10, "{v}");
        let q = taste_vector(&[(f.unit_row(a), 1.0), (f.unit_row(b), 0.5)]);
        for (rid, score) in &items {
            let rc = f.creator_row(rid);
            assert_close(
                *score,
                dot64(&q, &f.creator_unit[rc * DIM..(rc + 1) * DIM]),
                rid,
            );
        }
        let exact: Vec<String> =
            exact_top_k(Metric::Cosine, &f.creator_unit, DIM, &q, 10, |_| false)
                .into_iter()
                .map(|(_, r)| f.creator_ids[r].clone())
                .collect();
        let (h, t) = recall(&exact, &items);
        hits += h;
        total += t;
    }
    assert_recall(hits, total, 0.9, "taste tracks → creators vs brute force");

    // And the other way: a creator history ranks tracks.
    let c = &f.creator_ids[12];
    let v = f
        .server
        .post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": c}], "history_collection": "creators", "k": 10}),
        )
        .ok_json();
    let items = check_results(&v);
    assert_eq!(items.len(), 10);
    f.check_track_metadata(&v);
    let q = &f.creator_unit[12 * DIM..13 * DIM];
    let exact: Vec<String> = exact_top_k(Metric::Cosine, &f.unit, DIM, q, 10, |_| false)
        .into_iter()
        .map(|(_, r)| f.cat.ids[r].clone())
        .collect();
    let (h, t) = recall(&exact, &items);
    assert_recall(h, t, 0.9, "taste creators → tracks vs brute force");
}

#[test]
fn batch_answers_each_query_on_its_own() {
    let f = fx();
    let id = &f.cat.ids[55];
    let q: Vec<f32> = f.cat.row(66).to_vec();
    let queries = json!([
        {"type": "similar", "collection": "tracks", "id": id, "k": 4},
        {"type": "search", "collection": "tracks", "vector": q, "k": 6},
        {"type": "similar", "collection": "tracks", "id": "no-such-track"},
        {"type": "taste", "collection": "tracks", "history": [{"id": id}], "k": 3},
        {"type": "search", "collection": "tracks", "vector": [1.0, 2.0]},
        {"type": "similar", "collection": "nope", "id": id},
        {"type": "taste", "collection": "creators", "history": [{"id": id}],
         "history_collection": "tracks", "k": 2},
    ]);
    let resp = f
        .server
        .post_json("/v1/batch", &json!({ "queries": queries }));
    assert!(resp.request_id.is_some());
    let v = resp.ok_json();
    let responses = v["responses"].as_array().expect("responses array");
    assert_eq!(responses.len(), 7, "{v}");

    // Each good query answers exactly as its own endpoint does.
    let alone = [
        f.server
            .get(&f.similar_path("tracks", id, "?k=4"))
            .ok_json(),
        f.server
            .post_json(
                "/v1/search",
                &json!({"collection": "tracks", "vector": q, "k": 6}),
            )
            .ok_json(),
        f.server
            .post_json(
                "/v1/taste/tracks",
                &json!({"history": [{"id": id}], "k": 3}),
            )
            .ok_json(),
        f.server
            .post_json(
                "/v1/taste/creators",
                &json!({"history": [{"id": id}], "history_collection": "tracks", "k": 2}),
            )
            .ok_json(),
    ];
    for (i, want) in [0, 1, 3, 6].iter().zip(&alone) {
        let got = &responses[*i];
        assert!(got.get("error").is_none(), "entry {i}: {got}");
        let items = check_results(got);
        assert_eq!(items, check_results(want), "batch entry {i} differs");
    }
    assert_eq!(check_results(&responses[0]).len(), 4);
    assert_eq!(check_results(&responses[1]).len(), 6);
    f.check_track_metadata(&responses[0]);

    for (i, status, code) in [
        (2, 404, "unknown_id"),
        (4, 422, "dimension_mismatch"),
        (5, 404, "unknown_collection"),
    ] {
        let e = &responses[i];
        assert_error_body(e, code);
        assert_eq!(e["status"].as_u64(), Some(status), "entry {i}: {e}");
        assert!(e.get("results").is_none(), "entry {i}: {e}");
    }
}

#[test]
fn batch_size_limits() {
    let f = fx();
    f.server
        .post_json("/v1/batch", &json!({"queries": []}))
        .assert_error(400, "invalid_batch");
    let one = json!({"type": "similar", "collection": "small", "id": "1", "k": 1});
    let too_many: Vec<Value> = vec![one.clone(); 257];
    f.server
        .post_json("/v1/batch", &json!({ "queries": too_many }))
        .assert_error(400, "invalid_batch");
    let most: Vec<Value> = vec![one; 256];
    let v = f
        .server
        .post_json("/v1/batch", &json!({ "queries": most }))
        .ok_json();
    let responses = v["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 256);
    assert!(responses.iter().all(|r| check_results(r).len() == 1));
    // An unknown query type is a request error for the whole batch.
    f.server
        .post_json(
            "/v1/batch",
            &json!({"queries": [{"type": "delete", "collection": "small"}]}),
        )
        .assert_error(422, "invalid_request");
}

#[test]
fn collections_health_and_readiness() {
    let f = fx();
    let v = f.server.get("/v1/collections").ok_json();
    let list = v["collections"].as_array().expect("collections array");
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["creators", "small", "tracks"],
        "{v}"
    );
    let t = by_name["tracks"];
    assert_eq!(t["metric"], "cosine");
    assert_eq!(t["dim"].as_u64(), Some(DIM as u64));
    assert_eq!(t["count"].as_u64(), Some(f.cat.len() as u64));
    assert_eq!(t["creators"].as_u64(), Some(f.creator_ids.len() as u64));
    assert_eq!(t["has_popularity"], true);
    assert_eq!(t["default_ef"].as_u64(), Some(64));
    assert!(t["mapped_bytes"].as_u64().unwrap() > (f.cat.len() * DIM * 4) as u64);
    let c = by_name["creators"];
    assert_eq!(c["count"].as_u64(), Some(f.creator_ids.len() as u64));
    assert_eq!(c["metric"], "cosine");
    let s = by_name["small"];
    assert_eq!(s["metric"], "l2");
    assert_eq!(s["count"].as_u64(), Some(SMALL_N as u64));
    assert_eq!(s["creators"].as_u64(), Some(0));
    assert_eq!(s["has_popularity"], false);
    assert!(v["kernels"].as_str().is_some_and(|k| !k.is_empty()));

    let h = f.server.get("/healthz");
    assert_eq!(h.ok_json(), json!({"status": "ok"}));
    assert!(h.request_id.is_some());
    assert_eq!(
        f.server.get("/readyz").ok_json(),
        json!({"status": "ready"})
    );
}

#[test]
fn metrics_count_requests_by_route() {
    let f = fx();
    let id = &f.cat.ids[9];
    for _ in 0..3 {
        f.server
            .get(&f.similar_path("tracks", id, "?k=2"))
            .ok_json();
    }
    f.server
        .get(&f.similar_path("tracks", "missing", ""))
        .assert_error(404, "unknown_id");
    let m = f.server.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "{m:?}"
    );
    let count = |route: &str, status: &str| -> f64 {
        m.body
            .lines()
            .filter(|l| l.starts_with("earshot_http_requests_total{method=\"GET\","))
            .filter(|l| l.contains(&format!("route=\"{route}\"")))
            .filter(|l| l.contains(&format!("status=\"{status}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(
        count("/v1/{collection}/{id}/similar", "200") >= 3.0,
        "similar requests not counted:\n{}",
        m.body
    );
    assert!(
        count("/v1/{collection}/{id}/similar", "404") >= 1.0,
        "404s not counted:\n{}",
        m.body
    );
    assert!(
        m.body
            .lines()
            .any(|l| l.starts_with("earshot_collection_items{")
                && l.contains("collection=\"tracks\"")
                && l.ends_with(&format!(" {}", f.cat.len()))),
        "no item gauge for tracks:\n{}",
        m.body
    );
    assert!(m.body.contains("earshot_http_request_duration_seconds"));
    // The standard process metrics, unprefixed, this server's own; one OpenMetrics end.
    let sample = |name: &str| -> f64 {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{}", m.body))
            .parse()
            .unwrap()
    };
    assert!(sample("process_resident_memory_bytes") > 1e6);
    assert!(sample("process_cpu_seconds_total") >= 0.0);
    assert!(sample("process_open_fds") >= 3.0);
    assert!(sample("process_max_fds") >= sample("process_open_fds"));
    let started = sample("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    assert_eq!(m.body.matches("# EOF").count(), 1, "{}", m.body);
    assert!(m.body.trim_end().ends_with("# EOF"));
}

#[test]
fn request_ids_are_unique_and_propagated() {
    let f = fx();
    let a = f.server.get("/healthz").request_id.expect("x-request-id");
    let b = f.server.get("/healthz").request_id.expect("x-request-id");
    assert_ne!(a, b, "two requests got the same generated ID");
    let r = http(
        "GET",
        &f.server.url("/healthz"),
        &[("x-request-id", "client-chosen-42")],
        None,
    );
    assert_eq!(r.request_id.as_deref(), Some("client-chosen-42"));
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn error_unknown_collection_and_id() {
    let f = fx();
    let id = f.cat.ids[1].clone();
    f.server
        .get(&f.similar_path("nope", &id, ""))
        .assert_error(404, "unknown_collection");
    f.server
        .get(&f.similar_path("tracks", "no-such-id", ""))
        .assert_error(404, "unknown_id");
    // A creator's ID is not a track's.
    f.server
        .get(&f.similar_path("tracks", &f.creator_ids[0], ""))
        .assert_error(404, "unknown_id");
    f.server
        .post_json(
            "/v1/search",
            &json!({"collection": "nope", "vector": vec![1.0; DIM]}),
        )
        .assert_error(404, "unknown_collection");
    f.server
        .post_json("/v1/taste/nope", &json!({"history": [{"id": id}]}))
        .assert_error(404, "unknown_collection");
    f.server
        .post_json(
            "/v1/taste/creators",
            &json!({"history": [{"id": id}], "history_collection": "nope"}),
        )
        .assert_error(404, "unknown_collection");
    f.server
        .post_json(
            "/v1/taste/tracks",
            &json!({"history": [{"id": id}, {"id": "no-such-id"}]}),
        )
        .assert_error(404, "unknown_id");
}

#[test]
fn error_invalid_k_and_ef() {
    let f = fx();
    let id = f.cat.ids[1].clone();
    for (query, code) in [
        ("?k=0", "invalid_k"),
        ("?k=1001", "invalid_k"),
        ("?ef=0", "invalid_ef"),
        ("?ef=4097", "invalid_ef"),
        ("?k=5&ef=100000", "invalid_ef"),
    ] {
        let msg = f
            .server
            .get(&f.similar_path("tracks", &id, query))
            .assert_error(400, code);
        assert!(
            msg.contains("between"),
            "{query}: message does not state the range: {msg}"
        );
    }
    // Not a number, negative, or an unknown parameter: a query-string error.
    for query in ["?k=abc", "?k=-1", "?kk=3"] {
        f.server
            .get(&f.similar_path("tracks", &id, query))
            .assert_error(400, "invalid_query");
    }
    let v = vec![0.5; DIM];
    for (extra, code) in [
        (json!({"k": 0}), "invalid_k"),
        (json!({"k": 1001}), "invalid_k"),
        (json!({"ef": 0}), "invalid_ef"),
        (json!({"ef": 4097}), "invalid_ef"),
    ] {
        let mut search = json!({"collection": "tracks", "vector": v});
        let mut taste = json!({"history": [{"id": id}]});
        for (k, x) in extra.as_object().unwrap() {
            search[k] = x.clone();
            taste[k] = x.clone();
        }
        f.server
            .post_json("/v1/search", &search)
            .assert_error(400, code);
        f.server
            .post_json("/v1/taste/tracks", &taste)
            .assert_error(400, code);
    }
}

#[test]
fn error_invalid_query_vectors() {
    let f = fx();
    let search = |vector: Value| {
        f.server.post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": vector}),
        )
    };
    search(json!(vec![1.0; DIM - 1])).assert_error(422, "dimension_mismatch");
    search(json!(vec![1.0; DIM + 1])).assert_error(422, "dimension_mismatch");
    search(json!([])).assert_error(422, "dimension_mismatch");
    search(json!(vec![0.0; DIM])).assert_error(422, "invalid_vector");
    // Valid JSON numbers that overflow f32.
    for big in ["1e39", "-1e39", "3.5e38"] {
        let mut parts = vec!["0.5".to_string(); DIM];
        parts[3] = big.to_string();
        let body = format!(
            r#"{{"collection": "tracks", "vector": [{}]}}"#,
            parts.join(",")
        );
        http(
            "POST",
            &f.server.url("/v1/search"),
            &[("content-type", "application/json")],
            Some(body.into_bytes()),
        )
        .assert_error(422, "invalid_vector");
    }
    // The same vector is fine under l2 when zero, but wrong-sized there too.
    f.server
        .post_json(
            "/v1/search",
            &json!({"collection": "small", "vector": vec![0.0; DIM]}),
        )
        .assert_error(422, "dimension_mismatch");
}

#[test]
fn error_taste_histories() {
    let f = fx();
    let id = f.cat.ids[1].clone();
    let taste = |body: Value| f.server.post_json("/v1/taste/tracks", &body);
    taste(json!({"history": []})).assert_error(422, "empty_history");
    for w in [json!(0.0), json!(-1.0), json!(-0.0)] {
        taste(json!({"history": [{"id": id, "weight": w}]})).assert_error(422, "invalid_weight");
    }
    // An f32-overflowing weight is not finite.
    let body = format!(r#"{{"history": [{{"id": "{id}", "weight": 1e39}}]}}"#);
    http(
        "POST",
        &f.server.url("/v1/taste/tracks"),
        &[("content-type", "application/json")],
        Some(body.into_bytes()),
    )
    .assert_error(422, "invalid_weight");
    // Opposite vectors cancel out: no direction to search.
    taste(json!({"history": [{"id": "anti-a"}, {"id": "anti-b"}]}))
        .assert_error(422, "degenerate_history");
    // A history from a collection of another dimension.
    taste(json!({"history": [{"id": "1"}], "history_collection": "small"}))
        .assert_error(422, "dimension_mismatch");
    // More than the documented 10,000 history items.
    let long: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": f.cat.ids[i % TRACKS]}))
        .collect();
    taste(json!({ "history": long })).assert_error(413, "history_too_large");
}

#[test]
fn error_request_bodies() {
    let f = fx();
    let url = f.server.url("/v1/search");
    let json_ct = [("content-type", "application/json")];
    http("POST", &url, &json_ct, Some(b"{\"collection\": ".to_vec()))
        .assert_error(400, "malformed_json");
    http("POST", &url, &json_ct, Some(b"not json at all".to_vec()))
        .assert_error(400, "malformed_json");
    http("POST", &url, &json_ct, Some(Vec::new())).assert_error(400, "malformed_json");
    // Well-formed JSON of the wrong shape.
    f.server
        .post_json("/v1/search", &json!({"collection": "tracks"}))
        .assert_error(422, "invalid_request");
    f.server
        .post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": vec![1.0; DIM], "colour": "red"}),
        )
        .assert_error(422, "invalid_request");
    f.server
        .post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": "0.1,0.2"}),
        )
        .assert_error(422, "invalid_request");
    // Content type.
    let body = json!({"collection": "tracks", "vector": vec![1.0; DIM]})
        .to_string()
        .into_bytes();
    http(
        "POST",
        &url,
        &[("content-type", "text/plain")],
        Some(body.clone()),
    )
    .assert_error(415, "unsupported_media_type");
    http("POST", &url, &[], Some(body.clone())).assert_error(415, "unsupported_media_type");
    http(
        "POST",
        &f.server.url("/v1/taste/tracks"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(b"history=1".to_vec()),
    )
    .assert_error(415, "unsupported_media_type");
}

#[test]
fn error_oversized_body() {
    let f = fx();
    // A syntactically valid request just over 4 MiB.
    let mut body = String::from(r#"{"collection": "tracks", "k": 3, "vector": ["#);
    while body.len() <= 4 * 1024 * 1024 + 1024 {
        body.push_str("0.125,");
    }
    body.push_str("0.125]}");
    for path in ["/v1/search", "/v1/batch", "/v1/taste/tracks"] {
        post_streaming(
            &f.server.addr,
            path,
            "application/json",
            body.clone().into_bytes(),
        )
        .assert_error(413, "payload_too_large");
    }
    // The server is still fine afterwards.
    assert_eq!(f.server.get("/healthz").status, 200);
}

#[test]
fn error_routes_and_methods() {
    let f = fx();
    for path in [
        "/",
        "/v1",
        "/v2/search",
        "/v1/tracks",
        "/v1/tracks/x/similar/more",
    ] {
        f.server.get(path).assert_error(404, "not_found");
    }
    let url = |p: &str| f.server.url(p);
    http("GET", &url("/v1/search"), &[], None).assert_error(405, "method_not_allowed");
    http("GET", &url("/v1/batch"), &[], None).assert_error(405, "method_not_allowed");
    http("GET", &url("/v1/taste/tracks"), &[], None).assert_error(405, "method_not_allowed");
    http(
        "POST",
        &url("/v1/collections"),
        &[("content-type", "application/json")],
        Some(b"{}".to_vec()),
    )
    .assert_error(405, "method_not_allowed");
    http("DELETE", &url("/v1/tracks/trk-00001/similar"), &[], None)
        .assert_error(405, "method_not_allowed");
    http("PUT", &url("/healthz"), &[], Some(Vec::new())).assert_error(405, "method_not_allowed");
}

// ---------------------------------------------------------------------------------------
// Shutdown (a server of its own)

#[test]
fn sigterm_exits_zero_promptly() {
    let f = fx();
    let mut s = Server::start(&f.root, &[]);
    assert_eq!(s.get("/readyz").status, 200);
    let sent = Instant::now();
    signal(s.pid(), "TERM");
    let status = s
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM:\n{}", s.stderr()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM:\n{}",
        s.stderr()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert_no_panic(&s.stderr());
}

/// Starts a server whose stdout goes straight into a shell that sends SIGTERM the moment
/// the `listening on` line arrives (with its builtin `kill`, so within microseconds, as a
/// supervisor watching for the line would). Returns the server's exit status and stderr.
fn serve_then_term_on_listening_line(root: &std::path::Path) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut server = Command::new(BIN)
        .arg("serve")
        .arg("--index-root")
        .arg(root)
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let mut stderr = server.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut killer = Command::new("sh")
        .arg("-c")
        .arg(r#"while read -r line; do case "$line" in "listening on "*) kill -TERM "$1"; exit 0;; esac; done; exit 1"#)
        .arg("sh")
        .arg(server.id().to_string())
        .stdin(Stdio::from(stdout))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (killer_status, _) = wait_timeout(&mut killer, Duration::from_secs(60));
    let (status, timed_out) = wait_timeout(&mut server, Duration::from_secs(10));
    let stderr = errors.join().unwrap();
    assert!(killer_status.success(), "no `listening on` line:\n{stderr}");
    assert!(!timed_out, "no exit within 10 s of SIGTERM:\n{stderr}");
    (status, stderr)
}

#[test]
fn sigterm_right_after_the_listening_line_exits_zero() {
    // A supervisor may stop the server as soon as it has announced itself. The line must
    // therefore come after the SIGTERM handler is in place, or the signal's default action
    // kills the process (no drain, no exit 0).
    let f = fx();
    for attempt in 1..=20 {
        let (status, stderr) = serve_then_term_on_listening_line(&f.root);
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: SIGTERM sent right after `listening on` ended the server with \
             {status} instead of a graceful exit 0\n{stderr}"
        );
    }
}

#[test]
fn sigterm_drains_with_readyz_503_then_exits_zero() {
    let f = fx();
    let mut s = Server::start(&f.root, &["--drain-seconds", "3"]);
    assert_eq!(s.get("/readyz").status, 200);
    signal(s.pid(), "TERM");
    // During the drain the listener still answers, and /readyz says 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_503 = false;
    while Instant::now() < deadline {
        match try_http("GET", &s.url("/readyz"), &[], None) {
            Ok(r) if r.status == 503 => {
                r.assert_error(503, "not_ready");
                saw_503 = true;
                break;
            }
            Ok(r) => assert_eq!(r.status, 200, "{r:?}"),
            Err(_) => break,
        }
    }
    assert!(saw_503, "/readyz never reported 503 while draining");
    // Queries are still answered while draining.
    assert_eq!(s.get("/v1/small/1/similar?k=1").status, 200);
    let status = s
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit after the drain:\n{}", s.stderr()));
    assert_eq!(status.code(), Some(0), "{}", s.stderr());
}

#[test]
fn huge_but_finite_query_vectors() {
    let f = fx();
    // Cosine only needs a direction: the norm of 1e20 components overflows f32, not f64.
    let v = f
        .server
        .post_json(
            "/v1/search",
            &json!({"collection": "tracks", "vector": vec![1e20f32; DIM], "k": 3}),
        )
        .ok_json();
    assert_eq!(check_results(&v).len(), 3);
    // Under l2 the magnitude enters the score, which must stay a finite number.
    let r = f.server.post_json(
        "/v1/search",
        &json!({"collection": "small", "vector": vec![3e38f32; SMALL_DIM], "k": 3}),
    );
    r.assert_error(422, "invalid_vector");
    let v = f
        .server
        .post_json(
            "/v1/search",
            &json!({"collection": "small", "vector": vec![1e6f32; SMALL_DIM], "k": 3}),
        )
        .ok_json();
    for r in results(&v) {
        assert!(r["score"].is_f64(), "score must be a number: {r}");
    }
}
