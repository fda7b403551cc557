#!/usr/bin/env python3
"""HTTP efficiency on one core: requests per server CPU-second vs in-process queries per CPU-second.

On a 2-core machine the load generator competes with the server, so the closed-loop maximum says little
about the server's own cost. This tool splits the cores: `earshot serve` pinned to core 0 (one tokio
worker), the load generator (`earshot bench-http`, closed loop, 32 connections, 32 / batch but at least 4 for batches) pinned to core 1, and the
in-process reference (`earshot bench --threads 1`) pinned to core 0 as well. For ROUNDS rounds it runs the
in-process bench, then a closed-loop burst per mode, and reports the server's requests per CPU-second
(from /proc/PID/stat and /metrics over the steady part of the burst) next to the in-process queries per
CPU-second of the same round, on the same queries at the same ef. `--batches 1,16` also measures
`POST /v1/batch` requests of 16 queries each (rates then count queries, not requests).

    .venv/bin/python tools/http_cpu.py --earshot target/release/earshot --index-root target/bench/idx \\
        --collection yes-tracks --query-rows ../shared/datasets/yes-tracks/track_query_rows.npy \\
        --gt ../shared/datasets/yes-tracks/gt_track_to_track_angular_ids.npy --rounds 5

Output: one JSON line per (round, mode, batch) and a summary line per (mode, batch) with the median ratio.
Needs taskset (util-linux), 2 cores and numpy (the .venv of tools/venv.sh).
"""

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.request  # not earshot_client: only /metrics and /readyz polls; the load is `earshot bench-http`

import numpy as np

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def served(port):
    """Query requests answered 200 so far (a 503 from the limiter costs the server almost nothing
    and must not count as served)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith("earshot_http_requests_total") and "/v1/" in l and 'status="200"' in l)


def burst(a, port, pid, mode, batch):
    """Closed-loop load for a.burst seconds (`batch` queries per request); measures the middle of it."""
    lg = subprocess.Popen(["taskset", "-c", "1", a.earshot, "bench-http", "--url", f"http://127.0.0.1:{port}",
                           "--index", os.path.join(a.index_root, a.collection), "--mode", mode, "--ef", str(a.ef),
                           "--k", "10", "--query-rows", a.query_rows, "--duration", str(a.burst + 1),
                           "--fractions", "0.001", "--batch", str(batch),
                           # enough requests in flight to keep the server's core busy, few enough
                           # that none waits past the limiter's queue timeout (503s are not counted)
                           "--connections", str(max(4, 32 // batch))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.7)
    r0, c0, t0 = served(port), cpu_seconds(pid), time.time()
    time.sleep(a.burst - 1.0)
    r1, c1, t1 = served(port), cpu_seconds(pid), time.time()
    lg.kill()
    lg.wait()
    q = (r1 - r0) * batch
    return {"requests": r1 - r0, "queries": q, "server_cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 3),
            "rps": round((r1 - r0) / (t1 - t0)), "per_cpu_s": round(q / (c1 - c0))}


def in_process(a, n_queries):
    """Queries per CPU-second of `earshot bench` on core 0 (whole process: opening and the ground-truth
    read are included, well under 1 % of it) and its recall."""
    repeat = 20
    p = subprocess.Popen(["taskset", "-c", "0", a.earshot, "bench", "--index", os.path.join(a.index_root, a.collection),
                          "--query-rows", a.query_rows, "--skip-self", "--gt", a.gt, "--k", "10", "--ef", str(a.ef),
                          "--repeat", str(repeat), "--threads", "1", "--lazy"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit("earshot bench failed")
    line = [json.loads(x) for x in out.splitlines() if '"ef"' in x][0]
    # + 1 pass: `earshot bench` runs one untimed warm-up pass before the timed ones
    return n_queries * (repeat + 1) / (ru.ru_utime + ru.ru_stime), line["recall"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--earshot", default="target/release/earshot")
    p.add_argument("--index-root", required=True)
    p.add_argument("--collection", required=True)
    p.add_argument("--query-rows", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--burst", type=float, default=3.5, help="seconds of closed-loop load per measurement")
    p.add_argument("--modes", default="similar,taste")
    p.add_argument("--batches", default="1",
                   help="queries per request to measure, e.g. 1,16 (above 1: POST /v1/batch)")
    p.add_argument("--port", type=int, default=7792)
    a = p.parse_args()
    if a.burst > 4.5:
        raise SystemExit("--burst must be at most 4.5 s: bench-http's closed loop runs for at most 5 s")
    runs = [(m, int(b)) for m in a.modes.split(",") if m for b in a.batches.split(",") if b]
    server = subprocess.Popen(["taskset", "-c", "0", a.earshot, "serve", "--index-root", a.index_root,
                               "--addr", f"127.0.0.1:{a.port}", "--default-ef", str(a.ef), "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/readyz")
                break
            except OSError:
                time.sleep(0.1)
        for mode, batch in runs:  # warm-up
            burst(a, a.port, server.pid, mode, batch)
        ratios = {run: [] for run in runs}
        n_queries = len(np.load(a.query_rows))
        for r in range(a.rounds):
            load = float(open("/proc/loadavg").read().split()[0])
            inproc, recall = in_process(a, n_queries)
            for mode, batch in runs:
                m = burst(a, a.port, server.pid, mode, batch)
                ratio = m["per_cpu_s"] / inproc
                ratios[(mode, batch)].append(ratio)
                print(json.dumps({"round": r, "mode": mode, "batch": batch, **m, "inproc_queries_per_cpu_s": round(inproc),
                                  "inproc_recall": recall, "ratio": round(ratio, 3), "load1": load}), flush=True)
        for (mode, batch), rs in ratios.items():
            print(json.dumps({"mode": mode, "batch": batch, "summary": True,
                              "median_ratio": round(statistics.median(rs), 3),
                              "min": round(min(rs), 3), "max": round(max(rs), 3)}))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
