//! `earshot bench` from the command line: one JSON line per ef with a recall that matches an
//! exact search done here, the SVG plot, and clean refusals of bad arguments; `earshot
//! bench-http` against a real server.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const N: usize = 3_000;
const DIM: usize = 16;
const Q: usize = 100;

/// Builds an l2 collection over N clustered vectors; returns (index dir, queries.npy).
fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = Rng::new(5);
    let c = centres(&mut rng, 8, DIM);
    let data = clustered(&mut rng, &c, N, 0.3);
    let queries = clustered(&mut rng, &c, Q, 0.3);
    let npy = dir.join("v.npy");
    let qnpy = dir.join("q.npy");
    write_npy(&npy, DIM, &data);
    write_npy(&qnpy, DIM, &queries);
    let out = dir.join("idx");
    earshot(build_args(&npy, None, "l2", &out)).assert_ok();
    (out, qnpy)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn bench_reports_recall_per_ef_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, queries) = setup(dir.path());
    let svg = dir.path().join("curve.svg");
    let run = earshot([
        "bench".as_ref(),
        "--index".as_ref(),
        idx.as_os_str(),
        "--queries".as_ref(),
        queries.as_os_str(),
        "--ef".as_ref(),
        "10,200".as_ref(),
        "--plot".as_ref(),
        svg.as_os_str(),
    ]);
    run.assert_ok();
    let lines = json_lines(&run.stdout);
    let head = &lines[0];
    assert_eq!(head["count"], N);
    assert_eq!(head["dim"], DIM);
    let efs: Vec<&Value> = lines.iter().filter(|l| l.get("ef").is_some()).collect();
    assert_eq!(efs.len(), 2, "{}", run.stdout);
    for l in &efs {
        let r = l["recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r), "{l}");
        assert!(l["qps"].as_f64().unwrap() > 0.0, "{l}");
    }
    // ef 200 over 3,000 points is close to exhaustive: the ground truth computed by brute
    // force inside `bench` must agree with the search almost everywhere.
    let r200 = efs[1]["recall"].as_f64().unwrap();
    assert!(r200 >= 0.99, "recall at ef 200: {r200}");
    assert!(efs[0]["recall"].as_f64().unwrap() <= r200);
    let text = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(text.starts_with("<svg"), "not an SVG: {}", &text[..80]);
    assert!(
        text.contains("recall@10 vs queries/s"),
        "no title in the plot"
    );
    assert!(text.contains("<circle"), "no data points in the plot");
}

#[test]
fn bench_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = setup(dir.path());
    // queries of another dimension
    let wrong = dir.path().join("wrong.npy");
    write_npy(&wrong, DIM + 1, &vec![0.5; 3 * (DIM + 1)]);
    earshot([
        "bench".as_ref(),
        "--index".as_ref(),
        idx.as_os_str(),
        "--queries".as_ref(),
        wrong.as_os_str(),
    ])
    .assert_fails_with(&["17", "16"]);
    // no queries at all
    earshot(["bench".as_ref(), "--index".as_ref(), idx.as_os_str()])
        .assert_fails_with(&["--queries"]);
    // a directory that is not a collection
    earshot([
        "bench".as_ref(),
        "--index".as_ref(),
        dir.path().as_os_str(),
        "--queries".as_ref(),
        wrong.as_os_str(),
    ])
    .assert_fails_with(&["manifest.json"]);
}

