#!/usr/bin/env python3
"""Exact ground truth for the synthetic set (numpy; run with a Python that has it, e.g.
/tmp/fleet-venv/bin/python): Euclidean distances of the k nearest catalogue rows per query.

    gt.py --base tracks.npy --queries queries.npy --k 100 --out gt_dist.npy [--ids-out gt_ids.npy]
"""
import argparse

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--queries", required=True)
p.add_argument("--k", type=int, default=100)
p.add_argument("--limit", type=int, default=0, help="only the first N queries")
p.add_argument("--out", required=True)
p.add_argument("--ids-out")
a = p.parse_args()
base = np.load(a.base, mmap_mode="r")
q = np.load(a.queries).astype(np.float32)
if a.limit:
    q = q[: a.limit]
qn = (q * q).sum(1)
best_d = np.full((len(q), a.k), np.inf, dtype=np.float64)
best_i = np.zeros((len(q), a.k), dtype=np.int64)
step = 100_000
for s in range(0, len(base), step):
    b = np.asarray(base[s : s + step], dtype=np.float32)
    d = qn[:, None] - 2.0 * (q @ b.T) + (b * b).sum(1)[None, :]
    d = np.maximum(d, 0)
    part = np.argpartition(d, a.k - 1, axis=1)[:, : a.k] if d.shape[1] > a.k else np.argsort(d, 1)
    pd = np.take_along_axis(d, part, 1)
    alld = np.concatenate([best_d, pd], 1)
    alli = np.concatenate([best_i, part + s], 1)
    o = np.argsort(alld, 1)[:, : a.k]
    best_d, best_i = np.take_along_axis(alld, o, 1), np.take_along_axis(alli, o, 1)
# Exact f64 distances of the chosen rows (the expansion above loses precision).
rows = np.asarray(base[np.sort(np.unique(best_i))], dtype=np.float64)
lookup = {r: j for j, r in enumerate(np.sort(np.unique(best_i)))}
exact = np.empty_like(best_d)
for qi in range(len(q)):
    for j in range(a.k):
        exact[qi, j] = np.sqrt(((rows[lookup[best_i[qi, j]]] - q[qi].astype(np.float64)) ** 2).sum())
o = np.argsort(exact, 1)
np.save(a.out, np.take_along_axis(exact, o, 1).astype(np.float32))
if a.ids_out:
    np.save(a.ids_out, np.take_along_axis(best_i, o, 1).astype(np.int32))
