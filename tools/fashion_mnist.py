#!/usr/bin/env python3
"""Fashion-MNIST (the ann-benchmarks L2 set) as .npy files for `earshot bench` and tools/peers.py.

Source: Debian's package `dataset-fashion-mnist` (IDX files under /usr/share/datasets/fashion-mnist):

    apt-get update && apt-get install -y dataset-fashion-mnist
    bash tools/venv.sh                       # numpy lives in the project's .venv
    .venv/bin/python tools/fashion_mnist.py  # [--queries 2000] [--k 100] [--out DIR] [--force]

Writes into target/datasets/fashion-mnist/ (under the repo root; override with --out):
    base.npy      60000 x 784 float32   the training images, raw pixel values 0..255 (as ann-benchmarks)
    queries.npy   Q x 784 float32       the first Q (--queries, default 2000) of the 10,000 test images
    gt_ids.npy    Q x K int32           exact L2 nearest base rows per query, best first (K = --k, 100);
                                        equal distances are ordered by row number
    gt_dist.npy   Q x K float32         their SQUARED Euclidean distances (same order)
Ground truth is brute force in float64 (exact for integer pixels), in blocks of queries. If all four files
exist with the requested shapes the script does nothing (use --force to rebuild).

Then, e.g.:
    F=target/datasets/fashion-mnist
    .venv/bin/python tools/peers.py --metric l2 --base $F/base.npy --queries $F/queries.npy \\
        --gt $F/gt_ids.npy --gt-dist $F/gt_dist.npy --summary
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np

SRC = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise SystemExit(f"{path}: not an IDX image file (magic {magic})")
    x = np.frombuffer(data[16:], dtype=np.uint8)
    if x.size != n * rows * cols:
        raise SystemExit(f"{path}: truncated ({x.size} bytes for {n}x{rows}x{cols})")
    return x.reshape(n, rows * cols)


def exact_l2_topk(base, queries, k, block=100):
    """Exact top-k by squared L2, float64; ties broken by row number."""
    b = base.astype(np.float64)
    bn = np.einsum("ij,ij->i", b, b)
    nq = queries.shape[0]
    ids = np.empty((nq, k), dtype=np.int32)
    dist = np.empty((nq, k), dtype=np.float32)
    t0 = time.perf_counter()
    for s in range(0, nq, block):
        q = queries[s:s + block].astype(np.float64)
        d = bn[None, :] - 2.0 * (q @ b.T) + np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(d, 0.0, out=d)
        # take everything up to the k-th distance (ties included), then sort by (distance, row)
        part = np.partition(d, k - 1, axis=1)[:, k - 1]
        for r in range(q.shape[0]):
            cand = np.flatnonzero(d[r] <= part[r])
            order = np.lexsort((cand, d[r, cand]))[:k]
            ids[s + r] = cand[order]
            dist[s + r] = d[r, cand[order]]
        print(f"\r  ground truth {min(s + block, nq)}/{nq} ({time.perf_counter() - t0:.0f} s)",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return ids, dist


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=SRC, help=f"folder with the IDX .gz files (default {SRC})")
    p.add_argument("--out", default=os.path.join(ROOT, "target", "datasets", "fashion-mnist"))
    p.add_argument("--queries", type=int, default=2000, help="first N test images as queries (max 10000)")
    p.add_argument("--k", type=int, default=100, help="ground-truth depth")
    p.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    a = p.parse_args(argv)

    names = {n: os.path.join(a.out, n + ".npy") for n in ("base", "queries", "gt_ids", "gt_dist")}
    if not a.force and all(os.path.exists(f) for f in names.values()):
        shapes = {n: np.load(f, mmap_mode="r").shape for n, f in names.items()}
        if shapes["queries"][0] == a.queries and shapes["gt_ids"] == (a.queries, a.k) \
                and shapes["gt_dist"] == (a.queries, a.k):
            print(f"fashion-mnist: up to date in {a.out}", file=sys.stderr)
            return 0

    train = os.path.join(a.src, "train-images-idx3-ubyte.gz")
    test = os.path.join(a.src, "t10k-images-idx3-ubyte.gz")
    for f in (train, test):
        if not os.path.exists(f):
            raise SystemExit(f"missing {f}: apt-get install -y dataset-fashion-mnist")
    base = read_idx_images(train).astype(np.float32)
    test_x = read_idx_images(test).astype(np.float32)
    if not 0 < a.queries <= test_x.shape[0]:
        raise SystemExit(f"--queries must be in 1..{test_x.shape[0]}")
    queries = np.ascontiguousarray(test_x[:a.queries])
    print(f"fashion-mnist: base {base.shape}, queries {queries.shape}, exact L2 top-{a.k} ...", file=sys.stderr)
    ids, dist = exact_l2_topk(base, queries, a.k)

    os.makedirs(a.out, exist_ok=True)
    for n, arr in (("base", base), ("queries", queries), ("gt_ids", ids), ("gt_dist", dist)):
        tmp = names[n] + ".tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, names[n])
    print(f"fashion-mnist: wrote {', '.join(names.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
