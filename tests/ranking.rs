//! Taste and ranking semantics over real HTTP: every option, every bad input, filtered
//! recall against exact filtered brute force, and randomised property checks that every
//! constraint holds on every response.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

const DIM: usize = 24;
const TRACKS: usize = 20_000;

struct Fixture {
    cat: Catalogue,
    unit: Vec<f32>,
    /// Creator name → summed popularity of its tracks (the server's creator popularity).
    creator_pop: HashMap<String, f32>,
    server: Server,
    _root: PathBuf,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fx() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // Popularity is uniform over 0 … 9,999.75, so `max_popularity` picks the selectivity.
        let cat = catalogue(11, TRACKS, DIM, 20, 1_500, 50, 40);
        let root = build_tracks(dir.path(), &cat, true);
        let mut creator_pop: HashMap<String, f32> = HashMap::new();
        for (c, p) in cat.creators.iter().zip(&cat.popularity) {
            if !c.is_empty() {
                *creator_pop.entry(c.clone()).or_default() += p.unwrap_or(0.0);
            }
        }
        let unit = normalized_rows(&cat.vectors, DIM);
        let (server, reaper) = serve_fixture(&root, dir.path());
        Fixture {
            cat,
            unit,
            creator_pop,
            server,
            _root: root,
            _dir: dir,
            _reaper: reaper,
        }
    })
}

impl Fixture {
    fn unit_row(&self, i: usize) -> &[f32] {
        &self.unit[i * DIM..(i + 1) * DIM]
    }
    fn row(&self, id: &str) -> usize {
        self.cat
            .row_of(id)
            .unwrap_or_else(|| panic!("unknown id {id}"))
    }
    fn creator_of(&self, id: &str) -> &str {
        &self.cat.creators[self.row(id)]
    }
    /// Exact top-k (cosine) over the rows `allow` admits.
    fn exact(&self, q: &[f32], k: usize, allow: impl Fn(usize) -> bool) -> Vec<(usize, f64)> {
        let q = normalized(q);
        let mut all: Vec<(usize, f64)> = (0..self.cat.len())
            .filter(|&r| allow(r))
            .map(|r| (r, 1.0 - dot64(&q, self.unit_row(r))))
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1));
        all.truncate(k);
        all
    }
    fn post(&self, path: &str, body: Value) -> Value {
        self.server.post_json(path, &body).ok_json()
    }
}

fn ids(v: &Value) -> Vec<String> {
    check_results(v).into_iter().map(|(id, _)| id).collect()
}

/// Recall of `got` against exact filtered top-10, ties at equal distance counting as hits.
fn filtered_recall(f: &Fixture, max_pop: f32, queries: usize) -> (f64, usize) {
    let mut rng = Rng::new(3);
    let (mut hits, mut total, mut short) = (0usize, 0usize, 0usize);
    for _ in 0..queries {
        let q = f.cat.row(rng.below(f.cat.len())).to_vec();
        let allow = |r: usize| f.cat.popularity[r].is_some_and(|p| p <= max_pop);
        let truth = f.exact(&q, 10, allow);
        let v = f.post(
            "/v1/search",
            json!({"collection":"tracks","vector":q,"k":10,"filter":{"max_popularity":max_pop}}),
        );
        let got = ids(&v);
        if got.len() < 10 {
            short += 1;
        }
        let kth = truth.last().unwrap().1;
        let qn = normalized(&q);
        for id in &got {
            let r = f.row(id);
            assert!(allow(r), "{id} violates max_popularity {max_pop}");
            if 1.0 - dot64(&qn, f.unit_row(r)) <= kth + 1e-5 {
                hits += 1;
            }
        }
        total += truth.len();
    }
    (hits as f64 / total as f64, short)
}

#[test]
fn filtered_recall_at_10_and_1_percent_selectivity() {
    let f = fx();
    for (max_pop, label) in [(999.75f32, "10%"), (99.75, "1%")] {
        let selectivity = f
            .cat
            .popularity
            .iter()
            .filter(|p| p.is_some_and(|p| p <= max_pop))
            .count() as f64
            / f.cat.len() as f64;
        let (recall, short) = filtered_recall(f, max_pop, 100);
        eprintln!(
            "selectivity {label} (measured {selectivity:.4}): filtered recall@10 {recall:.4}"
        );
        assert!(recall >= 0.90, "filtered recall@10 at {label}: {recall}");
        assert_eq!(
            short, 0,
            "{short} queries returned fewer than 10 results at {label}"
        );
    }
}

