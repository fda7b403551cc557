//! The taste strategies over real HTTP: `neighbours` and `best_score` against exact item-based
//! aggregation in f64, negatives, explanations, bad input, a zero taste under dot and l2,
//! and the emerging boost and quota report.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

const DIM: usize = 16;
const TRACKS: usize = 3_000;
/// The beam width of the requests compared with exact answers: wide enough that the walks
/// are (nearly) exact on 3,000 rows.
const EF: usize = 400;

struct Fixture {
    cat: Catalogue,
    server: Server,
    _root: PathBuf,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// `cat` built as the dot collection `dot` and the l2 collection `l2`; row 0 is all zeros.
fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = catalogue(12, TRACKS, DIM, 8, 150, 50, 40);
        cat.vectors[..DIM].iter_mut().for_each(|x| *x = 0.0);
        let (npy, csv) = cat.write(dir.path(), "tracks");
        let root = dir.path().join("indexes");
        for metric in ["dot", "l2"] {
            earshot(build_args(&npy, Some(&csv), metric, &root.join(metric))).assert_ok();
        }
        let (server, reaper) = serve_fixture(&root, dir.path());
        Fixture {
            cat,
            server,
            _root: root,
            _dir: dir,
            _reaper: reaper,
        }
    })
}

fn ids(v: &Value) -> Vec<String> {
    check_results(v).into_iter().map(|(id, _)| id).collect()
}

/// Exact item-based aggregation under dot (f64): each seed's `per_item` nearest rows outside
/// the history; `best` = best positive − best negative, else Σ w·sim. Seeds are (row, signed
/// weight scaled to the largest magnitude 1); the top `k` rows, best first.
fn exact(f: &Fixture, seeds: &[(usize, f64)], per_item: usize, best: bool, k: usize) -> Vec<usize> {
    let history: HashSet<usize> = seeds.iter().map(|s| s.0).collect();
    let n = f.cat.len();
    let mut sum = vec![0f64; n];
    let mut pos = vec![f64::NEG_INFINITY; n];
    let mut neg = vec![f64::NEG_INFINITY; n];
    let mut candidate = vec![false; n];
    let mut lists = Vec::new();
    for &(s, w) in seeds {
        let mut all: Vec<(usize, f64)> = (0..n)
            .filter(|r| !history.contains(r))
            .map(|r| (r, dot64(f.cat.row(s), f.cat.row(r))))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(per_item);
        lists.push((w, all));
    }
    for (w, list) in &lists {
        for &(r, s) in list {
            if *w > 0.0 {
                candidate[r] = true;
                sum[r] += w * s;
                pos[r] = pos[r].max(s);
            }
        }
    }
    for (w, list) in &lists {
        for &(r, s) in list {
            if *w < 0.0 && candidate[r] {
                sum[r] += w * s;
                neg[r] = neg[r].max(s);
            }
        }
    }
    let mut out: Vec<(usize, f64)> = (0..n)
        .filter(|&r| candidate[r])
        .map(|r| {
            let score = if best {
                pos[r] - if neg[r].is_finite() { neg[r] } else { 0.0 }
            } else {
                sum[r]
            };
            (r, score)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.into_iter().take(k).map(|x| x.0).collect()
}

fn overlap(got: &[String], want: &[usize], f: &Fixture) -> usize {
    let want: HashSet<&str> = want.iter().map(|&r| f.cat.ids[r].as_str()).collect();
    got.iter().filter(|g| want.contains(g.as_str())).count()
}

fn post(f: &Fixture, metric: &str, body: Value) -> Value {
    f.server
        .post_json(&format!("/v1/taste/{metric}"), &body)
        .ok_json()
}

/// History rows 100, 200, … 500 with play weights 1 … 5.
fn history() -> (Vec<Value>, Vec<(usize, f64)>) {
    let f = fx();
    let rows = [100usize, 200, 300, 400, 500];
    let items = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| json!({"id": f.cat.ids[r], "weight": (i + 1) as f64}))
        .collect();
    let seeds = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| (r, (i + 1) as f64 / 5.0))
        .collect();
    (items, seeds)
}

