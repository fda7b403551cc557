//! Real data (run by `.ci/run`, not by a plain `cargo test`, because it needs
//! `../shared/datasets` and a two-minute build): the yes-tracks catalogue (75,262 × 384,
//! cosine) built with the CLI and served; the 1,000 shipped similar-track queries answered
//! over HTTP must reach recall@10 ≥ 0.95 against the exact ground truth, and the server must
//! be ready well under a second after it starts.
//!
//! `cargo test --test real_data -- --ignored --nocapture`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/yes-tracks");
    assert!(
        dir.join("tracks_minilm384.npy").exists(),
        "{} is missing: this test reads the shared real data set",
        dir.display()
    );
    dir
}

#[test]
#[ignore = "needs ../shared/datasets; run by .ci/run"]
fn yes_tracks_similar_recall_through_the_server() {
    let data = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("indexes");
    let started = Instant::now();
    earshot([
        "build",
        "--vectors",
        data.join("tracks_minilm384.npy").to_str().unwrap(),
        "--meta",
        data.join("tracks.csv").to_str().unwrap(),
        "--id-column",
        "song_id",
        "--creator-column",
        "artist",
        "--metric",
        "cosine",
        "--out",
        root.join("tracks").to_str().unwrap(),
    ])
    .assert_ok();
    eprintln!("build: {:.1} s", started.elapsed().as_secs_f64());

    let t0 = Instant::now();
    let server = Server::start(&root, &[]);
    let ready = server.get("/readyz");
    let ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(ready.status, 200, "{ready:?}");
    eprintln!("process start to /readyz 200: {ready_ms:.0} ms");
    assert!(ready_ms < 1000.0, "ready after {ready_ms:.0} ms");

    let vectors = earshot_build::npy::read_f32(&data.join("tracks_minilm384.npy")).unwrap();
    let dim = vectors.cols();
    let unit = normalized_rows(&vectors.data, dim);
    let rows = earshot_build::npy::read_int(&data.join("track_query_rows.npy")).unwrap();
    let gt_dist =
        earshot_build::npy::read_f32(&data.join("gt_track_to_track_angular_dist.npy")).unwrap();
    let csv = std::fs::read_to_string(data.join("tracks.csv")).unwrap();
    // song_id is the first column and equals the row number (checked here, not assumed).
    let ids: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), vectors.rows());
    assert!(ids.iter().enumerate().all(|(i, id)| id == &i.to_string()));

    let (mut hits, mut total) = (0usize, 0usize);
    let t = Instant::now();
    for (qi, &row) in rows.data.iter().enumerate() {
        let row = row as usize;
        let v = server
            .get(&format!("/v1/tracks/{}/similar?k=10", ids[row]))
            .ok_json();
        let got = check_results(&v);
        assert_eq!(got.len(), 10);
        // GT rank 0 is the query itself; ranks 1..=10 are its neighbours.
        let kth = gt_dist.data[qi * gt_dist.cols() + 10] as f64;
        let q = &unit[row * dim..(row + 1) * dim];
        for (id, _) in &got {
            let r: usize = id.parse().unwrap();
            assert_ne!(r, row, "similar returned the query item");
            let d = 1.0 - dot64(q, &unit[r * dim..(r + 1) * dim]);
            if d <= kth + 1e-6 {
                hits += 1;
            }
        }
        total += 10;
    }
    let recall = hits as f64 / total as f64;
    eprintln!(
        "yes-tracks similar recall@10 through HTTP: {recall:.4} ({} queries, {:.0} req/s sequential)",
        rows.data.len(),
        rows.data.len() as f64 / t.elapsed().as_secs_f64()
    );
    assert!(recall >= 0.95, "recall@10 {recall}");
}
