#!/usr/bin/env python3
"""Soak test: zero-downtime index swaps under load (standard library only).

Builds two good versions of a `tracks` collection and a corrupt one, starts `earshot serve`,
measures its capacity with a short closed-loop burst, then drives a fixed open-loop rate (70 %
of that by default) of `similar` and `taste` requests for 60 s. Every 5 s it activates, in
turn, a good version and the corrupt one (`earshot activate --force`) and sends SIGHUP (or
POST /admin/reload with --via-admin). At the end it reports the requests sent, the failed ones
(anything but a 200 with results: must be 0), swaps and refusals seen in /metrics, and the p99
latency during the 1 s after each swap against the rest of the run.

    cargo build --release && python3 tools/soak.py            # ~2 min on 2 cores
    python3 tools/soak.py --bin target/debug/earshot --duration 30

Exit status 0 only if no request failed, every good version was swapped in and every corrupt
one refused.
"""

import argparse
import collections
import csv
import gc
import http.client  # not earshot_client (clients/python): a raw load generator, where per-request client cost and no hidden retries are the point
import json
import multiprocessing
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_binary(given):
    if given:
        return given
    # The most recently built of target/release and target/debug.
    found = [p for p in (os.path.join(ROOT, "target", d, "earshot") for d in ("release", "debug"))
             if os.path.exists(p)]
    if not found:
        sys.exit("no earshot binary: run `cargo build --release` or pass --bin")
    return max(found, key=os.path.getmtime)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100.0 * len(xs) + 0.5)) - 1))
    return xs[i]


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                headers = {"content-type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


class Workload:
    def __init__(self, ids, seed):
        self.ids = ids
        self.rng = random.Random(seed)

    def next(self):
        """(method, path, body) of a similar or a taste request, half and half."""
        if self.rng.random() < 0.5:
            i = self.ids[self.rng.randrange(len(self.ids))]
            return "GET", f"/v1/tracks/{quote(i)}/similar?k=20&ef=128", None
        history = [{"id": self.ids[self.rng.randrange(len(self.ids))]} for _ in range(20)]
        body = json.dumps({"history": history, "k": 20, "ef": 128})
        return "POST", "/v1/taste/tracks", body


def quote(s):
    from urllib.parse import quote as q

    return q(s, safe="")


def good_answer(status, data):
    if status != 200:
        return False
    try:
        return len(json.loads(data)["results"]) > 0
    except (ValueError, KeyError):
        return False


class Conn:
    """A keep-alive connection of the load loop (blocking sends are small; reads are polled)."""

    def __init__(self, host, port, sel):
        self.addr = (host, port)
        self.sel = sel
        self.busy = None  # (scheduled, sent) of the request in flight
        self.connect()

    def connect(self):
        self.sock = socket.create_connection(self.addr, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sel.register(self.sock, selectors.EVENT_READ, self)

    def reconnect(self):
        self.sel.unregister(self.sock)
        self.sock.close()
        self.connect()


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


def parse_response(buf):
    """(ok, status, bytes used) of the complete response at the start of `buf`, else None."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = bytes(buf[:i])
    m = CONTENT_LENGTH.search(head)
    n = int(m.group(1)) if m else 0
    if len(buf) < i + 4 + n:
        return None
    status = int(head[9:12])
    ok = status == 200 and buf.startswith(b'{"results":[{', i + 4)
    return ok, status, i + 4 + n


def encode_requests(host, port, ids, count, seed):
    w = Workload(ids, seed)
    out = []
    for _ in range(count):
        method, path, body = w.next()
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if body is None:
            out.append((head + "\r\n").encode())
        else:
            b = body.encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
            out.append(head.encode() + b)
    return out


def drive(host, port, requests, connections, duration, rate=None):
    """Sends `requests` round-robin over `connections` keep-alive connections for `duration`
    seconds from one thread (no GIL contention): closed-loop when `rate` is None, else on a
    fixed schedule. Returns records (scheduled, sent, done, ok, status)."""
    gc.disable()  # a collection over the growing record list would stall the client, not the server
    try:
        return _drive(host, port, requests, connections, duration, rate)
    finally:
        gc.enable()


def _drive(host, port, requests, connections, duration, rate):
    sel = selectors.DefaultSelector()
    conns = [Conn(host, port, sel) for _ in range(connections)]
    idle = collections.deque(conns)
    pending = collections.deque()
    records = []
    start = time.monotonic()
    end = start + duration
    interval = 1.0 / rate if rate else 0.0
    next_t = start
    ri = 0
    while True:
        now = time.monotonic()
        if now < end:
            if rate:
                while next_t <= now:
                    pending.append(next_t)
                    next_t += interval
            else:
                pending.extend([now] * (len(idle) - len(pending)))
        while pending and idle:
            c = idle.popleft()
            sched = pending.popleft()
            c.busy = (sched, time.monotonic())
            try:
                c.sock.sendall(requests[ri % len(requests)])
            except OSError as e:
                records.append((sched, c.busy[1], time.monotonic(), False, type(e).__name__))
                c.busy = None
                c.reconnect()
                idle.append(c)
            ri += 1
        if now >= end and len(idle) == len(conns):
            break
        if now >= end + 30:
            for c in conns:
                if c.busy:
                    records.append((c.busy[0], c.busy[1], now, False, "no answer in 30 s"))
            break
        wait = min(max(next_t - time.monotonic(), 0.0), 0.02) if rate and now < end else 0.02
        for key, _ in sel.select(wait if not pending or not idle else 0):
            c = key.data
            try:
                data = c.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                if c.busy:
                    records.append((c.busy[0], c.busy[1], time.monotonic(), False, "connection closed"))
                    c.busy = None
                    idle.append(c)
                c.reconnect()
                continue
            c.buf += data
            r = parse_response(c.buf)
            if r and c.busy:
                ok, status, used = r
                del c.buf[:used]
                records.append((c.busy[0], c.busy[1], time.monotonic(), ok, status))
                c.busy = None
                idle.append(c)
    for c in conns:
        sel.unregister(c.sock)
        c.sock.close()
    return records


def metric(host, port, sample):
    c = Client(host, port)
    _, data = c.request("GET", "/metrics")
    for line in data.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


QUERY_ROUTES = ('route="/v1/{collection}/{id}/similar"', 'route="/v1/taste/{collection}"')


def latency_buckets(host, port):
    """The server's own latency histogram for the query routes: {le: cumulative count}."""
    c = Client(host, port)
    _, data = c.request("GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        if line.startswith("earshot_http_request_duration_seconds_bucket{") and any(
                r in line for r in QUERY_ROUTES):
            le = re.search(r'le="([^"]+)"', line).group(1)
            le = float("inf") if le == "+Inf" else float(le)
            out[le] = out.get(le, 0.0) + float(line.split()[-1])
    return out


def diff_buckets(after, before):
    return {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}


def add_buckets(a, b):
    return {le: a.get(le, 0.0) + b.get(le, 0.0) for le in set(a) | set(b)}


def bucket_p99(buckets):
    """Upper bound (ms) of the bucket holding the 99th percentile."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    for le in sorted(buckets):
        if buckets[le] >= 0.99 * total:
            return le * 1000
    return float("inf")


def served_version(host, port):
    c = Client(host, port)
    _, data = c.request("GET", "/v1/collections")
    for col in json.loads(data)["collections"]:
        if col["name"] == "tracks":
            return col["version"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="earshot binary (default: the newer of target/release and target/debug)")
    ap.add_argument("--tracks", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--swap-every", type=float, default=5.0)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    ap.add_argument("--burst-seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32,
                    help="keep-alive connections (the burst keeps them all busy)")
    ap.add_argument("--via-admin", action="store_true", help="POST /admin/reload instead of SIGHUP")
    ap.add_argument("--workdir", help="keep inputs and indexes here (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    ap.add_argument("--dry-swaps", action="store_true",
                    help="control run: every event re-activates the version already served (the same "
                         "`earshot activate`, signal and /metrics polling, no swap), so that what the "
                         "harness itself costs in the windows can be told from what a swap costs")
    ap.add_argument("--split-cores", action="store_true",
                    help="server (--workers 1) on core 0, this load generator and `earshot activate` on "
                         "core 1, so that the client's own CPU use cannot delay the server (needs 2 cores)")
    a = ap.parse_args()

    binary = find_binary(a.bin)
    work = a.workdir or tempfile.mkdtemp(prefix="earshot-soak-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    root = os.path.join(work, "indexes")
    link = os.path.join(root, "tracks")
    server = None
    try:
        t0 = time.monotonic()
        run([binary, "generate", "--out", data, "--tracks", str(a.tracks), "--dim", str(a.dim),
             "--queries", "10"])
        build = [binary, "build", "--vectors", os.path.join(data, "tracks.npy"),
                 "--meta", os.path.join(data, "tracks.csv"), "--id-column", "track_id",
                 "--creator-column", "creator", "--popularity-column", "popularity",
                 "--metric", "cosine", "--out", link, "--versioned", "--keep", "10",
                 "--ef-construction", "100"]
        versions = []
        for m in ("16", "12"):
            run(build + ["--m", m])
            versions.append(os.path.basename(os.readlink(link)))
        good = versions
        # The corrupt version: a copy of a good one with one flipped payload byte.
        corrupt = "corrupt-bitflip"
        cdir = os.path.join(root, ".versions", "tracks", corrupt)
        shutil.copytree(os.path.join(root, ".versions", "tracks", good[1]), cdir)
        vec = os.path.join(cdir, "vectors.bin")
        with open(vec, "r+b") as f:
            size = os.path.getsize(vec)
            f.seek(64 + (size - 64) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x20]))
        run([binary, "activate", link, good[0]])
        print(f"built {len(good)} good versions + 1 corrupt of {a.tracks} x {a.dim} "
              f"in {time.monotonic() - t0:.0f} s: {good} + {corrupt}", flush=True)

        with open(os.path.join(data, "tracks.csv")) as f:
            ids = [row["track_id"] for row in csv.DictReader(f)]

        pin = ["taskset", "-c", "0"] if a.split_cores else []
        workers = ["--workers", "1"] if a.split_cores else []
        server = subprocess.Popen(pin + [binary, "serve", "--index-root", root, "--addr", "127.0.0.1:0"] + workers,
                                  stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"),
                                  text=True)
        line = server.stdout.readline()
        m = re.match(r"listening on http://([\d.]+):(\d+)", line)
        if not m:
            sys.exit(f"server did not start: {line!r} (see {work}/server.log)")
        host, port = m.group(1), int(m.group(2))
        threading.Thread(target=lambda: server.stdout.read(), daemon=True).start()
        if a.split_cores:
            os.sched_setaffinity(0, {1})

        requests = encode_requests(host, port, ids, 4096, 7)
        burst = drive(host, port, requests, a.connections, a.burst_seconds)
        cap = sum(1 for r in burst if r[3]) / a.burst_seconds
        burst_errors = sum(1 for r in burst if not r[3])
        rate = cap * a.load
        print(f"capacity: {cap:.0f} req/s ({a.connections} connections, {burst_errors} errors); "
              f"driving {rate:.0f} req/s ({a.load:.0%}) for {a.duration:.0f} s, swapping every "
              f"{a.swap_every:.0f} s", flush=True)

        start = time.monotonic()
        end = start + a.duration
        hist_start = latency_buckets(host, port)

        def swapper(out):
            # A process of its own at nice 19, not a thread of this one: a thread would hold the
            # GIL while it starts `earshot activate` and polls the server, and the open-loop
            # sender below would then send late exactly in the swap windows (the dry-swap control
            # of 2026-12-06 showed windows 2-3x the rest with no swap at all).
            os.nice(19)
            events = []  # (activate started, signalled, kind, version, completed after s)
            windows = []  # server-side histogram deltas over the 1 s after each event
            n = 0
            next_swap = start + a.swap_every
            good_i = 1
            while next_swap < end - 0.5:
                time.sleep(max(0.0, next_swap - time.monotonic()))
                if a.dry_swaps:
                    kind, version = "good", good[(good_i - 1) % len(good)]
                elif n % 2 == 0:
                    kind, version = "good", good[good_i % len(good)]
                    good_i += 1
                else:
                    kind, version = "corrupt", corrupt
                refusals_before = metric(host, port, 'earshot_swap_refusals_total{collection="tracks"}')
                hist_before = latency_buckets(host, port)
                cmd = [binary, "activate", link, version] + (["--force"] if kind == "corrupt" else [])
                t_activate = time.monotonic()
                run(cmd)  # verifies the version first, on the same cores
                t = time.monotonic()
                if a.via_admin:
                    Client(host, port).request("POST", "/admin/reload")
                else:
                    os.kill(server.pid, signal.SIGHUP)  # not Popen.send_signal: not our child here
                # Wait for the server to act on it.
                done = None
                while time.monotonic() - t < 30:
                    if kind == "good" and served_version(host, port) == version:
                        done = time.monotonic() - t
                        break
                    if kind == "corrupt" and metric(
                            host, port, 'earshot_swap_refusals_total{collection="tracks"}') > refusals_before:
                        done = time.monotonic() - t
                        break
                    time.sleep(0.02)
                events.append((t_activate, t, kind, version, done))
                time.sleep(max(0.0, t + 1.0 - time.monotonic()))
                windows.append(diff_buckets(latency_buckets(host, port), hist_before))
                n += 1
                next_swap += a.swap_every
            out.send((events, windows))

        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        sw = ctx.Process(target=swapper, args=(send,))
        sw.start()
        send.close()  # so that recv() below ends with EOFError if the swapper dies, not hangs
        records = drive(host, port, requests, a.connections, a.duration, rate)
        try:
            events, windows = recv.recv()
        except EOFError:
            sw.join(5)
            sys.exit(f"the swapper process died (exit code {sw.exitcode}) before reporting its events: "
                     f"see its error above and {work}/server.log")
        sw.join()
        late = sum(1 for r in records if r[1] - r[0] > 0.05)

        # ---- report
        hist_all = diff_buckets(latency_buckets(host, port), hist_start)
        hist_windows = {}
        for w in windows:
            hist_windows = add_buckets(hist_windows, w)
        hist_rest = diff_buckets(hist_all, hist_windows)
        swaps = metric(host, port, 'earshot_swaps_total{collection="tracks"}')
        refusals = metric(host, port, 'earshot_swap_refusals_total{collection="tracks"}')
        rejected = sum(metric(host, port, f'earshot_rejected_total{{reason="{r}"}}')
                       for r in ("queue_full", "queue_timeout", "timeout"))
        total = len(records)
        failed = [r for r in records if not r[3]]
        statuses = {}
        for r in failed:
            statuses[str(r[4])] = statuses.get(str(r[4]), 0) + 1

        def window(r, kinds):
            """Scheduled between the start of `earshot activate` and 1 s after the reload."""
            return any(kind in kinds and t0 <= r[0] < t + 1.0 for t0, t, kind, _, _ in events)

        def lat(rs):  # from the scheduled send time (open-loop latency), in ms
            return [(r[2] - r[0]) * 1000 for r in rs]

        def svc(rs):  # from the actual send
            return [(r[2] - r[1]) * 1000 for r in rs]

        def per_window_p99(spans):
            """p99 of each [t0, t1) span of scheduled send times, where a span holds 100+ requests."""
            by = [[] for _ in spans]
            for r in records:
                for i, (t0, t1) in enumerate(spans):
                    if t0 <= r[0] < t1:
                        by[i].append((r[2] - r[0]) * 1000)
            return [percentile(xs, 99) for xs in by if len(xs) >= 100]

        # Robust to a stall elsewhere in the run (one stall moves the p99 of "the rest"): the
        # median over good-swap windows of each window's p99, against the same over windows as
        # long placed midway between events, where nothing happens.
        good_spans = [(t0, t + 1.0) for t0, t, kind, _, _ in events if kind == "good"]
        quiet_spans = [(t0 + a.swap_every / 2, t + 1.0 + a.swap_every / 2) for t0, t, _, _, _ in events]
        good_p99s, quiet_p99s = per_window_p99(good_spans), per_window_p99(quiet_spans)

        in_good = [r for r in records if window(r, ("good",))]
        in_bad = [r for r in records if window(r, ("corrupt",))]
        in_any = [r for r in records if window(r, ("good", "corrupt"))]
        rest = [r for r in records if not window(r, ("good", "corrupt"))]
        n_good = sum(1 for e in events if e[2] == "good")
        n_bad = sum(1 for e in events if e[2] == "corrupt")
        took = [e[4] for e in events if e[4] is not None]
        activate_s = [e[1] - e[0] for e in events]
        print()
        print(f"requests:        {total} in {a.duration:.0f} s ({total / a.duration:.0f}/s; "
              f"target {rate:.0f}/s; {late} sent >50 ms after their scheduled time)")
        print(f"failed:          {len(failed)}" + (f"  {statuses}" if statuses else ""))
        print(f"503 (limiter):   {rejected:.0f}")
        print(f"swap events:     {n_good} good (swaps in /metrics: {swaps:.0f}), "
              f"{n_bad} corrupt (refusals in /metrics: {refusals:.0f}); "
              f"`earshot activate` took <= {max(activate_s) * 1000:.0f} ms, then the server "
              f"swapped or refused within {max(took) * 1000 if took else float('nan'):.0f} ms")
        row = "{:<34} {:>7} {:>9} {:>9} {:>9}"
        print("swap window = from the start of `earshot activate` to 1 s after the reload signal")
        print(row.format("latency ms (from scheduled send)", "n", "p50", "p99", "max"))
        for name, rs in (("good swap windows", in_good), ("corrupt refusal windows", in_bad),
                         ("all swap windows", in_any), ("rest of the run", rest),
                         ("whole run", records)):
            xs = lat(rs)
            print(row.format(name, len(rs), f"{percentile(xs, 50):.2f}", f"{percentile(xs, 99):.2f}",
                             f"{max(xs) if xs else float('nan'):.2f}"))
        print(f"median over windows of each window's p99: good swaps {percentile(good_p99s, 50):.2f} ms "
              f"({len(good_p99s)} windows), quiet windows midway between events "
              f"{percentile(quiet_p99s, 50):.2f} ms ({len(quiet_p99s)})")
        print(f"client service time p99 (from actual send): swap windows {percentile(svc(in_any), 99):.2f} ms, "
              f"rest {percentile(svc(rest), 99):.2f} ms")
        print(f"server-side p99 (its histogram, bucket upper bound): swap windows <= "
              f"{bucket_p99(hist_windows):.2f} ms ({hist_windows.get(float('inf'), 0):.0f} requests), "
              f"rest <= {bucket_p99(hist_rest):.2f} ms ({hist_rest.get(float('inf'), 0):.0f} requests)")
        ok = (not failed and swaps == (0 if a.dry_swaps else n_good) and refusals == n_bad
              and len(took) == len(events))
        summary = {
            "requests": total, "failed": len(failed), "capacity_rps": round(cap), "rate_rps": round(rate),
            "good_swaps": n_good, "swaps_metric": swaps, "corrupt": n_bad, "refusals_metric": refusals,
            "p99_ms_swap_windows": round(percentile(lat(in_any), 99), 3),
            "p99_ms_rest": round(percentile(lat(rest), 99), 3),
            "median_window_p99_ms_good_swaps": round(percentile(good_p99s, 50), 3),
            "median_window_p99_ms_quiet": round(percentile(quiet_p99s, 50), 3),
            "server_p99_ms_swap_windows_le": bucket_p99(hist_windows),
            "server_p99_ms_rest_le": bucket_p99(hist_rest), "ok": ok,
        }
        if a.json:
            print(json.dumps(summary))
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