#[test]
fn neighbours_and_best_score_match_exact_aggregation() {
    let f = fx();
    let (items, seeds) = history();
    for (strategy, best) in [("neighbours", false), ("best_score", true)] {
        let v = post(
            f,
            "dot",
            json!({"history": items, "strategy": strategy, "fan_out": {"per_item": 30},
                   "ef": EF, "k": 10, "explain": true}),
        );
        let got = ids(&v);
        let want = exact(f, &seeds, 30, best, 10);
        assert!(
            overlap(&got, &want, f) >= 9,
            "{strategy}: {got:?} vs exact {want:?}"
        );
        assert_eq!(got[0], f.cat.ids[want[0]], "{strategy}: best item");
        assert_eq!(v["explain"]["strategy"], strategy);
        assert_eq!(v["explain"]["seeds"], 5);
        let history_ids: HashSet<&str> = seeds.iter().map(|s| f.cat.ids[s.0].as_str()).collect();
        for r in v["results"].as_array().unwrap() {
            assert!(
                !history_ids.contains(r["id"].as_str().unwrap()),
                "history excluded"
            );
            let support = r["explain"]["support"].as_u64().unwrap();
            assert!((1..=5).contains(&support), "{r}");
            assert!(
                history_ids.contains(r["explain"]["because"].as_str().unwrap()),
                "{r}"
            );
        }
    }
    // The mean is another list: the strategies are not a relabelled mean.
    let mean = ids(&post(
        f,
        "dot",
        json!({"history": items, "ef": EF, "k": 10}),
    ));
    let knn = ids(&post(
        f,
        "dot",
        json!({"history": items, "strategy": "best_score", "ef": EF, "k": 10}),
    ));
    assert_ne!(mean, knn);
    // `mean` spelled out is today's default.
    let spelled = ids(&post(
        f,
        "dot",
        json!({"history": items, "strategy": "mean", "ef": EF, "k": 10}),
    ));
    assert_eq!(mean, spelled);
}

#[test]
fn negative_seeds_subtract_in_neighbours() {
    let f = fx();
    let a = 100usize;
    // B = A's nearest item: their lists overlap, so the dislike changes A's list.
    let plain = post(
        f,
        "dot",
        json!({"history": [{"id": f.cat.ids[a]}], "strategy": "neighbours",
               "fan_out": {"per_item": 50}, "ef": EF, "k": 10}),
    );
    let b = f.cat.row_of(&ids(&plain)[0]).unwrap();
    let v = post(
        f,
        "dot",
        json!({"history": [{"id": f.cat.ids[a], "event": "like"},
                           {"id": f.cat.ids[b], "event": "dislike"}],
               "strategy": "neighbours", "fan_out": {"per_item": 50}, "ef": EF, "k": 10}),
    );
    let got = ids(&v);
    let want = exact(f, &[(a, 1.0), (b, -1.0)], 50, false, 10);
    assert!(overlap(&got, &want, f) >= 9, "{got:?} vs {want:?}");
    let plain = ids(&plain);
    assert_ne!(got[..9], plain[1..], "the dislike moved the list");
    assert!(!got.contains(&f.cat.ids[b]), "the disliked item is history");
}

#[test]
fn bad_strategy_input_gets_stable_codes() {
    let f = fx();
    let h = json!([{"id": f.cat.ids[1]}, {"id": f.cat.ids[2]}]);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"history": h, "strategy": "magic"}),
            422,
            "unknown_strategy",
        ),
        (
            json!({"history": h, "strategy": ""}),
            422,
            "unknown_strategy",
        ),
        (
            json!({"history": h, "fan_out": {"items": 3}}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "best_score", "fan_out": {"damping": 0.5}}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "neighbours", "centroids": 2}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "neighbours", "fan_out": {"per_item": 0}}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "neighbours", "fan_out": {"items": 257}}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "neighbours", "fan_out": {"damping": -1}}),
            422,
            "invalid_fan_out",
        ),
        (
            json!({"history": h, "strategy": "neighbours", "fan_out": {"k": 3}}),
            422,
            "invalid_request",
        ),
        (
            json!({"history": h, "emerging": {"max_popularity": 5, "boost": 11}}),
            422,
            "invalid_emerging",
        ),
        (
            json!({"history": h, "emerging": {"max_popularity": 5, "boost": -0.1}}),
            422,
            "invalid_emerging",
        ),
    ];
    for (body, status, code) in cases {
        let r = f.server.post_json("/v1/taste/dot", &body);
        r.assert_error(status, code);
    }
}

