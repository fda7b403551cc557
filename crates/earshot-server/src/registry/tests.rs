//! The registry on real index roots: tiny collections built into a temporary directory.

use std::path::Path;

use earshot_build::{build_collection, Dataset, Settings};
use earshot_core::layout::{switch_link, VERSIONS_DIR};
use earshot_core::metric::Metric;

use super::scan::scan;
use super::*;
use crate::error_code::ErrorCode;

/// Builds a 20-item collection of dimension `dim` into `out`.
pub(crate) fn build(out: &Path, dim: usize) {
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
    build_collection(data, out, &Settings::small(Metric::L2)).unwrap();
}

/// `ROOT/.versions/NAME/VERSION`, built, with `ROOT/NAME` pointing at it.
pub(crate) fn build_version(root: &Path, name: &str, version: &str, dim: usize) {
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
    let opts = RegistryOptions {
        allow_schema_change,
        ..RegistryOptions::new(Verify::Full, 64)
    };
    Registry::open(root, &opts, SwapMetrics::default())
}

fn open_with(root: &Path, retain: Duration, allow_empty: bool) -> Registry {
    let opts = RegistryOptions {
        retain_previous: retain,
        allow_empty,
        ..RegistryOptions::new(Verify::Full, 64)
    };
    Registry::open(root, &opts, SwapMetrics::default()).unwrap()
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

#[test]
fn allow_empty_starts_on_an_empty_or_missing_root_and_picks_collections_up() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let r = open_with(&root, Duration::ZERO, true);
    assert!(root.is_dir(), "the missing root is created");
    assert!(r.live().versions.is_empty());
    // An unusable entry is logged, not fatal.
    std::fs::create_dir(root.join("broken")).unwrap();
    let r = open_with(&root, Duration::ZERO, true);
    assert!(r.live().versions.is_empty());
    std::fs::remove_dir(root.join("broken")).unwrap();
    // A downloaded version arrives: the store trigger swaps it in.
    build_version(&root, "tracks", "V1", 4);
    let report = r.reload_blocking(Trigger::Store);
    assert!(matches!(
        outcome_of(&report),
        ReloadOutcome::Swapped { from: None, to, .. } if to == "V1"
    ));
    assert_eq!(r.live().versions["tracks"].version, "V1");
}

#[test]
fn a_replaced_version_answers_pinned_requests_while_retained() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_version(root, "tracks", "V1", 4);
    build(&root.join("other"), 4);
    let r = open_with(root, Duration::from_secs(600), false);
    let version_of = |live: &Live, pin: Option<&str>| -> Result<String, ErrorCode> {
        live.pinned("tracks", pin)
            .map(|(_, s)| s.unwrap().version.clone())
            .map_err(|e| e.code)
    };
    assert_eq!(version_of(&r.live(), None).unwrap(), "V1");
    assert_eq!(version_of(&r.live(), Some("V1")).unwrap(), "V1");
    assert_eq!(
        version_of(&r.live(), Some("V0")),
        Err(ErrorCode::VersionUnavailable)
    );

    build_version(root, "tracks", "V2", 4);
    r.reload_blocking(Trigger::Admin);
    let live = r.live();
    assert_eq!(version_of(&live, None).unwrap(), "V2");
    assert_eq!(version_of(&live, Some("V2")).unwrap(), "V2");
    // The pinned engine holds V1 of tracks, and the current version of the others.
    let (engine, _) = live.pinned("tracks", Some("V1")).unwrap();
    assert!(engine.collections["tracks"].dir.ends_with("V1"));
    assert!(Arc::ptr_eq(
        &engine.collections["other"],
        &live.engine.collections["other"]
    ));
    assert_eq!(live.retained_versions("tracks").collect::<Vec<_>>(), ["V1"]);
    let e = live.pinned("tracks", Some("V9")).err().unwrap();
    assert_eq!(e.code, ErrorCode::VersionUnavailable);
    assert!(e.message.contains("V2 (current), V1"), "{}", e.message);
    // Unknown collections are left to the engine (unknown_collection), pinned or not.
    assert!(live.pinned("nope", Some("V1")).unwrap().1.is_none());

    // A roll-back to V1: V1 is current again, V2 retained.
    switch_link(&root.join("tracks"), "V1").unwrap();
    r.reload_blocking(Trigger::Admin);
    let live = r.live();
    assert_eq!(version_of(&live, None).unwrap(), "V1");
    assert_eq!(live.retained_versions("tracks").collect::<Vec<_>>(), ["V2"]);
}

#[test]
fn retained_versions_expire_and_zero_retains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_version(root, "tracks", "V1", 4);
    let r = open_with(root, Duration::from_millis(50), false);
    build_version(root, "tracks", "V2", 4);
    r.reload_blocking(Trigger::Admin);
    assert!(r.live().pinned("tracks", Some("V1")).is_ok());
    std::thread::sleep(Duration::from_millis(80));
    // Past its time it no longer answers, even before it is unloaded.
    let e = r.live().pinned("tracks", Some("V1")).err().unwrap();
    assert_eq!(e.code, ErrorCode::VersionUnavailable);
    r.drop_expired();
    assert!(r.live().retained.is_empty());

    let r = open_with(root, Duration::ZERO, false);
    build_version(root, "tracks", "V3", 4);
    r.reload_blocking(Trigger::Admin);
    assert!(r.live().retained.is_empty());
    assert!(r.live().pinned("tracks", Some("V2")).is_err());
}

#[tokio::test]
async fn reload_unloads_retained_versions_when_their_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_version(root, "tracks", "V1", 4);
    let r = Arc::new(open_with(root, Duration::from_millis(50), false));
    build_version(root, "tracks", "V2", 4);
    r.reload(Trigger::Admin).await;
    assert_eq!(r.live().retained["tracks"].len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(r.live().retained.is_empty());
}
