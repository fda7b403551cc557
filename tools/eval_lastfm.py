#!/usr/bin/env python3
"""Leave-one-out evaluation of earshot's taste strategies on real listening data (Last.fm HetRec-2k),
through the server's `POST /v1/taste/{collection}` endpoint, with exact brute-force references.

One command (from the repo root, after `cargo build` and `bash tools/venv.sh`):

    cargo build && .venv/bin/python tools/eval_lastfm.py --split val    # choose
    cargo build && .venv/bin/python tools/eval_lastfm.py --split test   # report once

--split val: held-out = val_heldout.tsv, histories = user_artists minus the test and the validation
artist, vectors artists_als64_val.npy / users_als64_val.npy; runs the grids of the seed-based strategies
(neighbours, best_score: fan_out items / per_item / damping), of emerging.boost and of the
two-tower tables' rank (VAL_TOWERS). --split test (the
default): held-out = loo_heldout.tsv, vectors *_als64_loo.npy; runs only the values chosen on validation
(CHOSEN_* below). Work files go to <work>/<split>/. Besides the table below it prints, per strategy, HR@10
± SE, the ANN loss (exact − server HR@10), the paired comparison with `mean` on the same users (exact
McNemar test, 95 % paired bootstrap interval of the HR@10 difference) and the client-side p50/p99 latency
of its requests (tools/eval_taste.py holds the exact seed-based strategies and the statistics).

Options: --data DIR (default ../shared/datasets/lastfm-hetrec2k), --bin PATH (default target/debug/earshot),
--work DIR (default target/eval; git-ignored), --workers 4 (concurrent HTTP requests), --users N (first N
users only, for a quick try), --skip-build (reuse the index built by a previous run), --json FILE (also
write all numbers as JSON; default <work>/results.json).

What it does:
 1. `earshot build` an `artists` collection (dot metric) from artists_als64_loo.npy + artists.csv
    (id = creator = artistID, popularity = n_listeners, so every artist is its own creator and creator
    popularity = n_listeners) into <work>/index/artists (--force). The data is never copied into the repo.
 2. `earshot serve --index-root <work>/index --addr 127.0.0.1:0`, waits for its `listening on …` line,
    and stops it (SIGTERM) at the end. Server log: <work>/serve.log.
 3. For every one of the 1,892 users: history = the user's artists in user_artists.dat minus the held-out
    artist of loo_heldout.tsv; the held-out artist is never excluded, the history is (exclude_history
    defaults to true). One taste request with k=10 per strategy:
      mean              all weights 1
      plays             weight = play count
      log1p(plays)      weight = log1p(play count)
      recency × plays   weight = plays, played_at = latest day the user tagged that artist
                        (user_taggedartists.dat), half_life "365d", now = latest day in that file;
                        never-tagged artists get no played_at (the server then does not decay them).
                        The server refuses instants before 1970 (422 invalid_timestamp); the one
                        (user, artist) whose latest tag is dated 1957 is sent as 1970-01-01 (decay
                        0.5^41 instead of 0.5^54: zero either way)
      recency × log1p   the same with log1p(plays)
      centroids 2 / 3   plays, "centroids": 2 or 3 (a user with fewer distinct history items than
                        centroids falls back to 1 centroid, i.e. the plain request)
      plays + emerging  plays, "emerging": {"max_popularity": median n_listeners, "min_share": 0.3}
                        (the median over artists is 1 here, so "emerging" = single-listener artists);
                        plus a sensitivity row with max_popularity = the median n_listeners over
                        listening events (user_artists rows; 31), a threshold the quota can reach
      two-tower EASE    weights 1, a plain request to POST /v1/taste/artists_ease_<λ, r>: the tables of
                        tools/ease_factors.py (EASE λ, rank r), trained on this split's histories only
                        (user_artists minus the held-out pairs), built as dot collections
                        artists_history_<λ, r> (U) and artists_ease_<λ, r> (V, with --taste-history
                        artists_history_<λ, r>, so it reads histories from U and excludes them)
    plus the user's own ALS vector (users_als64_loo.npy via users.csv) sent to POST /v1/search with the
    history in "exclude". Users whose history is empty (their only artist is the held-out one) count
    as misses for every history-based strategy (the server answers 422 empty_history).
    HR@10 = held-out artist in the top 10; NDCG@10 = 1/log2(rank+2) for a hit (rank 0 = first).
 4. Exact references by brute force in numpy (float64) on the same vectors, history excluded:
    the user vector, most-popular by n_listeners, and the exact version of every strategy — the same
    taste vector the server computes (evidence-weighted mean, not normalised since the metric is dot),
    ranked over all artists; for centroids the deterministic k-means of src/recommend/centroids.rs
    (heaviest-first seeding, weight × squared-distance farthest-point, ≤ 20 Lloyd iterations, empty
    clusters dropped), slots shared by largest remainder, and src/recommend/select.rs's pick (each centroid
    fills its share from its own exact top-k, then backfill nearest-first, no duplicates, final list sorted
    by distance); for the emerging quota the same pick over an exact pool of max(10·k, ef) items.
    The server's `explain` output (centroid weights) is checked against the replicated k-means.
 5. Prints a markdown table: strategy | HR@10 | NDCG@10 | exact HR@10 | exact NDCG@10 | long-tail share |
    overlap with exact. Long-tail = n_listeners <= the median n_listeners over all artists (which is 1 on
    this data, so "below the median" would be empty; <= is also the server's emerging rule); a second
    column uses the listening-event median (31). Shares are measured on the server's lists (on the exact
    lists for the row that has no server version, most-popular).
    "overlap with exact" = mean |server top-10 ∩ exact top-10| / 10, i.e. the ANN recall of that strategy.

Nothing is tuned to this data: the server runs with its defaults (ef 64, HNSW m 16, ef_construction 200).
The HNSW build is multi-threaded and randomised, so the server columns can move by a few 1e-3 between
builds; the exact columns are deterministic.
"""

