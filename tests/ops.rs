//! Production operation, on real processes and sockets: versioned builds and the `versions` /
//! `activate` commands; zero-downtime swaps under load; damaged, truncated, re-shaped and
//! graph-broken versions refused while the old one keeps serving; overload and timeouts
//! answered 503 with `Retry-After`; API keys; collection names and symlinks that try to leave
//! the index root; SIGTERM draining an in-flight request.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use earshot_core::layout;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Fixture: one catalogue, built as versions of `ROOT/tracks`

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    npy: PathBuf,
    csv: PathBuf,
    cat: Catalogue,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let cat = catalogue(7, n, 16, 4, 40, 1000, 1000);
        let (npy, csv) = cat.write(&dir, "tracks");
        let root = dir.join("indexes");
        Fixture {
            _tmp: tmp,
            dir,
            root,
            npy,
            csv,
            cat,
        }
    }

    fn link(&self) -> PathBuf {
        self.root.join("tracks")
    }

    /// Builds a new version of `tracks` (`extra`: e.g. `--m 8`) and returns its name.
    fn build(&self, extra: &[&str]) -> String {
        let mut args = build_args(&self.npy, Some(&self.csv), "cosine", &self.link());
        args.push("--versioned".into());
        args.extend(extra.iter().map(|s| s.into()));
        earshot(&args).assert_ok();
        layout::active_version(&self.link()).expect("the build activated a version")
    }

    fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join(".versions/tracks").join(version)
    }

    /// A copy of `version` named `name` (not activated).
    fn copy_version(&self, version: &str, name: &str) -> PathBuf {
        let to = self.version_dir(name);
        copy_dir(&self.version_dir(version), &to);
        to
    }

    fn activate(&self, version: &str) {
        earshot([
            "activate".as_ref(),
            self.link().as_os_str(),
            version.as_ref(),
            "--force".as_ref(),
        ])
        .assert_ok();
    }

    fn similar_path(&self, row: usize) -> String {
        format!(
            "/v1/tracks/{}/similar?k=5",
            encode_segment(&self.cat.ids[row])
        )
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 (headers visible, paths sent exactly as written)

#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts status and an `{"error":{"code","message"}}` body with this code.
    fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "expected {status} {code}: {self:?}");
        assert_eq!(
            self.json()["error"]["code"].as_str(),
            Some(code),
            "expected code {code}: {self:?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{self:?}"
        );
        self
    }

    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self:?}");
        self.json()
    }
}

fn request_bytes(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b.as_bytes());
    }
    bytes
}

fn parse_response(bytes: &[u8]) -> Raw {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..nl])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Raw {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request_bytes(addr, method, path, headers, body))
        .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    parse_response(&bytes)
}

fn get(addr: &str, path: &str) -> Raw {
    raw(addr, "GET", path, &[], None)
}

fn post(addr: &str, path: &str, body: &Value) -> Raw {
    raw(addr, "POST", path, &[], Some(&body.to_string()))
}

// ---------------------------------------------------------------------------------------
// Server state helpers

