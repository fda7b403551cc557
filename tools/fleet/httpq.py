#!/usr/bin/env python3
"""HTTP clients of the fleet harness; fleet.py runs them inside the client namespace.

  recall   similar-track queries (yes-tracks style: query rows of the catalogue, the item
           excluded) at each --ef against a server or router; recall@k counted as `earshot bench`
           does (a hit when the result's distance is no worse than the k-th true neighbour's
           +1e-6; cosine distance = 1 - score). With --cpu-pids, also the CPU seconds those
           processes used during each pass (utime+stime from /proc/PID/stat).
  load     bounded open-loop GETs of `similar` at --rate for --duration seconds on --threads
           keep-alive connections; counts failures, x-earshot-version per answer, and with
           --check-vectors verifies every answer's scores against the vectors of the version it
           names (an answer mixing versions fails that check).

Standard library only (no numpy): .npy files are parsed here.
"""
import argparse
import array
import ast
import csv
import http.client  # not earshot_client (clients/python): a load/recall generator run in bare network namespaces; no retries, minimal per-request cost
import json
import math
import sys
import threading
import time
import urllib.parse


def read_npy(path):
    """(shape, flat array) of a little-endian 1-D/2-D int32/int64/float32 .npy file."""
    with open(path, "rb") as f:
        magic = f.read(6)
        assert magic == b"\x93NUMPY", path
        major = f.read(2)[0]
        hlen = int.from_bytes(f.read(2 if major == 1 else 4), "little")
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        assert not header["fortran_order"], path
        code = {"<i4": "i", "<i8": "q", "<f4": "f"}[header["descr"]]
        data = array.array(code)
        data.frombytes(f.read())
        if code == "i" and data.itemsize != 4:
            raise SystemExit("int32 is not 4 bytes here")
        return tuple(header["shape"]), data


