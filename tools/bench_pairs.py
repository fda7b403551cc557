#!/usr/bin/env python3
"""Interleaved earshot vs hnswlib / FAISS rounds: the headline ratio, robust to a shared machine.

On a machine whose load changes from minute to minute, a library measured ten minutes after another
can win or lose by 2x for reasons that have nothing to do with it. This tool builds the peers once,
then runs ROUNDS rounds of [earshot bench (subprocess, one thread) ; each peer, one Python call per
query, one thread ; hnswlib with one batched call] back to back over the same ef values, and keeps
the best QPS of each library per ef over the rounds (and each round's ratio, to show the spread).

    .venv/bin/python tools/bench_pairs.py --ds yes-tracks --earshot target/bench/bin/earshot \\
        --index target/bench/idx/yes-tracks --metric cosine --base $Y/tracks_minilm384.npy \\
        --query-rows $Y/track_query_rows.npy --skip-self --gt $Y/gt_track_to_track_angular_ids.npy \\
        --ef 16,24,32,48,64,96,128 --rounds 3 >> target/bench/yes-tracks.pairs.jsonl

Output: one JSON line per (round, lib, ef): {"ds","round","lib","ef","recall","qps","load1"}, where lib
is earshot-int8 / earshot-f32 / earshot-int8-t2 (--threads 2, right after the one-thread run: the scaling
ratio) / hnswlib / faiss-hnsw / hnswlib-batch. The default ef list goes past 256 (384, 512) so that
curves that stop short of recall 0.99 at 256 can still be interpolated there. Recall is computed exactly as
in tools/peers.py (peers) and `earshot bench` (earshot); both count ties with the k-th true distance.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (tools/peers.py: adapters, exact recall)


def earshot_round(a, walk, threads=1):
    cmd = [a.earshot, "bench", "--index", a.index, "--k", str(a.k), "--ef", a.ef, "--repeat", str(a.repeat),
           "--threads", str(threads)]
    if a.query_rows:
        cmd += ["--query-rows", a.query_rows]
    else:
        cmd += ["--queries", a.queries]
    if a.skip_self:
        cmd += ["--skip-self"]
    cmd += ["--gt", a.gt]
    if walk == "f32":
        cmd += ["--exact-walk"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed: {r.stderr.strip()}")
    out = r.stdout
    return [json.loads(x) for x in out.splitlines() if x.startswith("{") and '"qps"' in x]


def peer_pass(lib, qs, ef, k_ask, nq, min_time):
    lib.set_ef(ef, k_ask)
    batched = getattr(lib, "batched", False)
    if batched:
        lib.search_all(qs[:peers.WARMUP], k_ask)
    else:
        for i in range(min(peers.WARMUP, nq)):
            lib.search(qs[i], k_ask)
    results = [None] * nq
    dt, total, passes = math.inf, 0.0, 0
    while passes == 0 or (total < min_time and passes < 50):
        t0 = time.perf_counter()
        if batched:
            results = list(lib.search_all(qs, k_ask))
        else:
            for i in range(nq):
                results[i] = lib.search(qs[i], k_ask)
        t = time.perf_counter() - t0
        dt, total, passes = min(dt, t), total + t, passes + 1
    return results, nq / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds", required=True)
    p.add_argument("--earshot", required=True, help="the earshot binary")
    p.add_argument("--index", required=True, help="earshot collection directory (built with --quantize int8)")
    p.add_argument("--metric", required=True, choices=["cosine", "l2", "dot"])
    p.add_argument("--base", required=True)
    p.add_argument("--queries")
    p.add_argument("--query-rows")
    p.add_argument("--skip-self", action="store_true")
    p.add_argument("--gt", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", default="10,16,24,32,48,64,96,128,256,384,512")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="peer build threads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="earshot bench --repeat")
    p.add_argument("--min-time", type=float, default=1.0, help="peers: repeat passes until this many seconds")
    p.add_argument("--libs", default="hnswlib,faiss-hnsw,hnswlib-batch")
    a = p.parse_args(argv)

    efs = [int(x) for x in a.ef.split(",")]
    base = np.ascontiguousarray(np.load(a.base), dtype=np.float32)
    self_rows = None
    if a.query_rows:
        rows = np.load(a.query_rows).astype(np.int64).ravel()
        queries = np.ascontiguousarray(base[rows])
        if a.skip_self:
            self_rows = rows
    else:
        queries = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    gt = np.load(a.gt)[: queries.shape[0]]
    nq = queries.shape[0]
    k_ask = a.k + 1 if a.skip_self else a.k
    exact = peers.Exact(base, a.metric)
    qprep = [exact.prep_query(queries[i]) for i in range(nq)]
    kth = peers.true_kth(exact, qprep, gt, a.k, self_rows, None)

    libs = []
    for name in [x.strip() for x in a.libs.split(",") if x.strip()]:
        lib = peers.make_lib(name, a.metric)
        t0, c0 = time.perf_counter(), time.process_time()
        lib.build(base, a)
        build_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        peers.log(f"[{name}] built in {build_s:.1f} s ({cpu_s:.1f} CPU-s)")
        print(json.dumps({"ds": a.ds, "lib": name, "build_s": round(build_s, 2), "build_cpu_s": round(cpu_s, 2),
                          "n": int(base.shape[0]), "threads": a.threads, "load1": peers.loadavg1()}), flush=True)
        libs.append((name, lib, lib.prep_queries(queries)))

    def emit(rnd, lib, ef, recall, qps):
        print(json.dumps({"ds": a.ds, "round": rnd, "lib": lib, "ef": ef, "recall": round(recall, 4),
                          "qps": round(qps, 1), "load1": peers.loadavg1()}), flush=True)

    for rnd in range(1, a.rounds + 1):
        for walk in ("int8", "f32"):
            for r in earshot_round(a, walk):
                emit(rnd, f"earshot-{walk}", r["ef"], r["recall"], r["qps"])
        # two query threads right after one: the scaling ratio of this round
        for r in earshot_round(a, "int8", threads=2):
            emit(rnd, "earshot-int8-t2", r["ef"], r["recall"], r["qps"])
        for name, lib, qs in libs:
            for ef in efs:
                results, qps = peer_pass(lib, qs, ef, k_ask, nq, a.min_time)
                recall = peers.score(exact, qprep, results, kth, a.k, self_rows)
                emit(rnd, name, ef, recall, qps)
        peers.log(f"round {rnd}/{a.rounds} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
