//! `earshot build` from the command line: bad inputs fail with a non-zero exit and a message
//! that says what is wrong and where; good .npy/.jsonl/.fvecs inputs build collections that
//! hold exactly the input; `--force` replaces; a build killed with SIGKILL leaves nothing
//! that a server would load, and the next build of the same name cleans up after it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use earshot_core::collection::Collection;
use earshot_core::format::Verify;

/// A small valid catalogue (with creators and popularity) written into `dir`.
fn small_inputs(dir: &Path, n: usize, dim: usize, seed: u64) -> (Catalogue, PathBuf, PathBuf) {
    let cat = catalogue(seed, n, dim, 4, 10, 1000, 1000);
    let (npy, csv) = cat.write(dir, "tracks");
    (cat, npy, csv)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn missing_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("idx/tracks");
    let missing = dir.path().join("absent.npy");
    earshot(build_args(&missing, None, "l2", &out))
        .assert_fails_with(&["cannot read", "absent.npy"]);
    let (_, npy, _) = small_inputs(dir.path(), 20, 4, 1);
    let missing_csv = dir.path().join("absent.csv");
    earshot(build_args(&npy, Some(&missing_csv), "l2", &out))
        .assert_fails_with(&["cannot read", "absent.csv"]);
    assert!(!out.exists());
}

#[test]
fn float64_npy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f64.npy");
    let payload: Vec<u8> = (0..12)
        .flat_map(|i| (i as f64 + 0.5).to_le_bytes())
        .collect();
    write_npy_raw(&p, "<f8", &[4, 3], &payload);
    earshot(build_args(&p, None, "l2", &dir.path().join("idx/t")))
        .assert_fails_with(&["f64.npy", "float64", "float32", "astype"]);
}

#[test]
fn one_dimensional_npy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flat.npy");
    write_npy_raw(&p, "<f4", &[12], &f32_bytes(&[1.0; 12]));
    earshot(build_args(&p, None, "l2", &dir.path().join("idx/t")))
        .assert_fails_with(&["flat.npy", "(12,)", "2-D"]);
}

#[test]
fn truncated_npy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.npy");
    write_npy_raw(&p, "<f4", &[10, 4], &f32_bytes(&[1.0; 39]));
    earshot(build_args(&p, None, "l2", &dir.path().join("idx/t")))
        .assert_fails_with(&["short.npy", "truncated"]);
}

#[test]
fn row_count_mismatch_with_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _, csv) = small_inputs(dir.path(), 10, 4, 2);
    // One vector more than the CSV has rows.
    let mut v = cat.vectors.clone();
    v.extend([0.5; 4]);
    let npy = dir.path().join("eleven.npy");
    write_npy(&npy, 4, &v);
    earshot(build_args(
        &npy,
        Some(&csv),
        "l2",
        &dir.path().join("idx/t"),
    ))
    .assert_fails_with(&[
        "row counts differ",
        "10 data rows",
        "11 vectors",
        "tracks.csv",
        "eleven.npy",
    ]);
}

#[test]
fn non_finite_vectors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let (mut cat, _, _) = small_inputs(dir.path(), 10, 4, 3);
        cat.vectors[3 * 4 + 2] = bad;
        let npy = dir.path().join(format!("{name}.npy"));
        write_npy(&npy, 4, &cat.vectors);
        let shown = format!("{bad}");
        earshot(build_args(&npy, None, "l2", &dir.path().join("idx/t"))).assert_fails_with(&[
            &format!("{name}.npy"),
            "row 3",
            "column 2",
            &shown,
            "finite",
        ]);
    }
}

#[test]
fn zero_vector_is_refused_only_under_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cat, _, csv) = small_inputs(dir.path(), 10, 4, 4);
    cat.vectors[5 * 4..6 * 4].fill(0.0);
    let npy = dir.path().join("zero.npy");
    write_npy(&npy, 4, &cat.vectors);
    let out = dir.path().join("idx/t");
    earshot(build_args(&npy, Some(&csv), "cosine", &out))
        .assert_fails_with(&["zero.npy", "row 5", "all-zero", "cosine"]);
    assert!(!out.exists());
    // Under l2 a zero vector is an ordinary point.
    earshot(build_args(&npy, Some(&csv), "l2", &out)).assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.len(), 10);
    assert!(c.vector(5).iter().all(|&x| x == 0.0));
}

