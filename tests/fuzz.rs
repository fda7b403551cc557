//! Bounded in-tree fuzzing (runs in `cargo test`, a few seconds): thousands of damaged
//! copies of a real index are opened and searched in-process, and mutated request bodies
//! are thrown at a real server. Nothing may panic, hang or answer 5xx.
//!
//! `EARSHOT_FUZZ_ITERS` raises the iteration counts for longer runs.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::*;
use earshot_core::collection::Collection;
use earshot_core::format::Verify;

fn iters(default: usize) -> usize {
    std::env::var("EARSHOT_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn build_small(dir: &Path) -> std::path::PathBuf {
    let cat = catalogue(5, 600, 8, 6, 40, 9, 7);
    let (npy, csv) = cat.write(dir, "tracks");
    let out = dir.join("idx").join("tracks");
    let mut args = build_args(&npy, Some(&csv), "cosine", &out);
    args.extend([
        "--quantize".into(),
        "int8".into(),
        "--threads".into(),
        "1".into(),
    ]);
    earshot(&args).assert_ok();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Opens (lazily and fully) and, if that succeeds, searches: must not panic.
fn exercise(dir: &Path) -> Result<(), String> {
    for verify in [Verify::Lazy, Verify::Full] {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(c) = Collection::open(dir, verify) {
                let g = c.graph();
                let q = vec![0.3f32; c.dim()];
                let mut out = Vec::new();
                earshot_core::search::with_scratch(|s| {
                    for ef in [1, 10, 64] {
                        out.clear();
                        g.search(&q, 5, ef, |_| true, false, s, &mut out);
                        g.search(&q, 5, ef, |r| r % 2 == 0, true, s, &mut out);
                    }
                });
                for row in [0u32, 1, 7, u32::MAX] {
                    let _ = (c.id(row), c.creator(row), c.popularity(row));
                }
                let _ = c.row_of("trk-00001");
                let _ = c.creators.find("artist-0001");
                let _ = c.check_graph();
            }
        }));
        if outcome.is_err() {
            return Err(format!("panicked with {verify:?}"));
        }
    }
    Ok(())
}

#[test]
fn damaged_index_files_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_small(tmp.path());
    let files: Vec<_> = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut rng = Rng::new(0xF022);
    let work = tmp.path().join("work");
    for i in 0..iters(400) {
        let _ = std::fs::remove_dir_all(&work);
        copy_dir(&good, &work);
        // 1–3 mutations of random files.
        for _ in 0..1 + rng.below(3) {
            let f = work.join(&files[rng.below(files.len())]);
            let Ok(mut bytes) = std::fs::read(&f) else {
                continue; // removed by an earlier mutation
            };
            match rng.below(6) {
                0 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 if bytes.len() > 64 => {
                    // Header fields: magic, version, byte order, type, counts, checksum.
                    let at = rng.below(64);
                    bytes[at] = rng.below(256) as u8;
                }
                3 => bytes.extend((0..rng.below(100)).map(|_| rng.below(256) as u8)),
                4 if bytes.len() > 64 => {
                    // Overwrite a run of the payload (e.g. links) with random words.
                    let at = 64 + rng.below(bytes.len() - 64);
                    for b in bytes.iter_mut().skip(at).take(32) {
                        *b = rng.below(256) as u8;
                    }
                }
                _ => {
                    let _ = std::fs::remove_file(&f);
                    continue;
                }
            }
            std::fs::write(&f, &bytes).unwrap();
        }
        if let Err(e) = exercise(&work) {
            panic!("iteration {i}: {e}");
        }
    }
}

