//! The live recall estimate (`serve --recall-sample-rate`): two collections built with the
//! real CLI from the same vectors, one with a good graph and one with a deliberately poor
//! one (tiny `--m` and `--ef-construction`), served by one real server that checks every
//! query; the estimates it exports must tell them apart beyond their sampling error and
//! agree with the recall this test measures itself on the answers it got.

mod common;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use common::*;
use earshot_core::metric::Metric;
use serde_json::json;

const N: usize = 5_000;
const DIM: usize = 32;
const SEARCHES: usize = 300;
const SIMILARS: usize = 100;
const K: usize = 10;
/// A low beam, so that the graph's quality shows in the answers.
const EF: usize = 10;
/// Ties at the k-th distance count as hits (as the server's check does).
const SLACK: f64 = 1e-5;

/// The value of `name{collection="C"}` in a `/metrics` text.
fn metric(text: &str, name: &str, collection: &str) -> Option<f64> {
    let prefix = format!("{name}{{collection=\"{collection}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

struct Estimate {
    mean: f64,
    stderr: f64,
    samples: f64,
}

/// Waits until the server has checked `total` samples of `collection` in all (none
/// dropped), `window` of them of the version in service, then reads its estimate.
fn estimate(s: &Server, collection: &str, total: usize, window: usize) -> Estimate {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = s.get("/metrics").body;
        let get = |name: &str| metric(&text, name, collection);
        let checked = get("earshot_recall_samples_total").unwrap_or(0.0);
        let dropped = get("earshot_recall_samples_dropped_total").unwrap_or(0.0);
        assert_eq!(dropped, 0.0, "{text}");
        if checked >= total as f64 {
            assert_eq!(checked, total as f64, "{text}");
            assert_eq!(get("earshot_recall_window_samples"), Some(window as f64));
            return Estimate {
                mean: get("earshot_recall_estimate").expect("estimate"),
                stderr: get("earshot_recall_estimate_stderr").expect("stderr"),
                samples: window as f64,
            };
        }
        assert!(
            Instant::now() < deadline,
            "{collection}: {checked} of {total} checked after 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `queries` as searches and `similars` items as `similar` queries to `collection`,
/// whose server has checked `before` samples of it (of the version in service: all of them);
/// returns the recall@k of the answers, measured here.
fn query_all(
    s: &Server,
    collection: &str,
    data: &[f32],
    queries: &[f32],
    similars: usize,
    before: usize,
) -> f64 {
    let row = |r: usize| &data[r * DIM..(r + 1) * DIM];
    // The exact k-th distance of `q` (leaving out `skip`), and how many of `ids` reach it.
    let hits = |q: &[f32], ids: Vec<usize>, skip: Option<usize>| {
        let exact = exact_top_k(Metric::L2, data, DIM, q, K, |r| Some(r) == skip);
        let kth = exact[K - 1].0;
        // A poor graph may find fewer than k: the missing ones are misses.
        assert!(ids.len() <= K);
        ids.iter()
            .filter(|&&r| distance(Metric::L2, q, row(r)) <= kth + SLACK)
            .count()
    };
    let ids = |v: &serde_json::Value| -> Vec<usize> {
        check_results(v)
            .iter()
            .map(|(id, _)| id.parse().expect("numeric id"))
            .collect()
    };
    let mut found = 0;
    for (i, q) in queries.chunks_exact(DIM).enumerate() {
        let body = json!({"collection": collection, "vector": q, "k": K, "ef": EF});
        let v = s.post_json("/v1/search", &body).ok_json();
        found += hits(q, ids(&v), None);
        // The checker runs at the lowest priority: on a busy machine it may lag far behind
        // the queries, and its queue (256) would drop samples. Let it catch up now and then.
        if i % 100 == 99 {
            estimate(s, collection, before + i + 1, i + 1);
        }
    }
    // `similar` from evenly spread items: their own item is left out, on both sides.
    for i in 0..similars {
        let item = i * (N / similars);
        let path = format!("/v1/{collection}/{item}/similar?k={K}&ef={EF}");
        let v = s.get(&path).ok_json();
        found += hits(row(item), ids(&v), Some(item));
    }
    found as f64 / ((queries.len() / DIM + similars) * K) as f64
}

/// `N` clustered vectors and `SEARCHES` queries from the same clusters.
fn data(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let cs = centres(&mut rng, 40, DIM);
    let data = clustered(&mut rng, &cs, N, 0.5);
    let queries = clustered(&mut rng, &cs, SEARCHES, 0.5);
    (data, queries)
}

/// `earshot build` of `npy` into `out` with this `--m` and `--ef-construction`, plus `extra`.
fn build(npy: &std::path::Path, out: &std::path::Path, graph: [&str; 2], extra: &[&str]) {
    let mut args = build_args(npy, None, "l2", out);
    args.extend(["--m", graph[0], "--ef-construction", graph[1]].map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    earshot(&args).assert_ok();
}

/// A good graph, and one deliberately poor that still passes every check at open
/// (checksums, links, the sanity probe).
const GOOD: [&str; 2] = ["16", "200"];
const POOR: [&str; 2] = ["4", "8"];

#[test]
fn a_poor_graph_reports_a_lower_estimate_than_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, queries) = data(14);
    let npy = dir.path().join("vectors.npy");
    write_npy(&npy, DIM, &data);
    let root = dir.path().join("indexes");
    build(&npy, &root.join("good"), GOOD, &[]);
    build(&npy, &root.join("poor"), POOR, &[]);
    // Every query checked, as fast as the checker can; warn below 0.8.
    let s = Server::start(
        &root,
        &[
            "--recall-sample-rate",
            "1",
            "--recall-cpu-budget",
            "1",
            "--recall-floor",
            "0.8",
        ],
    );
    let sent = SEARCHES + SIMILARS;
    let measured_good = query_all(&s, "good", &data, &queries, SIMILARS, 0);
    let measured_poor = query_all(&s, "poor", &data, &queries, SIMILARS, 0);
    let good = estimate(&s, "good", sent, sent);
    let poor = estimate(&s, "poor", sent, sent);
    eprintln!(
        "good: measured {measured_good:.4}, estimate {:.4} ± {:.4} over {}; \
         poor: measured {measured_poor:.4}, estimate {:.4} ± {:.4} over {}",
        good.mean, good.stderr, good.samples, poor.mean, poor.stderr, poor.samples
    );
    for (e, measured) in [(&good, measured_good), (&poor, measured_poor)] {
        assert_eq!(e.samples, sent as f64);
        assert!(e.stderr > 0.0 && e.stderr < 0.05, "stderr {}", e.stderr);
        // Every answer checked: the estimate is exactly the recall of the answers served.
        assert!(
            (e.mean - measured).abs() <= 1e-9,
            "estimate {} vs measured {measured}",
            e.mean
        );
    }
    assert!(
        measured_good > 0.9,
        "the good graph's recall {measured_good}"
    );
    let margin = 3.0 * (good.stderr.powi(2) + poor.stderr.powi(2)).sqrt();
    assert!(
        good.mean - poor.mean > margin,
        "good {} vs poor {}: not apart by 3 standard errors ({margin})",
        good.mean,
        poor.mean
    );
    // The floor's warning names the poor collection only.
    let log = s.stderr();
    let warned = |c: &str| {
        log.lines()
            .any(|l| l.contains("below the floor") && l.contains(&format!("collection={c}")))
    };
    assert!(warned("poor"), "no warning for the poor graph:\n{log}");
    assert!(!warned("good"), "a warning for the good graph:\n{log}");
}

#[test]
fn a_new_version_starts_a_fresh_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let (data, queries) = data(16);
    let npy = dir.path().join("vectors.npy");
    write_npy(&npy, DIM, &data);
    let root = dir.path().join("indexes");
    let out = root.join("tracks");
    build(&npy, &out, GOOD, &["--versioned"]);
    let s = Server::start(
        &root,
        &["--recall-sample-rate", "1", "--recall-cpu-budget", "1"],
    );
    let half = &queries[..200 * DIM];
    let before = query_all(&s, "tracks", &data, half, 0, 0);
    let e = estimate(&s, "tracks", 200, 200);
    assert!((e.mean - before).abs() < 1e-9, "{} vs {before}", e.mean);

    // The poor graph's version replaces it: the good one's estimate goes at once (no sample
    // needed), and the new one's counts only its own samples.
    build(&npy, &out, POOR, &["--versioned"]);
    let v = s.post_json("/admin/reload", &json!({})).ok_json();
    assert_eq!(v["collections"]["tracks"]["outcome"], "swapped", "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&s.get("/metrics").body, "earshot_recall_estimate", "tracks").is_some() {
        assert!(
            Instant::now() < deadline,
            "the replaced version's estimate stays"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = query_all(&s, "tracks", &data, half, 0, 200);
    let e = estimate(&s, "tracks", 400, 200);
    assert!((e.mean - after).abs() < 1e-9, "{} vs {after}", e.mean);
    assert!(after < before, "poor {after} vs good {before}");
}

#[test]
fn sample_rate_zero_checks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(15);
    let data = rng.gauss_vec(200 * 8, 1.0);
    let npy = dir.path().join("vectors.npy");
    write_npy(&npy, 8, &data);
    let root = dir.path().join("indexes");
    earshot(build_args(&npy, None, "l2", &root.join("tracks"))).assert_ok();
    let vars = [
        ("EARSHOT_INDEX_ROOT", root.to_str().unwrap()),
        ("EARSHOT_ADDR", "127.0.0.1:0"),
        ("EARSHOT_RECALL_SAMPLE_RATE", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let s = Server::try_spawn_env(&[OsString::from("serve")], &vars).expect("serve starts");
    for i in 0..20 {
        s.get(&format!("/v1/tracks/{i}/similar?k=5")).ok_json();
    }
    let text = s.get("/metrics").body;
    assert!(!text.contains("earshot_recall"), "{text}");
    assert!(!s.stderr().contains("live recall estimate on"));
}

#[test]
fn bad_recall_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    for (flag, value) in [
        ("--recall-sample-rate", "NaN"),
        ("--recall-sample-rate", "1.5"),
        ("--recall-sample-rate", "often"),
        ("--recall-floor", "-0.1"),
        ("--recall-floor", "inf"),
        ("--recall-cpu-budget", "0"),
        ("--recall-cpu-budget", "2"),
    ] {
        let arg = format!("{flag}={value}");
        let run = earshot(["serve", "--index-root", root, "--addr", "127.0.0.1:0", &arg]);
        assert_eq!(run.status.code(), Some(2), "{arg}: {}", run.stderr);
        assert_no_panic(&run.stderr);
        assert!(
            run.stderr.contains(flag) && run.stderr.contains(value),
            "{arg}: {}",
            run.stderr
        );
    }
    // From the environment, too.
    let env = [("EARSHOT_RECALL_CPU_BUDGET".to_string(), "-1".to_string())];
    let run = earshot_env(["serve", "--index-root", root], &env);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--recall-cpu-budget"), "{}", run.stderr);
}