/// The value of one sample line of `/metrics` (`name{labels}`), 0 if absent.
fn metric(addr: &str, sample: &str) -> f64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn served_version(addr: &str, name: &str) -> String {
    let v = get(addr, "/v1/collections").ok();
    v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not served: {v}"))["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn refusals(addr: &str) -> f64 {
    metric(addr, "earshot_swap_refusals_total{collection=\"tracks\"}")
}

fn reload(addr: &str) -> Raw {
    raw(addr, "POST", "/admin/reload", &[], None)
}

/// Flips one payload byte of `file` in version directory `dir`.
fn flip_byte(dir: &Path, file: &str) {
    let p = dir.join(file);
    let mut b = std::fs::read(&p).unwrap();
    let at = 64 + (b.len() - 64) / 2;
    b[at] ^= 0x10;
    std::fs::write(&p, b).unwrap();
}

/// Asserts the server still answers queries on `tracks`.
fn assert_serving(s: &Server, f: &Fixture) {
    let v = get(&s.addr, &f.similar_path(3)).ok();
    assert_eq!(v["results"].as_array().unwrap().len(), 5, "{v}");
}

// ---------------------------------------------------------------------------------------
// A server started with its own arguments and environment

struct Proc {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Proc, String> {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--index-root").arg(root).args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let buf = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut chunk) {
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok(Proc {
                child,
                addr,
                stderr,
            }),
            Err(_) => {
                let _ = wait_timeout(&mut child, Duration::from_secs(30));
                thread::sleep(Duration::from_millis(100));
                let e = stderr.lock().unwrap().clone();
                Err(e)
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn versioned_builds_list_activate_and_prune() {
    let f = Fixture::new(600);
    let link = f.link();
    let v1 = f.build(&["--keep", "2"]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{} is not a symlink",
        link.display()
    );
    // A later build without --versioned stays versioned.
    let mut args = build_args(&f.npy, Some(&f.csv), "cosine", &link);
    args.extend(["--m".into(), "8".into(), "--keep".into(), "2".into()]);
    earshot(&args).assert_ok();
    let v2 = layout::active_version(&link).unwrap();
    assert_ne!(v1, v2);
    let listed = earshot(["versions".as_ref(), link.as_os_str()]);
    listed.assert_ok();
    assert!(
        listed.stdout.contains(&format!("  {v1}  600 items")),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains(&format!("* {v2}  600 items")),
        "{}",
        listed.stdout
    );

    // Roll back, then forward by name.
    earshot(["activate".as_ref(), link.as_os_str(), "previous".as_ref()]).assert_ok();
    assert_eq!(layout::active_version(&link).unwrap(), v1);
    earshot(["activate".as_ref(), link.as_os_str(), v2.as_ref()]).assert_ok();
    assert_eq!(layout::active_version(&link).unwrap(), v2);
    earshot(["verify".as_ref(), link.as_os_str()]).assert_ok();

    // --keep 2: a third build deletes the oldest, never the active one.
    earshot(["activate".as_ref(), link.as_os_str(), v1.as_ref()]).assert_ok();
    let v3 = f.build(&["--keep", "2"]);
    let names: Vec<String> = layout::list_versions(&link)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&v3), "{names:?}");
    let v4 = f.build(&["--keep", "1"]);
    let names: Vec<String> = layout::list_versions(&link)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, std::slice::from_ref(&v4));

    // Names that are not versions, and versions that fail verification.
    earshot(["activate".as_ref(), link.as_os_str(), "../../etc".as_ref()]).assert_fails_with(&[
        "version name",
        "../../etc",
        "starts with '.'",
    ]);
    earshot(["activate".as_ref(), link.as_os_str(), "a/../../b".as_ref()])
        .assert_fails_with(&["version name", "'..'"]);
    earshot(["activate".as_ref(), link.as_os_str(), "nope".as_ref()])
        .assert_fails_with(&["no version", "earshot versions"]);
    let bad = f.copy_version(&v4, "zz-bad");
    flip_byte(&bad, "vectors.bin");
    earshot(["activate".as_ref(), link.as_os_str(), "zz-bad".as_ref()]).assert_fails_with(&[
        "vectors.bin",
        "checksum",
        "--force",
    ]);
    assert_eq!(layout::active_version(&link).unwrap(), v4);

    // A plain directory becomes versioned only with --force, keeping its build.
    let plain = f.root.join("plain");
    earshot(build_args(&f.npy, Some(&f.csv), "cosine", &plain)).assert_ok();
    let mut args = build_args(&f.npy, Some(&f.csv), "cosine", &plain);
    args.push("--versioned".into());
    earshot(&args).assert_fails_with(&["plain collection directory", "--force"]);
    args.push("--force".into());
    earshot(&args).assert_ok();
    let versions = layout::list_versions(&plain).unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions
        .iter()
        .any(|v| v.name.ends_with("-plain") && !v.active));
    earshot(["activate".as_ref(), plain.as_os_str(), "previous".as_ref()]).assert_ok();
    earshot(["verify".as_ref(), plain.as_os_str()]).assert_ok();
    // Without --versioned, an existing plain directory still needs --force.
    let other = f.root.join("other");
    earshot(build_args(&f.npy, Some(&f.csv), "cosine", &other)).assert_ok();
    earshot(build_args(&f.npy, Some(&f.csv), "cosine", &other))
        .assert_fails_with(&["already exists", "--force"]);
}

