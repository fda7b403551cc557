//! The front door's connection bounds, tried as a slow or hostile client would: connections
//! that send half a request (or nothing) are closed after the header-read timeout, kept-alive
//! ones after the idle timeout, a flood past the cap is closed at once, and a server started
//! with few file descriptors keeps answering through all of it. Every number is read back
//! from `/metrics`.

mod common;

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const DIM: usize = 8;

fn index(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(11);
    let c = centres(&mut rng, 4, DIM);
    let data = clustered(&mut rng, &c, 300, 0.3);
    let npy = dir.join("small.npy");
    write_npy(&npy, DIM, &data);
    let root = dir.join("indexes");
    earshot(build_args(&npy, None, "l2", &root.join("small"))).assert_ok();
    root
}

fn serve_args(root: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["serve".into(), "--index-root".into(), root.into()];
    args.extend(
        ["--addr", "127.0.0.1:0"]
            .iter()
            .chain(extra)
            .map(OsString::from),
    );
    args
}

fn metric(s: &Server, name: &str) -> f64 {
    sample(&s.get("/metrics").body, name)
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample `{name}` in /metrics:\n{text}"))
}

fn closed_by(s: &Server, reason: &str) -> f64 {
    metric(
        s,
        &format!("earshot_connections_closed_by_server_total{{reason=\"{reason}\"}}"),
    )
}

/// One request on an open keep-alive connection; the status line's code.
fn ask(conn: &mut TcpStream) -> std::io::Result<u16> {
    ask_path(conn, "/v1/collections").map(|(status, _)| status)
}

/// `GET path` on an open keep-alive connection: status and body.
fn ask_path(conn: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Content-Length framing: read until the whole body is in.
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Ok((text[9..12].parse().unwrap(), body));
            }
        }
    }
}