#[test]
fn bench_http_measures_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = setup(dir.path());
    let server = Server::start(dir.path(), &[]);
    let svg = dir.path().join("latency.svg");
    for mode in ["similar", "taste"] {
        let run = earshot([
            "bench-http".as_ref(),
            "--url".as_ref(),
            format!("http://{}", server.addr).as_ref(),
            "--index".as_ref(),
            idx.as_os_str(),
            "--mode".as_ref(),
            mode.as_ref(),
            "--duration".as_ref(),
            "0.5".as_ref(),
            "--connections".as_ref(),
            "4".as_ref(),
            "--fractions".as_ref(),
            "0.2,0.4".as_ref(),
            "--plot".as_ref(),
            svg.as_os_str(),
        ]);
        run.assert_ok();
        let lines = json_lines(&run.stdout);
        // The maximum is the rate of the first sustained probe, at most the closed-loop one.
        let head = &lines[0];
        let (max, closed) = (
            head["max_rps"].as_f64().unwrap(),
            head["closed_loop_rps"].as_f64().unwrap(),
        );
        let probes = head["probes"].as_array().expect("probe lines");
        let last = probes.last().unwrap();
        assert!(max > 0.0 && max <= closed, "{}", run.stdout);
        assert_eq!(last["sustained"], true, "{}", run.stdout);
        assert_eq!(
            last["target_rps"].as_f64().unwrap(),
            max.round(),
            "{}",
            run.stdout
        );
        assert!(
            probes[..probes.len() - 1]
                .iter()
                .all(|p| p["sustained"] == false),
            "{}",
            run.stdout
        );
        let open: Vec<&Value> = lines.iter().filter(|l| l.get("p50_us").is_some()).collect();
        assert_eq!(open.len(), 2, "{}", run.stdout);
        for l in open {
            assert_eq!(l["mode"], mode);
            assert_eq!(l["errors"], 0, "{l}");
            assert!(l["ok"].as_u64().unwrap() > 0, "{l}");
            let p = |k: &str| l[k].as_u64().unwrap();
            assert!(
                p("p50_us") <= p("p99_us") && p("p99_us") <= p("max_us"),
                "{l}"
            );
        }
        let text = std::fs::read_to_string(&svg).expect("the plot was written");
        assert!(
            text.starts_with("<svg") && text.contains(mode),
            "{mode} plot"
        );
    }
}

#[test]
fn bench_http_batches_queries_and_counts_failed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = setup(dir.path());
    let server = Server::start(dir.path(), &[]);
    let url = format!("http://{}", server.addr);
    let run = |mode: &str, extra: &[&str]| {
        let mut args = vec![
            "bench-http",
            "--url",
            &url,
            "--index",
            idx.to_str().unwrap(),
            "--mode",
            mode,
            "--duration",
            "0.4",
            "--connections",
            "2",
            "--fractions",
            "0.3",
        ];
        args.extend_from_slice(extra);
        earshot(args.iter().map(std::ffi::OsStr::new))
    };
    for mode in ["similar", "taste"] {
        let out = run(mode, &["--batch", "8"]);
        out.assert_ok();
        let lines = json_lines(&out.stdout);
        let (rps, qps) = (
            lines[0]["max_rps"].as_f64().unwrap(),
            lines[0]["max_queries_per_s"].as_f64().unwrap(),
        );
        assert!(
            rps > 0.0 && (qps - 8.0 * rps).abs() <= 8.0,
            "{}",
            out.stdout
        );
        assert_eq!(lines[1]["queries_per_request"], 8, "{}", out.stdout);
        assert_eq!(lines[1]["errors"], 0, "{}", out.stdout);
        assert!(lines[1]["ok"].as_u64().unwrap() > 0, "{}", out.stdout);
    }
    // k = 0 fails every query of a batch while the batch itself answers 200: all errors.
    let out = run("similar", &["--batch", "4", "--k", "0", "--max-rate", "40"]);
    out.assert_ok();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[1]["ok"], 0, "{}", out.stdout);
    assert!(lines[1]["errors"].as_u64().unwrap() > 0, "{}", out.stdout);
    // No rate can meet a 1 µs p99: a clean failure that says which limit was not met.
    run("similar", &["--sustain-p99-ms", "0.001"]).assert_fails_with(&["--sustain-p99-ms"]);
    // Out-of-range flags are usage errors: exit code 2, like every clap-validated flag.
    for bad in ["0", "257"] {
        let out = run("similar", &["--batch", bad]);
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("--batch"), "{}", out.stderr);
    }
}

#[test]
fn bench_http_refuses_bad_arguments_and_silent_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = setup(dir.path());
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench-http",
            "--url",
            &url,
            "--index",
            idx.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        earshot(args.iter().map(std::ffi::OsStr::new))
    };
    let started = std::time::Instant::now();
    run(&["--timeout-ms", "200"]).assert_fails_with(&["did not answer", "in time"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    run(&["--fractions", "0.5,-1"]).assert_fails_with(&["--fractions"]);
    run(&["--max-rate", "0"]).assert_fails_with(&["--max-rate"]);
    earshot([
        "bench-http".as_ref(),
        "--url".as_ref(),
        "https://example.com".as_ref(),
        "--index".as_ref(),
        idx.as_os_str(),
    ])
    .assert_fails_with(&["http://"]);
}
