//! Shared helpers for the integration tests: deterministic data, input files, running the
//! real `earshot` binary, a served index on an ephemeral port, HTTP requests, brute force.
//!
//! Every test drives the compiled binary (`CARGO_BIN_EXE_earshot`) as a child process on
//! real files in temporary directories; nothing is mocked.

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use earshot_core::metric::Metric;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_earshot");

/// How long a server may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Deterministic data

/// splitmix64: small, fast and deterministic across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn gauss(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn gauss_vec(&mut self, dim: usize, scale: f64) -> Vec<f32> {
        (0..dim).map(|_| (self.gauss() * scale) as f32).collect()
    }
}

/// Cluster centres with unit-variance components.
pub fn centres(rng: &mut Rng, count: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..count).map(|_| rng.gauss_vec(dim, 1.0)).collect()
}

/// A point drawn around `centre` with Gaussian noise of standard deviation `noise`.
pub fn around(rng: &mut Rng, centre: &[f32], noise: f64) -> Vec<f32> {
    centre
        .iter()
        .map(|&c| c + (rng.gauss() * noise) as f32)
        .collect()
}

/// `n` row-major points of dimension `dim` around randomly chosen centres.
pub fn clustered(rng: &mut Rng, centres: &[Vec<f32>], n: usize, noise: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * centres[0].len());
    for _ in 0..n {
        let c = rng.below(centres.len());
        out.extend(around(rng, &centres[c], noise));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Exact (brute-force) search, in f64 over the test's own copy of the vectors

pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

pub fn l2sq64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

/// `v` scaled to unit length.
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = dot64(v, v).sqrt();
    assert!(norm > 0.0, "cannot normalise a zero vector");
    v.iter().map(|&x| (x as f64 / norm) as f32).collect()
}

/// Every row of `data` scaled to unit length.
pub fn normalized_rows(data: &[f32], dim: usize) -> Vec<f32> {
    data.chunks_exact(dim).flat_map(normalized).collect()
}

/// The internal distance of each metric (smaller is closer). Cosine expects unit vectors.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        Metric::Cosine => 1.0 - dot64(a, b),
        Metric::L2 => l2sq64(a, b),
        Metric::Dot => -dot64(a, b),
    }
}

/// The user-facing score of an internal distance (higher is closer), as documented for the API.
pub fn score_of(metric: Metric, distance: f64) -> f64 {
    match metric {
        Metric::Cosine => 1.0 - distance,
        Metric::L2 => -distance.max(0.0).sqrt(),
        Metric::Dot => -distance,
    }
}

/// The exact `k` nearest rows of `data` to `query` (distance, row), closest first, leaving
/// out rows for which `skip` is true.
pub fn exact_top_k(
    metric: Metric,
    data: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    skip: impl Fn(usize) -> bool,
) -> Vec<(f64, usize)> {
    let mut all: Vec<(f64, usize)> = data
        .chunks_exact(dim)
        .enumerate()
        .filter(|(row, _)| !skip(*row))
        .map(|(row, v)| (distance(metric, query, v), row))
        .collect();
    let by = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if all.len() > k {
        all.select_nth_unstable_by(k, by);
        all.truncate(k);
    }
    all.sort_by(by);
    all
}

// ---------------------------------------------------------------------------------------
// Input files

/// Writes a `.npy` with any dtype string and shape from its raw payload (for inputs the
/// build must refuse, such as float64 or 1-D arrays), with the library's writer.
pub fn write_npy_raw(path: &Path, descr: &str, shape: &[usize], payload: &[u8]) {
    earshot_build::npy::write_raw(path, descr, shape, payload).unwrap();
}

/// Writes a float32 2-D `.npy` with the library's writer.
pub fn write_npy(path: &Path, dim: usize, data: &[f32]) {
    assert_eq!(data.len() % dim, 0);
    earshot_build::npy::write_f32(path, data.len() / dim, dim, data).unwrap();
}