#[test]
fn unknown_column_lists_the_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_, npy, csv) = small_inputs(dir.path(), 10, 4, 5);
    let mut args = build_args(&npy, Some(&csv), "l2", &dir.path().join("idx/t"));
    let at = args.iter().position(|a| a == "creator").unwrap();
    args[at] = "artist".into();
    earshot(&args).assert_fails_with(&[
        "tracks.csv",
        "\"artist\"",
        "--creator-column",
        "\"track_id\"",
        "\"creator\"",
        "\"popularity\"",
    ]);
}

#[test]
fn duplicate_ids_name_both_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cat, _, _) = small_inputs(dir.path(), 10, 4, 6);
    cat.ids[2] = "same-id".into();
    cat.ids[6] = "same-id".into();
    let (npy, csv) = cat.write(dir.path(), "dups");
    earshot(build_args(
        &npy,
        Some(&csv),
        "l2",
        &dir.path().join("idx/t"),
    ))
    .assert_fails_with(&[
        "dups.csv",
        "duplicate ID \"same-id\"",
        // Data rows 2 and 6 are file lines 4 and 8 (after the header).
        "row 2 (line 4)",
        "row 6 (line 8)",
    ]);
}

#[test]
fn bad_popularity_and_option_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cat, npy, csv) = small_inputs(dir.path(), 10, 4, 7);
    let out = dir.path().join("idx/t");
    // --id-column without --meta.
    earshot([
        "build",
        "--vectors",
        npy.to_str().unwrap(),
        "--id-column",
        "track_id",
        "--metric",
        "l2",
        "--out",
        out.to_str().unwrap(),
    ])
    .assert_fails_with(&["--id-column", "--meta"]);
    // --meta without --id-column: the message lists the columns to choose from.
    earshot([
        "build",
        "--vectors",
        npy.to_str().unwrap(),
        "--meta",
        csv.to_str().unwrap(),
        "--metric",
        "l2",
        "--out",
        out.to_str().unwrap(),
    ])
    .assert_fails_with(&["--id-column", "\"track_id\""]);
    // A vectors file of an unknown type.
    earshot(build_args(&csv, None, "l2", &out)).assert_fails_with(&[".npy", ".jsonl", ".fvecs"]);
    // A popularity that is not a number.
    cat.ids[4] = "p4".into();
    let (npy2, csv2) = cat.write(dir.path(), "pop");
    let text = std::fs::read_to_string(&csv2).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[5] = "p4,artist-0001,lots".into();
    std::fs::write(&csv2, lines.join("\n") + "\n").unwrap();
    earshot(build_args(&npy2, Some(&csv2), "l2", &out)).assert_fails_with(&[
        "pop.csv",
        "row 4",
        "\"popularity\"",
        "lots",
    ]);
    assert!(!out.exists());
}

#[test]
fn existing_out_needs_force_and_force_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("idx");
    let out = root.join("tracks");
    let (a, npy_a, csv_a) = small_inputs(dir.path(), 50, 4, 8);
    earshot(build_args(&npy_a, Some(&csv_a), "l2", &out)).assert_ok();
    let manifest_a = std::fs::read_to_string(out.join("manifest.json")).unwrap();

    let sub = dir.path().join("b");
    std::fs::create_dir(&sub).unwrap();
    let (b, npy_b, csv_b) = small_inputs(&sub, 80, 4, 9);
    let refused = earshot(build_args(&npy_b, Some(&csv_b), "l2", &out));
    refused.assert_fails_with(&["already exists", "--force", "tracks"]);
    // Refused up front, not after building the whole graph.
    assert!(
        !refused.stderr.contains("tracks: "),
        "the graph was built before the existing --out was refused:\n{}",
        refused.stderr
    );
    // The refused build changed nothing.
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        manifest_a
    );
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.len(), a.len());
    drop(c);

    let mut args = build_args(&npy_b, Some(&csv_b), "l2", &out);
    args.push("--force".into());
    earshot(&args).assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.len(), b.len());
    for row in [0usize, 33, 79] {
        assert_eq!(c.id(row as u32), b.ids[row]);
        assert_eq!(c.vector(row as u32), b.row(row));
    }
    // Nothing left beside it: no temporary or moved-aside directories.
    assert_eq!(entries(&root), ["tracks"]);
    earshot(["verify".as_ref(), out.as_os_str()]).assert_ok();
}