/// True once the server has closed `conn` (EOF or reset), waiting at most `within`.
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    match conn.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// `over_limit` closes as read from `/metrics` over an open `pooled` connection (a new one
/// is closed while the cap is full), once it reaches `expected` or after 10 s.
fn wait_over_limit(pooled: &mut TcpStream, expected: f64) -> f64 {
    let wait = Instant::now();
    loop {
        let (_, text) = ask_path(pooled, "/metrics").unwrap();
        let n = sample(
            &text,
            "earshot_connections_closed_by_server_total{reason=\"over_limit\"}",
        );
        if n >= expected || wait.elapsed() > Duration::from_secs(10) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server has closed `conn`, without waiting (a timed read's timer can take
/// far longer than asked on a loaded machine).
fn is_closed_now(conn: &TcpStream) -> bool {
    conn.set_nonblocking(true).unwrap();
    let closed = match (&mut &*conn).read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    conn.set_nonblocking(false).unwrap();
    closed
}

/// `n` connections, each with the moment it was made: even ones send half a request line and
/// stop, odd ones send nothing.
fn slow_clients(addr: &str, n: usize) -> Vec<(TcpStream, Instant)> {
    (0..n)
        .map(|i| {
            // Taken before connecting: the server may accept (and start its timer) before
            // `connect` returns to this thread.
            let at = Instant::now();
            let mut c = TcpStream::connect(addr).expect("connect");
            if i % 2 == 0 {
                c.write_all(b"GET /v1/collections HTTP/1.1\r\nHost: sl")
                    .unwrap();
            }
            (c, at)
        })
        .collect()
}

// Timings below hold on a loaded machine: a connection closed "early" is one closed before
// the timeout had passed since the client made it (the server accepted it later still), and
// the waits for closing are generous.

#[test]
fn half_sent_and_silent_connections_are_closed_idle_ones_later() {
    const HEADER: Duration = Duration::from_millis(1000);
    const IDLE: Duration = Duration::from_millis(6000);
    let dir = tempfile::tempdir().unwrap();
    let root = index(dir.path());
    let s = Server::start(
        &root,
        &[
            "--header-read-timeout-ms",
            "1000",
            "--idle-timeout-ms",
            "6000",
        ],
    );
    let mut pooled = TcpStream::connect(&s.addr).unwrap();
    assert_eq!(ask(&mut pooled).unwrap(), 200);
    let answered = Instant::now();
    let mut slow = slow_clients(&s.addr, 300);
    for (i, (c, at)) in slow.iter_mut().enumerate() {
        if is_closed_now(c) {
            assert!(
                at.elapsed() >= HEADER,
                "connection {i} closed after {:?}",
                at.elapsed()
            );
        }
    }
    // Every one is closed soon after the header timeout (the attack kept them 12 s
    // and more).
    for (i, (c, at)) in slow.iter_mut().enumerate() {
        let left = (HEADER + Duration::from_secs(10)).saturating_sub(at.elapsed());
        assert!(
            closed_within(c, left),
            "slow connection {i} still open after 11 s"
        );
        assert!(
            at.elapsed() >= HEADER,
            "connection {i} closed after {:?}",
            at.elapsed()
        );
    }
    // A caller's pooled connection, unused for twice the header timeout but less than the
    // idle one, still answers.
    std::thread::sleep((2 * HEADER).saturating_sub(answered.elapsed()));
    assert!(
        answered.elapsed() < IDLE,
        "the machine is too slow for this test's timings"
    );
    assert_eq!(
        ask(&mut pooled).unwrap(),
        200,
        "pooled connection closed early"
    );
    let answered = Instant::now();
    assert!(closed_by(&s, "header_timeout") >= 300.0);
    assert_eq!(closed_by(&s, "idle_timeout"), 0.0);
    // Left unused past the idle timeout, it is closed.
    assert!(closed_within(&mut pooled, IDLE + Duration::from_secs(10)));
    assert!(answered.elapsed() >= IDLE);
    assert_eq!(closed_by(&s, "idle_timeout"), 1.0);
    assert_eq!(metric(&s, "earshot_connections_accept_errors_total"), 0.0);
}

#[test]
fn near_its_descriptor_limit_the_server_closes_the_flood_and_keeps_answering() {
    const HEADER: Duration = Duration::from_secs(8);
    let dir = tempfile::tempdir().unwrap();
    let root = index(dir.path());
    // 300 descriptors, soft and hard: the cap becomes 300 − 75 = 225.
    let args = serve_args(&root, &["--header-read-timeout-ms", "8000"]);
    let s = Server::try_spawn_wrapped(&["prlimit", "--nofile=300:300", "--"], &args, &[])
        .expect("serve under prlimit");
    assert_eq!(metric(&s, "earshot_connections_limit"), 225.0);
    let mut pooled = TcpStream::connect(&s.addr).unwrap();
    assert_eq!(ask(&mut pooled).unwrap(), 200);

    let mut flood = slow_clients(&s.addr, 450);
    // The pooled connection is one of the held ones: it answers during the flood.
    assert_eq!(ask(&mut pooled).unwrap(), 200);
    // 450 − (225 − 1 pooled) = 226 past the cap, closed at once; the others held.
    // /metrics over the pooled connection: a new one would be closed too.
    assert_eq!(wait_over_limit(&mut pooled, 226.0), 226.0);
    assert!(
        flood.iter().all(|(_, at)| at.elapsed() < HEADER),
        "the flood took longer than the header timeout: this test's timings do not hold"
    );
    let shut = flood.iter_mut().filter(|(c, _)| is_closed_now(c)).count();
    assert_eq!(shut, 226, "closed at once: {shut} of 450");
    // A new client meanwhile is closed at once too (the cap is full) …
    let mut late = TcpStream::connect(&s.addr).unwrap();
    assert!(closed_within(&mut late, Duration::from_secs(5)));
    // … and served once the held ones have timed out.
    for (i, (c, at)) in flood.iter_mut().enumerate() {
        let left = (HEADER + Duration::from_secs(10)).saturating_sub(at.elapsed());
        assert!(closed_within(c, left), "flood connection {i} still open");
    }
    assert_eq!(s.get("/v1/collections").status, 200);
    assert_eq!(closed_by(&s, "header_timeout"), 224.0);
    assert_eq!(metric(&s, "earshot_connections_accept_errors_total"), 0.0);
}

#[test]
fn a_cap_the_descriptor_limit_cannot_hold_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = index(dir.path());
    let args = serve_args(&root, &["--max-connections", "5000"]);
    let err = match Server::try_spawn_wrapped(&["prlimit", "--nofile=300:300", "--"], &args, &[]) {
        Ok(_) => panic!("serve started with --max-connections 5000 under 300 descriptors"),
        Err(e) => e,
    };
    assert!(!err.status.success());
    for words in ["--max-connections 5000", "open-file limit 300", "ulimit -n"] {
        assert!(
            err.stderr.contains(words),
            "`{words}` missing from:\n{}",
            err.stderr
        );
    }
    assert_no_panic(&err.stderr);
}

/// `route` has the same front door: a half-sent request is closed after its header timeout,
/// connections past its cap at once, and it keeps routing.
#[test]
fn the_router_closes_slow_and_surplus_connections_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = index(dir.path());
    let shard = Server::start(&root, &[]);
    let topo = dir.path().join("topology.toml");
    std::fs::write(
        &topo,
        format!(
            "[collections.small]\nshards = [[\"http://{}\"]]\n",
            shard.addr
        ),
    )
    .unwrap();
    let router = Server::start_route(
        &topo,
        &["--header-read-timeout-ms", "1000", "--max-connections", "4"],
    );
    let mut pooled = TcpStream::connect(&router.addr).unwrap();
    assert_eq!(ask(&mut pooled).unwrap(), 200);
    let mut slow = slow_clients(&router.addr, 5);
    // 4 slots: the pooled connection and three slow ones; the other two are closed at once.
    assert_eq!(wait_over_limit(&mut pooled, 2.0), 2.0);
    for (i, (c, at)) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(15)),
            "connection {i} still open"
        );
        if i < 3 {
            assert!(at.elapsed() >= Duration::from_millis(1000));
        }
    }
    assert_eq!(ask(&mut pooled).unwrap(), 200);
    assert_eq!(router.get("/v1/collections").status, 200);
    assert_eq!(closed_by(&router, "header_timeout"), 3.0);
}