/// One CSV field, quoted when it needs to be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes a CSV file by hand: a header row, then one line per row.
pub fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) {
    let mut text = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    text.push('\n');
    for row in rows {
        text.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A catalogue with per-row metadata, as the test knows it (the ground truth).
pub struct Catalogue {
    pub dim: usize,
    /// Row-major, as written to the `.npy`.
    pub vectors: Vec<f32>,
    pub ids: Vec<String>,
    /// Empty string = no creator.
    pub creators: Vec<String>,
    /// `None` = empty cell.
    pub popularity: Vec<Option<f32>>,
}

impl Catalogue {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    /// Writes `NAME.npy` and `NAME.csv` (columns track_id, creator, popularity) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let npy = dir.join(format!("{name}.npy"));
        let csv = dir.join(format!("{name}.csv"));
        write_npy(&npy, self.dim, &self.vectors);
        let rows: Vec<Vec<String>> = (0..self.len())
            .map(|i| {
                vec![
                    self.ids[i].clone(),
                    self.creators[i].clone(),
                    self.popularity[i]
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        write_csv(&csv, &["track_id", "creator", "popularity"], &rows);
        (npy, csv)
    }
}

/// A clustered catalogue: `genres` centres, creators scattered around a genre, tracks around
/// their creator. Every `no_creator_every`-th track has no creator and every
/// `no_popularity_every`-th no popularity.
pub fn catalogue(
    seed: u64,
    tracks: usize,
    dim: usize,
    genres: usize,
    creators: usize,
    no_creator_every: usize,
    no_popularity_every: usize,
) -> Catalogue {
    let mut rng = Rng::new(seed);
    let genre_centres = centres(&mut rng, genres, dim);
    let creator_centres: Vec<Vec<f32>> = (0..creators)
        .map(|_| {
            let g = rng.below(genres);
            around(&mut rng, &genre_centres[g], 0.5)
        })
        .collect();
    let mut cat = Catalogue {
        dim,
        vectors: Vec::with_capacity(tracks * dim),
        ids: Vec::with_capacity(tracks),
        creators: Vec::with_capacity(tracks),
        popularity: Vec::with_capacity(tracks),
    };
    for i in 0..tracks {
        let c = rng.below(creators);
        cat.vectors
            .extend(around(&mut rng, &creator_centres[c], 0.35));
        cat.ids.push(format!("trk-{i:05}"));
        cat.creators
            .push(if i % no_creator_every == no_creator_every - 1 {
                String::new()
            } else {
                format!("artist-{c:04}")
            });
        // Quarter steps are exact in f32 and in their decimal form.
        cat.popularity.push(if i % no_popularity_every == 3 {
            None
        } else {
            Some(rng.below(40_000) as f32 / 4.0)
        });
    }
    cat
}

// ---------------------------------------------------------------------------------------
// Running the binary

/// The outcome of one finished `earshot` run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "earshot failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts a clean failure: non-zero exit, no panic, and every word in stderr.
    pub fn assert_fails_with(&self, words: &[&str]) -> &Self {
        assert!(
            !self.status.success(),
            "earshot succeeded but should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(
            self.status.code(),
            Some(1),
            "earshot should exit with status 1 on an error (not a signal or panic code):\n{}",
            self.stderr
        );
        assert_no_panic(&self.stderr);
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr does not mention {w:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "earshot panicked:\n{stderr}"
    );
}

/// Runs `earshot ARGS…` to completion.
pub fn earshot<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    earshot_env(args, &[])
}

/// Runs `earshot ARGS…` to completion with extra environment variables (e.g. AWS_*).
pub fn earshot_env<I, S>(args: I, env: &[(String, String)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the earshot binary");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Arguments of `earshot build` for a `.npy` + the CSV written by [`Catalogue::write`].
pub fn build_args(vectors: &Path, meta: Option<&Path>, metric: &str, out: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["build".into(), "--vectors".into(), vectors.into()];
    if let Some(meta) = meta {
        for s in [
            "--meta".into(),
            meta.as_os_str().to_owned(),
            "--id-column".into(),
            "track_id".into(),
            "--creator-column".into(),
            "creator".into(),
            "--popularity-column".into(),
            "popularity".into(),
        ] {
            a.push(s);
        }
    }
    a.extend(["--metric".into(), metric.into(), "--out".into(), out.into()]);
    a
}

/// Waits for `child` at most `timeout`; kills it (SIGKILL) if it is still running then.
/// Returns its status and whether it had to be killed.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            signal(pid, "KILL");
            true
        } else {
            false
        }
    });
    let status = child.wait().expect("wait for child");
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap();
    (status, killed)
}

/// Sends a signal with the `kill` command (libc is not a dependency).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = ok;
}

