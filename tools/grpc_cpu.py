#!/usr/bin/env python3
"""gRPC beside HTTP, per server CPU-second, cores split (BENCHMARKS.md §6 "gRPC").

The method of tools/http_cpu.py, for both transports in the same run: `earshot serve --workers 1
--grpc-addr` pinned to core 0; the load pinned to core 1 in closed loop — HTTP by `earshot bench-http`
(32 connections), gRPC by `crates/earshot-grpc/examples/grpc_load.rs` (32 calls in flight on one HTTP/2
connection, one thread); the in-process reference `earshot bench --threads 1` pinned to core 0. Each
round runs in-process, then an HTTP burst and a gRPC burst of single `similar` requests (and of batches
with --batches 1,16), and reports queries answered per server CPU-second (from /proc/PID/stat and
/metrics over the steady middle of the burst) ÷ in-process queries per CPU-second; --stream adds single
queries sent as messages of SimilarStream (32 streams, one message in flight on each). Also prints the
mean bytes of one answer: the JSON body of GET /v1/C/ID/similar vs the protobuf `Results` message.

    python3 tools/grpc_cpu.py --earshot target/debug/earshot --load target/debug/examples/grpc_load \\
        --index-root target/bench/idx --collection yes-tracks \\
        --query-rows ../shared/datasets/yes-tracks/track_query_rows.npy \\
        --gt ../shared/datasets/yes-tracks/gt_track_to_track_angular_ids.npy --ef 32 --rounds 3

Needs taskset (util-linux) and 2 cores; no Python packages.
"""

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.parse
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def served(port, transport):
    """Query calls answered successfully so far (refusals cost the server little and do not count)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    if transport == "http":
        ok = lambda l: l.startswith("earshot_http_requests_total") and "/v1/" in l and 'status="200"' in l
    else:
        ok = lambda l: l.startswith("earshot_grpc_requests_total") and 'code="OK"' in l
    return sum(float(l.split()[-1]) for l in text.splitlines() if ok(l))


def burst(a, pid, transport, batch):
    index = os.path.join(a.index_root, a.collection)
    if transport == "http":
        cmd = [a.earshot, "bench-http", "--url", f"http://127.0.0.1:{a.port}", "--index", index, "--mode",
               "similar", "--ef", str(a.ef), "--k", "10", "--query-rows", a.query_rows, "--duration",
               str(a.burst + 1), "--fractions", "0.001", "--batch", str(batch),
               "--connections", str(max(4, 32 // batch))]
    else:
        cmd = [a.load, f"127.0.0.1:{a.grpc_port}", index, a.query_rows, str(a.ef), str(a.burst + 1),
               str(a.streams if transport == "grpc-stream" and a.streams else
                   max(4, 32 // batch // (a.stream_depth if transport == "grpc-stream" else 1))),
               f"stream:{a.stream_depth}" if transport == "grpc-stream" else str(batch)]
    lg = subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.7)
    r0, c0, t0 = served(a.port, transport), cpu_seconds(pid), time.time()
    time.sleep(a.burst - 1.0)
    r1, c1, t1 = served(a.port, transport), cpu_seconds(pid), time.time()
    out = lg.communicate()[0] if transport != "http" else (lg.kill(), lg.wait(), "")[2]
    q = (r1 - r0) * batch
    m = {"requests": r1 - r0, "queries": q, "server_cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 3),
         "per_cpu_s": round(q / max(c1 - c0, 1e-9))}
    if out.strip():
        m["load"] = json.loads(out.strip().splitlines()[-1])
    return m


def in_process(a, n_queries):
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
    return n_queries * (repeat + 1) / (ru.ru_utime + ru.ru_stime), line["recall"]


def npy_len(path):
    b = open(path, "rb").read(4096)
    hlen = int.from_bytes(b[8:10], "little")
    header = b[10:10 + hlen].decode()
    return int(header.split("'shape': (")[1].split(",")[0])


def json_bytes(a):
    ids = subprocess.run([a.load, "ids", os.path.join(a.index_root, a.collection), a.query_rows],
                         capture_output=True, text=True, check=True).stdout.split("\n")[:200]
    sizes = [len(urllib.request.urlopen(f"http://127.0.0.1:{a.port}/v1/{a.collection}/"
                                        f"{urllib.parse.quote(i, safe='')}/similar?k=10&ef={a.ef}").read())
             for i in ids if i]
    return sum(sizes) / len(sizes)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--earshot", default="target/release/earshot")
    p.add_argument("--load", default="target/release/examples/grpc_load")
    p.add_argument("--index-root", required=True)
    p.add_argument("--collection", required=True)
    p.add_argument("--query-rows", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burst", type=float, default=3.5)
    p.add_argument("--batches", default="1")
    p.add_argument("--stream", action="store_true",
                   help="also single queries as messages of one SimilarStream per load task")
    p.add_argument("--stream-depth", type=int, default=1,
                   help="messages in flight per stream (32 in flight in all: 32 / depth streams)")
    p.add_argument("--streams", type=int, default=0,
                   help="SimilarStream streams (default: 32 / depth, at least 4)")
    p.add_argument("--only", default="",
                   help="comma-separated transports to run (http, grpc, grpc-stream); default all")
    p.add_argument("--serve-args", default="", help="extra `earshot serve` arguments (A/B of a setting)")
    p.add_argument("--port", type=int, default=7793)
    p.add_argument("--grpc-port", type=int, default=7794)
    a = p.parse_args()
    runs = [(t, int(b)) for b in a.batches.split(",") if b for t in ("http", "grpc")]
    if a.stream:
        runs.insert(2 if len(runs) > 2 else len(runs), ("grpc-stream", 1))
    if a.only:
        runs = [(t, b) for t, b in runs if t in a.only.split(",")]
    server = subprocess.Popen(["taskset", "-c", "0", a.earshot, "serve", "--index-root", a.index_root,
                               "--addr", f"127.0.0.1:{a.port}", "--grpc-addr", f"127.0.0.1:{a.grpc_port}",
                               "--default-ef", str(a.ef), "--workers", "1"] + a.serve_args.split(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/readyz")
                break
            except OSError:
                time.sleep(0.1)
        print(json.dumps({"json_answer_bytes": round(json_bytes(a), 1)}), flush=True)
        for t, b in runs:  # warm-up
            burst(a, server.pid, t, b)
        ratios = {run: [] for run in runs}
        n = npy_len(a.query_rows)
        for r in range(a.rounds):
            load = float(open("/proc/loadavg").read().split()[0])
            inproc, recall = in_process(a, n)
            for t, b in runs:
                m = burst(a, server.pid, t, b)
                ratio = m["per_cpu_s"] / inproc
                ratios[(t, b)].append(ratio)
                print(json.dumps({"round": r, "transport": t, "batch": b, **m, "inproc_queries_per_cpu_s": round(inproc),
                                  "inproc_recall": recall, "ratio": round(ratio, 3), "load1": load}), flush=True)
        for (t, b), rs in ratios.items():
            print(json.dumps({"transport": t, "batch": b, "summary": True, "median_ratio": round(statistics.median(rs), 3),
                              "min": round(min(rs), 3), "max": round(max(rs), 3)}))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
