#!/usr/bin/env python3
"""Numpy prototypes of taste strategies on the Last.fm **validation** split only (exact, no server):
the searches behind EVALUATION.md's "Numpy prototypes of 2026-12-07" paragraph and the choice of
EASE's λ for the two-tower tables. It refuses the test split: nothing here may be tuned on it.

    .venv/bin/python tools/taste_prototypes.py als        # ALS factors: priors, norm damping/penalty, fold-in, centring (~3 min)
    .venv/bin/python tools/taste_prototypes.py knn        # item-kNN on ALS factors, and blends with the mean (~5 min)
    .venv/bin/python tools/taste_prototypes.py ease       # co-listening item-kNN; full EASE at λ 50/200/500 (~15 min, 2.5 GB)
    .venv/bin/python tools/taste_prototypes.py ease-rank [λ]  # EASE factored at rank 64/128/256/512 (~10 min)

Each line: configuration, HR@10 on validation, and wins / losses against `mean` (users hit only by
it / only by `mean`). History = the split's training pairs; the held-out artist is val_heldout.tsv's.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_lastfm as E  # noqa: E402

DATA = os.path.join(E.ROOT, "..", "shared", "datasets", "lastfm-hetrec2k")


def setup():
    D = E.load(DATA, "val")
    Y = D["vecs"].astype(np.float64)
    n = len(Y)
    users, row_of = D["users"], D["row_of"]
    H = [np.array([row_of[a] for a, _ in D["hist"][u]]) for u in users]
    P = [np.array([w for _, w in D["hist"][u]]) for u in users]
    T = np.array([row_of[D["held"][u]] for u in users])
    mask_rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(H)])
    mask_cols = np.concatenate(H)

    def hr(S):
        S = S.copy()
        S[mask_rows, mask_cols] = -np.inf
        top = np.argpartition(-S, 10, axis=1)[:, :10]
        return (top == T[:, None]).any(1)

    Qm = np.stack([Y[h].mean(0) for h in H])
    Sm = Qm @ Y.T
    base = hr(Sm)

    def rep(name, h):
        print(name, round(h.mean(), 4), "w/l", int((h & ~base).sum()), int((~h & base).sum()), flush=True)

    rep("mean", base)
    return dict(Y=Y, n=n, H=H, P=P, hr=hr, rep=rep, Qm=Qm, Sm=Sm, norms=np.linalg.norm(Y, axis=1))


def als(S):
    Y, H, P, hr, rep, Qm, Sm, norms = (S[k] for k in ("Y", "H", "P", "hr", "rep", "Qm", "Sm", "norms"))
    pop = np.zeros(S["n"])  # leak-free popularity: listeners over the split's training pairs
    for h in H:
        pop[h] += 1
    un = lambda Q: Q / np.linalg.norm(Q, axis=1, keepdims=True)  # noqa: E731
    Qn = un(Qm)
    Sn = Qn @ Y.T
    for b in [0.002, 0.005, 0.01, 0.02, 0.05]:
        rep(f"pop prior {b}", hr(Sn + b * np.log1p(pop)))
    for g in [0.05, 0.1, 0.15, 0.2, 0.3]:
        rep(f"norm^-{g}", hr(Sm / np.maximum(norms, 1e-9) ** g))
    rep("mean of units", hr(np.stack([(Y[h] / np.maximum(norms[h], 1e-9)[:, None]).mean(0) for h in H]) @ Y.T))
    # ALS fold-in: x = (YᵀY + Yₕᵀ(C−I)Yₕ + λI)⁻¹ YₕᵀC·1, confidence C = 1 + α·log1p(plays) (or α·1).
    G = Y.T @ Y

    def fold(lam, alpha, wlog=True):
        Q = []
        for h, p in zip(H, P):
            Yh = Y[h]
            c = 1 + alpha * (np.log1p(p) if wlog else np.ones_like(p))
            Q.append(np.linalg.solve(G + (Yh.T * (c - 1)) @ Yh + lam * np.eye(Y.shape[1]), Yh.T @ c))
        return un(np.array(Q))

    for lam in [0.1, 1, 10, 30, 100, 300, 1000]:
        rep(f"fold-in λ{lam} α10 log", hr(fold(lam, 10.0) @ Y.T))
    # A norm penalty q̂·y − c‖y‖², alone and on top of the fold-in.
    for name, Q in [("mean", Qn)] + [(f"fold λ{lam} α{a} {'log' if w else 'bin'}", fold(lam, a, w))
                                     for lam in [30, 100, 300] for a in [3, 10, 30] for w in [True, False]]:
        Sq = Q @ Y.T
        for c in [0, 0.05, 0.1, 0.15]:
            rep(f"{name} −{c}‖y‖²", hr(Sq - c * norms**2))
    # Centring on the catalogue mean, with the penalty.
    mu = Y.mean(0)
    Ql = un(np.stack([(Y[h] * np.log1p(p)[:, None]).sum(0) for h, p in zip(H, P)]))
    for name, Q in [("mean", Qn), ("log1p", Ql)]:
        for g in [0, 0.5, 1.0, 2.0]:
            Qc = un(Q - g * mu / np.linalg.norm(mu) * (Q @ mu / np.linalg.norm(mu))[:, None]) if g else Q
            Sq = Qc @ Y.T
            for c in [0, 0.05, 0.075, 0.1, 0.125, 0.15]:
                rep(f"{name} centre{g} −{c}‖y‖²", hr(Sq - c * norms**2))


def knn(S):
    Y, H, hr, rep, Qm, Sm, norms, n = (S[k] for k in ("Y", "H", "hr", "rep", "Qm", "Sm", "norms", "n"))
    Yn = Y / np.maximum(norms, 1e-9)[:, None]
    Sn = (Qm / np.linalg.norm(Qm, axis=1, keepdims=True)) @ Y.T

    def knn_scores(kind, kp, power):
        K = np.zeros((len(H), n), dtype=np.float32)
        for i, h in enumerate(H):
            sims = Yn[h] @ Yn.T if kind == "cos" else Y[h] @ Y.T
            sims[np.arange(len(h)), h] = -np.inf
            idx = np.argpartition(-sims, kp, axis=1)[:, :kp]
            v = np.maximum(np.take_along_axis(sims, idx, 1), 0) ** power
            np.add.at(K[i], idx.ravel(), v.ravel())
        return K

    def z(M):
        M = M.astype(np.float64)
        return (M - M.mean(1, keepdims=True)) / (M.std(1, keepdims=True) + 1e-12)

    Sd = Sn - 0.1 * norms**2
    rep("dot −0.1‖y‖²", hr(Sd))
    for kind in ["cos", "dot"]:
        for kp in [50, 200]:
            for power in [1, 3]:
                K = knn_scores(kind, kp, power)
                rep(f"knn {kind} k′{kp} p{power}", hr(K.astype(np.float64)))
                for a in [0.3, 0.5, 1.0]:
                    rep(f"   blend z(mean)+{a}z(knn)", hr(z(Sm) + a * z(K)))
                    rep(f"   blend z(mean −0.1‖y‖²)+{a}z(knn)", hr(z(Sd) + a * z(K)))


def listening(S):
    X = np.zeros((len(S["H"]), S["n"]), dtype=np.float32)
    for i, h in enumerate(S["H"]):
        X[i, h] = 1
    return X


def ease(S):
    hr, rep, n = S["hr"], S["rep"], S["n"]
    X = listening(S)
    C = X.T @ X  # item × item co-listeners
    d = np.sqrt(np.maximum(np.diag(C), 1))
    Sc = C / d[:, None] ** 0.5 / d[None, :] ** 0.5
    np.fill_diagonal(Sc, 0)
    rep("co-listening item-kNN (cosine)", hr((X @ Sc).astype(np.float64)))
    del C, Sc
    for lam in [50, 200, 500]:
        G = (X.T @ X).astype(np.float64)
        G[np.diag_indices(n)] += lam
        Pm = np.linalg.inv(G)
        B = -Pm / np.diag(Pm)[None, :]
        np.fill_diagonal(B, 0)
        rep(f"EASE λ{lam} (full)", hr(X.astype(np.float64) @ B))


def ease_rank(S, lam):
    hr, rep, n = S["hr"], S["rep"], S["n"]
    X = listening(S)
    G = X.T @ X
    G[np.diag_indices(n)] += lam
    Pm = np.linalg.inv(G)
    B = -Pm / np.diag(Pm)[None, :]
    np.fill_diagonal(B, 0)
    del Pm, G
    rep(f"EASE λ{lam:g} full", hr((X @ B).astype(np.float64)))
    rng = np.random.default_rng(0)
    for r in [64, 128, 256, 512]:
        Yr = B @ rng.standard_normal((n, r + 20)).astype(np.float32)
        for _ in range(2):
            Yr = B @ (B.T @ Yr)
        Qr, _ = np.linalg.qr(Yr)
        u, s, vt = np.linalg.svd(Qr.T @ B, full_matrices=False)
        U = (Qr @ u[:, :r]) * s[:r]
        rep(f"  rank {r}", hr(((X @ U) @ vt[:r]).astype(np.float64)))


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if "test" in sys.argv[1:]:
        raise SystemExit("validation split only: choose on validation, report once on test (eval_lastfm.py)")
    if what not in ("als", "knn", "ease", "ease-rank"):
        raise SystemExit(__doc__)
    S = setup()
    if what == "als":
        als(S)
    elif what == "knn":
        knn(S)
    elif what == "ease":
        ease(S)
    else:
        ease_rank(S, float(sys.argv[2]) if len(sys.argv) > 2 else 50.0)


if __name__ == "__main__":
    main()
