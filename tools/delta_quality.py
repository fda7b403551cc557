#!/usr/bin/env python3
"""Quality of a catalogue that arrives partly through the write log (BENCHMARKS.md §11).

yes-tracks (read in place from ../shared/datasets) is split at random: 90 % of the rows are
built and published as version v1 to a file:// store, the other 10 % are upserted through
`POST /admin/tracks/items` to a replica serving v1 (`serve --store`), which holds them in its
delta (linked into v1's graph by the replica; the newest scanned exactly until linked). The same 75,262 tracks are also built whole from the
inputs ("full rebuild") and compacted from v1 + the log (`build --base … --apply-log …`,
"compacted"). For each `ef`:

- recall@10 of `similar` for 1,000 random tracks (base and delta ones alike) against an exact
  scan of all rows (the item itself left out), on all three servers;
- server CPU per request at a fixed open-loop rate (`earshot bench-http --max-rate R
  --fractions 1`; CPU ticks of the server process over the run), the three servers in turn,
  `--rounds` times, so background load affects them alike. QPS per server CPU-second is
  requests / CPU-seconds.

Needs numpy (e.g. the Python client's test venv: target/py-client-venv/bin/python).

    python tools/delta_quality.py --earshot /tmp/fresh/bin/earshot --work /tmp/dq
"""

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "yes-tracks")


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def http(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def metric(port, name):
    _, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return None


def wait(what, f, limit=600):
    start = time.time()
    while time.time() - start < limit:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what}: not within {limit} s")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--earshot", required=True)
    p.add_argument("--work", default="/tmp/dq")
    p.add_argument("--fraction", type=float, default=0.10)
    p.add_argument("--ef", default="16,32,64,128")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000, help="open-loop requests/s for the CPU runs")
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    efs = [int(x) for x in a.ef.split(",")]
    w = a.work
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    B = a.earshot

    vectors = np.load(os.path.join(DATA, "tracks_minilm384.npy")).astype(np.float32)
    with open(os.path.join(DATA, "tracks.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    n = len(rows)
    ids = [r["song_id"] for r in rows]
    artists = [r["artist"] for r in rows]
    perm = np.random.default_rng(1).permutation(n)
    n_delta = int(n * a.fraction)
    base_rows, delta_rows = np.sort(perm[n_delta:]), np.sort(perm[:n_delta])

    # Inputs: the base (90 %) and the whole catalogue.
    np.save(f"{w}/base.npy", vectors[base_rows])
    with open(f"{w}/base.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["song_id", "artist"])
        for r in base_rows:
            wr.writerow([ids[r], artists[r]])
    common = ["--id-column", "song_id", "--creator-column", "artist", "--metric", "cosine"]
    t = time.time()
    run([B, "build", "--vectors", f"{w}/base.npy", "--meta", f"{w}/base.csv", *common, "--out", f"{w}/base/tracks"])
    run([B, "build", "--vectors", os.path.join(DATA, "tracks_minilm384.npy"), "--meta",
         os.path.join(DATA, "tracks.csv"), *common, "--out", f"{w}/full/tracks"])
    store = f"file://{w}/store"
    os.makedirs(f"{w}/store")
    run([B, "publish", f"{w}/base/tracks", "--store", store, "--version", "v1"])
    print(f"built base + full and published v1 in {time.time() - t:.0f} s", file=sys.stderr)

    procs = []

    def serve(args, port):
        log = open(f"{w}/serve-{port}.log", "w")
        pr = subprocess.Popen([B, "serve", "--addr", f"127.0.0.1:{port}", *args], stdout=log, stderr=log)
        procs.append(pr)
        wait(f"server on {port} ready", lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200)
        return pr

    try:
        delta = serve(["--store", store, "--index-root", f"{w}/cache", "--log-poll-ms", "200"], 7811)
        t = time.time()
        for i in range(0, n_delta, 500):
            batch = [{"id": ids[r], "vector": vectors[r].tolist(), "creator": artists[r] or None}
                     for r in delta_rows[i:i + 500]]
            st, _ = http("POST", "http://127.0.0.1:7811/admin/tracks/items", {"items": batch})
            assert st == 200
        wait("delta applied", lambda: metric(7811, 'earshot_delta_items{collection="tracks"}') == n_delta)
        # Indexing runs until fewer than max(256, covered/8) items are left to scan exactly.
        def settled():
            idx = metric(7811, 'earshot_delta_indexed_items{collection="tracks"}') or 0
            return n_delta - idx <= max(256, idx // 8) and idx > 0
        wait("delta indexed", settled)
        time.sleep(3)
        indexed = metric(7811, 'earshot_delta_indexed_items{collection="tracks"}')
        print(f"{n_delta} upserts applied and indexed ({indexed:.0f} in the graph) in {time.time() - t:.0f} s",
              file=sys.stderr)
        t = time.time()
        run([B, "build", "--base", f"{w}/base/tracks", "--apply-log", f"{store}/tracks", "--out", f"{w}/compact/tracks"])
        print(f"compacted in {time.time() - t:.0f} s", file=sys.stderr)
        full = serve(["--index-root", f"{w}/full"], 7812)
        comp = serve(["--index-root", f"{w}/compact"], 7813)
        servers = {"delta": (7811, delta, f"{w}/base/tracks"), "full_rebuild": (7812, full, f"{w}/full/tracks"),
                   "compacted": (7813, comp, f"{w}/compact/tracks")}

        # Ground truth over every row, the item itself left out.
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        q = np.random.default_rng(2).choice(n, a.queries, replace=False)
        sims = unit[q] @ unit.T
        sims[np.arange(len(q)), q] = -np.inf
        truth = np.argsort(-sims, axis=1)[:, :10]
        results = {"n": n, "delta_items": n_delta, "delta_indexed": indexed, "queries": len(q),
                   "from_delta": int(np.isin(q, delta_rows).sum()), "recall": {}, "cpu": {}}
        for name, (port, _, _) in servers.items():
            for ef in efs:
                found = 0
                for qi, r in enumerate(q):
                    _, body = http("GET", f"http://127.0.0.1:{port}/v1/tracks/{urllib.parse.quote(ids[r], safe='')}/similar?k=10&ef={ef}")
                    got = {h["id"] for h in json.loads(body)["results"]}
                    found += sum(ids[t] in got for t in truth[qi])
                results["recall"].setdefault(name, {})[ef] = round(found / (10 * len(q)), 4)
        print(json.dumps(results["recall"]), file=sys.stderr)

        # Server CPU per request at a fixed rate; the servers in turn, --rounds times.
        for rnd in range(a.rounds):
            for ef in efs:
                for name, (port, pr, index) in servers.items():
                    before = cpu_ticks(pr.pid)
                    out = run([B, "bench-http", "--url", f"http://127.0.0.1:{port}", "--index", index,
                               "--mode", "similar", "--ef", str(ef), "--k", "10", "--max-rate", str(a.rate),
                               "--fractions", "1", "--duration", str(a.duration), "--connections", "16"])
                    cpu = (cpu_ticks(pr.pid) - before) / os.sysconf("SC_CLK_TCK")
                    line = json.loads(out.strip().splitlines()[-1])
                    reqs = line["ok"]
                    entry = results["cpu"].setdefault(name, {}).setdefault(ef, [])
                    entry.append({"round": rnd, "requests": reqs, "cpu_s": round(cpu, 2),
                                  "per_cpu_s": round(reqs / cpu, 1) if cpu else None,
                                  "p99_ms": line["p99_us"] / 1000, "errors": line["errors"]})
        summary = {}
        for ef in efs:
            per = {name: np.median([e["per_cpu_s"] for e in results["cpu"][name][ef]]) for name in servers}
            summary[ef] = {"recall": {nm: results["recall"][nm][ef] for nm in servers},
                           "requests_per_cpu_s": {nm: round(float(v), 1) for nm, v in per.items()},
                           "delta_vs_compacted": round(float(per["delta"] / per["compacted"]), 3)}
        results["summary"] = summary
        print(json.dumps(results))
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pr.kill()


if __name__ == "__main__":
    import urllib.parse  # noqa: E402  (used inside main)
    main()