#[test]
fn lying_payloads_with_valid_checksums_never_panic() {
    // A file whose payload is garbage but whose header and manifest agree with it (as if
    // written by a buggy builder) passes every checksum: search must still not crash.
    let tmp = tempfile::tempdir().unwrap();
    let good = build_small(tmp.path());
    let mut rng = Rng::new(77);
    let work = tmp.path().join("work");
    for i in 0..iters(150) {
        let _ = std::fs::remove_dir_all(&work);
        copy_dir(&good, &work);
        for name in [
            "graph_level0.bin",
            "graph_upper.bin",
            "graph_upper_start.bin",
            "ids_offsets.bin",
            "ids_hash.bin",
            "creator_items_offsets.bin",
        ] {
            if rng.below(2) == 0 {
                continue;
            }
            let path = work.join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            for _ in 0..1 + rng.below(20) {
                if bytes.len() > 64 {
                    let at = 64 + rng.below(bytes.len() - 64);
                    bytes[at] = rng.below(256) as u8;
                }
            }
            let sum = xxh3(&bytes[64..]);
            bytes[40..48].copy_from_slice(&sum.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let manifest = work.join("manifest.json");
            let mut m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
            m["files"][name]["xxh3"] = format!("{sum:016x}").into();
            std::fs::write(&manifest, m.to_string()).unwrap();
        }
        if let Err(e) = exercise(&work) {
            panic!("iteration {i}: {e}");
        }
    }
}

fn xxh3(b: &[u8]) -> u64 {
    earshot_core::format::array_file::checksum(b)
}

#[test]
fn mutated_requests_never_get_server_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_small(tmp.path());
    let server = Server::start(good.parent().unwrap(), &[]);
    let _reaper = reap_at_exit(&[server.pid()], &[]);
    let seeds = [
        r#"{"collection":"tracks","vector":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8],"k":5}"#,
        r#"{"history":[{"id":"trk-00001","event":"like","played_at":"2026-01-01T00:00:00Z"}],"half_life":"30d","centroids":1,"k":5,"filter":{"max_popularity":5000},"max_per_creator":2,"emerging":{"max_popularity":100,"min_share":0.3},"explain":true}"#,
        r#"{"queries":[{"type":"similar","collection":"tracks","id":"trk-00002","k":3},{"type":"search","collection":"tracks","vector":[1,0,0,0,0,0,0,0]}]}"#,
    ];
    let paths = ["/v1/search", "/v1/taste/tracks", "/v1/batch"];
    let alphabet: &[u8] = b"{}[]\":,0123456789.-eE+ abcdefghijklmnopqrstuvwxyz_\\nNaI\x00\xff";
    let mut rng = Rng::new(4242);
    for i in 0..iters(600) {
        let s = rng.below(seeds.len());
        let mut body = seeds[s].as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
                0 if !body.is_empty() => {
                    let at = rng.below(body.len());
                    body[at] = alphabet[rng.below(alphabet.len())];
                }
                1 if !body.is_empty() => {
                    let at = rng.below(body.len());
                    body.remove(at);
                }
                _ => {
                    let at = rng.below(body.len() + 1);
                    body.insert(at, alphabet[rng.below(alphabet.len())]);
                }
            }
        }
        let r = http(
            "POST",
            &server.url(paths[s]),
            &[("content-type", "application/json")],
            Some(body.clone()),
        );
        assert!(
            r.status < 500,
            "iteration {i}: {} for {:?}: {}",
            r.status,
            String::from_utf8_lossy(&body),
            r.body
        );
        if r.status >= 400 {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| {
                panic!("iteration {i}: error body is not JSON ({e}): {}", r.body)
            });
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    }
    // Random paths too.
    for i in 0..iters(200) {
        let seg: String = (0..1 + rng.below(12))
            .map(|_| {
                [
                    "a",
                    "%2F",
                    "..",
                    "%00",
                    "tracks",
                    "similar",
                    "/",
                    "~",
                    "%",
                    "trk-00001",
                ][rng.below(10)]
            })
            .collect();
        let r = http("GET", &server.url(&format!("/v1/{seg}")), &[], None);
        assert!(
            r.status < 500,
            "iteration {i}: {} for /v1/{seg}: {}",
            r.status,
            r.body
        );
    }
}
