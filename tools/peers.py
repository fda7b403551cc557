#!/usr/bin/env python3
"""Recall/QPS of peer ANN libraries on the same .npy files that `earshot bench` reads.

Set up once (creates the git-ignored .venv with the pinned libraries of tools/requirements-peers.txt):

    bash tools/venv.sh

Examples:

    # users -> artists by inner product (Last.fm ALS factors)
    .venv/bin/python tools/peers.py --metric dot \\
        --base ../shared/datasets/lastfm-hetrec2k/artists_als64.npy \\
        --queries ../shared/datasets/lastfm-hetrec2k/users_als64.npy \\
        --gt ../shared/datasets/lastfm-hetrec2k/gt_users_to_artists_dot_ids.npy --summary

    # similar tracks: queries are rows of the base, the GT has the query itself at rank 0
    D=../shared/datasets/yes-tracks
    .venv/bin/python tools/peers.py --metric cosine --base $D/tracks_minilm384.npy \\
        --query-rows $D/track_query_rows.npy --skip-self \\
        --gt $D/gt_track_to_track_angular_ids.npy --gt-dist $D/gt_track_to_track_angular_dist.npy \\
        --libs hnswlib,faiss-hnsw --ef 32 --summary

What it does, per library in --libs:
  * builds an HNSW index over the base with --m / --ef-construction, using --threads threads, and times it
    (build_s, wall seconds; mem_mb = growth of the process RSS over the build, a rough index size);
  * for each --ef, sends the queries ONE AT A TIME from Python on a single thread (one call per query, as a
    server would; query-side thread knobs are set to 1), after a short untimed warm-up, and reports QPS =
    n_queries / time of the fastest full pass; passes repeat until --min-time seconds (default 1) were
    spent, which steadies numbers on a shared machine;
  * recall@k: a returned id is a hit when its exact distance to the query (recomputed here in numpy: cosine
    distance 1-cos on normalised vectors, squared L2, or negative dot) is <= the k-th true distance + 1e-6,
    where the k-th true distance is recomputed from the GT ids. Ties/duplicate vectors thus count as hits.

--skip-self (with --query-rows): each query asks for k+1 results, its own row is dropped from them and the
first k that remain are scored; the true k-th distance comes from the GT row with the query row removed
(i.e. GT ranks 1..k when the query is at rank 0). Without --skip-self, --query-rows keeps the query row as
an ordinary (trivially found) result and scores against GT ranks 0..k-1, which reads higher: on yes-tracks
hnswlib ef=32 gave 0.965 that way and 0.960 with --skip-self. Where exact duplicates exist (yes-tracks: 3.7 %
of queries have a duplicate ranked before themselves) the GT row is used with the query row removed.

--gt-dist: only a cross-check of the recomputed true distances (the file may hold distances in our
convention, similarity scores such as dot products, or non-squared L2; all are recognised). A mismatch is
reported on stderr.

Libraries (--libs, comma-separated):
  hnswlib        hnswlib.Index, space cosine / l2 / ip; knn_query(num_threads=1) after set_num_threads(1)
  voyager-f32    voyager.Index, Space.Cosine / Euclidean / InnerProduct, Float32 storage; query_ef is
                 max(ef, k) (voyager rejects query_ef < k). Note: voyager's InnerProduct adds an
                 order-preserving extra dimension sqrt(max_norm^2 - |x|^2) (max_norm grows during the
                 build), so its dot-product graph differs from hnswlib's 'ip' and recall can be lower
  voyager-e4m3   the same with StorageDataType.E4M3 (8-bit float) storage
  faiss-hnsw     faiss.IndexHNSWFlat: cosine = normalise + METRIC_INNER_PRODUCT; l2 = METRIC_L2; dot = IP;
                 hnsw.efSearch = ef; faiss.omp_set_num_threads(--threads) to build, (1) to search
  usearch-f32    usearch.index.Index, metric cos / l2sq / ip, connectivity=M, expansion_add=efC,
                 expansion_search=ef, search(threads=1)
  usearch-i8     the same with dtype 'i8'. usearch quantises f32 to i8 as clamp(x*127) so it is only
                 meaningful for vectors within [-1, 1]: for cosine, base and queries are normalised first;
                 for l2/dot it is skipped (with a note) when base or queries leave [-1, 1]
  hnswlib-batch  NOT a separate index, optional: hnswlib as above, but each pass is ONE knn_query call over the
                 whole query matrix with num_threads=1, so the difference to "hnswlib" is the Python per-call
                 overhead (argument conversion, result allocation) of one call per query
  annoy          NOT HNSW, optional: AnnoyIndex angular / euclidean / dot, n_trees=100 (--annoy-trees),
                 and each ef maps to search_k = ef * k_asked * 10 (k_asked = k, or k+1 with --skip-self)
Default --libs is every one of them except annoy and hnswlib-batch.

Output: one JSON line per (lib, ef) on stdout, e.g.
  {"lib":"hnswlib","ef":32,"recall":0.965,"qps":5768.1,"build_s":29.1,"k":10,...}
progress on stderr; --summary adds a markdown table (rows libs, columns ef with "recall / qps", then QPS
at recall 0.95 and 0.99, interpolated linearly between adjacent ef points of the curve, "—" if never
reached, "≥ N" when the smallest ef is already above the target) on stdout after the JSON lines.
"""

