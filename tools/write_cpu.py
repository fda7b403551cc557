#!/usr/bin/env python3
"""CPU a replica spends on the write path (BENCHMARKS.md §11): one `earshot serve --store` over a
copy of a delta_quality.py store (its v1 only; the log is dropped), `--rate` items/s upserted
as batches of 10 random yes-tracks vectors for `--seconds`, no queries. Prints the server
process's CPU seconds over the run (+3 s to finish linking) and its delta metrics. With
`--perf`, also records `perf record -g` of the server for the run to WORK/perf.data.

    python tools/write_cpu.py --earshot target/debug/earshot --from /tmp/dq5 --seconds 20 --rate 200
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "shared", "datasets", "yes-tracks", "tracks_minilm384.npy")
PORT = 7821


def http(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--earshot", required=True)
    p.add_argument("--from", dest="src", required=True, help="a delta_quality.py --work directory")
    p.add_argument("--work", default="/tmp/write_cpu")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rate", type=float, default=200, help="items/s (batches of 10)")
    p.add_argument("--perf", action="store_true")
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    shutil.copytree(os.path.join(a.src, "store"), f"{a.work}/store")
    shutil.rmtree(f"{a.work}/store/tracks/log", ignore_errors=True)
    vec = np.load(VECTORS, mmap_mode="r")
    log = open(f"{a.work}/serve.log", "w")
    server = subprocess.Popen([a.earshot, "serve", "--addr", f"127.0.0.1:{PORT}", "--store", f"file://{a.work}/store",
                               "--index-root", f"{a.work}/cache", "--log-poll-ms", "1000"], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                if http("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)

        def cpu():
            f = open(f"/proc/{server.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        perf = None
        if a.perf:
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-p", str(server.pid), "-o",
                                     f"{a.work}/perf.data", "--", "sleep", str(a.seconds)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rng = random.Random(1)
        cpu0, t0, k = cpu(), time.time(), 0
        while time.time() - t0 < a.seconds:
            due = t0 + k / (a.rate / 10)
            if due > time.time():
                time.sleep(due - time.time())
            items = [{"id": f"w{k}-{j}", "vector": [float(x) for x in vec[rng.randrange(len(vec))]], "creator": "x"}
                     for j in range(10)]
            http("POST", "/admin/tracks/items", {"items": items})
            k += 1
        elapsed = time.time() - t0
        time.sleep(3)
        used = cpu() - cpu0
        if perf:
            perf.wait()
        metrics = http("GET", "/metrics")[1].decode().splitlines()
        print(json.dumps({"items": 10 * k, "seconds": round(elapsed, 1), "server_cpu_s": round(used, 2),
                          "metrics": [m for m in metrics if m.startswith(("earshot_delta", "earshot_log_applied"))]}))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
