//! Damaged index files: `earshot verify` and `earshot serve` must both refuse each kind of
//! damage with a non-zero exit and a message naming the damaged file (never a panic), and a
//! lazily served damaged graph must not bring the server down.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use earshot_core::format::array_file::HEADER_LEN;
use serde_json::{json, Value};

const DIM: usize = 16;
const N: usize = 1500;

struct Pristine {
    /// The built collection directory (never modified; tests damage copies).
    dir: PathBuf,
    ids: Vec<String>,
    _tmp: tempfile::TempDir,
    _reaper: Reaper,
}

static PRISTINE: OnceLock<Pristine> = OnceLock::new();

fn pristine() -> &'static Pristine {
    PRISTINE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cat = catalogue(21, N, DIM, 6, 60, 40, 17);
        let (npy, csv) = cat.write(tmp.path(), "tracks");
        let dir = tmp.path().join("indexes/tracks");
        earshot(build_args(&npy, Some(&csv), "cosine", &dir)).assert_ok();
        let reaper = reap_at_exit(&[], &[tmp.path()]);
        Pristine {
            dir,
            ids: cat.ids,
            _tmp: tmp,
            _reaper: reaper,
        }
    })
}

/// A fresh index root holding an undamaged copy of the collection as `tracks`.
fn copy() -> (tempfile::TempDir, PathBuf) {
    let p = pristine();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tracks");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(&p.dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (root, dir)
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Damages a copy with `damage`, then checks that `verify` and `serve` (with full checks)
/// both fail cleanly, naming `file` and mentioning each of `words`.
fn assert_refused(file: &str, words: &[&str], damage: impl FnOnce(&Path)) {
    let (root, dir) = copy();
    // The undamaged copy is fine.
    earshot(["verify".as_ref(), dir.as_os_str()]).assert_ok();
    damage(&dir);
    let mut expect = vec![file];
    expect.extend_from_slice(words);
    earshot(["verify".as_ref(), dir.as_os_str()]).assert_fails_with(&expect);
    match Server::try_start(root.path(), &[]) {
        Ok(s) => panic!(
            "earshot serve started on an index with a damaged {file} (listening on {})",
            s.addr
        ),
        Err(e) => {
            let run = Run {
                status: e.status,
                stdout: e.stdout,
                stderr: e.stderr,
            };
            run.assert_fails_with(&expect);
        }
    }
}

#[test]
fn pristine_index_verifies_and_serves() {
    let p = pristine();
    let run = earshot(["verify".as_ref(), p.dir.as_os_str()]);
    run.assert_ok();
    assert!(
        run.stdout.contains(&format!("{N} items")) && run.stdout.contains("ok"),
        "{}",
        run.stdout
    );
    let (root, _dir) = copy();
    let s = Server::start(root.path(), &[]);
    let v = s
        .get(&format!("/v1/tracks/{}/similar?k=3", p.ids[0]))
        .ok_json();
    assert_eq!(check_results(&v).len(), 3);
}

#[test]
fn truncated_vectors() {
    assert_refused("vectors.bin", &["truncated"], |d| {
        edit(&d.join("vectors.bin"), |b| b.truncate(b.len() - 100))
    });
}

#[test]
fn truncated_inside_the_header() {
    assert_refused("graph_upper.bin", &["header"], |d| {
        edit(&d.join("graph_upper.bin"), |b| b.truncate(HEADER_LEN / 2))
    });
}

#[test]
fn appended_bytes() {
    assert_refused("item_popularity.bin", &["oversized"], |d| {
        edit(&d.join("item_popularity.bin"), |b| b.extend([0u8; 8]))
    });
}

#[test]
fn flipped_payload_byte_in_level0_graph() {
    assert_refused("graph_level0.bin", &["checksum"], |d| {
        edit(&d.join("graph_level0.bin"), |b| {
            let at = HEADER_LEN + (b.len() - HEADER_LEN) / 2;
            b[at] ^= 0x01;
        })
    });
}

#[test]
fn flipped_payload_byte_in_ids() {
    assert_refused("ids_bytes.bin", &["checksum"], |d| {
        edit(&d.join("ids_bytes.bin"), |b| b[HEADER_LEN + 3] ^= 0x20)
    });
}

#[test]
fn flipped_magic_byte() {
    assert_refused("graph_upper_start.bin", &["magic"], |d| {
        edit(&d.join("graph_upper_start.bin"), |b| b[0] ^= 0xFF)
    });
}

#[test]
fn other_format_version_in_a_header() {
    assert_refused("ids_offsets.bin", &["format version 2"], |d| {
        edit(&d.join("ids_offsets.bin"), |b| {
            b[8..12].copy_from_slice(&2u32.to_le_bytes())
        })
    });
}

#[test]
fn deleted_file() {
    assert_refused("creator_items.bin", &["cannot open"], |d| {
        std::fs::remove_file(d.join("creator_items.bin")).unwrap()
    });
}

#[test]
fn deleted_manifest() {
    assert_refused("manifest.json", &[], |d| {
        std::fs::remove_file(d.join("manifest.json")).unwrap()
    });
}

#[test]
fn invalid_manifest_json() {
    assert_refused("manifest.json", &["invalid manifest"], |d| {
        edit(&d.join("manifest.json"), |b| {
            let cut = b.len() / 2;
            b.truncate(cut);
            b.extend_from_slice(b"#not json");
        })
    });
}

#[test]
fn manifest_of_another_format_version() {
    assert_refused("manifest.json", &["format version"], |d| {
        let path = d.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["format_version"] = json!(7);
        std::fs::write(&path, m.to_string()).unwrap();
    });
}

#[test]
fn file_from_another_build() {
    // The file itself is intact, but the manifest records another checksum for it.
    assert_refused("item_popularity.bin", &["manifest"], |d| {
        let path = d.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["files"]["item_popularity.bin"]["xxh3"] = json!("0123456789abcdef");
        std::fs::write(&path, m.to_string()).unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Lazy serving: payload checksums are skipped, so damage may be accepted, but no query may
// crash the server.

/// Sends a spread of queries; every answer must be a 200 with results or a JSON API error,
/// and the server must still be running and healthy afterwards.
fn hammer(s: &mut Server, ids: &[String]) {
    let mut bodies: Vec<(String, Option<Value>)> = Vec::new();
    for id in ids.iter().step_by(37).take(40) {
        bodies.push((format!("/v1/tracks/{id}/similar?k=10"), None));
        bodies.push((format!("/v1/tracks/{id}/similar?k=200&ef=500"), None));
    }
    let mut rng = Rng::new(3);
    for _ in 0..10 {
        bodies.push((
            "/v1/search".into(),
            Some(json!({"collection": "tracks", "vector": rng.gauss_vec(DIM, 1.0), "k": 50})),
        ));
    }
    bodies.push((
        "/v1/taste/tracks".into(),
        Some(json!({"history": [{"id": ids[1]}, {"id": ids[2]}], "k": 100})),
    ));
    bodies.push((
        "/v1/batch".into(),
        Some(json!({"queries": ids.iter().take(50).map(|id| json!(
            {"type": "similar", "collection": "tracks", "id": id, "k": 20})).collect::<Vec<_>>()})),
    ));
    for (path, body) in &bodies {
        let r = match body {
            None => try_http("GET", &s.url(path), &[], None),
            Some(b) => try_http(
                "POST",
                &s.url(path),
                &[("content-type", "application/json")],
                Some(b.to_string().into_bytes()),
            ),
        };
        let r = r.unwrap_or_else(|e| {
            panic!(
                "{path}: no response from the lazily served damaged index ({e}):\n{}",
                s.stderr()
            )
        });
        let v = r.json();
        if r.status == 200 {
            assert!(
                v.get("results").is_some() || v.get("responses").is_some(),
                "{path}: {v}"
            );
        } else {
            assert!(v["error"]["code"].is_string(), "{path}: {} {v}", r.status);
        }
    }
    assert!(s.is_running(), "the server died:\n{}", s.stderr());
    assert_eq!(s.get("/healthz").status, 200);
    assert_no_panic(&s.stderr());
}

/// Starts `serve --lazy` on a damaged copy: it may refuse (cleanly, naming the file) or
/// start; if it starts, it must survive the queries.
fn lazy_survives(file: &str, damage: impl FnOnce(&Path)) {
    let (root, dir) = copy();
    damage(&dir);
    match Server::try_start(root.path(), &["--lazy"]) {
        Ok(mut s) => hammer(&mut s, &pristine().ids),
        Err(e) => {
            assert_no_panic(&e.stderr);
            assert_eq!(e.status.code(), Some(1), "{}", e.stderr);
            assert!(e.stderr.contains(file), "{}", e.stderr);
        }
    }
}

#[test]
fn lazy_serve_with_flipped_level0_bytes() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(pristine().dir.join("manifest.json")).unwrap())
            .unwrap();
    let stride = 4 * (1 + manifest["hnsw"]["level0_degree"].as_u64().unwrap() as usize);
    let entry = manifest["hnsw"]["entry_point"].as_u64().unwrap() as usize;
    // The high byte of the entry point's first link (a link far past the last node), of
    // node 0's link count (a count far above the degree), and a byte in the middle.
    for at in [
        HEADER_LEN + entry * stride + 4 + 3,
        HEADER_LEN + 3,
        HEADER_LEN + N * stride / 2 + 1,
    ] {
        lazy_survives("graph_level0.bin", |d| {
            edit(&d.join("graph_level0.bin"), |b| b[at] ^= 0xFF)
        });
    }
}

#[test]
fn lazy_serve_with_garbage_graph_and_vectors() {
    // Every payload byte of the graph, the vectors and the per-item columns replaced by
    // noise (headers kept, so lazy opening accepts the files).
    lazy_survives("graph", |d| {
        let mut rng = Rng::new(77);
        for file in [
            "graph_level0.bin",
            "graph_upper.bin",
            "graph_upper_start.bin",
            "vectors.bin",
            "item_creator.bin",
            "item_popularity.bin",
            "creator_items.bin",
            "creator_items_offsets.bin",
        ] {
            edit(&d.join(file), |b| {
                for x in b[HEADER_LEN..].iter_mut() {
                    *x = rng.next_u64() as u8;
                }
            });
        }
    });
}

#[test]
fn lazy_serve_with_level0_links_past_the_end() {
    // Every level-0 link points past the last node, every count is the maximum.
    lazy_survives("graph_level0.bin", |d| {
        edit(&d.join("graph_level0.bin"), |b| {
            let words = (b.len() - HEADER_LEN) / 4;
            for w in 0..words {
                let at = HEADER_LEN + 4 * w;
                let v = read_u32(b, at) | 0x8000_0000;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        })
    });
}