import argparse
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ease_factors  # noqa: E402
import eval_taste  # noqa: E402
from earshot_client import Client, EarshotError  # noqa: E402  (clients/python; tools/venv.sh installs it)
from eval_taste import kmeans, share_slots  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
K = 10
DEFAULT_EF = 64  # the server's --default-ef
QUOTA_WINDOW = 10  # src/recommend/constraints.rs
HALF_LIFE_S = 365 * 86400.0
F32 = np.float32


# ----------------------------------------------------------------------------------------- data

def load(data, split="test"):
    def tsv(name):
        return np.loadtxt(os.path.join(data, name), skiprows=1, dtype=np.int64, ndmin=2)

    import csv
    with open(os.path.join(data, "artists.csv"), newline="") as f:
        arts = list(csv.DictReader(f))
    artist_ids = [a["artistID"] for a in arts]
    n_listeners = np.array([float(a["n_listeners"]) for a in arts])
    with open(os.path.join(data, "users.csv"), newline="") as f:
        user_row = {int(u["userID"]): int(u["row"]) for u in csv.DictReader(f)}
    row_of = {int(a): i for i, a in enumerate(artist_ids)}

    ua = tsv("user_artists.dat")
    loo = {int(u): int(a) for u, a in tsv("loo_heldout.tsv")}
    if split == "val":
        # Validation: the held-out artist is val_heldout's (taken from the training pairs); the
        # test artist is left out of the histories as well, and the factors never saw either.
        held = {int(u): int(a) for u, a in tsv("val_heldout.tsv")}
        dropped = [loo, held]
        suffix = "val"
    else:
        held = loo
        dropped = [loo]
        suffix = "loo"
    tags = tsv("user_taggedartists.dat")  # userID artistID tagID day month year
    # Latest tagging day per (user, artist), as an ordinal day number.
    latest = {}
    for u, a, _t, d, m, y in tags:
        o = dt.date(int(y), int(m), int(d)).toordinal()
        key = (int(u), int(a))
        if o > latest.get(key, -1):
            latest[key] = o
    now_ord = max(latest.values())
    # The server's RFC 3339 parser (humantime) refuses instants before 1970 (422 invalid_timestamp);
    # a handful of tag dates are 1956/1957. Clamp them to 1970-01-01 (decay 0.5^41, i.e. ~0, as the
    # real date would give).
    epoch = dt.date(1970, 1, 1).toordinal()
    clamped = sum(1 for v in latest.values() if v < epoch)
    latest = {key: max(v, epoch) for key, v in latest.items()}

    users = sorted(held)
    hist = {u: [] for u in users}
    for u, a, w in ua:
        u, a = int(u), int(a)
        if u not in hist or any(d.get(u) == a for d in dropped):
            continue
        hist[u].append((a, float(w)))
    vecs = np.load(os.path.join(data, f"artists_als64_{suffix}.npy"))
    uvecs = np.load(os.path.join(data, f"users_als64_{suffix}.npy"))
    event_pop_median = float(np.median([n_listeners[row_of[int(a)]] for a in ua[:, 1]]))
    return dict(split=split, vectors_file=f"artists_als64_{suffix}.npy", clamped=clamped, event_pop_median=event_pop_median, artist_ids=artist_ids, n_listeners=n_listeners, user_row=user_row, row_of=row_of,
                held=held, latest=latest, now_ord=now_ord, users=users, hist=hist, vecs=vecs,
                uvecs=uvecs)


