"""Helpers of tools/eval_lastfm.py: the exact (numpy, float64) versions of the seed-based taste
strategies, and the statistics of the report (standard error, paired test against `mean`, latency
percentiles)."""

import math

import numpy as np

F32 = np.float32


def weighted_mean(vs, ws):
    ws = np.asarray(ws, dtype=np.float64)
    return (vs * ws[:, None]).sum(0) / ws.sum()




def kmeans(vs, ws, k):
    """src/recommend/centroids.rs::kmeans on points in row order; returns [(centre, weight)]."""
    n = len(ws)
    ws64 = np.asarray(ws, dtype=np.float64)
    heaviest = max(range(n), key=lambda i: (ws[i], -i))
    centres = [vs[heaviest].copy()]
    nearest = ((vs - centres[0]) ** 2).sum(1)
    while len(centres) < k:
        score = ws64 * nearest
        nxt = max(range(n), key=lambda i: (score[i], -i))
        centres.append(vs[nxt].copy())
        nearest = np.minimum(nearest, ((vs - centres[-1]) ** 2).sum(1))
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(20):
        d = np.stack([((vs - c) ** 2).sum(1) for c in centres], 1)
        best = d.argmin(1)  # first minimum, as min_by keeps the first of equals
        changed = bool((best != assign).any())
        assign = best
        for j in range(k):
            m = assign == j
            if m.any():
                centres[j] = weighted_mean(vs[m], ws64[m])
        if not changed:
            break
    out = []
    for j in range(k):
        w = F32(0)
        for i in np.nonzero(assign == j)[0]:
            w = F32(w + ws[i])
        if w > 0:
            out.append((centres[j], w))
    return out


def share_slots(k, weights):
    total = F32(0)
    for w in weights:
        total = F32(total + w)
    exact = [F32(F32(k) * w / total) for w in weights]
    slots = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(weights)), key=lambda j: (-(exact[j] - math.floor(exact[j])), j))
    left = k - sum(slots)
    i = 0
    while left > 0:
        slots[order[i % len(order)]] += 1
        left -= 1
        i += 1
    return slots


def merged_weights(rows_weights):
    """The server's Taste::new: one point per distinct row (evidence summed), scaled so the largest
    magnitude is 1; returns [(row, weight)] in row order."""
    sums = {}
    for r, w in rows_weights:
        sums[r] = sums.get(r, 0.0) + float(w)
    largest = max((abs(w) for w in sums.values()), default=0.0)
    return [(r, (w / largest) if largest > 0 else 0.0) for r, w in sorted(sums.items())]


def seeds(merged, items):
    """crates/earshot-recommend/src/taste.rs Taste::seeds: the `items` heaviest positive rows (ties to
    the earlier row), then as many of the heaviest negative ones."""
    pos = [(r, w) for r, w in merged if w > 0]
    neg = [(r, w) for r, w in merged if w < 0]
    pos = sorted(pos, key=lambda x: -abs(x[1]))[:items]  # sorted() is stable: row order on ties
    neg = sorted(neg, key=lambda x: -abs(x[1]))[:items]
    return pos + neg


def top_rows(scores, banned, n):
    """The n best rows by (score desc, row asc) with `banned` left out: (rows, scores)."""
    s = scores.copy()
    s[banned] = -np.inf
    m = min(n + 64, len(s))
    cand = np.argpartition(-s, m - 1)[:m]
    cand = cand[np.isfinite(s[cand])]
    order = np.lexsort((cand, -s[cand]))[:n]
    return cand[order], s[cand[order]]


def seeded_exact(A64, merged, banned, strategy, items, per_item, damping, pop, k):
    """crates/earshot-recommend/src/strategy.rs on exact neighbour lists (dot metric: similarity =
    the dot product): `neighbours` sums w·sim over the seeds whose list holds a candidate (negative
    seeds subtracting), optionally divided by max(1, popularity)^damping; `best_score` is the best
    positive similarity minus the best negative one. Candidates come from the positive lists only.
    Seeds with an all-zero vector are skipped (the server's query check refuses them under dot).
    Returns the top-k rows (score desc, row asc), or [] when no positive seed is left."""
    kept = [(r, w) for r, w in seeds(merged, items) if A64[r].any()]
    if not any(w > 0 for _, w in kept):
        return []
    n_rows = A64.shape[0]
    S = A64[[r for r, _ in kept]] @ A64.T  # one row of similarities per seed
    S[:, banned] = -np.inf
    n = max(per_item, k)
    m = min(n + 64, n_rows)
    part = np.argpartition(-S, m - 1, axis=1)[:, :m]
    total = np.zeros(n_rows)
    best_pos = np.full(n_rows, -np.inf)
    best_neg = np.full(n_rows, -np.inf)
    cand = np.zeros(n_rows, dtype=bool)
    lists = []
    for i, (_, w) in enumerate(kept):
        c = part[i]
        v = S[i, c]
        order = np.lexsort((c, -v))[:n]  # the walk's order: distance, then row
        c, v = c[order], v[order]
        ok = np.isfinite(v)
        lists.append((w, c[ok], v[ok]))
    for w, c, v in lists:
        if w > 0:
            cand[c] = True
            np.add.at(total, c, w * v)
            np.maximum.at(best_pos, c, v)
    for w, c, v in lists:
        if w < 0:
            keep = cand[c]
            np.add.at(total, c[keep], w * v[keep])
            np.maximum.at(best_neg, c[keep], v[keep])
    rows = np.nonzero(cand)[0]
    if strategy == "best_score":
        neg = np.where(np.isfinite(best_neg[rows]), best_neg[rows], 0.0)
        score = best_pos[rows] - neg
    else:
        score = total[rows]
        if damping > 0:
            p = np.maximum(1.0, pop[rows]) ** damping
            score = np.where(score >= 0, score / p, score * p)
    order = np.lexsort((rows, -score))[:k]
    return [int(r) for r in rows[order]]


def hits_of(lists, targets):
    return np.array([1 if t in lst else 0 for lst, t in zip(lists, targets)], dtype=np.int64)


def se(hits):
    p = hits.mean()
    return math.sqrt(p * (1 - p) / len(hits))


def mcnemar(a, b):
    """Exact two-sided McNemar test on paired hits: (b-only, a-only, p-value)."""
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    n = only_a + only_b
    if n == 0:
        return only_b, only_a, 1.0
    lo = min(only_a, only_b)
    # P(X <= lo) for X ~ Binomial(n, 1/2), doubled.
    tail = sum(math.comb(n, i) for i in range(lo + 1)) / 2.0 ** n
    return only_b, only_a, min(1.0, 2 * tail)


def paired_bootstrap(a, b, reps=2000, seed=12):
    """95 % interval of mean(b) - mean(a) over users resampled with replacement (the same users
    for both)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    d = (b - a).astype(np.float64)
    means = np.array([d[rng.integers(0, n, n)].mean() for _ in range(reps)])
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def percentiles_ms(latencies):
    if not latencies:
        return None, None
    x = np.array(latencies) * 1000.0
    return float(np.percentile(x, 50)), float(np.percentile(x, 99))
