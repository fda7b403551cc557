"""Fixtures: a real `earshot` binary, a small real index built by it, real `earshot serve` processes.

The binary is $EARSHOT_BIN, else <repo>/target/debug/earshot, else <repo>/target/release/earshot;
without one every test fails (never skipped).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
N_TRACKS = 4000
DIM = 16
#: IDs that need care on the wire: a slash, a space, non-ASCII, and the one that names a route
SPECIAL_IDS = ["a/b", "with space", "ünïcode", "items"]


def find_binary() -> Path:
    env = os.environ.get("EARSHOT_BIN")
    cands = [Path(env)] if env else [REPO / "target" / "debug" / "earshot", REPO / "target" / "release" / "earshot"]
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(f"no earshot binary: tried {', '.join(map(str, cands))} (run `cargo build` or set EARSHOT_BIN)")


@pytest.fixture(scope="session")
def earshot_bin() -> Path:
    return find_binary()


class Catalogue:
    """Clustered unit vectors with creators (50 tracks each) and popularity = row % 100."""

    def __init__(self, n: int, dim: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(40, dim))
        v = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
        self.vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        self.ids = [f"t{i}" for i in range(n)]
        self.ids[1 : 1 + len(SPECIAL_IDS)] = SPECIAL_IDS
        self.creators = [f"c{i // 50}" for i in range(n)]
        self.popularity = [float(i % 100) for i in range(n)]

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w") as f:
            for i, vid in enumerate(self.ids):
                f.write(json.dumps({"id": vid, "vector": self.vectors[i].tolist(),
                                    "creator": self.creators[i], "popularity": self.popularity[i]}) + "\n")


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue(N_TRACKS, DIM)


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, earshot_bin, catalogue) -> Path:
    d = tmp_path_factory.mktemp("earshot")
    catalogue.write_jsonl(d / "tracks.jsonl")
    root = d / "indexes"
    root.mkdir()
    subprocess.run(
        [str(earshot_bin), "build", "--vectors", str(d / "tracks.jsonl"), "--metric", "cosine",
         "--out", str(root / "tracks"), "--creators-out", str(root / "creators")],
        check=True, capture_output=True,
    )
    return root


class Server:
    """`earshot serve --addr 127.0.0.1:0`, its address read from the `listening on` line."""

    def __init__(self, binary: Path, root: Path, *extra: str, env: dict | None = None) -> None:
        self.log_path = root.parent / f"serve-{id(self)}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--index-root", str(root), "--addr", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            self.stop()
            raise RuntimeError(f"earshot serve did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line.strip().split("listening on ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def metric(self, name: str) -> float:
        """One sample of /metrics by its full name with labels (0 when absent)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="session")
def server(earshot_bin, index_root):
    s = Server(earshot_bin, index_root)
    yield s
    s.stop()


@pytest.fixture
def start_server(earshot_bin, index_root):
    """Start extra servers with their own flags; all stopped at the end of the test."""
    started = []

    def start(*extra: str, env: dict | None = None) -> Server:
        s = Server(earshot_bin, index_root, *extra, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


class Relay:
    """A tiny HTTP/1.1 keep-alive relay in front of a real server: answers the first `fail` requests
    503 (with the given code and Retry-After) itself, forwards the rest, and counts the TCP
    connections clients open to it."""

    def __init__(self, upstream_port: int, fail: int = 0, code: str = "overloaded", retry_after: str | None = "1"):
        self.fail, self.code, self.retry_after = fail, code, retry_after
        self.connections = 0
        self.requests = 0
        self.times: list[float] = []
        relay = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with lock:
                    relay.connections += 1
                self.upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)

            def log_message(self, *a) -> None:
                pass

            def _any(self) -> None:
                import time

                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with lock:
                    relay.requests += 1
                    relay.times.append(time.monotonic())
                    refuse = relay.fail > 0
                    relay.fail -= refuse
                if refuse:
                    payload = json.dumps({"error": {"code": relay.code, "message": "relay says no"}}).encode()
                    self.send_response(503)
                    if relay.retry_after is not None:
                        self.send_header("Retry-After", relay.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                self.upstream.request(self.command, self.path, body or None, headers)
                r = self.upstream.getresponse()
                payload = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def relay(server):
    made = []

    def make(**kw) -> Relay:
        r = Relay(server.port, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