/// The gRPC port shares the process's connection budget: with a cap of 4, a pooled HTTP
/// connection and three gRPC connections hold it, further gRPC (and HTTP) connections are
/// closed at once and counted; gRPC connections that never send the HTTP/2 preface are
/// closed after the header-read timeout, and their places serve new clients.
#[test]
fn the_grpc_port_takes_its_connections_from_the_same_cap() {
    const HEADER: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let root = index(dir.path());
    let s = Server::start(
        &root,
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--max-connections",
            "4",
            "--header-read-timeout-ms",
            "3000",
        ],
    );
    let grpc = s
        .stdout()
        .lines()
        .find_map(|l| {
            l.strip_prefix("grpc listening on http://")
                .map(str::to_string)
        })
        .expect("a `grpc listening on` line");
    let mut pooled = TcpStream::connect(&s.addr).unwrap();
    assert_eq!(ask(&mut pooled).unwrap(), 200);
    let mut held: Vec<(TcpStream, Instant)> = (0..5)
        .map(|_| {
            let at = Instant::now(); // before connecting, as in `slow_clients`
            let c = TcpStream::connect(&grpc).expect("connect to the gRPC port");
            (c, at)
        })
        .collect();
    assert_eq!(wait_over_limit(&mut pooled, 2.0), 2.0);
    assert!(
        held.iter().all(|(_, at)| at.elapsed() < HEADER),
        "the machine is too slow for this test's timings"
    );
    let shut = held.iter().filter(|(c, _)| is_closed_now(c)).count();
    assert_eq!(shut, 2, "gRPC connections closed at once");
    let mut late = TcpStream::connect(&s.addr).unwrap();
    assert!(
        closed_within(&mut late, Duration::from_secs(5)),
        "the cap is full"
    );
    // Silent gRPC connections are closed once the header-read timeout has passed.
    for (i, (c, at)) in held.iter_mut().enumerate() {
        let left = (HEADER + Duration::from_secs(10)).saturating_sub(at.elapsed());
        assert!(closed_within(c, left), "gRPC connection {i} still open");
        assert!(
            at.elapsed() >= HEADER,
            "gRPC connection {i} closed after {:?}",
            at.elapsed()
        );
    }
    assert_eq!(
        metric_over(
            &mut pooled,
            "earshot_connections_closed_by_server_total{reason=\"header_timeout\"}"
        ),
        3.0
    );
    assert_eq!(s.get("/v1/collections").status, 200);
}

/// A metric read over an open connection.
fn metric_over(pooled: &mut TcpStream, name: &str) -> f64 {
    let (_, text) = ask_path(pooled, "/metrics").unwrap();
    sample(&text, name)
}