/// Collects a child's stream in a thread (so its pipe never fills up).
fn drain(mut r: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    let h = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    });
    (buf, h)
}

// ---------------------------------------------------------------------------------------
// A running server

/// `earshot serve` on an ephemeral port. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// A server that exited instead of starting.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Server {
    /// Starts a server on `root` and waits for its `listening on` line; panics if it fails.
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        match Self::try_start(root, extra) {
            Ok(s) => s,
            Err(e) => panic!(
                "earshot serve exited ({}) instead of starting:\n{}",
                e.status, e.stderr
            ),
        }
    }

    /// Starts a server on `root`; `Err` if the process exits before it listens.
    pub fn try_start(root: &Path, extra: &[&str]) -> Result<Server, Exited> {
        let mut args: Vec<OsString> = vec!["serve".into(), "--index-root".into(), root.into()];
        args.extend(
            ["--addr", "127.0.0.1:0"]
                .iter()
                .chain(extra)
                .map(OsString::from),
        );
        Self::try_spawn(&args)
    }

    /// `earshot route --topology FILE` on an ephemeral port; panics if it fails to start.
    pub fn start_route(topology: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<OsString> = vec!["route".into(), "--topology".into(), topology.into()];
        args.extend(
            ["--addr", "127.0.0.1:0"]
                .iter()
                .chain(extra)
                .map(OsString::from),
        );
        match Self::try_spawn(&args) {
            Ok(s) => s,
            Err(e) => panic!(
                "earshot route exited ({}) instead of starting:\n{}",
                e.status, e.stderr
            ),
        }
    }

    /// Runs `earshot ARGS…` (a command that prints `listening on http://ADDR`) and waits for
    /// that line; `Err` if the process exits first.
    pub fn try_spawn(args: &[OsString]) -> Result<Server, Exited> {
        Self::try_spawn_env(args, &[])
    }

    /// [`Server::try_spawn`] with extra environment variables (e.g. a store's AWS_*).
    pub fn try_spawn_env(args: &[OsString], env: &[(String, String)]) -> Result<Server, Exited> {
        Self::try_spawn_wrapped(&[], args, env)
    }

    /// [`Server::try_spawn_env`] run through `wrapper` (e.g. `["prlimit", "--nofile=300"]`).
    pub fn try_spawn_wrapped(
        wrapper: &[&str],
        args: &[OsString],
        env: &[(String, String)],
    ) -> Result<Server, Exited> {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start earshot serve");
        let stdout = child.stdout.take().unwrap();
        let (stderr, stderr_thread) = drain(child.stderr.take().unwrap());
        let stdout_buf = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out = stdout_buf.clone();
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok(Server {
                child,
                addr,
                stdout: stdout_buf,
                stderr,
                stderr_thread: Some(stderr_thread),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without the line: the process is exiting.
                let (status, _) = wait_timeout(&mut child, Duration::from_secs(30));
                let _ = stdout_thread.join();
                let _ = stderr_thread.join();
                let stderr = stderr.lock().unwrap().clone();
                let stdout = stdout_buf.lock().unwrap().clone();
                Err(Exited {
                    status,
                    stdout,
                    stderr,
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "earshot serve printed no `listening on` line within {START_TIMEOUT:?}:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stdout so far (its `listening on` lines).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit; `None` if it did not within `timeout` (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let (status, killed) = wait_timeout(&mut self.child, timeout);
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        (!killed).then_some(status)
    }

    // --- HTTP against this server

    pub fn get(&self, path: &str) -> Resp {
        http("GET", &self.url(path), &[], None)
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        http(
            "POST",
            &self.url(path),
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cleans up after a fixture kept in a `static` (whose destructor never runs): when this
/// test process exits, however it exits, the pipe to a small `sh` closes, and it kills the
/// given processes and removes the given directories.
pub struct Reaper {
    _child: Child,
    _stdin: ChildStdin,
}

pub fn reap_at_exit(pids: &[u32], dirs: &[&Path]) -> Reaper {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read _ignored; for p in $PIDS; do kill -9 "$p"; done; rm -rf -- "$@""#)
        .arg("earshot-test-reaper")
        .args(dirs)
        .env("PIDS", pids.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start sh");
    let stdin = child.stdin.take().unwrap();
    Reaper {
        _child: child,
        _stdin: stdin,
    }
}

/// `cat` built as the cosine collection `tracks` under `DIR/indexes` (and its creators as
/// `indexes/creators` with `creators_out`); returns that index root.
pub fn build_tracks(dir: &Path, cat: &Catalogue, creators_out: bool) -> PathBuf {
    let (npy, csv) = cat.write(dir, "tracks");
    let root = dir.join("indexes");
    let mut args = build_args(&npy, Some(&csv), "cosine", &root.join("tracks"));
    if creators_out {
        args.extend(["--creators-out".into(), root.join("creators").into()]);
    }
    earshot(&args).assert_ok();
    root
}

/// A server over `root` for a fixture kept in a `static`: it is killed, and `dir` removed,
/// when the test process exits.
pub fn serve_fixture(root: &Path, dir: &Path) -> (Server, Reaper) {
    let server = Server::start(root, &[]);
    let reaper = reap_at_exit(&[server.pid()], &[dir]);
    (server, reaper)
}

/// A fixture to keep in a `static`: `cat` built as the cosine collection `tracks` (see
/// [`build_tracks`]) in a temporary directory and served, cleaned up when the test process
/// exits.
pub struct Tracks {
    pub server: Server,
    pub cat: Catalogue,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

impl Tracks {
    pub fn serve(cat: Catalogue) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = build_tracks(dir.path(), &cat, false);
        let (server, reaper) = serve_fixture(&root, dir.path());
        Tracks {
            server,
            cat,
            _dir: dir,
            _reaper: reaper,
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// Every response header, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts status 200 and returns the JSON body.
    pub fn ok_json(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "expected 200, got: {self:?}");
        self.json()
    }

    /// Asserts an API error: this status, a JSON body that is exactly
    /// `{"error":{"code","message"}}` with this code and a non-empty message, and a request ID.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "wrong status for {code}: {self:?}");
        assert_error_body(&self.json(), code);
        assert!(
            self.request_id.as_deref().is_some_and(|s| !s.is_empty()),
            "error response without x-request-id: {self:?}"
        );
        assert!(
            self.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "error response is not application/json: {self:?}"
        );
        self.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Checks an error object `{"error":{"code","message"}}` (also used for batch entries).
pub fn assert_error_body(v: &serde_json::Value, code: &str) {
    let err = v
        .get("error")
        .and_then(|e| e.as_object())
        .unwrap_or_else(|| panic!("no error object in {v}"));
    let mut keys: Vec<&str> = err.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["code", "message"], "error object keys: {v}");
    assert_eq!(err["code"].as_str(), Some(code), "error code: {v}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "empty error message: {v}"
    );
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections(0)
        .build()
        .into()
}

/// One request on a fresh connection.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
    try_http(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

pub fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Resp, ureq::Error> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let agent = agent();
    let resp = match body {
        Some(b) => agent.run(req.body(b).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    }?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_string())
    };
    let request_id = header("x-request-id");
    let content_type = header("content-type");
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), v)
        })
        .collect();
    let body = resp
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    Ok(Resp {
        status,
        request_id,
        content_type,
        body,
        headers,
    })
}

/// The `results` array of a successful query response.
pub fn results(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results array in {v}"))
}

/// Checks the invariants of every result list (scores descending, unique IDs) and returns
/// (id, score) pairs.
pub fn check_results(v: &serde_json::Value) -> Vec<(String, f64)> {
    let items: Vec<(String, f64)> = results(v)
        .iter()
        .map(|r| {
            let id = r["id"]
                .as_str()
                .unwrap_or_else(|| panic!("result without an id: {r}"))
                .to_string();
            let score = r["score"]
                .as_f64()
                .unwrap_or_else(|| panic!("result without a numeric score: {r}"));
            (id, score)
        })
        .collect();
    for w in items.windows(2) {
        assert!(
            w[0].1 >= w[1].1,
            "scores are not in descending order: {:?}",
            items
        );
    }
    let mut ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "duplicate ids in results: {items:?}");
    items
}

/// What `encode_segment` escapes: every byte but RFC 3986's unreserved characters (bytes
/// outside ASCII are always escaped).
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment (upper-case hex, UTF-8 bytes).
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED_KEPT).to_string()
}