import argparse
import gc
import json
import math
import os
import sys
import time

import numpy as np

ALL_LIBS = ["hnswlib", "voyager-f32", "voyager-e4m3", "faiss-hnsw", "usearch-f32", "usearch-i8", "annoy",
            "hnswlib-batch"]
DEFAULT_LIBS = [lib for lib in ALL_LIBS if lib not in ("annoy", "hnswlib-batch")]
EPS = 1e-6
WARMUP = 100


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def loadavg1():
    """1-minute load average (the machine is shared: recorded with every measurement)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- exact distances

def normalize(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (x / n).astype(np.float32)


class Exact:
    """Distance in this tool's convention: cosine 1-cos, squared L2, negative dot. float64 math."""

    def __init__(self, base, metric):
        self.metric = metric
        self.base = normalize(base).astype(np.float64) if metric == "cosine" else base.astype(np.float64)

    def prep_query(self, q):
        q = q.astype(np.float64)
        if self.metric == "cosine":
            n = np.linalg.norm(q)
            q = q / n if n > 0 else q
        return q

    def dist(self, q, ids):
        """q: prepared query (float64), ids: int array -> distances."""
        v = self.base[ids]
        if self.metric == "cosine":
            return 1.0 - v @ q
        if self.metric == "l2":
            d = v - q
            return np.einsum("ij,ij->i", d, d)
        return -(v @ q)


# ----------------------------------------------------------------------------- libraries
# Each adapter: build(base, args) then set_ef(ef) and search(i, k) -> ids (any int sequence, best first).

class HnswlibLib:
    name = "hnswlib"

    def __init__(self, metric):
        self.space = {"cosine": "cosine", "l2": "l2", "dot": "ip"}[metric]

    def build(self, base, a):
        import hnswlib
        self.idx = hnswlib.Index(space=self.space, dim=base.shape[1])
        self.idx.init_index(max_elements=base.shape[0], ef_construction=a.ef_construction, M=a.m, random_seed=100)
        self.idx.add_items(base, np.arange(base.shape[0]), num_threads=a.threads)
        self.idx.set_num_threads(1)

    def prep_queries(self, q):
        return [q[i] for i in range(q.shape[0])]

    def set_ef(self, ef, k):
        self.idx.set_ef(ef)

    def search(self, q, k):
        return self.idx.knn_query(q, k=k, num_threads=1)[0][0]


