#!/usr/bin/env python3
"""Index load time and memory of hnswlib and Voyager, next to `earshot bench --lazy` / default open.

    # build + save both peers' indexes over a base matrix (M / ef_construction / threads as peers.py)
    .venv/bin/python tools/peers_load.py build --base target/bench/scale/data/tracks.npy --metric l2 \\
        --out target/bench/scale/peers
    # load each saved index in a FRESH process, --repeat times: one JSON line per load
    .venv/bin/python tools/peers_load.py load --out target/bench/scale/peers --repeat 3
    # hnswlib's recall@10 at ef 64 on 100 queries (exact ground truth by brute force)
    .venv/bin/python tools/peers_load.py recall --out target/bench/scale/peers \
        --base target/bench/scale/data/tracks.npy --queries target/bench/scale/data/queries100.npy --ef 64

`build` prints one JSON line per library: {"lib","build_s","n","dim","file_bytes",...} and writes
  hnswlib.bin (hnswlib.Index.save_index) and voyager.voy (voyager.Index.save).
`recall` (sanity check of the data set's difficulty, next to `earshot bench` on the same queries) loads the
  saved hnswlib index and prints its recall@k at --ef for --queries against exact brute force (numpy).
`load` runs, for each library, a child process (`load-one`) that imports the library first (so the
  import is not counted), records VmRSS, then times hnswlib `Index.load_index(path)` /
  voyager `Index.load(path)` (wall clock, perf_counter), records VmRSS again, and answers one query so the
  index is known to be usable. Both libraries read the whole file into their own heap: RSS after the load
  is about the file size, and the time is file read + parse, so it grows with the index.
The saved files stay in page cache after `build`, so these are warm-cache loads (as earshot's figures in
tools/bench_all.sh are): disk speed is not measured.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def space_names(metric):
    import voyager
    hn = {"cosine": "cosine", "l2": "l2", "dot": "ip"}[metric]
    vs = {"cosine": voyager.Space.Cosine, "l2": voyager.Space.Euclidean, "dot": voyager.Space.InnerProduct}[metric]
    return hn, vs


def cmd_build(a):
    import hnswlib
    import voyager
    base = np.array(np.load(a.base), dtype=np.float32, order="C")  # a plain ndarray (voyager rejects memmap)
    n, dim = base.shape
    os.makedirs(a.out, exist_ok=True)
    hn_space, vg_space = space_names(a.metric)
    libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    meta = {"metric": a.metric, "n": n, "dim": dim}
    if "hnswlib" in libs:
        idx = hnswlib.Index(space=hn_space, dim=dim)
        idx.init_index(max_elements=n, ef_construction=a.ef_construction, M=a.m, random_seed=100)
        t0, c0 = time.perf_counter(), time.process_time()
        idx.add_items(base, np.arange(n), num_threads=a.threads)
        build_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        path = os.path.join(a.out, "hnswlib.bin")
        idx.save_index(path)
        print(json.dumps({"lib": "hnswlib", "build_s": round(build_s, 2), "build_cpu_s": round(cpu_s, 2), "vectors_per_s": round(n / build_s, 1),
                          "file_bytes": os.path.getsize(path), "threads": a.threads, "m": a.m,
                          "ef_construction": a.ef_construction, "load1": loadavg1(), **meta}), flush=True)
        del idx
    if "voyager" in libs:
        idx = voyager.Index(vg_space, num_dimensions=dim, M=a.m, ef_construction=a.ef_construction,
                            max_elements=n)
        t0, c0 = time.perf_counter(), time.process_time()
        idx.add_items(base, num_threads=a.threads)
        build_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        path = os.path.join(a.out, "voyager.voy")
        idx.save(path)
        print(json.dumps({"lib": "voyager-f32", "build_s": round(build_s, 2), "build_cpu_s": round(cpu_s, 2), "vectors_per_s": round(n / build_s, 1),
                          "file_bytes": os.path.getsize(path), "threads": a.threads, "m": a.m,
                          "ef_construction": a.ef_construction, "load1": loadavg1(), **meta}), flush=True)
        del idx
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f)


def cmd_load_one(a):
    with open(os.path.join(a.out, "meta.json")) as f:
        meta = json.load(f)
    dim = meta["dim"]
    q = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    if a.lib == "hnswlib":
        import hnswlib
        hn_space, _ = space_names(meta["metric"])
        path = os.path.join(a.out, "hnswlib.bin")
        idx = hnswlib.Index(space=hn_space, dim=dim)
        before = rss_mb()
        t0 = time.perf_counter()
        idx.load_index(path, max_elements=meta["n"])
        load_ms = (time.perf_counter() - t0) * 1000
        after = rss_mb()
        idx.set_ef(64)
        ok = len(idx.knn_query(q, k=10, num_threads=1)[0][0]) == 10
    else:
        import voyager
        path = os.path.join(a.out, "voyager.voy")
        before = rss_mb()
        t0 = time.perf_counter()
        idx = voyager.Index.load(path)
        load_ms = (time.perf_counter() - t0) * 1000
        after = rss_mb()
        ok = len(idx.query(q, k=10, num_threads=1, query_ef=64)[0]) == 10
    print(json.dumps({"lib": a.lib if a.lib == "hnswlib" else "voyager-f32", "load_ms": round(load_ms, 2),
                      "rss_mb_before_load": round(before, 1), "rss_mb_after_load": round(after, 1),
                      "file_bytes": os.path.getsize(path), "n": meta["n"], "dim": dim, "query_ok": ok,
                      "load1": loadavg1()}), flush=True)


def cmd_recall(a):
    """recall@k of the saved hnswlib index at --ef for --queries (exact L2/IP/cosine top-k by numpy): a
    sanity check of the scale data set next to `earshot bench` on the same queries."""
    import hnswlib
    with open(os.path.join(a.out, "meta.json")) as f:
        meta = json.load(f)
    base = np.load(a.base, mmap_mode="r")
    q = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    metric = meta["metric"]
    hits = 0
    hn_space, _ = space_names(metric)
    idx = hnswlib.Index(space=hn_space, dim=meta["dim"])
    idx.load_index(os.path.join(a.out, "hnswlib.bin"), max_elements=meta["n"])
    idx.set_num_threads(1)
    idx.set_ef(a.ef)
    labels = idx.knn_query(q, k=a.k, num_threads=1)[0]
    for i in range(q.shape[0]):
        qi = q[i].astype(np.float64)
        d = np.empty(meta["n"])
        for s in range(0, meta["n"], 200_000):  # blocks keep the float64 copy small
            blk = np.asarray(base[s:s + 200_000], dtype=np.float64)
            d[s:s + len(blk)] = ((blk - qi) ** 2).sum(1) if metric == "l2" else -(blk @ qi)
        kth = np.partition(d, a.k - 1)[a.k - 1]
        hits += int(np.count_nonzero(d[labels[i].astype(np.int64)] <= kth + 1e-6))
    print(json.dumps({"lib": "hnswlib", "ef": a.ef, "k": a.k, "recall": round(hits / (a.k * q.shape[0]), 4),
                      "n_queries": int(q.shape[0]), "n": meta["n"]}), flush=True)


def cmd_load(a):
    libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    for lib in libs:
        name = "hnswlib" if lib == "hnswlib" else "voyager"
        for _ in range(a.repeat):
            subprocess.run([sys.executable, os.path.abspath(__file__), "load-one", "--out", a.out, "--lib", name],
                           check=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--base", required=True)
    b.add_argument("--metric", required=True, choices=["cosine", "l2", "dot"])
    b.add_argument("--out", required=True)
    b.add_argument("--m", type=int, default=16)
    b.add_argument("--ef-construction", type=int, default=200)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--libs", default="hnswlib,voyager")
    ld = sub.add_parser("load")
    ld.add_argument("--out", required=True)
    ld.add_argument("--repeat", type=int, default=3)
    ld.add_argument("--libs", default="hnswlib,voyager")
    rc = sub.add_parser("recall")
    rc.add_argument("--out", required=True)
    rc.add_argument("--base", required=True)
    rc.add_argument("--queries", required=True)
    rc.add_argument("--ef", type=int, default=64)
    rc.add_argument("--k", type=int, default=10)
    one = sub.add_parser("load-one")
    one.add_argument("--out", required=True)
    one.add_argument("--lib", required=True, choices=["hnswlib", "voyager"])
    a = p.parse_args(argv)
    {"build": cmd_build, "load": cmd_load, "load-one": cmd_load_one, "recall": cmd_recall}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