#[test]
fn jsonl_input_builds() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(10);
    let cs = centres(&mut rng, 3, 6);
    let vectors = clustered(&mut rng, &cs, 40, 0.3);
    let mut text = String::new();
    for (i, v) in vectors.chunks_exact(6).enumerate() {
        let mut line = serde_json::json!({"id": format!("j{i}"), "vector": v});
        if i % 3 != 0 {
            line["creator"] = format!("c{}", i % 4).into();
        }
        if i % 5 != 0 {
            line["popularity"] = (i as f64 * 1.5).into();
        }
        text.push_str(&line.to_string());
        text.push('\n');
        if i == 10 {
            text.push('\n'); // blank lines are skipped
        }
    }
    let p = dir.path().join("items.jsonl");
    std::fs::write(&p, text).unwrap();
    let out = dir.path().join("idx/items");
    let run = earshot(build_args(&p, None, "l2", &out));
    run.assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!((c.len(), c.dim()), (40, 6));
    assert!(c.manifest.has_popularity);
    assert_eq!(c.manifest.creators, 4);
    for i in 0..40u32 {
        let r = i as usize;
        let row = c.row_of(&format!("j{i}")).expect("id present");
        assert_eq!(c.vector(row), &vectors[r * 6..(r + 1) * 6]);
        let creator = (!r.is_multiple_of(3)).then(|| format!("c{}", r % 4));
        assert_eq!(c.creator(row), creator.as_deref());
        let pop = (!r.is_multiple_of(5)).then_some(r as f32 * 1.5);
        assert_eq!(c.popularity(row), pop);
    }
    earshot(["verify".as_ref(), out.as_os_str()]).assert_ok();
}

#[test]
fn fvecs_input_builds() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let cs = centres(&mut rng, 3, 5);
    let vectors = clustered(&mut rng, &cs, 30, 0.3);
    let mut bytes = Vec::new();
    for v in vectors.chunks_exact(5) {
        bytes.extend(5i32.to_le_bytes());
        bytes.extend(f32_bytes(v));
    }
    let p = dir.path().join("base.fvecs");
    std::fs::write(&p, bytes).unwrap();
    let out = dir.path().join("idx/base");
    earshot(build_args(&p, None, "dot", &out)).assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!((c.len(), c.dim()), (30, 5));
    assert_eq!(c.manifest.metric, earshot_core::metric::Metric::Dot);
    for r in 0..30usize {
        // Without metadata the IDs are the row numbers.
        assert_eq!(c.id(r as u32), r.to_string());
        assert_eq!(c.vector(r as u32), &vectors[r * 5..(r + 1) * 5]);
        assert_eq!(c.creator(r as u32), None);
        assert_eq!(c.popularity(r as u32), None);
    }
    // A truncated record is refused by name.
    let mut short = std::fs::read(&p).unwrap();
    short.truncate(short.len() - 3);
    let ps = dir.path().join("short.fvecs");
    std::fs::write(&ps, short).unwrap();
    earshot(build_args(&ps, None, "dot", &dir.path().join("idx/short"))).assert_fails_with(&[
        "short.fvecs",
        "record 29",
        "truncated",
    ]);
}

#[test]
fn killed_build_leaves_nothing_loadable_and_next_build_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(12);
    let cs = centres(&mut rng, 40, 64);
    let big = clustered(&mut rng, &cs, 60_000, 0.5);
    let npy = dir.path().join("big.npy");
    write_npy(&npy, 64, &big);
    let root = dir.path().join("idx");
    let out = root.join("tracks");

    let mut args = build_args(&npy, None, "l2", &out);
    args.extend(["--threads".into(), "1".into()]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait for the first progress line ("tracks: 6000/60000 (10%)"): the graph is being built.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("the build ended before reporting progress:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("tracks: ") && line.contains("%)") {
            break;
        }
    }
    signal(pid, "KILL");
    let (status, _) = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "the build finished before it was killed");
    assert!(!out.exists(), "a killed build left {}", out.display());

    // What a kill during the final write would leave: a partial temporary directory named
    // after the (now dead) build process, plus another build's leftovers.
    std::fs::create_dir_all(&root).unwrap();
    let stale = root.join(format!(".tracks.tmp-{pid}"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("vectors.bin"), b"EARSHOT\x01 partial").unwrap();
    let other = root.join(format!(".other.tmp-{pid}"));
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("manifest.json"), b"{").unwrap();

    // Nothing complete exists: the server refuses to start, and says why.
    match Server::try_start(&root, &[]) {
        Ok(_) => panic!("a server started on an index root holding only temporary builds"),
        Err(e) => {
            assert_eq!(e.status.code(), Some(1), "{}", e.stderr);
            assert_no_panic(&e.stderr);
            assert!(e.stderr.contains("no collections"), "{}", e.stderr);
        }
    }

    // The next build of the same name succeeds and removes its stale temporary directory.
    let small = dir.path().join("small.npy");
    write_npy(&small, 64, &big[..500 * 64]);
    earshot(build_args(&small, None, "l2", &out)).assert_ok();
    assert!(!stale.exists(), "stale {} was not removed", stale.display());
    assert_eq!(
        entries(&root),
        [format!(".other.tmp-{pid}"), "tracks".to_string()]
    );
    earshot(["verify".as_ref(), out.as_os_str()]).assert_ok();

    // A server loads the complete collection and ignores the dot-directory.
    let s = Server::start(&root, &[]);
    let v = s.get("/v1/collections").ok_json();
    let names: Vec<&str> = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tracks"]);
    assert_eq!(v["collections"][0]["count"].as_u64(), Some(500));
}