#[test]
fn swaps_under_concurrent_load_fail_no_request() {
    let f = Arc::new(Fixture::new(3000));
    let v1 = f.build(&["--m", "12"]);
    let s = Server::start(&f.root, &[]);
    assert_eq!(served_version(&s.addr, "tracks"), v1);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (f, addr) = (f.clone(), s.addr.clone());
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            thread::spawn(move || {
                let mut i = w * 997;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let row = i % f.cat.len();
                    let r = if i % 2 == 0 {
                        get(&addr, &f.similar_path(row))
                    } else {
                        let history: Vec<Value> = (0..3)
                            .map(|j| json!({"id": f.cat.ids[(row + j * 31) % f.cat.len()]}))
                            .collect();
                        post(
                            &addr,
                            "/v1/taste/tracks",
                            &json!({"history": history, "k": 10}),
                        )
                    };
                    let ok = r.status == 200
                        && r.json()["results"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty());
                    if !ok {
                        failures.lock().unwrap().push(format!("{r:?}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut expected = v1.clone();
    let mut swaps = 0;
    for round in 0..4 {
        thread::sleep(Duration::from_millis(300));
        let target = if round % 2 == 0 {
            f.build(&["--m", if round == 0 { "8" } else { "10" }])
        } else {
            earshot([
                "activate".as_ref(),
                f.link().as_os_str(),
                "previous".as_ref(),
            ])
            .assert_ok();
            layout::active_version(&f.link()).unwrap()
        };
        assert_ne!(target, expected);
        if round % 2 == 0 {
            signal(s.pid(), "HUP");
            wait_until("the SIGHUP swap", Duration::from_secs(30), || {
                served_version(&s.addr, "tracks") == target
            });
        } else {
            let r = reload(&s.addr).ok();
            assert_eq!(r["collections"]["tracks"]["outcome"], "swapped", "{r}");
            assert_eq!(r["collections"]["tracks"]["from"], expected.as_str(), "{r}");
            assert_eq!(r["collections"]["tracks"]["to"], target.as_str(), "{r}");
            assert_eq!(served_version(&s.addr, "tracks"), target);
        }
        swaps += 1;
        expected = target;
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during swaps; first: {}",
        failures.len(),
        done.load(Ordering::Relaxed),
        failures[0]
    );
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too little load to mean anything"
    );
    assert_eq!(
        metric(&s.addr, "earshot_swaps_total{collection=\"tracks\"}"),
        swaps as f64
    );
    assert_eq!(refusals(&s.addr), 0.0);
    let info =
        format!("earshot_collection_version_info{{collection=\"tracks\",version=\"{expected}\"}}");
    assert_eq!(metric(&s.addr, &info), 1.0);
    let text = get(&s.addr, "/metrics").body;
    assert_eq!(
        text.matches("earshot_collection_version_info{collection=\"tracks\"")
            .count(),
        1,
        "only the version in service is reported:\n{text}"
    );
    // A reload with nothing new changes nothing.
    let r = reload(&s.addr).ok();
    assert_eq!(r["collections"]["tracks"]["outcome"], "unchanged", "{r}");
    wait_until("the swap log line", Duration::from_secs(30), || {
        s.stderr().contains("swapped in new version")
    });
    assert_no_panic(&s.stderr());
}

#[test]
fn bad_versions_are_refused_and_the_old_one_keeps_serving() {
    let f = Fixture::new(2000);
    let v1 = f.build(&[]);
    let s = Server::start(&f.root, &[]);

    // 1. A flipped byte: checksum mismatch, named in the reload answer, the log and the metric.
    let bad = f.copy_version(&v1, "zz-1-bitflip");
    flip_byte(&bad, "vectors.bin");
    f.activate("zz-1-bitflip");
    let r = reload(&s.addr);
    r.assert_error(422, "swap_refused");
    let t = &r.json()["collections"]["tracks"];
    assert_eq!(t["outcome"], "refused", "{t}");
    assert_eq!(t["serving"], v1.as_str(), "{t}");
    assert!(t["reason"].as_str().unwrap().contains("vectors.bin"), "{t}");
    assert_eq!(refusals(&s.addr), 1.0);
    assert_eq!(served_version(&s.addr, "tracks"), v1);
    assert_serving(&s, &f);
    // The log is read by another thread: wait for the line rather than race it.
    wait_until("the refusal log line", Duration::from_secs(30), || {
        s.stderr()
            .lines()
            .any(|l| l.contains("refused new version") && l.contains("vectors.bin"))
    });

    // 2. A truncated file, via SIGHUP.
    let cut = f.copy_version(&v1, "zz-2-truncated");
    let p = cut.join("graph_level0.bin");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    f.activate("zz-2-truncated");
    signal(s.pid(), "HUP");
    wait_until("the second refusal", Duration::from_secs(30), || {
        refusals(&s.addr) == 2.0
    });
    wait_until("the truncation log line", Duration::from_secs(30), || {
        s.stderr().contains("graph_level0.bin")
    });
    assert_eq!(served_version(&s.addr, "tracks"), v1);
    assert_serving(&s, &f);

    // 3. Checksums that match but a graph that cannot find its own items.
    let broken = f.copy_version(&v1, "zz-3-graph");
    break_graph(&broken);
    // `verify` makes the server's checks: it refuses it too, naming the graph file.
    earshot(["verify".as_ref(), broken.as_os_str()]).assert_fails_with(&[
        "graph_level0.bin",
        "sanity query",
        "does not find its own items",
    ]);
    f.activate("zz-3-graph");
    let r = reload(&s.addr);
    r.assert_error(422, "swap_refused");
    let reason = r.json()["collections"]["tracks"]["reason"].to_string();
    assert!(reason.contains("sanity query"), "{reason}");
    assert_eq!(refusals(&s.addr), 3.0);
    assert_serving(&s, &f);

    // 4. Another dimension: refused unless the server allows schema changes.
    let other = catalogue(8, 500, 8, 3, 20, 1000, 1000);
    let sub = f.dir.join("dim8");
    std::fs::create_dir(&sub).unwrap();
    let (npy8, csv8) = other.write(&sub, "tracks");
    earshot(build_args(&npy8, Some(&csv8), "cosine", &f.link())).assert_ok();
    let v8 = layout::active_version(&f.link()).unwrap();
    let r = reload(&s.addr);
    r.assert_error(422, "swap_refused");
    let reason = r.json()["collections"]["tracks"]["reason"].to_string();
    assert!(reason.contains("dimension 8"), "{reason}");
    assert!(reason.contains("--allow-schema-change"), "{reason}");
    assert_eq!(refusals(&s.addr), 4.0);
    assert_eq!(served_version(&s.addr, "tracks"), v1);
    assert_serving(&s, &f);

    // Back to the good version: nothing to swap, nothing refused.
    f.activate(&v1);
    let r = reload(&s.addr).ok();
    assert_eq!(r["collections"]["tracks"]["outcome"], "unchanged", "{r}");
    assert_eq!(refusals(&s.addr), 4.0);

    // A server that allows schema changes takes the 8-d version.
    let s2 = Server::start(&f.root, &["--allow-schema-change"]);
    f.activate(&v8);
    let r = reload(&s2.addr).ok();
    assert_eq!(r["collections"]["tracks"]["outcome"], "swapped", "{r}");
    let v = get(&s2.addr, "/v1/collections").ok();
    assert_eq!(v["collections"][0]["dim"], 8);
    assert_no_panic(&s.stderr());
    assert_no_panic(&s2.stderr());
}

#[test]
fn watch_interval_swaps_without_a_signal_and_does_not_retry_a_refused_version() {
    let f = Fixture::new(1000);
    let v1 = f.build(&[]);
    let s = Server::start(&f.root, &["--watch-interval", "0.2"]);
    let v2 = f.build(&["--m", "8"]);
    wait_until("the watched swap", Duration::from_secs(30), || {
        served_version(&s.addr, "tracks") == v2
    });
    let bad = f.copy_version(&v1, "zz-bad");
    flip_byte(&bad, "item_creator.bin");
    f.activate("zz-bad");
    wait_until("the refusal", Duration::from_secs(30), || {
        refusals(&s.addr) == 1.0
    });
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        refusals(&s.addr),
        1.0,
        "an unchanged refused version was retried"
    );
    assert_eq!(served_version(&s.addr, "tracks"), v2);
    assert_serving(&s, &f);
    // A link left dangling is reported once, not at every poll.
    std::fs::remove_dir_all(&bad).unwrap();
    wait_until(
        "the dangling link's refusal",
        Duration::from_secs(30),
        || refusals(&s.addr) == 2.0,
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        refusals(&s.addr),
        2.0,
        "a dangling link was reported at every poll"
    );
    assert_eq!(
        s.stderr().matches("cannot resolve").count(),
        1,
        "{}",
        s.stderr()
    );
    assert_serving(&s, &f);
}

/// A batch slow enough to overlap with its neighbours: 256 wide searches.
fn slow_batch(f: &Fixture) -> String {
    let queries: Vec<Value> = (0..256)
        .map(|i| {
            json!({"type": "search", "collection": "tracks", "vector": f.cat.row(i * 7 % f.cat.len()),
                   "k": 200, "ef": 4096})
        })
        .collect();
    json!({ "queries": queries }).to_string()
}

#[test]
fn overload_is_answered_503_at_once_with_retry_after() {
    let f = Fixture::new(4000);
    f.build(&[]);
    let body = Arc::new(slow_batch(&f));

    // One slot, no queue: concurrent slow requests beyond the first are refused at once.
    let s = Server::start(&f.root, &["--max-concurrent", "1", "--max-queue", "0"]);
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (addr, body, barrier) = (s.addr.clone(), body.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let r = raw(&addr, "POST", "/v1/batch", &[], Some(&body));
                (r, started.elapsed())
            })
        })
        .collect();
    // Probes stay answered while the slot is busy.
    thread::sleep(Duration::from_millis(20));
    get(&s.addr, "/healthz").ok();
    assert_eq!(get(&s.addr, "/readyz").status, 200);
    let results: Vec<(Raw, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let rejected: Vec<&(Raw, Duration)> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(ok + rejected.len(), n, "only 200 or 503 expected");
    assert!(ok >= 1, "nothing succeeded");
    assert!(
        !rejected.is_empty(),
        "nothing was refused with one slot and no queue"
    );
    for (r, took) in &rejected {
        r.assert_error(503, "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
        assert!(
            *took < Duration::from_secs(2),
            "a refusal took {took:?}: it should be immediate"
        );
    }
    assert_eq!(
        metric(&s.addr, "earshot_rejected_total{reason=\"queue_full\"}"),
        rejected.len() as f64
    );
    drop(s);

    // With a queue, the same burst waits its turn instead.
    let s = Server::start(
        &f.root,
        &[
            "--max-concurrent",
            "1",
            "--max-queue",
            "16",
            "--queue-timeout-ms",
            "60000",
            "--request-timeout-ms",
            "60000",
        ],
    );
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (addr, body) = (s.addr.clone(), body.clone());
            thread::spawn(move || raw(&addr, "POST", "/v1/batch", &[], Some(&body)).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses, [200; 4]);
    drop(s);

    // A request that cannot finish in time: 503 timeout.
    let s = Server::start(&f.root, &["--request-timeout-ms", "5"]);
    let r = raw(&s.addr, "POST", "/v1/batch", &[], Some(&body));
    r.assert_error(503, "timeout");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        metric(&s.addr, "earshot_rejected_total{reason=\"timeout\"}"),
        1.0
    );
    // Cheap requests still pass.
    assert_eq!(get(&s.addr, "/healthz").status, 200);
}

#[test]
fn api_keys_guard_query_and_admin_endpoints() {
    let f = Fixture::new(500);
    f.build(&[]);
    let keys = f.dir.join("keys.txt");
    std::fs::write(
        &keys,
        "# earshot keys\nquery qkey-0123456789abcdef\n\nadmin akey-0123456789abcdef\n",
    )
    .unwrap();
    let s = Server::start(&f.root, &["--api-keys", keys.to_str().unwrap()]);
    let a = s.addr.as_str();
    let bearer = |k: &str| format!("Bearer {k}");
    let q = bearer("qkey-0123456789abcdef");
    let adm = bearer("akey-0123456789abcdef");

    for r in [
        raw(a, "GET", "/v1/collections", &[], None),
        raw(
            a,
            "GET",
            "/v1/collections",
            &[("authorization", "Bearer wrong-key-000")],
            None,
        ),
        raw(
            a,
            "GET",
            "/v1/collections",
            &[("x-api-key", "qkey-0123456789abcde")],
            None,
        ),
        raw(
            a,
            "GET",
            "/v1/collections",
            &[("authorization", "qkey-0123456789abcdef")],
            None,
        ),
        raw(a, "POST", "/admin/reload", &[], None),
        raw(
            a,
            "POST",
            "/admin/reload",
            &[("x-api-key", "nope-nope-nope")],
            None,
        ),
    ] {
        r.assert_error(401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"earshot\"")
        );
    }
    raw(a, "GET", "/v1/collections", &[("authorization", &q)], None).ok();
    raw(
        a,
        "GET",
        "/v1/collections",
        &[("x-api-key", "qkey-0123456789abcdef")],
        None,
    )
    .ok();
    raw(
        a,
        "GET",
        "/v1/collections",
        &[("authorization", &adm)],
        None,
    )
    .ok();
    raw(a, "GET", &f.similar_path(1), &[("authorization", &q)], None).ok();
    raw(a, "POST", "/admin/reload", &[("authorization", &q)], None).assert_error(403, "forbidden");
    raw(a, "POST", "/admin/reload", &[("authorization", &adm)], None).ok();
    raw(
        a,
        "POST",
        "/admin/reload",
        &[("x-api-key", "akey-0123456789abcdef")],
        None,
    )
    .ok();
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(a, open).status, 200, "{open}");
    }
    let log = s.stderr();
    assert!(!log.contains("qkey-0123456789abcdef") && !log.contains("akey-0123456789abcdef"));

    // Keys from the environment.
    let p = Proc::spawn(
        &f.root,
        &["--addr", "127.0.0.1:0"],
        &[
            ("EARSHOT_QUERY_KEYS", " envq-11111111, envq-22222222 "),
            ("EARSHOT_ADMIN_KEYS", "enva-33333333"),
        ],
    )
    .unwrap();
    let a = p.addr.as_str();
    raw(a, "GET", "/v1/collections", &[], None).assert_error(401, "unauthorized");
    raw(
        a,
        "GET",
        "/v1/collections",
        &[("x-api-key", "envq-22222222")],
        None,
    )
    .ok();
    raw(
        a,
        "POST",
        "/admin/reload",
        &[("x-api-key", "envq-11111111")],
        None,
    )
    .assert_error(403, "forbidden");
    raw(
        a,
        "POST",
        "/admin/reload",
        &[("authorization", "Bearer enva-33333333")],
        None,
    )
    .ok();
    drop(p);

    // A malformed key file stops the start, without echoing what may be a key.
    std::fs::write(&keys, "query qkey-0123456789abcdef\nsupersecretvalue123\n").unwrap();
    let e = Proc::spawn(
        &f.root,
        &[
            "--addr",
            "127.0.0.1:0",
            "--api-keys",
            keys.to_str().unwrap(),
        ],
        &[],
    )
    .err()
    .expect("a bad key file must stop the start");
    assert!(e.contains("line 2"), "{e}");
    assert!(
        !e.contains("supersecretvalue123") && !e.contains("qkey-0123"),
        "{e}"
    );
}