#[test]
fn creator_allow_list_and_deny_list() {
    let f = fx();
    let q = f.cat.row(123).to_vec();
    let allowed = ["artist-0001", "artist-0002", "artist-0003"];
    let v = f.post(
        "/v1/search",
        json!({"collection":"tracks","vector":q,"k":10,"filter":{"creators":allowed}}),
    );
    let got = ids(&v);
    let truth = f.exact(&q, 10, |r| allowed.contains(&f.cat.creators[r].as_str()));
    assert_eq!(got.len(), truth.len().min(10));
    let truth_ids: Vec<&str> = truth.iter().map(|(r, _)| f.cat.ids[*r].as_str()).collect();
    assert_eq!(got, truth_ids, "a small allow-list is searched exactly");

    let deny: Vec<&str> = f.cat.creators[..200]
        .iter()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    let v = f.post(
        "/v1/search",
        json!({"collection":"tracks","vector":q,"k":20,"filter":{"exclude_creators":deny}}),
    );
    for id in ids(&v) {
        assert!(
            !deny.contains(&f.creator_of(&id)),
            "{id} by a denied creator"
        );
    }
    assert_eq!(results(&v).len(), 20);
}

#[test]
fn exclude_and_exclude_same_creator_in_similar() {
    let f = fx();
    let id = f.cat.ids[500].clone();
    let first = ids(&f.post(&format!("/v1/tracks/{id}/similar"), json!({"k": 10})));
    let excluded: Vec<&String> = first.iter().take(5).collect();
    let v = f.post(
        &format!("/v1/tracks/{id}/similar"),
        json!({"k": 10, "exclude": excluded}),
    );
    let got = ids(&v);
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|g| !excluded.contains(&g)),
        "excluded ids returned: {got:?}"
    );
    assert_eq!(
        &got[..5],
        &first[5..],
        "the next best backfill the excluded ones"
    );

    let creator = f.creator_of(&id).to_string();
    let v = f
        .server
        .get(&format!(
            "/v1/tracks/{id}/similar?k=15&exclude_same_creator=true"
        ))
        .ok_json();
    let got = ids(&v);
    assert_eq!(got.len(), 15);
    assert!(
        got.iter().all(|g| f.creator_of(g) != creator),
        "same creator returned"
    );
}

