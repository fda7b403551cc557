//! How a container configures earshot: every `serve` / `route` flag also read from an
//! `EARSHOT_*` environment variable (a flag given on the command line wins), log lines as
//! JSON objects with `--log-format json` / `EARSHOT_LOG_FORMAT=json`, and a caller's W3C
//! `traceparent` in the request's log span.

mod common;

use std::ffi::OsString;

use common::*;
use serde_json::Value;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn serve_reads_its_flags_from_the_environment_and_logs_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalogue(3, 200, 8, 4, 20, 10, 5);
    let (npy, csv) = cat.write(tmp.path(), "tracks");
    let root = tmp.path().join("indexes");
    earshot(build_args(&npy, Some(&csv), "cosine", &root.join("tracks"))).assert_ok();
    let root = root.to_str().unwrap();

    // Nothing on the command line but the subcommand.
    let vars = env(&[
        ("EARSHOT_INDEX_ROOT", root),
        ("EARSHOT_ADDR", "127.0.0.1:0"),
        ("EARSHOT_DEFAULT_EF", "7"),
        ("EARSHOT_LOG_FORMAT", "json"),
    ]);
    let s = Server::try_spawn_env(&[OsString::from("serve")], &vars).expect("serve starts");
    let c = s.get("/v1/collections").ok_json();
    assert_eq!(c["collections"][0]["default_ef"], 7, "{c}");
    let logged = s.stderr();
    let lines: Vec<&str> = logged.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "serve logged nothing");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    drop(s);

    // A flag on the command line wins over the environment.
    let args: Vec<OsString> = ["serve", "--default-ef", "9"].map(OsString::from).into();
    let s = Server::try_spawn_env(&args, &vars).expect("serve starts");
    let c = s.get("/v1/collections").ok_json();
    assert_eq!(c["collections"][0]["default_ef"], 9, "{c}");
    drop(s);

    // A bad value from the environment is refused naming the variable.
    let bad = env(&[
        ("EARSHOT_INDEX_ROOT", root),
        ("EARSHOT_ADDR", "127.0.0.1:0"),
        ("EARSHOT_MAX_QUEUE", "lots"),
    ]);
    usage_error(earshot_env(["serve"], &bad), &["--max-queue", "lots"]);
    // So is an unknown log format.
    let xml = env(&[("EARSHOT_LOG_FORMAT", "xml")]);
    usage_error(earshot_env(["serve"], &xml), &["--log-format", "xml"]);
}

/// A usage error: exit code 2 (clap's), no panic, every word in stderr.
fn usage_error(run: Run, words: &[&str]) {
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert_no_panic(&run.stderr);
    for w in words {
        assert!(run.stderr.contains(w), "{w:?} not in:\n{}", run.stderr);
    }
}

#[test]
fn every_serve_and_route_flag_names_its_environment_variable_in_help() {
    for cmd in ["serve", "route"] {
        let out = earshot([cmd, "--help"]).assert_ok().stdout.clone();
        let flags: Vec<&str> = out
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("--") && !l.starts_with("--help"))
            .collect();
        assert!(flags.len() > 10, "{out}");
        for f in flags {
            let name = f.split([' ', '=']).next().unwrap();
            let var = format!(
                "EARSHOT_{}",
                name.trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            assert!(
                out.contains(&format!("[env: {var}=")),
                "`{cmd} --help` does not name {var} for {name}:\n{out}"
            );
        }
    }
}

#[test]
fn a_callers_traceparent_is_in_the_requests_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalogue(4, 100, 8, 4, 20, 10, 5);
    let (npy, csv) = cat.write(tmp.path(), "tracks");
    let root = tmp.path().join("indexes");
    earshot(build_args(&npy, Some(&csv), "cosine", &root.join("tracks"))).assert_ok();
    let vars = env(&[
        ("EARSHOT_LOG_FORMAT", "json"),
        // tower-http logs each request's start and end at debug, inside the request span.
        ("EARSHOT_LOG", "info,tower_http=debug"),
    ]);
    let args: Vec<OsString> = vec![
        "serve".into(),
        "--index-root".into(),
        root.into(),
        "--addr".into(),
        "127.0.0.1:0".into(),
    ];
    let s = Server::try_spawn_env(&args, &vars).expect("serve starts");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http(
        "GET",
        &s.url("/healthz"),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
        None,
    );
    assert_eq!(r.status, 200);
    let id = r.request_id.expect("x-request-id");
    // The line is written as the response goes out; give the writer a moment.
    let mut found = None;
    for _ in 0..50 {
        found = s
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["span"]["trace"] == trace);
        if found.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let line = found.unwrap_or_else(|| panic!("no log line with trace {trace}:\n{}", s.stderr()));
    assert_eq!(line["span"]["id"], id.as_str(), "{line}");
}

/// `--access-log all`: one INFO line per answer at the default log level, in the request's
/// span (id, trace, method, URI) with status and latency; the default (`errors`) logs only
/// 5xx answers, so a 200 and a 404 leave no line.
#[test]
fn the_access_log_has_one_line_per_answer_with_status_and_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = catalogue(4, 100, 8, 4, 20, 10, 5);
    let (npy, csv) = cat.write(tmp.path(), "tracks");
    let root = tmp.path().join("indexes");
    earshot(build_args(&npy, Some(&csv), "cosine", &root.join("tracks"))).assert_ok();
    let args: Vec<OsString> = vec![
        "serve".into(),
        "--index-root".into(),
        root.into(),
        "--addr".into(),
        "127.0.0.1:0".into(),
    ];
    let answered = |s: &Server| -> Vec<Value> {
        s.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "answered")
            .collect()
    };
    let all = Server::try_spawn_env(
        &args,
        &env(&[
            ("EARSHOT_LOG_FORMAT", "json"),
            ("EARSHOT_ACCESS_LOG", "all"),
        ]),
    )
    .expect("serve starts");
    assert_eq!(all.get("/v1/collections").status, 200);
    assert_eq!(all.get("/v1/tracks/no-such-id").status, 404);
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = answered(&all);
        if lines.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lines.len(), 2, "{}", all.stderr());
    assert_eq!(lines[0]["fields"]["status"], 200);
    assert_eq!(lines[1]["fields"]["status"], 404);
    for l in &lines {
        assert_eq!(l["level"], "INFO", "{l}");
        assert!(l["fields"]["latency_us"].as_u64().is_some(), "{l}");
        assert_eq!(l["span"]["method"], "GET", "{l}");
        assert!(l["span"]["id"].as_str().is_some_and(|id| id != "-"), "{l}");
    }
    assert_eq!(lines[1]["span"]["uri"], "/v1/tracks/no-such-id");

    let quiet = Server::try_spawn_env(&args, &env(&[("EARSHOT_LOG_FORMAT", "json")]))
        .expect("serve starts");
    assert_eq!(quiet.get("/v1/collections").status, 200);
    assert_eq!(quiet.get("/v1/tracks/no-such-id").status, 404);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(answered(&quiet).is_empty(), "{}", quiet.stderr());
}