#[test]
fn a_zero_taste_is_degenerate_under_dot_and_l2() {
    let f = fx();
    let zero = json!([{"id": f.cat.ids[0]}]);
    for (metric, body) in [
        ("dot", json!({"history": zero})),
        ("l2", json!({"history": zero})),
        ("dot", json!({"history": zero, "strategy": "neighbours"})),
        ("dot", json!({"history": zero, "strategy": "best_score"})),
    ] {
        let r = f.server.post_json(&format!("/v1/taste/{metric}"), &body);
        r.assert_error(422, "degenerate_history");
    }
    // With another item beside it the history has a taste again.
    let both = json!({"history": [{"id": f.cat.ids[0]}, {"id": f.cat.ids[7]}], "k": 3});
    for metric in ["dot", "l2"] {
        assert_eq!(ids(&post(f, metric, both.clone())).len(), 3);
    }
}

#[test]
fn emerging_boost_lifts_emerging_items_and_unmet_quotas_are_reported() {
    let f = fx();
    // Emerging = the least popular fifth of the creators (creator popularity = sum of tracks).
    let mut pops: Vec<f64> = Vec::new();
    let mut by_creator = std::collections::HashMap::<&str, f64>::new();
    for (c, p) in f.cat.creators.iter().zip(&f.cat.popularity) {
        if !c.is_empty() {
            *by_creator.entry(c).or_default() += p.unwrap_or(0.0) as f64;
        }
    }
    pops.extend(by_creator.values());
    pops.sort_by(f64::total_cmp);
    let threshold = pops[pops.len() / 5];
    let emerging = |v: &Value| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["creator"]
                    .as_str()
                    .is_some_and(|c| by_creator[c] <= threshold)
            })
            .count()
    };
    let mut plain_total = 0;
    let mut boosted_total = 0;
    for start in 0..20 {
        let h: Vec<Value> = (0..5)
            .map(|i| json!({"id": f.cat.ids[100 + start * 37 + i * 11]}))
            .collect();
        let plain = post(f, "dot", json!({"history": h, "k": 10}));
        let boosted = post(
            f,
            "dot",
            json!({"history": h, "k": 10, "explain": true,
                   "emerging": {"max_popularity": threshold, "boost": 0.5}}),
        );
        // A boost alone reserves no slots: nothing to report at the top level.
        assert!(
            boosted.get("emerging_slots_requested").is_none(),
            "{boosted}"
        );
        assert_eq!(boosted["explain"]["emerging_slots_requested"], 0);
        for r in boosted["results"].as_array().unwrap() {
            let is_emerging = r["creator"]
                .as_str()
                .is_some_and(|c| by_creator[c] <= threshold);
            assert_eq!(r["explain"]["emerging_boost"], is_emerging, "{r}");
            assert_eq!(r["explain"]["emerging_quota"], false, "{r}");
        }
        plain_total += emerging(&plain);
        boosted_total += emerging(&boosted);
    }
    assert!(
        boosted_total > plain_total + 10,
        "boost: {boosted_total} emerging items in 200 slots, without: {plain_total}"
    );
    // A quota nothing can fill says so without `explain`.
    let h = json!([{"id": f.cat.ids[100]}]);
    let v = post(
        f,
        "dot",
        json!({"history": h, "k": 10, "emerging": {"max_popularity": -1, "min_share": 0.3}}),
    );
    assert_eq!(v["emerging_slots_requested"], 3);
    assert_eq!(v["emerging_slots_reserved"], 0);
    assert!(v.get("explain").is_none());
    // The boost also works on a seed-based list.
    let v = post(
        f,
        "dot",
        json!({"history": h, "k": 10, "strategy": "neighbours",
               "emerging": {"max_popularity": threshold, "boost": 10, "min_share": 0.2}}),
    );
    assert_eq!(v["emerging_slots_requested"], 2);
    assert!(emerging(&v) >= 2, "{v}");
}