#[test]
fn admin_answers_only_loopback_without_keys() {
    let f = Fixture::new(300);
    f.build(&[]);
    let p = Proc::spawn(&f.root, &["--addr", "0.0.0.0:0"], &[]).unwrap();
    let port = p.addr.rsplit(':').next().unwrap().to_string();
    let local = format!("127.0.0.1:{port}");
    reload(&local).ok();
    wait_until("the warning about no keys", Duration::from_secs(5), || {
        p.stderr.lock().unwrap().contains("without API keys")
    });
    // This machine's address on its outbound interface (no packet is sent).
    let ip = UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|_| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip());
    match ip {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
            let remote = format!("{ip}:{port}");
            reload(&remote).assert_error(403, "forbidden");
            get(&remote, "/v1/collections").ok();
        }
        _ => eprintln!("no non-loopback address here: only the loopback half was checked"),
    }
}

#[test]
fn names_and_symlinks_cannot_leave_the_index_root() {
    let f = Fixture::new(500);
    f.build(&[]);
    // A valid collection outside the root, which nothing may serve.
    let outside = f.dir.join("outside/secret");
    earshot(build_args(&f.npy, Some(&f.csv), "cosine", &outside)).assert_ok();
    let s = Server::start(&f.root, &[]);
    let a = s.addr.as_str();
    let id = encode_segment(&f.cat.ids[1]);
    for path in [
        "/v1/..%2F..%2Fetc/x/similar".to_string(),
        format!("/v1/..%2Foutside%2Fsecret/{id}/similar"),
        format!("/v1/%2E%2E/{id}/similar"),
        format!("/v1/.versions/{id}/similar"),
        format!("/v1/..%5Coutside%5Csecret/{id}/similar"),
        format!("/v1/tracks%00/{id}/similar"),
        format!("/v1/tracks%2F..%2F..%2Foutside%2Fsecret/{id}/similar"),
    ] {
        get(a, &path).assert_error(400, "invalid_collection");
    }
    // Dot segments are not normalised into another route.
    for path in [
        format!("/v1/../outside/secret/{id}/similar"),
        format!("/v1/tracks/../../outside/secret/{id}/similar"),
        "/v1/../../../../etc/passwd".to_string(),
    ] {
        let r = get(a, &path);
        assert!((400..500).contains(&r.status), "{path}: {r:?}");
        assert!(r.json()["error"]["code"].is_string(), "{path}: {r:?}");
    }
    let vector = f.cat.row(0).to_vec();
    post(
        a,
        "/v1/search",
        &json!({"collection": "../outside/secret", "vector": vector}),
    )
    .assert_error(400, "invalid_collection");
    post(
        a,
        "/v1/taste/tracks",
        &json!({"history": [{"id": f.cat.ids[0]}], "history_collection": "../../outside/secret"}),
    )
    .assert_error(400, "invalid_collection");
    let v = post(
        a,
        "/v1/batch",
        &json!({"queries": [{"type": "similar", "collection": "..", "id": f.cat.ids[0]},
                            {"type": "similar", "collection": "tracks", "id": f.cat.ids[0]}]}),
    )
    .ok();
    assert_eq!(
        v["responses"][0]["error"]["code"], "invalid_collection",
        "{v}"
    );
    assert_eq!(v["responses"][0]["status"], 400, "{v}");
    assert!(v["responses"][1]["results"].is_array(), "{v}");

    // Symlinks out of the root, added while serving: refused at reload, never served.
    std::os::unix::fs::symlink(&outside, f.root.join("evil")).unwrap();
    std::os::unix::fs::symlink(
        Path::new(".versions/../../outside/secret"),
        f.root.join("sneaky"),
    )
    .unwrap();
    let r = reload(a);
    r.assert_error(422, "swap_refused");
    let v = r.json();
    for name in ["evil", "sneaky"] {
        let o = &v["collections"][name];
        assert_eq!(o["outcome"], "refused", "{v}");
        assert!(o["reason"].as_str().unwrap().contains("outside"), "{v}");
    }
    assert_eq!(v["collections"]["tracks"]["outcome"], "unchanged", "{v}");
    get(a, &format!("/v1/evil/{id}/similar")).assert_error(404, "unknown_collection");
    get(a, &format!("/v1/sneaky/{id}/similar")).assert_error(404, "unknown_collection");
    assert_eq!(
        metric(a, "earshot_swap_refusals_total{collection=\"evil\"}"),
        1.0
    );
    assert_serving(&s, &f);
    drop(s);

    // At start-up the same symlink stops the server, naming it.
    match Server::try_start(&f.root, &[]) {
        Ok(_) => panic!("a server started with a symlink out of the index root"),
        Err(e) => {
            assert_eq!(e.status.code(), Some(1), "{}", e.stderr);
            assert!(
                e.stderr.contains("evil") && e.stderr.contains("outside"),
                "{}",
                e.stderr
            );
        }
    }
}

