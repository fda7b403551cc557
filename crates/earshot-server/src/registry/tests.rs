//! The registry on real index roots: tiny collections built into a temporary directory.

use std::path::Path;

use earshot_build::{build_collection, Dataset, GraphParams, Settings};
use earshot_core::layout::{switch_link, VERSIONS_DIR};
use earshot_core::metric::Metric;

use super::scan::scan;
use super::*;

/// Builds a 20-item collection of dimension `dim` into `out`.
fn build(out: &Path, dim: usize) {
    let n = 20;
    let data = Dataset {
        dim,
        vectors: (0..n * dim)
            .map(|i| ((i * 7919) % 101) as f32 / 101.0)
            .collect(),
        ids: (0..n).map(|i| format!("item{i}")).collect(),
        creators: None,
        popularity: None,
    };
    let settings = Settings {
        metric: Metric::L2,
        params: GraphParams {
            m: 8,
            ef_construction: 32,
            threads: 1,
            builder: Default::default(),
            walk: Default::default(),
        },
        force: false,
        source: "unit test".into(),
        quantize: false,
    };
    build_collection(data, out, &settings).unwrap();
}

/// `ROOT/.versions/NAME/VERSION`, built, with `ROOT/NAME` pointing at it.
fn build_version(root: &Path, name: &str, version: &str, dim: usize) {
    let home = root.join(VERSIONS_DIR).join(name);
    std::fs::create_dir_all(&home).unwrap();
    build(&home.join(version), dim);
    switch_link(&root.join(name), version).unwrap();
}

/// The builder refuses names the server would: copy a built collection under one.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn open(root: &Path, allow_schema_change: bool) -> anyhow::Result<Registry> {
    Registry::open(
        root,
        Verify::Full,
        64,
        allow_schema_change,
        SwapMetrics::default(),
    )
}

fn names<T>(v: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| name(x).to_string()).collect()
}

#[test]
fn scan_finds_collections_and_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    build(&root.join("plain"), 4);
    build_version(&root, "versioned", "V1", 4);
    // Skipped: hidden entries (temporary builds) and stray files.
    std::fs::create_dir(root.join(".plain.tmp-1")).unwrap();
    std::fs::write(root.join("notes.txt"), "not a collection").unwrap();
    // Problems: no manifest, a name no request could use, a link out of the version store.
    std::fs::create_dir(root.join("empty")).unwrap();
    build(&dir.path().join("elsewhere"), 4);
    copy_dir(&dir.path().join("elsewhere"), &root.join("bad..name"));
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("outside")).unwrap();

    let (found, problems) = scan(&root).unwrap();
    assert_eq!(names(&found, |c| &c.name), ["plain", "versioned"]);
    assert_eq!(found[0].version, None);
    assert_eq!(found[1].version.as_deref(), Some("V1"));
    assert!(found[1].target.ends_with(".versions/versioned/V1"));
    assert_eq!(
        names(&problems, |p| &p.name),
        ["bad..name", "empty", "outside"]
    );
    let reason = |name: &str| &problems.iter().find(|p| p.name == name).unwrap().reason;
    assert!(
        reason("bad..name").contains("contains '..'"),
        "{}",
        reason("bad..name")
    );
    assert!(reason("empty").contains("manifest"), "{}", reason("empty"));
    assert!(
        reason("outside").contains("points outside"),
        "{}",
        reason("outside")
    );

    // Start-up refuses an index root with any problem, naming it.
    let e = open(&root, false).err().unwrap().to_string();
    assert!(e.contains("bad..name"), "{e}");
    assert!(scan(&dir.path().join("missing")).is_err());
}