/// A POST over a plain socket that reads the response while the body is still being
/// written. For bodies the server refuses part-way (413): it answers and closes without
/// reading the rest, so a client that only reads after writing everything would see a
/// broken pipe instead of the answer.
pub fn post_streaming(addr: &str, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
    use std::io::Write;
    use std::net::TcpStream;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        // The server may close before taking everything: that is expected.
        let _ = writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(&body));
    });
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A reset after the response arrived ends the exchange too.
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to POST {path}: {text:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let mut request_id = None;
    let mut content_type = None;
    let mut length = None;
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim().to_string();
        headers.push((k.trim().to_ascii_lowercase(), v.clone()));
        match k.trim().to_ascii_lowercase().as_str() {
            "x-request-id" => request_id = Some(v),
            "content-type" => content_type = Some(v),
            "content-length" => length = v.parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = match length {
        Some(n) if rest.len() >= n => rest[..n].to_string(),
        _ => rest.to_string(),
    };
    Resp {
        status,
        request_id,
        content_type,
        body,
        headers,
    }
}

// --- A real S3 server (earshot-testkit's s3s-fs on loopback): publish to it, serve from it

/// `earshot publish DIR --store S3/fleet --version V`; the JSON line it prints.
pub fn publish_s3(s3: &earshot_testkit::S3Server, dir: &Path, version: &str) -> serde_json::Value {
    let run = earshot_env(
        [
            OsString::from("publish"),
            dir.into(),
            "--store".into(),
            s3.url("fleet").into(),
            "--version".into(),
            version.into(),
        ],
        &s3.env(),
    );
    run.assert_ok();
    let line = run.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("publish printed {line:?}: {e}"))
}