def rfc3339(ordinal):
    return dt.date.fromordinal(ordinal).isoformat() + "T00:00:00Z"


# ------------------------------------------------------------------------------------ strategies

# The seed-based strategies' fan-out and the emerging boost are chosen on the validation split
# (`--split val` runs the grids below); `--split test` runs only the chosen values, once.
# Chosen on validation (EVALUATION.md, "Choice on the validation split"): for each strategy the
# highest validation HR@10 of its grid, ties to the lower p50 latency; for the boost the smallest b
# whose validation share of n_listeners <= 31 reaches 0.30.
CHOSEN_NEIGHBOURS = {"items": 50, "per_item": 100}  # with log1p(plays) weights
CHOSEN_BEST_SCORE = {"items": 50, "per_item": 100}
CHOSEN_BOOST = 0.25
VAL_PER_ITEM = [50, 100, 200, 400]
VAL_DAMPING = [0.03, 0.1]
VAL_BOOST = [0.1, 0.15, 0.2, 0.22, 0.25, 0.3]
# Two-tower taste (tools/ease_factors.py): EASE λ and the rank of its factors. λ 50 was the best of
# λ 50 / 200 / 500 of the full model in a numpy prototype on the validation split (EVALUATION.md);
# the rank is the highest validation HR@10 through the server: 256 (0.2459; 512: 0.2363).
VAL_TOWERS = [(50, 256), (50, 512)]
CHOSEN_TOWER = (50, 256)


def tower_names(tower):
    lam, rank = tower
    tag = f"l{lam:g}_r{rank}"
    return f"artists_history_{tag}", f"artists_ease_{tag}"


def strategies(median_pop, event_median, split):
    """name -> (weight function of plays, use recency, centroids, emerging, extra body fields)."""
    plays = lambda p: p
    log1p = lambda p: math.log1p(p)
    one = lambda p: None
    rows = [
        ("mean (weights 1)", one, False, 1, None, None),
        ("plays", plays, False, 1, None, None),
        ("log1p(plays)", log1p, False, 1, None, None),
        ("recency 365d × plays", plays, True, 1, None, None),
        ("recency 365d × log1p(plays)", log1p, True, 1, None, None),
        ("plays, centroids 2", plays, False, 2, None, None),
        ("plays, centroids 3", plays, False, 3, None, None),
        (f"plays + emerging (max_popularity {median_pop:g}, min_share 0.3)", plays, False, 1,
         {"max_popularity": median_pop, "min_share": 0.3}, None),
        (f"plays + emerging (max_popularity {event_median:g}, min_share 0.3) [sensitivity]", plays, False, 1,
         {"max_popularity": event_median, "min_share": 0.3}, None),
    ]

    def seeded(name, wname, wfn, fan):
        label = ", ".join(f"{k} {v}" for k, v in fan.items())
        return (f"{name} ({wname}; {label})", wfn, False, 1, None, {"strategy": name, "fan_out": fan})

    def boost(b):
        return (f"mean + emerging boost {b:g} (max_popularity {event_median:g}, no quota)", one, False, 1,
                {"max_popularity": event_median, "boost": b}, None)

    def two_tower(t):
        # weights 1: the mean of the history's U rows, searched in the V collection.
        return (f"two-tower EASE (λ {t[0]:g}, rank {t[1]}; weights 1)", one, False, 1, None, {"_tower": t})

    if split == "val":
        for n in VAL_PER_ITEM:
            rows.append(seeded("neighbours", "weights 1", one, {"items": 50, "per_item": n}))
        rows.append(seeded("neighbours", "log1p(plays)", log1p, {"items": 50, "per_item": 100}))
        rows.append(seeded("neighbours", "weights 1", one, {"items": 20, "per_item": 100}))
        for a in VAL_DAMPING:
            rows.append(seeded("neighbours", "weights 1", one, {"items": 50, "per_item": 100, "damping": a}))
        for n in [100, 400]:
            rows.append(seeded("best_score", "weights 1", one, {"items": 50, "per_item": n}))
        rows.extend(boost(b) for b in VAL_BOOST)
        rows.extend(two_tower(t) for t in VAL_TOWERS)
    else:
        rows.append(seeded("neighbours", "log1p(plays)", log1p, CHOSEN_NEIGHBOURS))
        rows.append(seeded("best_score", "weights 1", one, CHOSEN_BEST_SCORE))
        rows.append(boost(CHOSEN_BOOST))
        rows.append(two_tower(CHOSEN_TOWER))
    return rows