#[test]
fn open_serves_plain_and_versioned_collections() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build(&root.join("plain"), 4);
    build_version(root, "versioned", "V1", 4);
    let r = open(root, false).unwrap();
    let live = r.live();
    assert_eq!(
        names(&live.engine.collections.keys().collect::<Vec<_>>(), |k| k),
        ["plain", "versioned"]
    );
    assert_eq!(live.versions["versioned"].version, "V1");
    // A plain directory's version is its build time, compacted.
    let built_at = &live.engine.collections["plain"].manifest.built_at;
    assert_eq!(live.versions["plain"].version, compact_time(built_at));
    assert!(!live.versions["plain"].version.contains([':', '-']));

    let empty = tempfile::tempdir().unwrap();
    let e = open(empty.path(), false).err().unwrap().to_string();
    assert!(e.contains("no collections"), "{e}");
}

#[test]
fn reload_swaps_new_versions_and_refuses_a_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build(&root.join("plain"), 4);
    build_version(root, "tracks", "V1", 4);
    let r = open(root, false).unwrap();
    let outcome = |report: &ReloadReport, name: &str| report.collections[name].clone();

    let report = r.reload_blocking(Trigger::Admin);
    assert!(
        matches!(outcome(&report, "tracks"), ReloadOutcome::Unchanged { version } if version == "V1")
    );
    assert_eq!(report.refused(), 0);

    build_version(root, "tracks", "V2", 4);
    let report = r.reload_blocking(Trigger::Admin);
    assert!(matches!(
        outcome(&report, "tracks"),
        ReloadOutcome::Swapped { from: Some(f), to, .. } if f == "V1" && to == "V2"
    ));
    assert!(r.live().versions["tracks"].path.ends_with("V2"));

    // Another dimension: refused, V2 keeps serving.
    build_version(root, "tracks", "V3", 8);
    let report = r.reload_blocking(Trigger::Admin);
    match outcome(&report, "tracks") {
        ReloadOutcome::Refused {
            version,
            reason,
            serving,
        } => {
            assert_eq!(version.as_deref(), Some("V3"));
            assert!(reason.contains("dimension 8"), "{reason}");
            assert_eq!(serving.as_deref(), Some("V2"));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(report.refused(), 1);
    assert_eq!(r.live().engine.collections["tracks"].dim(), 4);
    // The watch poll does not verify the same refused version again.
    let report = r.reload_blocking(Trigger::Watch);
    assert!(matches!(
        outcome(&report, "tracks"),
        ReloadOutcome::Refused { reason, .. } if reason.contains("refused earlier")
    ));

    // A collection gone from the root keeps serving until a restart.
    std::fs::remove_dir_all(root.join("plain")).unwrap();
    let report = r.reload_blocking(Trigger::Admin);
    assert!(matches!(
        outcome(&report, "plain"),
        ReloadOutcome::Missing { .. }
    ));
    assert!(r.live().engine.collections.contains_key("plain"));
}

#[test]
fn allow_schema_change_accepts_a_new_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_version(root, "tracks", "V1", 4);
    let r = open(root, true).unwrap();
    build_version(root, "tracks", "V2", 8);
    let report = r.reload_blocking(Trigger::Admin);
    assert!(matches!(outcome_of(&report), ReloadOutcome::Swapped { .. }));
    assert_eq!(r.live().engine.collections["tracks"].dim(), 8);
}

fn outcome_of(report: &ReloadReport) -> ReloadOutcome {
    report.collections["tracks"].clone()
}

#[test]
fn a_panic_while_holding_the_report_lock_does_not_stop_reloads() {
    let dir = tempfile::tempdir().unwrap();
    build_version(dir.path(), "tracks", "V1", 4);
    let r = open(dir.path(), false).unwrap();
    std::thread::scope(|s| {
        let poisoned = s.spawn(|| {
            let _held = r.reported.lock().unwrap();
            panic!("poisoning the lock on purpose");
        });
        assert!(poisoned.join().is_err());
    });
    assert!(r.reported.is_poisoned());
    let report = r.reload_blocking(Trigger::Admin);
    assert!(matches!(
        outcome_of(&report),
        ReloadOutcome::Unchanged { .. }
    ));
}