#[test]
fn max_per_creator_backfills_to_k() {
    let f = fx();
    let id = f.cat.ids[42].clone();
    for cap in [1usize, 2] {
        let v = f.post(
            &format!("/v1/tracks/{id}/similar"),
            json!({"k": 20, "max_per_creator": cap, "explain": true}),
        );
        let got = ids(&v);
        assert_eq!(got.len(), 20);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for g in &got {
            let c = f.creator_of(g);
            if !c.is_empty() {
                *counts.entry(c).or_default() += 1;
            }
        }
        assert!(
            counts.values().all(|&n| n <= cap),
            "cap {cap} broken: {counts:?}"
        );
    }
    // The unconstrained list has repeated creators here, so the cap must have moved items.
    let v = f.post(
        &format!("/v1/tracks/{id}/similar"),
        json!({"k": 20, "max_per_creator": 1, "explain": true}),
    );
    let moved = results(&v).iter().any(|r| {
        r["explain"]["moved_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "max_per_creator")
    });
    assert!(moved, "explain shows no max_per_creator effect: {v}");
}

#[test]
fn emerging_quota_is_met_and_explained() {
    let f = fx();
    // Emerging: creators in the least popular fifth.
    let mut pops: Vec<f32> = f.creator_pop.values().copied().collect();
    pops.sort_by(|a, b| a.total_cmp(b));
    let p = pops[pops.len() / 5];
    let id = f.cat.ids[77].clone();
    let v = f.post(
        &format!("/v1/tracks/{id}/similar"),
        json!({"k": 10, "emerging": {"max_popularity": p, "min_share": 0.3}, "explain": true}),
    );
    let got = ids(&v);
    assert_eq!(got.len(), 10);
    let reserved = v["explain"]["emerging_slots_reserved"].as_u64().unwrap() as usize;
    assert_eq!(v["explain"]["emerging_slots_requested"], 3);
    let emerging = got
        .iter()
        .filter(|g| {
            f.creator_pop
                .get(f.creator_of(g))
                .is_some_and(|&cp| cp <= p)
        })
        .count();
    assert!(
        reserved > 0,
        "no emerging creator near a typical track? {v}"
    );
    assert!(
        emerging >= reserved,
        "{emerging} emerging items for {reserved} reserved slots"
    );
    let flagged = results(&v)
        .iter()
        .filter(|r| r["explain"]["emerging_quota"] == true)
        .count();
    assert!(flagged >= reserved);
}

fn taste(f: &Fixture, body: Value) -> Value {
    f.post("/v1/taste/tracks", body)
}

#[test]
fn negative_evidence_pulls_away() {
    let f = fx();
    let (a, b) = (f.cat.ids[10].clone(), f.cat.ids[11].clone());
    let mean_sim_to_b = |v: &Value| {
        let bu = f.unit_row(f.row(&b)).to_vec();
        let got = ids(v);
        got.iter()
            .map(|g| dot64(&bu, f.unit_row(f.row(g))))
            .sum::<f64>()
            / got.len() as f64
    };
    let plain = taste(
        f,
        json!({"history":[{"id":a},{"id":b,"event":"play"}],"k":10}),
    );
    let pulled = taste(
        f,
        json!({"history":[{"id":a,"event":"like"},{"id":b,"event":"dislike"}],"k":10}),
    );
    assert!(
        mean_sim_to_b(&pulled) < mean_sim_to_b(&plain),
        "a disliked track should push results away from it"
    );
}

#[test]
fn recency_half_life_and_reproducible_now() {
    let f = fx();
    let (old, new) = (f.cat.ids[20].clone(), f.cat.ids[9000].clone());
    let body = json!({
        "history": [
            {"id": old, "played_at": "2024-01-01T00:00:00Z"},
            {"id": new, "played_at": "2026-11-01T00:00:00+01:00"}
        ],
        "half_life": "30d", "now": "2026-11-26T00:00:00Z", "k": 10
    });
    let a = taste(f, body.clone());
    let b = taste(f, body.clone());
    assert_eq!(a, b, "same request, same answer");
    let recent = ids(&taste(f, json!({"history":[{"id":new}],"k":10})));
    assert_eq!(
        ids(&a),
        recent,
        "a 3-year-old play at half-life 30d counts for almost nothing"
    );
    // Without decay both count equally, which changes the list.
    let undecayed = taste(f, json!({"history":[{"id":old},{"id":new}],"k":10}));
    assert_ne!(ids(&undecayed), recent);
}

#[test]
fn centroids_cover_separate_tastes() {
    let f = fx();
    // Two tracks far apart (the least similar pair among a few candidates).
    let a = 0usize;
    let b = (1..2000)
        .min_by(|&x, &y| {
            dot64(f.unit_row(a), f.unit_row(x)).total_cmp(&dot64(f.unit_row(a), f.unit_row(y)))
        })
        .unwrap();
    let mut history = vec![];
    for r in [a, b] {
        for (id, _) in check_results(
            &f.server
                .get(&format!("/v1/tracks/{}/similar?k=3", f.cat.ids[r]))
                .ok_json(),
        ) {
            history.push(json!({"id": id}));
        }
        history.push(json!({"id": f.cat.ids[r]}));
    }
    let body = json!({"history": history, "centroids": 2, "k": 10, "explain": true});
    let v = taste(f, body.clone());
    assert_eq!(v, taste(f, body), "centroids are deterministic");
    let got = ids(&v);
    assert_eq!(got.len(), 10);
    let near = |x: usize, g: &str| dot64(f.unit_row(x), f.unit_row(f.row(g)));
    let to_a = got.iter().filter(|g| near(a, g) > near(b, g)).count();
    assert!(
        (3..=7).contains(&to_a),
        "both tastes get slots: {to_a} of 10 near a"
    );
    let weights = v["explain"]["centroid_weights"].as_array().unwrap();
    assert_eq!(weights.len(), 2);
    let used: HashSet<u64> = results(&v)
        .iter()
        .map(|r| r["explain"]["centroid"].as_u64().unwrap())
        .collect();
    assert_eq!(used.len(), 2);
}

#[test]
fn taste_across_collections() {
    let f = fx();
    let id = f.cat.ids[5].clone();
    let v = f.post(
        "/v1/taste/creators",
        json!({"history":[{"id": id}], "history_collection": "tracks", "k": 5}),
    );
    let got = ids(&v);
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|g| g.starts_with("artist-")), "{got:?}");
    assert!(
        got.contains(&f.creator_of(&id).to_string()),
        "a track's own artist is near its taste"
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let f = fx();
    let id = f.cat.ids[1].clone();
    let h = json!([{"id": id}]);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"history":[{"id":id,"event":"hum"}]}),
            422,
            "unknown_event",
        ),
        (
            json!({"history":h,"half_life":"-30d"}),
            422,
            "invalid_half_life",
        ),
        (
            json!({"history":h,"half_life":"0s"}),
            422,
            "invalid_half_life",
        ),
        (
            json!({"history":h,"now":"yesterday"}),
            422,
            "invalid_timestamp",
        ),
        (
            json!({"history":[{"id":id,"played_at":"2026-13-01T00:00:00Z"}]}),
            422,
            "invalid_timestamp",
        ),
        (
            json!({"history":h,"centroids":2}),
            422,
            "too_many_centroids",
        ),
        (json!({"history":h,"centroids":0}), 400, "invalid_centroids"),
        (
            json!({"history":[{"id":id,"event":"skip"}]}),
            422,
            "no_positive_history",
        ),
        (
            json!({"history":h,"filter":{"creators":["artist-0001"],"exclude_creators":["artist-0001"]}}),
            422,
            "conflicting_filters",
        ),
        (
            json!({"history":h,"filter":{"min_popularity":10,"max_popularity":5}}),
            422,
            "conflicting_filters",
        ),
        (
            json!({"history":h,"exclude":vec!["x"; 10_001]}),
            400,
            "exclude_too_large",
        ),
        (
            json!({"history":h,"max_per_creator":0}),
            400,
            "invalid_max_per_creator",
        ),
        (
            json!({"history":h,"emerging":{"max_popularity":5,"min_share":1.5}}),
            422,
            "invalid_emerging",
        ),
        (
            json!({"history":h,"max_per_artist":1}),
            422,
            "invalid_request",
        ),
        (
            json!({"history":[{"id":id,"weight":-1}]}),
            422,
            "invalid_weight",
        ),
    ];
    for (body, status, code) in cases {
        let r = f.server.post_json("/v1/taste/tracks", &body);
        let msg = r.assert_error(status, code);
        assert!(!msg.is_empty(), "{body}");
    }
}

