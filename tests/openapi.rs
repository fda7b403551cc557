//! The API contract: the OpenAPI document a real server serves at `/openapi.json` equals the
//! committed `docs/openapi.json`, and documents every route the router answers, with every
//! method it answers on.
//!
//! After changing a handler or a request/response type, regenerate the file with
//!
//! ```sh
//! EARSHOT_WRITE_OPENAPI=1 cargo test --test openapi
//! ```
//!
//! and commit it. `tools/schemathesis.sh` checks live responses against the document.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

const REGENERATE: &str = "EARSHOT_WRITE_OPENAPI=1 cargo test --test openapi";
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];
/// Where the router is built, and where the document lists the handlers.
const ROUTER_SOURCE: &str = "crates/earshot-server/src/lib.rs";
const OPENAPI_SOURCE: &str = "crates/earshot-server/src/openapi/mod.rs";

static FIXTURE: OnceLock<Tracks> = OnceLock::new();

/// One small collection `tracks` (IDs `trk-00000` …) behind a real server.
fn fx() -> &'static Tracks {
    FIXTURE.get_or_init(|| Tracks::serve(catalogue(3, 300, 8, 4, 30, 10, 7)))
}

fn committed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

fn served() -> (String, Value) {
    let r = fx().server.get("/openapi.json");
    assert_eq!(r.status, 200, "GET /openapi.json: {r:?}");
    assert!(
        r.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "GET /openapi.json is not application/json: {:?}",
        r.content_type
    );
    let v = r.json();
    (r.body, v)
}

/// JSON pointers where `a` and `b` differ (at most `max`).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>, max: usize) {
    if out.len() >= max {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => differences(u, v, &p, out, max),
                    (Some(_), None) => out.push(format!("{p}: only in the served document")),
                    (None, Some(_)) => out.push(format!("{p}: only in docs/openapi.json")),
                    (None, None) => unreachable!(),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(u, v, &format!("{at}/{i}"), out, max);
            }
        }
        _ if a != b => out.push(format!("{at}: served {a}, committed {b}")),
        _ => {}
    }
}

#[test]
fn served_document_equals_docs_openapi_json() {
    let (text, served) = served();
    let path = committed_path();
    if std::env::var_os("EARSHOT_WRITE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{}\n", text.trim_end())).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed: Value = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}); regenerate it with `{REGENERATE}`",
                path.display()
            )
        }),
        Err(e) => panic!(
            "cannot read {} ({e}); generate it with `{REGENERATE}`",
            path.display()
        ),
    };
    if served != committed {
        let mut diffs = Vec::new();
        differences(&served, &committed, "", &mut diffs, 20);
        panic!(
            "docs/openapi.json differs from what the server serves at /openapi.json:\n  {}\n\
             Regenerate it with `{REGENERATE}` and commit it.",
            diffs.join("\n  ")
        );
    }
}

#[test]
fn document_is_openapi_3_with_the_error_schema_everywhere() {
    let (_, doc) = served();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    let responses = &doc["components"]["responses"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let guarded = path.starts_with("/v1/") || path.starts_with("/admin/");
            assert_eq!(
                op.get("security").is_some(),
                guarded,
                "{method} {path}: security requirement"
            );
            for (status, r) in op["responses"].as_object().unwrap() {
                let r = match r["$ref"].as_str() {
                    Some(name) => &responses[name.trim_start_matches("#/components/responses/")],
                    None => r,
                };
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
                let schema = &r["content"]["application/json"]["schema"]["$ref"];
                if status.starts_with('4') || status.starts_with('5') {
                    let reload_refused = path == "/admin/reload" && status == "422";
                    let want = if reload_refused {
                        "#/components/schemas/ReloadResponse"
                    } else {
                        "#/components/schemas/ErrorBody"
                    };
                    assert_eq!(schema, want, "{method} {path} {status}: error body");
                }
            }
        }
    }
}

/// `(method, path template)` of every `.route(…)` in the router's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(ROUTER_SOURCE)).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments, up to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("balanced .route( call");
        let args = &rest[..end];
        let path = args.split('"').nth(1).expect("a path literal").to_string();
        let mut methods = 0;
        for m in METHODS {
            let mut from = 0;
            while let Some(i) = args[from..].find(&format!("{m}(")) {
                let i = from + i;
                let before = args[..i].chars().last().unwrap_or(' ');
                if !(before.is_alphanumeric() || before == '_') {
                    out.insert((m.to_string(), path.clone()));
                    methods += 1;
                }
                from = i + m.len();
            }
        }
        assert!(methods > 0, "no method found in .route({args})");
    }
    assert!(
        out.len() >= 10,
        "too few routes found in the source: {out:?}"
    );
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented() {
    let (_, doc) = served();
    let source = routes_in_source();
    let documented = routes_in_document(&doc);
    let missing: Vec<_> = source.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&source).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes in {ROUTER_SOURCE} but not in the document: {missing:?}\n\
         documented but not routed: {extra:?}\n\
         add #[utoipa::path] to the handler and list it in {OPENAPI_SOURCE}, then `{REGENERATE}`"
    );
}

#[test]
fn the_live_router_answers_exactly_the_documented_methods() {
    let (_, doc) = served();
    let s = &fx().server;
    let documented = routes_in_document(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path
            .replace("{collection}", "tracks")
            .replace("{id}", "trk-00001");
        for m in METHODS {
            let body = (m != "get").then(|| b"{}".to_vec());
            let r = http(
                &m.to_uppercase(),
                &s.url(&concrete),
                &[("content-type", "application/json")],
                body,
            );
            let code = serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            if documented.contains(&(m.to_string(), path.clone())) {
                assert!(
                    !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
                    "{m} {concrete} is documented but the router does not answer it: {r:?}"
                );
            } else {
                r.assert_error(405, "method_not_allowed");
            }
        }
    }
}