def evidence(D, u, wfn, recency):
    """[(artistID, weight sent or None, played_at ordinal or None, effective f32 evidence)]."""
    out = []
    for a, p in D["hist"][u]:
        w = wfn(p)
        ts = D["latest"].get((u, a)) if recency else None
        eff = F32(1.0 if w is None else w)
        if ts is not None:
            age = max(0.0, (D["now_ord"] - ts) * 86400.0)
            eff = F32(eff * F32(0.5 ** (age / HALF_LIFE_S)))
        out.append((a, w, ts, eff))
    return out


def request_body(D, ev, recency, centroids, emerging, extra=None):
    hist = []
    for a, w, ts, _ in ev:
        item = {"id": str(a)}
        if w is not None:
            item["weight"] = w
        if ts is not None:
            item["played_at"] = rfc3339(ts)
        hist.append(item)
    body = {"history": hist, "k": K}
    if recency:
        body["half_life"] = "365d"
        body["now"] = rfc3339(D["now_ord"])
    if centroids > 1 and len(ev) >= centroids:
        body["centroids"] = centroids
        body["explain"] = True
    if emerging:
        body["emerging"] = emerging
    if extra:
        body.update(extra)
    return body


# ------------------------------------------------------------------------ exact (brute force)

def exact_scores(A64, q):
    return A64 @ np.asarray(q, dtype=np.float64)


def topn(scores, banned, n):
    """Admissible rows by (score desc, row asc) — the server's Hit order (dist = -score, row)."""
    s = scores.copy()
    s[banned] = -np.inf
    m = min(n + 64, len(s))
    cand = np.argpartition(-s, m - 1)[:m]
    cand = cand[np.isfinite(s[cand])]
    order = np.lexsort((cand, -s[cand]))
    return [(int(r), float(-s[r])) for r in cand[order][:n]]  # (row, dist)


def weighted_mean(vs, ws):
    ws = np.asarray(ws, dtype=np.float64)
    return (vs * ws[:, None]).sum(0) / ws.sum()


def pick(pools, weights, k, eligible=None, quota_slots=0):
    """src/recommend/select.rs::pick (no max_per_creator). pools: per probe [(row, dist)]."""
    if eligible is not None:
        reach = {r for p in pools for r, _ in p[:QUOTA_WINDOW * k] if eligible[r]}
        quota = min(quota_slots, len(reach))
    else:
        quota = 0
    chosen, seen = [], set()
    state = {"limit": k - quota, "taken": 0}

    def take(row, dist, rank):
        if row in seen:
            return False
        em = eligible is not None and rank < QUOTA_WINDOW * k and bool(eligible[row])
        if not em and state["taken"] >= state["limit"]:
            return False
        if not em:
            state["taken"] += 1
        seen.add(row)
        chosen.append((dist, row))
        return True

    slots = share_slots(k, weights)
    for j, hits in enumerate(pools):
        taken = 0
        for rank, (row, dist) in enumerate(hits):
            if taken == slots[j]:
                break
            if take(row, dist, rank):
                taken += 1
    for relax in (False, True):
        if len(chosen) >= k:
            break
        if relax:
            state["limit"] = k
        allh = sorted(((dist, row, j, r) for j, hits in enumerate(pools)
                       for r, (row, dist) in enumerate(hits)))
        for dist, row, _j, r in allh:
            if len(chosen) >= k:
                break
            take(row, dist, r)
    chosen.sort()
    return [row for _d, row in chosen]