#[test]
fn csv_with_bom_crlf_and_quoting_builds() {
    // As spreadsheet programs export it: a UTF-8 byte-order mark, CRLF line ends, quoted
    // fields with commas and quotes, and columns in another order.
    let dir = tempfile::tempdir().unwrap();
    let vectors: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 + 1.0).collect();
    let npy = dir.path().join("v.npy");
    write_npy(&npy, 3, &vectors);
    let csv = dir.path().join("meta.csv");
    std::fs::write(
        &csv,
        "\u{feff}popularity,creator,track_id\r\n\
         1.5,\"Smith, Jane\",a\r\n\
         ,\"The \"\"Band\"\"\",\"b,2\"\r\n\
         3,,c\r\n\
         4,\"Smith, Jane\",d\r\n",
    )
    .unwrap();
    let out = dir.path().join("idx/t");
    earshot(build_args(&npy, Some(&csv), "l2", &out)).assert_ok();
    let c = Collection::open(&out, Verify::Full).unwrap();
    assert_eq!(c.len(), 4);
    let expect = [
        ("a", Some("Smith, Jane"), Some(1.5)),
        ("b,2", Some("The \"Band\""), None),
        ("c", None, Some(3.0)),
        ("d", Some("Smith, Jane"), Some(4.0)),
    ];
    for (row, (id, creator, pop)) in expect.iter().enumerate() {
        let r = c.row_of(id).unwrap_or_else(|| panic!("{id:?} missing"));
        assert_eq!(r as usize, row);
        assert_eq!(c.creator(r), *creator);
        assert_eq!(c.popularity(r), *pop);
        assert_eq!(c.vector(r), &vectors[row * 3..row * 3 + 3]);
    }
    assert_eq!(c.manifest.creators, 2);
}

/// `--shard I/N`: the N shards partition the rows by the documented hash, each is an ordinary
/// collection recording its shard, and creator popularity is the whole catalogue's.
#[test]
fn shards_partition_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, npy, csv) = small_inputs(dir.path(), 300, 8, 7);
    let whole = dir.path().join("idx/whole");
    earshot(build_args(&npy, Some(&csv), "cosine", &whole)).assert_ok();
    let whole = Collection::open(&whole, Verify::Full).unwrap();
    let creator_pop = |c: &Collection, name: &str| {
        let ci = c.creators.find(name).unwrap();
        c.creator_popularity(ci)
    };
    let mut seen = vec![0u32; cat.len()];
    for i in 0..3u32 {
        let out = dir.path().join(format!("idx/shard{i}"));
        let mut args = build_args(&npy, Some(&csv), "cosine", &out);
        args.extend(["--shard".into(), format!("{i}/3").into()]);
        earshot(args).assert_ok();
        let c = Collection::open(&out, Verify::Full).unwrap();
        let info = c
            .manifest
            .shard
            .clone()
            .expect("manifest records the shard");
        assert_eq!(
            (info.index, info.count, info.hash.as_str()),
            (i, 3, "xxh3-64")
        );
        assert!(c.len() > 50 && c.len() < 150, "shard {i}: {} rows", c.len());
        for row in 0..c.len() as u32 {
            let id = c.id(row);
            assert_eq!(earshot_core::shard::shard_of(id, 3), i, "{id}");
            let r = cat.row_of(id).unwrap();
            seen[r] += 1;
            // The same vector as the unsharded build, and the catalogue-wide creator popularity.
            let w = whole.row_of(id).unwrap();
            assert_eq!(c.vector(row), whole.vector(w));
            if let Some(ci) = c.creator_index(row) {
                let name = c.creators.get(ci);
                assert_eq!(creator_pop(&c, name), creator_pop(&whole, name), "{name}");
            }
        }
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "every row in exactly one shard"
    );
    let mut args = build_args(&npy, Some(&csv), "cosine", &dir.path().join("idx/bad"));
    args.extend(["--shard".into(), "3/3".into()]);
    // A usage error (clap's exit status 2), refused before anything is read.
    let run = earshot(args);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("invalid shard \"3/3\": expected I/N"),
        "{}",
        run.stderr
    );
}