#[test]
fn sigterm_drains_an_in_flight_request() {
    let f = Fixture::new(500);
    f.build(&[]);
    let mut s = Server::start(
        &f.root,
        &["--drain-seconds", "1", "--request-timeout-ms", "60000"],
    );
    let body = json!({"collection": "tracks", "vector": f.cat.row(5), "k": 3}).to_string();
    let req = request_bytes(&s.addr, "POST", "/v1/search", &[], Some(&body));
    let split = req.len() - body.len() / 2;
    // Headers and half the body: the request is in flight.
    let mut conn = TcpStream::connect(&s.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&req[..split]).unwrap();
    conn.flush().unwrap();
    thread::sleep(Duration::from_millis(200));

    signal(s.pid(), "TERM");
    // Still accepting during the drain, but no longer ready.
    wait_until("/readyz 503", Duration::from_secs(5), || {
        get(&s.addr, "/readyz").status == 503
    });
    get(&s.addr, "/readyz").assert_error(503, "not_ready");
    // Then the listener closes...
    wait_until("the listener to close", Duration::from_secs(10), || {
        TcpStream::connect(&s.addr).is_err()
    });
    // ...and the in-flight request still completes.
    conn.write_all(&req[split..]).unwrap();
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).unwrap();
    let r = parse_response(&bytes);
    let v = r.ok();
    assert_eq!(v["results"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["results"][0]["id"], f.cat.ids[5].as_str(), "{v}");
    let status = s
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits");
    assert!(status.success(), "exit status {status}:\n{}", s.stderr());
    let log = s.stderr();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    assert_no_panic(&log);
}