class HnswlibBatchLib(HnswlibLib):
    """hnswlib, all queries in one knn_query call on one thread (measures the per-call overhead)."""
    name = "hnswlib-batch"
    batched = True

    def prep_queries(self, q):
        return np.ascontiguousarray(q, dtype=np.float32)

    def search_all(self, qs, k):
        return self.idx.knn_query(qs, k=k, num_threads=1)[0]


class VoyagerLib:
    def __init__(self, metric, e4m3):
        import voyager
        self.name = "voyager-e4m3" if e4m3 else "voyager-f32"
        self.space = {"cosine": voyager.Space.Cosine, "l2": voyager.Space.Euclidean,
                      "dot": voyager.Space.InnerProduct}[metric]
        self.storage = voyager.StorageDataType.E4M3 if e4m3 else voyager.StorageDataType.Float32

    def build(self, base, a):
        import voyager
        self.idx = voyager.Index(self.space, num_dimensions=base.shape[1], M=a.m,
                                 ef_construction=a.ef_construction, max_elements=base.shape[0],
                                 storage_data_type=self.storage)
        self.idx.add_items(base, num_threads=a.threads)  # ids are 0..n-1 in order

    def prep_queries(self, q):
        return [q[i] for i in range(q.shape[0])]

    def set_ef(self, ef, k):
        self.ef = max(ef, k)  # voyager raises if query_ef < k; hnswlib/faiss/usearch use max(ef, k) anyway

    def search(self, q, k):
        return self.idx.query(q, k=k, num_threads=1, query_ef=self.ef)[0]


class FaissLib:
    name = "faiss-hnsw"

    def __init__(self, metric):
        self.metric = metric

    def build(self, base, a):
        import faiss
        self.faiss = faiss
        mt = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.metric == "cosine":
            base = normalize(base)
        self.idx = faiss.IndexHNSWFlat(base.shape[1], a.m, mt)
        self.idx.hnsw.efConstruction = a.ef_construction
        faiss.omp_set_num_threads(a.threads)
        self.idx.add(np.ascontiguousarray(base, dtype=np.float32))
        faiss.omp_set_num_threads(1)

    def prep_queries(self, q):
        if self.metric == "cosine":
            q = normalize(q)
        q = np.ascontiguousarray(q, dtype=np.float32)
        return [q[i:i + 1] for i in range(q.shape[0])]

    def set_ef(self, ef, k):
        self.faiss.omp_set_num_threads(1)
        self.idx.hnsw.efSearch = ef

    def search(self, q, k):
        return self.idx.search(q, k)[1][0]


class UsearchLib:
    def __init__(self, metric, dtype):
        self.name = "usearch-" + dtype
        self.dtype = dtype
        self.metric = {"cosine": "cos", "l2": "l2sq", "dot": "ip"}[metric]
        # i8 stores clamp(x*127): give it unit vectors for cosine (same ranking, full i8 range)
        self.norm = dtype == "i8" and metric == "cosine"

    def build(self, base, a):
        from usearch.index import Index
        if self.norm:
            base = normalize(base)
        self.idx = Index(ndim=base.shape[1], metric=self.metric, dtype=self.dtype, connectivity=a.m,
                         expansion_add=a.ef_construction, expansion_search=64)
        self.idx.add(np.arange(base.shape[0], dtype=np.uint64), base, threads=a.threads)

    def prep_queries(self, q):
        if self.norm:
            q = normalize(q)
        return [q[i] for i in range(q.shape[0])]

    def set_ef(self, ef, k):
        self.idx.expansion_search = ef

    def search(self, q, k):
        return self.idx.search(q, k, threads=1).keys