def exact_list(D, A64, ev, centroids, emerging, pop, extra=None):
    rows = sorted({D["row_of"][a]: eff for a, _w, _t, eff in ev}.items())  # merged, row order
    banned = np.array([r for r, _ in rows], dtype=np.int64)
    if extra and "_tower" in extra:
        U, V = D["towers"][extra["_tower"]]
        s = V @ U[banned].sum(0)
        return [r for r, _ in topn(s, banned, K)], []
    if extra:
        fan = extra["fan_out"]
        merged = eval_taste.merged_weights([(D["row_of"][a], eff) for a, _w, _t, eff in ev])
        lst = eval_taste.seeded_exact(A64, merged, banned, extra["strategy"], fan["items"],
                                      fan["per_item"], fan.get("damping", 0.0), pop, K)
        return lst, []
    vs = A64[banned]
    ws = [w for _, w in rows]
    if centroids > 1 and len(rows) >= centroids:
        probes = kmeans(vs, ws, centroids)
    else:
        total = F32(0)
        for w in ws:
            total = F32(total + w)
        probes = [(weighted_mean(vs, ws), total)]
    size = max(QUOTA_WINDOW * K, DEFAULT_EF) if emerging else K
    # Under dot, several centroids search with their unit directions (taste.rs): the same ranking,
    # comparable distances across centroids.
    unit = centroids > 1 and len(rows) >= centroids
    pools = [topn(exact_scores(A64, c / np.linalg.norm(c) if unit else c), banned, size) for c, _ in probes]
    if emerging:
        share = emerging.get("min_share", 0.0 if "boost" in emerging else 0.3)
        slots = min(int(math.ceil(F32(share) * K)), K)
        eligible = pop <= F32(emerging["max_popularity"])
        b = emerging.get("boost", 0.0)
        if b > 0:
            # select.rs boost_pool: eligible distances lowered by boost × (last − first distance of
            # the pool's QUOTA_WINDOW·k nearest), re-sorted.
            boosted = []
            for p in pools:
                w = p[: QUOTA_WINDOW * K]
                spread = max(0.0, w[-1][1] - w[0][1]) if w else 0.0
                q = [(r, d - b * spread if eligible[r] else d) for r, d in p]
                q.sort(key=lambda x: (x[1], x[0]))
                boosted.append(q)
            pools = boosted
        return pick(pools, [w for _, w in probes], K, eligible, slots), probes
    return pick(pools, [w for _, w in probes], K), probes


# ------------------------------------------------------------------------------------ server

def build_index(binary, data, work, vectors_file, name="artists", extra=()):
    out = os.path.join(work, "index", name)
    cmd = [binary, "build", "--vectors", os.path.join(data, vectors_file),
           "--meta", os.path.join(data, "artists.csv"), "--id-column", "artistID",
           "--creator-column", "artistID", "--popularity-column", "n_listeners",
           "--metric", "dot", "--out", out, "--force", *extra]
    print("$ " + " ".join(cmd), file=sys.stderr)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    print(f"built in {time.perf_counter() - t:.1f}s", file=sys.stderr)