/// Random requests mixing every option; every response must honour every constraint.
#[test]
fn every_constraint_holds_on_every_response() {
    let f = fx();
    let mut rng = Rng::new(2026);
    let mut pops: Vec<f32> = f.creator_pop.values().copied().collect();
    pops.sort_by(|a, b| a.total_cmp(b));
    for round in 0..150 {
        let k = 1 + rng.below(30);
        let mut body = json!({"k": k, "explain": true});
        let exclude: Vec<String> = (0..rng.below(50))
            .map(|_| f.cat.ids[rng.below(f.cat.len())].clone())
            .collect();
        body["exclude"] = json!(exclude);
        let cap = (rng.below(3) == 0).then(|| 1 + rng.below(3));
        if let Some(c) = cap {
            body["max_per_creator"] = json!(c);
        }
        let pop_max = (rng.below(3) == 0).then(|| 500.0 + rng.below(9_000) as f32);
        if let Some(p) = pop_max {
            body["filter"] = json!({"max_popularity": p});
        }
        let emerging = (rng.below(3) == 0).then(|| pops[rng.below(pops.len() / 2)]);
        if let Some(p) = emerging {
            body["emerging"] = json!({"max_popularity": p, "min_share": 0.3});
        }
        let (path, history): (String, Vec<String>) = if round % 2 == 0 {
            let hist: Vec<String> = (0..1 + rng.below(8))
                .map(|_| f.cat.ids[rng.below(f.cat.len())].clone())
                .collect();
            body["history"] = json!(hist.iter().map(|h| json!({"id": h})).collect::<Vec<_>>());
            if hist.len() >= 2 && rng.below(2) == 0 {
                let distinct: HashSet<&String> = hist.iter().collect();
                body["centroids"] = json!(1 + rng.below(distinct.len().min(3)));
            }
            ("/v1/taste/tracks".into(), hist)
        } else {
            let id = f.cat.ids[rng.below(f.cat.len())].clone();
            (
                format!("/v1/tracks/{}/similar", encode_segment(&id)),
                vec![id],
            )
        };
        let v = f.post(&path, body.clone());
        let got = ids(&v);
        let admissible = |id: &str| {
            let r = f.row(id);
            !exclude.iter().any(|e| e == id)
                && !history.iter().any(|h| h == id)
                && pop_max.is_none_or(|p| f.cat.popularity[r].is_some_and(|x| x <= p))
        };
        for g in &got {
            assert!(
                admissible(g),
                "round {round}: {g} should not be returned for {body}"
            );
        }
        if let Some(c) = cap {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for g in &got {
                let cr = f.creator_of(g);
                if !cr.is_empty() {
                    *counts.entry(cr).or_default() += 1;
                }
            }
            assert!(
                counts.values().all(|&n| n <= c),
                "round {round}: cap {c}: {counts:?}"
            );
        }
        // k results whenever k admissible items exist (true here for every draw: the
        // filters leave thousands of items, the cap ≥ 1 leaves ≥ 1,400 creators).
        assert_eq!(got.len(), k, "round {round}: short list for {body}");
        if let Some(p) = emerging {
            let reserved = v["explain"]["emerging_slots_reserved"].as_u64().unwrap() as usize;
            let count = got
                .iter()
                .filter(|g| {
                    f.creator_pop
                        .get(f.creator_of(g))
                        .is_some_and(|&cp| cp <= p)
                })
                .count();
            assert!(
                count >= reserved,
                "round {round}: quota {reserved}, got {count}: {body} -> {v}"
            );
        }
    }
}