class AnnoyLib:
    name = "annoy"

    def __init__(self, metric):
        self.metric = {"cosine": "angular", "l2": "euclidean", "dot": "dot"}[metric]

    def build(self, base, a):
        from annoy import AnnoyIndex
        self.idx = AnnoyIndex(base.shape[1], self.metric)
        for i in range(base.shape[0]):
            self.idx.add_item(i, base[i])
        self.idx.build(a.annoy_trees, n_jobs=a.threads)

    def prep_queries(self, q):
        return [q[i] for i in range(q.shape[0])]

    def set_ef(self, ef, k):
        self.search_k = ef * k * 10

    def search(self, q, k):
        return self.idx.get_nns_by_vector(q, k, search_k=self.search_k)


def make_lib(name, metric):
    if name == "hnswlib":
        return HnswlibLib(metric)
    if name == "hnswlib-batch":
        return HnswlibBatchLib(metric)
    if name in ("voyager-f32", "voyager-e4m3"):
        return VoyagerLib(metric, name == "voyager-e4m3")
    if name == "faiss-hnsw":
        return FaissLib(metric)
    if name in ("usearch-f32", "usearch-i8"):
        return UsearchLib(metric, name.split("-")[1])
    if name == "annoy":
        return AnnoyLib(metric)
    raise SystemExit(f"unknown lib {name!r}; known: {','.join(ALL_LIBS)}")


# ----------------------------------------------------------------------------- ground truth / recall

def true_kth(exact, queries_prep, gt, k, self_rows, gt_dist):
    """k-th true distance per query, recomputed from the GT ids (self row removed with --skip-self)."""
    nq = len(queries_prep)
    kth = np.empty(nq)
    first_k = []
    for i in range(nq):
        row = gt[i]
        if self_rows is not None:
            row = row[row != self_rows[i]]
        if len(row) < k:
            raise SystemExit(f"GT row {i} has fewer than {k} usable ids")
        ids = row[:k].astype(np.int64)
        first_k.append(ids)
        d = exact.dist(queries_prep[i], ids)
        kth[i] = d.max()  # == d[-1] for an exact, sorted GT; max() is robust to float ties
    if gt_dist is not None:
        check_gt_dist(exact, queries_prep, gt, gt_dist, k)
    return kth


def check_gt_dist(exact, queries_prep, gt, gt_dist, k):
    """Compare the file's distances with ours on the first k GT columns; accept any usual convention."""
    n = min(len(queries_prep), gt_dist.shape[0], 200)
    cols = min(k + 1, gt.shape[1], gt_dist.shape[1])
    ours = np.array([exact.dist(queries_prep[i], gt[i, :cols].astype(np.int64)) for i in range(n)])
    theirs = gt_dist[:n, :cols].astype(np.float64)
    convs = {"distance": theirs, "negated score": -theirs, "squared": theirs ** 2,
             "1 - score": 1.0 - theirs}
    errs = {name: float(np.max(np.abs(v - ours))) for name, v in convs.items()}
    best = min(errs, key=errs.get)
    scale = max(1.0, float(np.max(np.abs(ours))))
    if errs[best] <= 1e-3 * scale:
        log(f"--gt-dist agrees with recomputed distances (as {best}; max abs diff {errs[best]:.2e})")
    else:
        log(f"WARNING: --gt-dist disagrees with recomputed distances (best: {best}, max abs diff "
            f"{errs[best]:.3g}); check --metric and the files")


def score(exact, queries_prep, results, kth, k, self_rows):
    hits = 0
    for i, res in enumerate(results):
        ids = [int(x) for x in res if int(x) >= 0]
        if self_rows is not None:
            ids = [x for x in ids if x != self_rows[i]]
        ids = list(dict.fromkeys(ids))[:k]  # drop duplicates, keep order
        if not ids:
            continue
        d = exact.dist(queries_prep[i], np.asarray(ids, dtype=np.int64))
        hits += int(np.count_nonzero(d <= kth[i] + EPS))
    return hits / (k * len(results))


# ----------------------------------------------------------------------------- summary