def read_ids(csv_path, column):
    with open(csv_path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        head = next(r)
        i = head.index(column)
        return [row[i] for row in r]


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime (fields 14, 15) / SC_CLK_TCK


def cpu_seconds(pids):
    """{name: CPU seconds} of NAME:PID,… (a bare PID names itself)."""
    return {name: cpu_of(pid) for name, pid in pids}


class Client:
    def __init__(self, url, timeout=10.0, retry_stale=True):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.retry_stale = retry_stale
        self.conn = None

    def get(self, path, body=None):
        """(status, headers dict, body bytes); status 0 on a transport error. With `body`
        (bytes of JSON), a POST."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                if body is None:
                    self.conn.request("GET", path)
                else:
                    self.conn.request("POST", path, body=body,
                                      headers={"content-type": "application/json"})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                # A keep-alive connection the server closed while idle is not a failure of
                # this request: retry once on a fresh connection only if nothing was answered.
                if attempt == 0 and self.retry_stale and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                                   ConnectionResetError)):
                    continue
                return 0, {}, str(e).encode()
        return 0, {}, b""


def cmd_recall(a):
    if a.queries:
        # Raw vector queries (POST /v1/search), e.g. the synthetic set's queries.npy.
        (nq, dim), qv = read_npy(a.queries)
        ids = rows = None
    else:
        ids = read_ids(a.meta, a.id_column)
        (nq,), rows = read_npy(a.query_rows)
    (gq, gk), gtd = read_npy(a.gt_dist)
    to_dist = {"cosine": lambda s: 1.0 - s, "l2": lambda s: -s, "dot": lambda s: -s}[a.metric]
    exact = None
    if a.vectors:
        # Judge each result by its exact distance recomputed here from the catalogue's vectors
        # (by ID), not by the score the server reports; report how far the two differ.
        (nrows, vdim), vec = read_npy(a.vectors)
        row_of = {x: i for i, x in enumerate(ids if ids is not None else read_ids(a.meta, a.id_column))}

        def exact(qi, rid):
            r = row_of[rid] * vdim
            if rows is not None:
                q0 = rows[qi] * vdim
                u = vec[q0:q0 + vdim]
            else:
                u = qv[qi * dim:(qi + 1) * dim]
            v = vec[r:r + vdim]
            if a.metric == "cosine":
                return 1.0 - cosine(u, v)
            if a.metric == "l2":
                return math.sqrt(sum((x - y) * (x - y) for x, y in zip(u, v)))
            return -sum(x * y for x, y in zip(u, v))
    first = 1 if a.skip_self else 0
    nq = min(nq, a.limit) if a.limit else nq
    pids = [(x.split(":")[0], int(x.split(":")[-1])) for x in a.cpu_pids.split(",")] if a.cpu_pids else []
    c = Client(a.url)
    for ef in [int(x) for x in a.ef.split(",")]:
        # One untimed request first so connection set-up is not in the figures.
        def request(qi):
            if rows is None:
                body = json.dumps({"collection": a.collection, "k": a.k, "ef": ef,
                                   "vector": [round(x, 7) for x in qv[qi * dim:(qi + 1) * dim]]})
                return c.get("/v1/search", body.encode())
            return c.get(f"/v1/{a.collection}/{urllib.parse.quote(ids[rows[qi]], safe='')}/similar"
                         f"?k={a.k}&ef={ef}")
        request(0)
        for rep in range(a.repeat):
            hits = errors = answered = 0
            score_err = 0.0
            versions = {}
            lat = []
            cpu0 = cpu_seconds(pids)
            t0 = time.monotonic()
            for qi in range(nq):
                thr = gtd[qi * gk + first + a.k - 1]
                s = time.monotonic()
                status, headers, body = request(qi)
                lat.append(time.monotonic() - s)
                if status != 200:
                    errors += 1
                    if errors <= 3:
                        print(f"query {qi}: {status} {body[:200]!r}", file=sys.stderr)
                    continue
                answered += 1
                v = headers.get("x-earshot-version", "-")
                versions[v] = versions.get(v, 0) + 1
                results = json.loads(body)["results"]
                if exact is None:
                    hits += sum(1 for r in results if to_dist(r["score"]) <= thr + a.tolerance)
                else:
                    for r in results:
                        d = exact(qi, r["id"])
                        score_err = max(score_err, abs(d - to_dist(r["score"])))
                        hits += d <= thr + a.tolerance
            secs = time.monotonic() - t0
            cpu1 = cpu_seconds(pids)
            by = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1}
            cpu = sum(by.values()) if pids else None
            lat.sort()
            out = {"ef": ef, "k": a.k, "rep": rep, "queries": nq, "errors": errors,
                   "recall": round(hits / (nq * a.k), 4), "seconds": round(secs, 3),
                   "client_p50_ms": round(lat[len(lat) // 2] * 1000, 3),
                   "versions": versions}
            if exact is not None:
                out["max_score_error"] = round(score_err, 6)
            if cpu is not None:
                out["server_cpu_s"] = round(cpu, 3)
                out["server_cpu_us_per_query"] = round(cpu / nq * 1e6, 1)
                out["cpu_s_by_process"] = by
            print(json.dumps(out), flush=True)


def cosine(u, v):
    dot = nu = nv = 0.0
    for x, y in zip(u, v):
        dot += x * y
        nu += x * x
        nv += y * y
    return dot / math.sqrt(nu * nv) if nu > 0 and nv > 0 else 0.0


def cmd_load(a):
    ids = read_ids(a.meta, a.id_column)
    step = max(1, len(ids) // 4096)
    query_ids = ids[::step]
    deadline = time.monotonic() + a.duration
    total = int(a.rate * a.duration)
    lock = threading.Lock()
    stats = {"sent": 0, "ok": 0, "failed": 0, "status": {}, "versions": {}, "late_ms_max": 0.0}
    samples = []  # (version, query id, [(id, score)]) for --check-vectors
    lat = []
    start = time.monotonic()
    next_index = [0]

    def worker():
        # No retries: a request the router fails to answer counts as failed.
        c = Client(a.url, timeout=a.timeout, retry_stale=False)
        while True:
            with lock:
                i = next_index[0]
                if i >= total:
                    return
                next_index[0] += 1
            due = start + i / a.rate
            now = time.monotonic()
            if now > deadline + 5:
                return
            if due > now:
                time.sleep(due - now)
            qid = query_ids[i % len(query_ids)]
            s = time.monotonic()
            status, headers, body = c.get(
                f"/v1/{a.collection}/{urllib.parse.quote(qid, safe='')}/similar?k={a.k}")
            e = time.monotonic() - s
            with lock:
                stats["sent"] += 1
                stats["status"][str(status)] = stats["status"].get(str(status), 0) + 1
                lat.append(e)
                if status == 200:
                    stats["ok"] += 1
                    v = headers.get("x-earshot-version", "-")
                    stats["versions"][v] = stats["versions"].get(v, 0) + 1
                    if a.check_vectors and len(samples) < a.max_samples:
                        res = json.loads(body)["results"]
                        samples.append((v, qid, [(r["id"], r["score"]) for r in res]))
                else:
                    stats["failed"] += 1
                    if stats["failed"] <= 5:
                        print(f"failed: {status} {body[:200]!r}", file=sys.stderr)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=a.duration + 30)
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
    stats.update({"wall_s": round(time.monotonic() - start, 2), "p50_ms": q(0.5), "p99_ms": q(0.99),
                  "max_ms": q(1.0) if lat else None})
    if a.check_vectors:
        # --check-vectors VERSION=DIR,VERSION=DIR: tracks.npy + tracks.csv per version.
        tables = {}
        for spec in a.check_vectors.split(","):
            ver, d = spec.split("=", 1)
            (n, dim), vec = read_npy(f"{d}/tracks.npy")
            row_of = {x: i for i, x in enumerate(read_ids(f"{d}/tracks.csv", a.id_column))}
            tables[ver] = (dim, vec, row_of)
        bad = checked = unknown = 0
        # Also whether each answer would pass as the *other* version: shows the check can tell
        # the versions apart (0 expected when their vectors differ).
        other_ok = 0

        def consistent(table, qid, res):
            dim, vec, row_of = table
            qr = row_of[qid]
            qv = vec[qr * dim:(qr + 1) * dim]
            for rid, score in res:
                rr = row_of[rid]
                if abs(cosine(qv, vec[rr * dim:(rr + 1) * dim]) - score) > 1e-3:
                    return False
            return True

        for v, qid, res in samples:
            if v not in tables:
                unknown += 1
                continue
            if not consistent(tables[v], qid, res):
                bad += 1
            if any(consistent(t, qid, res) for w, t in tables.items() if w != v):
                other_ok += 1
            checked += 1
        stats["vector_check"] = {"answers_checked": checked, "inconsistent_with_named_version": bad,
                                 "consistent_with_another_version": other_ok, "unknown_version": unknown}
    print(json.dumps(stats), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recall")
    r.add_argument("--url", required=True)
    r.add_argument("--collection", required=True)
    r.add_argument("--meta", help="the catalogue's CSV (row i = row i of the vectors)")
    r.add_argument("--id-column", default="song_id")
    r.add_argument("--query-rows", help="similar queries: these rows of the catalogue")
    r.add_argument("--queries", help="search queries: these vectors (.npy float32)")
    r.add_argument("--metric", default="cosine", choices=["cosine", "l2", "dot"])
    r.add_argument("--vectors", help="the catalogue's vectors: judge results by exact distances (by ID)")
    r.add_argument("--tolerance", type=float, default=1e-6)
    r.add_argument("--gt-dist", required=True, help="exact distances, one row per query")
    r.add_argument("--skip-self", action="store_true")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--ef", default="16,32,64,128")
    r.add_argument("--repeat", type=int, default=1)
    r.add_argument("--limit", type=int, default=0)
    r.add_argument("--cpu-pids", default="")
    l = sub.add_parser("load")
    l.add_argument("--url", required=True)
    l.add_argument("--collection", required=True)
    l.add_argument("--meta", required=True)
    l.add_argument("--id-column", default="id")
    l.add_argument("--k", type=int, default=10)
    l.add_argument("--rate", type=float, required=True)
    l.add_argument("--duration", type=float, required=True)
    l.add_argument("--threads", type=int, default=16)
    l.add_argument("--timeout", type=float, default=10.0)
    l.add_argument("--check-vectors", default="")
    l.add_argument("--max-samples", type=int, default=20000)
    a = p.parse_args()
    if a.cmd == "recall":
        cmd_recall(a)
    else:
        if a.duration > 600 or a.rate * a.duration > 200000:
            raise SystemExit("load: bounded to 600 s and 200,000 requests")
        cmd_load(a)


if __name__ == "__main__":
    main()