/// `earshot serve --store S3/fleet --index-root CACHE` on an ephemeral port (polling the
/// store every 0.2 s), plus `extra` flags.
pub fn serve_s3(s3: &earshot_testkit::S3Server, cache: &Path, extra: &[&str]) -> Server {
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--store".into(),
        s3.url("fleet").into(),
        "--index-root".into(),
        cache.into(),
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--watch-interval".into(),
        "0.2".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    match Server::try_spawn_env(&args, &s3.env()) {
        Ok(s) => s,
        Err(e) => panic!("serve --store exited: {}", e.stderr),
    }
}

/// Polls `f` every 20 ms until it returns `Some` or `limit` passes.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies the files of collection directory `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Zeroes every level-0 link count and rewrites the checksums to match: a version whose
/// files all verify but whose search cannot reach its items.
pub fn break_graph(dir: &Path) {
    use earshot_core::format::{ArrayFile, Verify};
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let degree = manifest["hnsw"]["level0_degree"].as_u64().unwrap() as usize;
    let path = dir.join("graph_level0.bin");
    let mut links: Vec<u32> = {
        let f = ArrayFile::open::<u32>(&path, Verify::Full).unwrap();
        f.as_slice::<u32>().to_vec()
    };
    for block in links.chunks_exact_mut(1 + degree) {
        block.iter_mut().for_each(|x| *x = 0);
    }
    std::fs::remove_file(&path).unwrap();
    let sum = earshot_core::format::array_file::write(&path, &links).unwrap();
    manifest["files"]["graph_level0.bin"]["xxh3"] = serde_json::json!(format!("{sum:016x}"));
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
}