def qps_at(points, target):
    """points: [(ef, recall, qps)] in ef order. Linear interpolation at the first crossing of target."""
    if not points:
        return "—"
    if points[0][1] >= target:
        return f"≥ {points[0][2]:.0f}"
    for (_, r1, q1), (_, r2, q2) in zip(points, points[1:]):
        if r1 < target <= r2:
            return f"{q1 + (q2 - q1) * (target - r1) / (r2 - r1):.0f}"
    return "—"


def summary(rows, efs, skipped, a):
    out = []
    head = ["lib", "build s"] + [f"ef {ef}" for ef in efs] + ["QPS @0.95", "QPS @0.99"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] * len(head)) + "|")
    libs = list(dict.fromkeys(r["lib"] for r in rows))
    for lib in libs:
        lr = [r for r in rows if r["lib"] == lib]
        by_ef = {r["ef"]: r for r in lr}
        cells = [lib, f"{lr[0]['build_s']:.1f}"]
        for ef in efs:
            r = by_ef.get(ef)
            cells.append(f"{r['recall']:.3f} / {r['qps']:.0f}" if r else "—")
        pts = [(r["ef"], r["recall"], r["qps"]) for r in lr]
        cells += [qps_at(pts, 0.95), qps_at(pts, 0.99)]
        out.append("| " + " | ".join(cells) + " |")
    for lib, why in skipped:
        out.append(f"| {lib} | skipped: {why} |" + " |" * (len(head) - 2))
    notes = (f"\nrecall@{a.k} / single-thread QPS (one Python call per query, best pass), M={a.m}, "
             f"ef_construction={a.ef_construction}, build threads={a.threads}, metric={a.metric}")
    if "annoy" in libs:
        notes += f"; annoy: n_trees={a.annoy_trees}, search_k = ef*k*10"
    notes += "; QPS @r: linear between adjacent ef points, ≥ N = smallest ef already above r"
    return "\n".join(out) + notes


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="float32 .npy, n x d")
    p.add_argument("--queries", help="float32 .npy, nq x d (or use --query-rows)")
    p.add_argument("--query-rows", help="int .npy of base row numbers used as queries")
    p.add_argument("--skip-self", action="store_true", help="drop the query row from results and GT")
    p.add_argument("--gt", required=True, help="int32 .npy, nq x >=k ids into base, best first")
    p.add_argument("--gt-dist", help="distances/scores matching --gt (cross-check only)")
    p.add_argument("--metric", required=True, choices=["cosine", "l2", "dot"])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", default="10,16,24,32,48,64,96,128,256")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="build threads (queries always use 1)")
    p.add_argument("--libs", default=",".join(DEFAULT_LIBS), help=f"comma list of {','.join(ALL_LIBS)}")
    p.add_argument("--annoy-trees", type=int, default=100)
    p.add_argument("--min-time", type=float, default=1.0,
                   help="repeat the whole query pass until this many seconds were spent (max 50 passes); "
                        "QPS is from the fastest pass (default 1.0; 0 = one pass)")
    p.add_argument("--max-queries", type=int, default=0, help="use only the first N queries (0 = all)")
    p.add_argument("--summary", action="store_true", help="print a markdown table at the end")
    a = p.parse_args(argv)
    if (a.queries is None) == (a.query_rows is None):
        p.error("give exactly one of --queries / --query-rows")
    if a.skip_self and a.query_rows is None:
        p.error("--skip-self needs --query-rows")
    return a