def tower_factors(a, D, tower):
    """(U, V) of tools/ease_factors.py for `tower` = (λ, rank), trained on this split's histories
    (user_artists minus the held-out pairs), and its two collections built into <work>/index."""
    d = os.path.join(a.work, f"ease_l{tower[0]:g}_r{tower[1]}")
    hp, ip = os.path.join(d, "history.npy"), os.path.join(d, "items.npy")
    if not (a.skip_build and os.path.exists(hp) and os.path.exists(ip)):
        t = time.perf_counter()
        pairs = [(u, x) for u, h in D["hist"].items() for x, _ in h]
        row_of = {int(x): r for r, x in enumerate(D["artist_ids"])}
        U, V = ease_factors.ease_factors(pairs, row_of, tower[0], tower[1])
        os.makedirs(d, exist_ok=True)
        np.save(hp, U)
        np.save(ip, V)
        print(f"EASE factors {tower} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        hist, items = tower_names(tower)
        build_index(a.bin, a.data, a.work, os.path.abspath(hp), hist)
        # The items table reads its taste histories from the history table by default.
        build_index(a.bin, a.data, a.work, os.path.abspath(ip), items, ["--taste-history", hist])
    return np.load(hp).astype(np.float64), np.load(ip).astype(np.float64)


def start_server(binary, work):
    log = open(os.path.join(work, "serve.log"), "w")
    p = subprocess.Popen([binary, "serve", "--index-root", os.path.join(work, "index"),
                          "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening on http://"):
        p.kill()
        raise SystemExit(f"server did not start (see {log.name}): {line!r}")
    port = int(line.strip().rsplit(":", 1)[1])
    print(f"server pid {p.pid} on port {port}", file=sys.stderr)
    return p, port


def stop_server(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# -------------------------------------------------------------------------------------- main

def metrics(lists, targets):
    hr = nd = 0.0
    for lst, t in zip(lists, targets):
        if t in lst:
            i = lst.index(t)
            hr += 1
            nd += 1.0 / math.log2(i + 2)
    n = len(targets)
    return hr / n, nd / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "lastfm-hetrec2k"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "earshot"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "eval"))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--users", type=int, default=0)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--split", choices=["val", "test"], default="test",
                    help="val: choose strategies and parameters (val_heldout.tsv, *_als64_val.npy); "
                         "test: report the chosen ones once (loo_heldout.tsv, *_als64_loo.npy)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    if not os.access(a.bin, os.X_OK):
        raise SystemExit(f"{a.bin} not found: run `cargo build` first (or pass --bin)")
    os.makedirs(a.work, exist_ok=True)

    a.work = os.path.join(a.work, a.split)
    os.makedirs(a.work, exist_ok=True)
    D = load(a.data, a.split)
    users = D["users"][: a.users] if a.users else D["users"]
    targets = [D["row_of"][D["held"][u]] for u in users]
    A64 = D["vecs"].astype(np.float64)
    pop = D["n_listeners"]
    median = float(np.median(pop))
    longtail = pop <= median
    event_median = D["event_pop_median"]
    longtail2 = pop <= event_median
    strats = strategies(median, event_median, a.split)
    empty = [u for u in users if not D["hist"][u]]
    print(f"{len(users)} users ({len(empty)} with an empty history), median n_listeners {median:g}, "
          f"now {rfc3339(D['now_ord'])}", file=sys.stderr)

    if not a.skip_build:
        build_index(a.bin, a.data, a.work, D["vectors_file"])
    towers = sorted({x[5]["_tower"] for x in strats if x[5] and "_tower" in x[5]})
    D["towers"] = {t: tower_factors(a, D, t) for t in towers}
    proc, port = start_server(a.bin, a.work)
    # One pooled keep-alive connection per worker thread; retries on 503/connection errors.
    client = Client(f"http://127.0.0.1:{port}", timeout=60, max_connections=a.workers)

    def answer(f):
        """(status, JSON body) of one call, errors included: an error is a result here, not a stop."""
        try:
            return 200, f().raw
        except EarshotError as e:
            return e.status, {"error": {"code": e.code, "message": e.message}}
    rows_of_ids = lambda res: [D["row_of"][int(r["id"])] for r in res["results"]]
    results = {}
    errors = {}
    latency = {}
    odd = []
    try:
        def run(name, jobs):
            t = time.perf_counter()
            with ThreadPoolExecutor(a.workers) as ex:
                out = list(ex.map(lambda j: j(), jobs))
            print(f"  {name}: {len(jobs)} requests in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            return out

        # User vector via /v1/search (history excluded).
        def uv_job(u):
            def f():
                return answer(lambda: client.search("artists", D["uvecs"][D["user_row"][u]], k=K,
                                                    exclude=[str(x) for x, _ in D["hist"][u]]))
            return f
        out = run("user vector", [uv_job(u) for u in users])
        results["user vector (ALS, /v1/search)"] = [rows_of_ids(r) if st == 200 else [] for st, r in out]
        errors["user vector (ALS, /v1/search)"] = sum(st != 200 for st, _ in out)

        server_probes = {}
        for name, wfn, rec, cents, emer, extra in strats:
            def job(u, wfn=wfn, rec=rec, cents=cents, emer=emer, extra=extra):
                def f():
                    ev = evidence(D, u, wfn, rec)
                    if not ev:
                        return (None, None)
                    body = request_body(D, ev, rec, cents, emer, extra)
                    history = body.pop("history")
                    coll = "artists"
                    tower = body.pop("_tower", None)
                    if tower:
                        # A plain request to the items table: built with --taste-history, it
                        # reads the history's U rows and excludes the history by default.
                        coll = tower_names(tower)[1]
                    t = time.perf_counter()
                    out = answer(lambda: client.taste(coll, history, **body))
                    latency[name].append(time.perf_counter() - t)
                    return out
                return f
            latency[name] = []
            out = run(name, [job(u) for u in users])
            lists = []
            nerr = 0
            for u, (st, res) in zip(users, out):
                if st is None:
                    lists.append([])
                    continue
                if st != 200:
                    nerr += 1
                    if len(odd) < 20:
                        odd.append((name, u, st, res))
                    lists.append([])
                    continue
                ids = rows_of_ids(res)
                if len(ids) != K or len(set(ids)) != len(ids):
                    odd.append((name, u, "short/duplicate list", len(ids)))
                lists.append(ids)
                if cents > 1:
                    server_probes[(name, u)] = sorted({(r["explain"]["centroid"], r["explain"]["centroid_weight"])
                                                       for r in res["results"] if "explain" in r})
            results[name] = lists
            errors[name] = nerr
    finally:
        client.close()
        stop_server(proc)
        print(f"server stopped (exit {proc.returncode})", file=sys.stderr)
    t_server = time.perf_counter() - t0

    # Exact references.
    t = time.perf_counter()
    exact = {}
    hist_rows = {u: np.array([D["row_of"][x] for x, _ in D["hist"][u]], dtype=np.int64) for u in users}
    ex = []
    for u in users:
        s = exact_scores(A64, D["uvecs"][D["user_row"][u]])
        ex.append([r for r, _ in topn(s, hist_rows[u], K)])
    exact["user vector (ALS, /v1/search)"] = ex
    pop_order = np.lexsort((np.arange(len(pop)), -pop))
    mp = []
    for u in users:
        banned = set(hist_rows[u].tolist())
        mp.append([int(r) for r in pop_order[: K + len(banned)] if int(r) not in banned][:K])
    exact["most popular (n_listeners)"] = mp
    kmeans_checked = kmeans_agree = 0
    fallbacks = {}
    for name, wfn, rec, cents, emer, extra in strats:
        lists = []
        nfb = 0
        for u in users:
            ev = evidence(D, u, wfn, rec)
            if not ev:
                lists.append([])
                continue
            if cents > 1 and len(ev) < cents:
                nfb += 1
            lst, probes = exact_list(D, A64, ev, cents, emer, pop, extra)
            lists.append(lst)
            sp = server_probes.get((name, u))
            if sp is not None:
                total = float(sum(w for _, w in probes))
                mine = [float(w) / total for _, w in probes]
                kmeans_checked += 1
                kmeans_agree += all(j < len(mine) and abs(mine[j] - w) < 1e-4 for j, w in sp)
        exact[name] = lists
        fallbacks[name] = nfb
    print(f"exact references in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    # Table.
    table = []
    names = ["user vector (ALS, /v1/search)", "most popular (n_listeners)"] + [s[0] for s in strats]
    for name in names:
        sv = results.get(name)
        exl = exact[name]
        ehr, end = metrics(exl, targets)
        row = {"strategy": name, "exact_hr": ehr, "exact_ndcg": end}
        if sv is not None:
            row["hr"], row["ndcg"] = metrics(sv, targets)
            row["errors"] = errors[name]
            lt_lists = sv
            ov = [len(set(s) & set(e)) / K for s, e in zip(sv, exl) if e]
            row["overlap"] = float(np.mean(ov))
        else:
            lt_lists = exl
        flat = [r for lst in lt_lists for r in lst]
        row["longtail"] = float(np.mean(longtail[flat])) if flat else 0.0
        row["longtail2"] = float(np.mean(longtail2[flat])) if flat else 0.0
        row["longtail_from"] = "server" if sv is not None else "exact"
        row["centroid_fallbacks"] = fallbacks.get(name, 0)
        table.append(row)

    def f(x):
        return "—" if x is None else f"{x:.4f}"

    lines = ["| strategy | HR@10 | NDCG@10 | exact HR@10 | exact NDCG@10 | long-tail share "
             f"(n_listeners ≤ {median:g}) | share n_listeners ≤ {event_median:g} | overlap with exact |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        src = "" if r["longtail_from"] == "server" else " (exact)"
        lines.append(f"| {r['strategy']} | {f(r.get('hr'))} | {f(r.get('ndcg'))} | {f(r['exact_hr'])} | "
                     f"{f(r['exact_ndcg'])} | {r['longtail']:.3f}{src} | {r['longtail2']:.3f}{src} | "
                     f"{f(r.get('overlap'))} |")
    print("\n".join(lines))

    # Standard errors, the paired comparison with `mean` on the same users, ANN loss, latency.
    base = "mean (weights 1)"
    base_hits = eval_taste.hits_of(results[base], targets)
    base_p50, base_p99 = eval_taste.percentiles_ms(latency[base])
    stats = ["", f"| strategy | HR@10 ± SE | exact HR@10 ± SE | ANN loss (exact − server) | Δ HR vs mean "
             "(server) | 95 % paired bootstrap | McNemar: wins / losses, p | p50 / p99 ms | added p50 / p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        name = r["strategy"]
        if name not in results:
            continue
        h = eval_taste.hits_of(results[name], targets)
        eh = eval_taste.hits_of(exact[name], targets)
        wins, losses, pval = eval_taste.mcnemar(base_hits, h)
        lo, hi = eval_taste.paired_bootstrap(base_hits, h)
        p50, p99 = eval_taste.percentiles_ms(latency.get(name, []))
        r.update(se=eval_taste.se(h), exact_se=eval_taste.se(eh), ann_loss=r["exact_hr"] - r["hr"],
                 delta_vs_mean=float(h.mean() - base_hits.mean()), bootstrap95=[lo, hi],
                 mcnemar=[wins, losses, pval], p50_ms=p50, p99_ms=p99)
        lat = "—" if p50 is None else f"{p50:.2f} / {p99:.2f}"
        added = "—" if p50 is None else f"{p50 - base_p50:+.2f} / {p99 - base_p99:+.2f}"
        stats.append(f"| {name} | {r['hr']:.4f} ± {r['se']:.4f} | {r['exact_hr']:.4f} ± {r['exact_se']:.4f} | "
                     f"{r['ann_loss']:+.4f} | {r['delta_vs_mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                     f"{wins} / {losses}, {pval:.3g} | {lat} | {added} |")
    print("\n".join(stats))
    notes = [
        f"split: {a.split} (vectors {D['vectors_file']}); latency = client-side wall time per HTTP "
        f"request, {a.workers} concurrent connections",
        f"users: {len(users)}; empty histories (counted as misses for history strategies): {len(empty)}",
        f"median n_listeners: {median:g}; long-tail = n_listeners <= {median:g} "
        f"({float(longtail.mean()):.3f} of all artists); median n_listeners over listening events "
        f"(user_artists rows): {event_median:g} ({float(longtail2.mean()):.3f} of artists are <= it); "
        f"now = {rfc3339(D['now_ord'])}",
        f"held-out artists with an all-zero LOO vector (no other listener in the training split; unreachable "
        f"by any embedding strategy): {sum(1 for t in targets if not D['vecs'][t].any())}",
        f"(user, artist) tag dates before 1970 clamped to 1970-01-01 (the server refuses them): {D['clamped']}",
        "centroid fallbacks to 1 (fewer distinct items than centroids): "
        + ", ".join(f"{n}: {c}" for n, c in fallbacks.items() if "centroids" in n),
        f"k-means replication vs server explain (centroid weights within 1e-4): {kmeans_agree}/{kmeans_checked}",
        "non-200 answers: " + ", ".join(f"{n}: {c}" for n, c in errors.items() if c) if any(errors.values())
        else "non-200 answers: none",
        f"wall time: {time.perf_counter() - t0:.0f}s (server phase incl. build {t_server:.0f}s), "
        f"{a.workers} concurrent requests",
    ]
    print()
    for n in notes:
        print("- " + n)
    for o in odd[:10]:
        print("- odd answer:", o)
    path = a.json or os.path.join(a.work, "results.json")
    with open(path, "w") as fh:
        json.dump({"table": table, "notes": notes, "odd": [str(o) for o in odd]}, fh, indent=1)


if __name__ == "__main__":
    main()
