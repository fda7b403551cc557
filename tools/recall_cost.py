#!/usr/bin/env python3
"""What the live recall estimate costs: server CPU per query with --recall-sample-rate off and on.

For each rate, starts `earshot serve` on the index root, drives it with `earshot bench-http`
(`similar` queries at a fixed open-loop rate) and reads, over the burst, the server's CPU seconds
(/proc/PID/stat), the recall checker thread's own (/proc/PID/task/TID/stat, thread
`earshot-recall`), the queries answered and the samples checked and dropped (/metrics). The
foreground cost is the process's CPU minus the checker's, per 1,000 queries.

    python3 tools/recall_cost.py --earshot target/debug/earshot --index-root IDX \\
        --collection yes-tracks --rates 0,0.001,0.01,1 --qps 400 --duration 20 --rounds 2

No dependencies beyond Python 3.
"""

import argparse
import json
import os
import subprocess
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def stat_cpu(path):
    f = open(path).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def checker_cpu(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{tid}/comm").read().strip() == "earshot-recall":
                return stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:
            pass
    return 0.0


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()

    def total(prefix, *words):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(prefix) and all(w in l for w in words))

    return {
        "answered": total("earshot_http_requests_total{", "similar", 'status="200"'),
        "checked": total("earshot_recall_samples_total{"),
        "dropped": total("earshot_recall_samples_dropped_total{"),
        "estimate": total("earshot_recall_estimate{"),
    }


def run(a, rate, port):
    server = subprocess.Popen(
        [a.earshot, "serve", "--index-root", a.index_root, "--addr", f"127.0.0.1:{port}",
         "--recall-sample-rate", str(rate), "--recall-cpu-budget", str(a.budget)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while "listening on" not in server.stdout.readline():
            pass
        index = os.path.join(a.index_root, a.collection)

        def bench(seconds):
            subprocess.run(
                [a.earshot, "bench-http", "--url", f"http://127.0.0.1:{port}", "--index", index,
                 "--max-rate", str(a.qps), "--fractions", "1", "--duration", str(seconds),
                 "--connections", "8"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

        bench(3)  # warm-up
        m0, cpu0, chk0, t0 = metrics(port), stat_cpu(f"/proc/{server.pid}/stat"), checker_cpu(server.pid), time.time()
        bench(a.duration)
        m1, cpu1, chk1, t1 = metrics(port), stat_cpu(f"/proc/{server.pid}/stat"), checker_cpu(server.pid), time.time()
    finally:
        server.kill()
        server.wait()
    answered = m1["answered"] - m0["answered"]
    return {
        "rate": rate,
        "queries": answered,
        "seconds": round(t1 - t0, 2),
        "foreground_cpu_ms_per_1k": round(1e6 * ((cpu1 - cpu0) - (chk1 - chk0)) / answered, 1),
        "checker_cpu_s": round(chk1 - chk0, 2),
        "checker_core_share": round((chk1 - chk0) / (t1 - t0), 3),
        "checked": m1["checked"] - m0["checked"],
        "dropped": m1["dropped"] - m0["dropped"],
        "estimate": m1["estimate"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--earshot", default="target/debug/earshot")
    p.add_argument("--index-root", required=True)
    p.add_argument("--collection", required=True)
    p.add_argument("--rates", default="0,0.001,0.01,1")
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--qps", type=int, default=400)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--port", type=int, default=17931)
    a = p.parse_args()
    for r in range(a.rounds):
        for rate in [float(x) for x in a.rates.split(",")]:
            print(json.dumps({"round": r, **run(a, rate, a.port)}), flush=True)


if __name__ == "__main__":
    main()