def main(argv=None):
    a = parse_args(argv)
    efs = [int(x) for x in a.ef.split(",") if x.strip()]
    libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    for lib in libs:
        if lib not in ALL_LIBS:
            raise SystemExit(f"unknown lib {lib!r}; known: {','.join(ALL_LIBS)}")

    base = np.ascontiguousarray(np.load(a.base), dtype=np.float32)
    self_rows = None
    if a.query_rows:
        rows = np.load(a.query_rows).astype(np.int64).ravel()
        queries = np.ascontiguousarray(base[rows])
        if a.skip_self:
            self_rows = rows
    else:
        queries = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    gt = np.load(a.gt)
    gt_dist = np.load(a.gt_dist) if a.gt_dist else None
    if a.max_queries:
        queries = queries[:a.max_queries]
        if self_rows is not None:
            self_rows = self_rows[:a.max_queries]
    nq = queries.shape[0]
    k_ask = a.k + 1 if a.skip_self else a.k
    if queries.shape[1] != base.shape[1]:
        raise SystemExit(f"dimension mismatch: base {base.shape}, queries {queries.shape}")
    if gt.shape[0] < nq or gt.shape[1] < k_ask:
        raise SystemExit(f"GT {gt.shape} too small for {nq} queries x k={k_ask}")
    gt = gt[:nq]
    log(f"base {base.shape}, {nq} queries, metric {a.metric}, k={a.k}"
        f"{' (+1 self, skipped)' if a.skip_self else ''}, ef {efs}, libs {libs}")

    exact = Exact(base, a.metric)
    queries_prep = [exact.prep_query(queries[i]) for i in range(nq)]
    kth = true_kth(exact, queries_prep, gt, a.k, self_rows, gt_dist)

    rows, skipped = [], []
    for name in libs:
        if name == "usearch-i8" and a.metric != "cosine" and max(
                float(np.max(np.abs(base))), float(np.max(np.abs(queries)))) > 1.0:
            why = f"i8 = clamp(x*127) needs data in [-1,1]; this {a.metric} data exceeds it"
            log(f"[{name}] skipped: {why}")
            skipped.append((name, why))
            continue
        lib = make_lib(name, a.metric)
        gc.collect()
        rss0 = rss_mb()
        log(f"[{name}] building (M={a.m}, ef_construction={a.ef_construction}, threads={a.threads}) ...")
        t0, c0 = time.perf_counter(), time.process_time()
        lib.build(base, a)
        build_s = time.perf_counter() - t0
        build_cpu_s = time.process_time() - c0  # all threads of this process: robust to a busy machine
        mem_mb = rss_mb() - rss0
        log(f"[{name}] built in {build_s:.1f} s, +{mem_mb:.0f} MB RSS")
        qs = lib.prep_queries(queries)
        for ef in efs:
            lib.set_ef(ef, k_ask)
            batched = getattr(lib, "batched", False)
            if batched:
                lib.search_all(qs[:WARMUP], k_ask)  # untimed warm-up
            else:
                for i in range(min(WARMUP, nq)):  # untimed warm-up
                    lib.search(qs[i], k_ask)
            search = lib.search
            results = [None] * nq
            dt, total, passes = math.inf, 0.0, 0
            while passes == 0 or (total < a.min_time and passes < 50):
                t0 = time.perf_counter()
                if batched:
                    results = list(lib.search_all(qs, k_ask))
                else:
                    for i in range(nq):
                        results[i] = search(qs[i], k_ask)
                t = time.perf_counter() - t0
                dt, total, passes = min(dt, t), total + t, passes + 1
            recall = score(exact, queries_prep, results, kth, a.k, self_rows)
            row = {"lib": name, "ef": ef, "recall": round(recall, 4), "qps": round(nq / dt, 1),
                   "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu_s, 2), "k": a.k, "mem_mb": round(mem_mb, 1), "n_queries": nq,
                   "metric": a.metric, "m": a.m, "ef_construction": a.ef_construction, "passes": passes,
                   "load1": loadavg1()}
            if batched:
                row["batched"] = True
            if name == "annoy":
                row["search_k"] = lib.search_k
                row["n_trees"] = a.annoy_trees
            rows.append(row)
            print(json.dumps(row, separators=(",", ":")), flush=True)
            log(f"[{name}] ef={ef}: recall@{a.k}={recall:.4f} qps={nq / dt:.0f}")
        del lib, qs
        gc.collect()

    if a.summary:
        print()
        print(summary(rows, efs, skipped, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
