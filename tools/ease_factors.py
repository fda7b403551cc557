#!/usr/bin/env python3
"""Two-tower taste vectors from listening pairs: an EASE item-item model (Steck, "Embarrassingly
Shallow Autoencoders for Sparse Data", WWW 2019) factored into a *history* table U and an *items*
table V, so that earshot's plain `mean` taste over U, searched in an index of V, ranks items exactly
as the (rank-limited) model does.

EASE: X = users × items (1 where a user listened to an item, from the training pairs only),
P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)) with B's diagonal forced to 0. A user's score for item j
is Σ_{i ∈ history} B[i, j]. B is n × n and dense, so it is factored at rank r (randomised SVD,
seeded): B ≈ U·Vᵀ, U = left singular vectors × singular values. Then a history's score for j is
(Σ_i U[i])·V[j] — one dot-product search with the sum (or, for the ranking, the mean) of the
history's U rows. The rank also regularises: on the Last.fm validation split rank 512 scored above
the full matrix (EVALUATION.md, "Two-tower taste").

Serve it with two collections built from the same item metadata:

    .venv/bin/python tools/ease_factors.py --pairs user_artists.dat --items artists.csv \\
        --id-column artistID --lam 50 --rank 512 --out target/ease
    earshot build --vectors target/ease/history.npy --meta artists.csv --id-column artistID \\
        --metric dot --out index/artists_history
    earshot build --vectors target/ease/items.npy --meta artists.csv --id-column artistID \\
        --metric dot --taste-history artists_history --out index/artists_ease
    # POST /v1/taste/artists_ease {"history": [...]}: the history's vectors come from
    # artists_history, the history's IDs are left out of the results.

Cost: XᵀX and its inverse are n × n float32 (n = items: 1.2 GB and ~2 min on
2 cores at 17.6k items); past ~50k items use a sparse or sampled variant instead. Items no training
pair mentions get zero vectors (they cannot be recommended, as with ALS).

--drop FILE (repeatable): a TSV with a header and (user, item) columns whose pairs are left out of
the training matrix — the held-out pairs of an evaluation split.
"""

import argparse
import csv
import os
import sys
import time

import numpy as np


def read_pairs(path, drop=()):
    """[(user, item)] from a TSV with a header (user, item, …), minus the pairs in `drop` files."""
    dropped = set()
    for d in drop:
        rows = np.loadtxt(d, skiprows=1, dtype=np.int64, ndmin=2)
        dropped.update((int(u), int(i)) for u, i in rows[:, :2])
    rows = np.loadtxt(path, skiprows=1, dtype=np.int64, ndmin=2)
    return [(int(u), int(i)) for u, i in rows[:, :2] if (int(u), int(i)) not in dropped]


def ease_factors(pairs, row_of, lam, rank, seed=0, power_iters=2):
    """(U, V) float32, one row per item row (`row_of`: item id → row): B ≈ U·Vᵀ at `rank`.

    Pairs naming an item outside `row_of` are ignored. `rank` + 20 oversampling columns,
    `power_iters` subspace iterations (Halko et al. 2011)."""
    n = len(row_of)
    users = {u: k for k, u in enumerate(sorted({u for u, _ in pairs}))}
    X = np.zeros((len(users), n), dtype=np.float32)
    for u, i in pairs:
        r = row_of.get(i)
        if r is not None:
            X[users[u], r] = 1.0
    G = X.T @ X
    G[np.diag_indices(n)] += np.float32(lam)
    P = np.linalg.inv(G)
    del G
    B = P / -np.diag(P)[None, :]
    del P
    np.fill_diagonal(B, 0.0)
    rank = min(rank, n)
    rng = np.random.default_rng(seed)
    Y = B @ rng.standard_normal((n, min(n, rank + 20))).astype(np.float32)
    for _ in range(power_iters):
        Y, _ = np.linalg.qr(Y)
        Y = B @ (B.T @ Y)
    Q, _ = np.linalg.qr(Y)
    u, s, vt = np.linalg.svd(Q.T @ B, full_matrices=False)
    U = (Q @ u[:, :rank]) * s[:rank]
    V = vt[:rank].T
    return np.ascontiguousarray(U, dtype=np.float32), np.ascontiguousarray(V, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="TSV with a header: user, item[, count]")
    ap.add_argument("--items", required=True, help="CSV whose rows give the item order of the output")
    ap.add_argument("--id-column", required=True, help="the item ID column of --items")
    ap.add_argument("--drop", action="append", default=[], help="TSV of (user, item) pairs to leave out")
    ap.add_argument("--lam", type=float, default=50.0, help="EASE's L2 regularisation λ")
    ap.add_argument("--rank", type=int, default=512, help="dimension of the two tables")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="directory for history.npy and items.npy")
    a = ap.parse_args()
    with open(a.items, newline="") as f:
        ids = [row[a.id_column] for row in csv.DictReader(f)]
    try:
        row_of = {int(x): r for r, x in enumerate(ids)}
    except ValueError:
        raise SystemExit(f"{a.items}: column {a.id_column} must hold integer IDs (as --pairs does)")
    t = time.perf_counter()
    U, V = ease_factors(read_pairs(a.pairs, a.drop), row_of, a.lam, a.rank, a.seed)
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "history.npy"), U)
    np.save(os.path.join(a.out, "items.npy"), V)
    print(f"{len(ids)} items, rank {U.shape[1]}, λ {a.lam:g}: {a.out}/history.npy, {a.out}/items.npy "
          f"in {time.perf_counter() - t:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
