#!/usr/bin/env python3
"""Markdown tables and recall-QPS / latency plots from the results of tools/bench_all.sh.

    .venv/bin/python tools/bench_report.py                  # tables on stdout, plots into docs/img/
    .venv/bin/python tools/bench_report.py --results target/bench --img docs/img --no-plots

Reads target/bench/*.jsonl (see tools/bench_all.sh for what writes each file):
  machine.json, steps.jsonl (load average around every step), builds.jsonl, files.jsonl,
  DS.earshot-{int8,f32}[-t2|-again].jsonl (earshot bench), DS.peers.jsonl (tools/peers.py),
  http.{similar,taste,inprocess}.jsonl, scale.earshot-open.jsonl, scale.peers-{build,load}.jsonl.

Conventions:
  * earshot rows: QPS per ef is the better of the two single-thread runs (before and after the
    peers; peers.py likewise reports its fastest pass); recall is identical in both (deterministic).
  * QPS @r: linear interpolation between the two ef points of a curve that straddle recall r;
    "≥ N" when the smallest ef already reaches r (N is then a lower bound), "—" when never reached.
  * "best peer" excludes hnswlib-batch: that row is hnswlib queried with ONE call for all queries,
    shown only to size the Python per-call overhead that every other peer row includes.
"""

import argparse
import glob
import json
import os
import statistics
import sys

DATASETS = [
    ("yes-tracks", "yes-tracks — 75,262 × 384, cosine, 1,000 similar-track queries (self excluded)"),
    ("fashion-mnist", "Fashion-MNIST — 60,000 × 784, L2, 2,000 test images as queries"),
    ("lastfm", "Last.fm ALS — 17,632 artists × 64, inner product, 1,892 user vectors as queries"),
]
PEERS = ["hnswlib", "voyager-f32", "voyager-e4m3", "faiss-hnsw", "usearch-f32", "usearch-i8"]
TARGETS = (0.95, 0.99)


def read_jsonl(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def ef_rows(rows):
    return [r for r in rows if "ef" in r and "qps" in r]


class Curve:
    """One library's recall/QPS curve over ef."""

    def __init__(self, name, points, build_s=None, note=""):
        self.name = name
        self.points = sorted(points)  # [(ef, recall, qps)]
        self.build_s = build_s
        self.note = note

    def qps_at(self, target):
        """(value, qualifier): qualifier '' exact interpolation, '≥' lower bound, None = not reached."""
        p = self.points
        if not p:
            return None, None
        if p[0][1] >= target:
            return p[0][2], "≥"
        for (_, r1, q1), (_, r2, q2) in zip(p, p[1:]):
            if r1 < target <= r2:
                return q1 + (q2 - q1) * (target - r1) / (r2 - r1), ""
        return None, None


def fmt_qps_at(v):
    val, q = v
    if val is None:
        return "—"
    return f"{q + ' ' if q else ''}{val:,.0f}"


def ratio(a, b):
    """a / b for two qps_at results, with the right qualifier."""
    (va, qa), (vb, qb) = a, b
    if va is None or vb is None:
        return "—"
    r = va / vb
    if qa == "≥" and qb == "≥":
        return f"~{r:.2f}×"  # both lower bounds: not decidable
    if qa == "≥":
        return f"≥ {r:.2f}×"
    if qb == "≥":
        return f"≤ {r:.2f}×"
    return f"{r:.2f}×"


def earshot_curve(res, ds, walk, suffix=""):
    """Best QPS of the run and its '-again' repeat per ef (single thread), or the -t2 run."""
    base = ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}{suffix}.jsonl")))
    if suffix == "":
        again = ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}-again.jsonl")))
        by = {}
        for r in base + again:
            cur = by.get(r["ef"])
            if cur is None or r["qps"] > cur["qps"]:
                by[r["ef"]] = r
        base = list(by.values())
    return [(r["ef"], r["recall"], r["qps"]) for r in base]


def load_builds(res):
    return {r["ds"]: r for r in read_jsonl(os.path.join(res, "builds.jsonl"))}


def dataset_curves(res, ds, builds):
    curves = []
    b = builds.get(ds, {})
    for walk, label in (("int8", "earshot-int8"), ("f32", "earshot-f32")):
        pts = earshot_curve(res, ds, walk)
        if pts:
            curves.append(Curve(label, pts, b.get("build_s")))
    peers = ef_rows(read_jsonl(os.path.join(res, f"{ds}.peers.jsonl")))
    for lib in PEERS + ["hnswlib-batch"]:
        rows = [r for r in peers if r["lib"] == lib]
        if rows:
            curves.append(Curve(lib, [(r["ef"], r["recall"], r["qps"]) for r in rows], rows[0]["build_s"]))
    return curves


def table_dataset(res, ds, title, builds, steps):
    curves = dataset_curves(res, ds, builds)
    if not curves:
        return "", []
    efs = sorted({p[0] for c in curves for p in c.points})
    out = [f"### {title}", ""]
    head = ["lib", "build s"] + [f"ef {e}" for e in efs] + ["QPS @0.95", "QPS @0.99"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] * len(head)) + "|")
    for c in curves:
        by = {p[0]: p for p in c.points}
        name = c.name if c.name != "hnswlib-batch" else "hnswlib-batch ¹"
        cells = [f"**{name}**" if c.name.startswith("earshot") else name,
                 f"{c.build_s:.1f}" if c.build_s is not None else "—"]
        for e in efs:
            p = by.get(e)
            cells.append(f"{p[1]:.3f} / {p[2]:,.0f}" if p else "—")
        cells += [fmt_qps_at(c.qps_at(t)) for t in TARGETS]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    # ratios vs the best peer (excluding the batched hnswlib row)
    peers = [c for c in curves if c.name in PEERS]
    lines = []
    for t in TARGETS:
        best = None
        for c in peers:
            v = c.qps_at(t)
            if v[0] is not None and (best is None or v[0] > best[1][0]):
                best = (c.name, v)
        for c in curves:
            if not c.name.startswith("earshot"):
                continue
            v = c.qps_at(t)
            if best is None:
                lines.append(f"- recall {t}: {c.name} {fmt_qps_at(v)} QPS; no peer reaches it")
            else:
                lines.append(f"- recall {t}: {c.name} {fmt_qps_at(v)} QPS vs best peer {best[0]} "
                             f"{fmt_qps_at(best[1])} → **{ratio(v, best[1])}**")
        batch = next((c for c in curves if c.name == "hnswlib-batch"), None)
        e8 = next((c for c in curves if c.name == "earshot-int8"), None)
        if batch and e8:
            lines.append(f"- recall {t}: earshot-int8 vs hnswlib-batch ¹ {fmt_qps_at(batch.qps_at(t))} → "
                         f"{ratio(e8.qps_at(t), batch.qps_at(t))}")
    out += lines
    ld = [s for s in steps if s["step"].startswith(ds + ".")]
    if ld:
        loads = [x for s in ld for x in (s["load_before"][0], s["load_after"][0])]
        out.append(f"- 1-min load average during these steps: {min(loads):.2f}–{max(loads):.2f} "
                   f"(2 cores, shared)")
    out.append("")
    return "\n".join(out), curves


def table_threads(res):
    out = ["| data set | walk | " + " | ".join(f"ef {e}" for e in (10, 32, 64, 128, 256)) + " | mean |",
           "|---|---|" + "---|" * 6]
    for ds, _ in DATASETS:
        for walk in ("int8", "f32"):
            t1 = {r["ef"]: r for r in ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}.jsonl")))}
            t2 = {r["ef"]: r for r in ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}-t2.jsonl")))}
            if not t1 or not t2:
                continue
            cells, rs = [], []
            for e in (10, 32, 64, 128, 256):
                if e in t1 and e in t2:
                    r = t2[e]["qps"] / t1[e]["qps"]
                    rs.append(r)
                    cells.append(f"{r:.2f}× ({t1[e]['qps']:,.0f} → {t2[e]['qps']:,.0f})")
                else:
                    cells.append("—")
            allr = [t2[e]["qps"] / t1[e]["qps"] for e in t1 if e in t2]
            out.append(f"| {ds} | {walk} | " + " | ".join(cells) + f" | {statistics.mean(allr):.2f}× |")
    return "\n".join(out)


def table_bytes(res, builds):
    files = {r["ds"]: r for r in read_jsonl(os.path.join(res, "files.jsonl"))}
    peers_mem = {}
    for ds, _ in DATASETS:
        for r in read_jsonl(os.path.join(res, f"{ds}.peers.jsonl")):
            peers_mem.setdefault(ds, {})[r["lib"]] = r.get("mem_mb")
    out = ["| data set | dim | f32 vectors | int8 codes + norms | graph (all levels) | ids + metadata | "
           "on disk, total | walk's hot set: f32 walk | walk's hot set: int8 walk | f32 read per query (re-rank, ef 64) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for ds in [d for d, _ in DATASETS] + ["scale"]:
        f = files.get(ds)
        if not f:
            continue
        n, dim, fs = f["n"], f["dim"], f["files"]
        g = lambda *names: sum(fs.get(x, 0) for x in names)  # noqa: E731
        vec = g("vectors.bin")
        codes = g("vectors_i8.bin", "vector_sqnorms.bin", "quant_scale.bin", "quant_offset.bin")
        graph = g("graph_level0.bin", "graph_upper.bin", "graph_upper_start.bin")
        total = sum(fs.values())
        meta = total - vec - codes - graph
        out.append(f"| {ds} | {dim} | {vec / n:,.0f} | {codes / n:,.0f} | {graph / n:,.0f} | {meta / n:,.0f} | "
                   f"{total / n:,.0f} | {(vec + graph) / n:,.0f} | {(codes + graph) / n:,.0f} | "
                   f"{64 * dim * 4:,} B (64 rows) |")
    out.append("")
    out.append("Bytes per vector. The hot set is what every query's walk reads from (graph + the vectors it "
               "walks with); with the int8 walk the f32 file is only read for the ef final candidates of each "
               "query, so it can stay on disk / in cold page cache.")
    if peers_mem:
        out.append("")
        out.append("Peers, for comparison: RSS growth of the Python process over the build, per vector "
                   "(rough: includes allocator slack):")
        out.append("")
        out.append("| data set | " + " | ".join(PEERS) + " |")
        out.append("|---|" + "---|" * len(PEERS))
        for ds, m in peers_mem.items():
            n = files.get(ds, {}).get("n") or builds.get(ds, {}).get("n")
            if not n:
                continue
            out.append(f"| {ds} | " + " | ".join(
                f"{m[p] * 2**20 / n:,.0f}" if m.get(p) is not None else "—" for p in PEERS) + " |")
    return "\n".join(out)


def table_build(res, builds):
    out = ["| data set | n × dim | earshot build s (graph) | earshot vectors/s | earshot CPU use | "
           "hnswlib build s | hnswlib vectors/s | earshot / hnswlib | voyager-f32 s | faiss-hnsw s | usearch-f32 s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in [d for d, _ in DATASETS] + ["scale"]:
        b = builds.get(ds)
        if not b:
            continue
        if ds == "scale":
            peers = {r["lib"]: r for r in read_jsonl(os.path.join(res, "scale.peers-build.jsonl"))}
        else:
            peers = {}
            for r in read_jsonl(os.path.join(res, f"{ds}.peers.jsonl")):
                peers.setdefault(r["lib"], r)
        hn = peers.get("hnswlib")
        hn_vps = b["n"] / hn["build_s"] if hn else None
        cpu = b["cpu_s"] / b["wall_s"] * 100 if b.get("wall_s") else None
        get = lambda lib: f"{peers[lib]['build_s']:.1f}" if lib in peers else "—"  # noqa: E731
        out.append(
            f"| {ds} | {b['n']:,} × {b['dim']} | {b['build_s']:.1f} (wall {b['wall_s']:.1f}) | "
            f"{b['vectors_per_s']:,.0f} | {cpu:.0f} % of 1 core | "
            f"{hn['build_s']:.1f} | {hn_vps:,.0f} | {b['vectors_per_s'] / hn_vps:.2f}× | "
            f"{get('voyager-f32')} | {get('faiss-hnsw')} | {get('usearch-f32')} |"
            if hn else
            f"| {ds} | {b['n']:,} × {b['dim']} | {b['build_s']:.1f} (wall {b['wall_s']:.1f}) | "
            f"{b['vectors_per_s']:,.0f} | {cpu:.0f} % of 1 core | — | — | — | — | — | — |")
    quiet = read_jsonl(os.path.join(res, "builds-quiet.jsonl"))
    if quiet:
        pair_builds = {}
        for ds, _ in DATASETS:
            for r in read_jsonl(os.path.join(res, f"{ds}.pairs.jsonl")):
                if "build_s" in r and "ef" not in r:
                    pair_builds.setdefault(ds, {})[r["lib"]] = r
        out.append("")
        out.append("Re-run on a quieter machine (earshot build right after tools/bench_pairs.py built hnswlib and "
                   "FAISS on the same data):")
        out.append("")
        out.append("| data set | earshot s | earshot vectors/s | earshot CPU-s | hnswlib s | hnswlib vectors/s | "
                   "hnswlib CPU-s | faiss-hnsw s | earshot / hnswlib (vectors/s) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for q in quiet:
            pb = pair_builds.get(q["ds"], {})
            hn, fa = pb.get("hnswlib"), pb.get("faiss-hnsw")
            if not hn:
                continue
            hv = q["n"] / hn["build_s"]
            out.append(f"| {q['ds']} | {q['build_s']:.1f} | {q['vectors_per_s']:,.0f} | {q['cpu_s']:.0f} | "
                       f"{hn['build_s']:.1f} | {hv:,.0f} | {hn['build_cpu_s']:.0f} | "
                       f"{fa['build_s'] if fa else float('nan'):.1f} | **{q['vectors_per_s'] / hv:.2f}×** |")
    out.append("")
    out.append("CPU time (all threads; robust to the other jobs on the machine, which wall time is not): "
               "CPU-µs per inserted vector.")
    out.append("")
    out.append("| data set | earshot (whole `earshot build` process) | hnswlib | faiss-hnsw | voyager-f32 | "
               "earshot / hnswlib CPU per vector |")
    out.append("|---|---|---|---|---|---|")
    for ds in [d for d, _ in DATASETS] + ["scale"]:
        b = builds.get(ds)
        if not b or not b.get("cpu_s"):
            continue
        cpu = {}
        srcs = ([os.path.join(res, "scale.peers-build.jsonl")] if ds == "scale" else
                [os.path.join(res, f"{ds}.peers.jsonl"), os.path.join(res, f"{ds}.pairs.jsonl")])
        for src in srcs:
            for r in read_jsonl(src):
                if r.get("build_cpu_s") and "lib" in r:
                    cpu.setdefault(r["lib"], []).append(r["build_cpu_s"])
        per = lambda lib: (med(cpu[lib]) * 1e6 / b["n"]) if lib in cpu else None  # noqa: E731
        e = b["cpu_s"] * 1e6 / b["n"]
        cell = lambda v: f"{v:,.0f}" if v is not None else "—"  # noqa: E731
        hn = per("hnswlib")
        out.append(f"| {ds} | {e:,.0f} | {cell(hn)} | {cell(per('faiss-hnsw'))} | {cell(per('voyager-f32'))} | "
                   f"{(e / hn if hn else float('nan')):.2f}× |")
    out.append("")
    out.append("All with M=16, ef_construction=200, 2 build threads. earshot's figure is the manifest's "
               "build_seconds (graph with hnsw_rs + flattening + int8 codes, inputs already read, writing "
               "excluded); wall includes reading the inputs and writing the files. Peers: the add call only.")
    return "\n".join(out)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def table_open(res, builds):
    rows = [r for r in read_jsonl(os.path.join(res, "scale.earshot-open.jsonl")) if "open_ms" in r]
    if not rows:
        return ""
    lazy = [r for r in rows if not r["verify"]]
    full = [r for r in rows if r["verify"]]
    n, dim = rows[0]["count"], rows[0]["dim"]
    files = {r["ds"]: r for r in read_jsonl(os.path.join(res, "files.jsonl"))}.get("scale", {})
    total = sum(files.get("files", {}).values())
    out = [f"{n:,} × {dim} (synthetic, clustered; `earshot generate`), L2, int8 codes; index on disk "
           f"{total / 2**20:,.0f} MiB. Median of {len(lazy)} fresh processes each; warm page cache.", "",
           "| | open / load ms | RSS before MiB | RSS after MiB | RSS growth MiB | index file(s) MiB |",
           "|---|---|---|---|---|---|"]

    def line(name, xs, tk, bk, ak, size):
        t = med([x[tk] for x in xs])
        b = med([x[bk] for x in xs])
        a = med([x[ak] for x in xs])
        all_t = ", ".join(f"{x[tk]:,.1f}" for x in xs)
        return f"| {name} | {t:,.1f} ({all_t}) | {b:,.1f} | {a:,.1f} | {a - b:,.1f} | {size / 2**20:,.0f} |"

    out.append(line("earshot `--lazy` (headers + lengths)", lazy, "open_ms", "rss_mb_before_open",
                    "rss_mb_after_open", total))
    out.append(line("earshot default (every checksum)", full, "open_ms", "rss_mb_before_open",
                    "rss_mb_after_open", total))
    peers = read_jsonl(os.path.join(res, "scale.peers-load.jsonl"))
    for lib in ("hnswlib", "voyager-f32"):
        xs = [r for r in peers if r["lib"] == lib]
        if xs:
            out.append(line(f"{lib} `{'load_index' if lib == 'hnswlib' else 'Index.load'}`", xs, "load_ms",
                            "rss_mb_before_load", "rss_mb_after_load", xs[0]["file_bytes"]))
    rec_e = ef_rows(read_jsonl(os.path.join(res, "scale.earshot-recall.jsonl")))
    rec_h = read_jsonl(os.path.join(res, "scale.peers-recall.jsonl"))
    if rec_e or rec_h:
        out.append("")
        out.append("Recall@10 on this set (100 of its queries, exact ground truth by brute force):")
        out.append("")
        out.append("| ef | earshot int8 walk | earshot f32 walk | hnswlib |")
        out.append("|---|---|---|---|")
        half = len(rec_e) // 2
        e8 = {r["ef"]: r["recall"] for r in rec_e[:half]}
        e32 = {r["ef"]: r["recall"] for r in rec_e[half:]}
        hn = {r["ef"]: r["recall"] for r in rec_h}
        for ef in sorted(set(e8) | set(hn)):
            f = lambda d: f"{d[ef]:.3f}" if ef in d else "—"  # noqa: E731
            out.append(f"| {ef} | {f(e8)} | {f(e32)} | {f(hn)} |")
    if full:
        gbps = total / (med([x["open_ms"] for x in full]) / 1000) / 2**30
        out.append("")
        out.append(f"The verifying open reads every byte once: {gbps:.1f} GiB/s over the whole index.")
    return "\n".join(out)


def table_http(res):
    out = []
    inproc = ef_rows(read_jsonl(os.path.join(res, "http.inprocess.jsonl")))
    t1 = next((r for r in inproc if r["threads"] == 1), None)
    t2 = next((r for r in inproc if r["threads"] == 2), None)
    for mode in ("similar", "taste"):
        rows = read_jsonl(os.path.join(res, f"http.{mode}.jsonl"))
        if not rows:
            continue
        mx = next((r for r in rows if "max_rps" in r), None)
        # results before the sustained-rate search have only max_rps (the closed-loop figure)
        closed = mx.get("closed_loop_rps", mx["max_rps"])
        out.append(f"**{mode}** (yes-tracks, k=10, ef=64): closed-loop maximum "
                   f"{closed:,.0f} requests/s with {mx['connections']} connections")
        if t1 and t2:
            out.append(f"— {closed / t1['qps']:.2f}× the in-process single-thread QPS ({t1['qps']:,.0f}) "
                       f"and {closed / t2['qps']:.2f}× the in-process 2-thread QPS ({t2['qps']:,.0f}) "
                       f"at the same ef (recall {t1['recall']:.3f}).")
        if "probes" in mx:
            tried = ", ".join(f"{p['target_rps']:,.0f} ({'sustained' if p['sustained'] else 'not: p99 %.1f ms, %d errors' % (p['p99_us'] / 1000, p['errors'])})"
                              for p in mx["probes"])
            out.append(f"Highest sustained open-loop rate (the 100 % of the table): **{mx['max_rps']:,.0f} requests/s** "
                       f"(probes: {tried}).")
        cpu = next((r for r in read_jsonl(os.path.join(res, "http.server-cpu.jsonl")) if r["mode"] == mode), None)
        if cpu and t1:
            out.append(f"Server CPU: {cpu['requests']:,} requests in {cpu['server_cpu_s']:.1f} CPU-s of the server "
                       f"process = **{cpu['requests_per_cpu_s']:,.0f} requests per CPU-second**, "
                       f"{cpu['requests_per_cpu_s'] / t1['qps']:.2f}× the in-process queries per CPU-second "
                       f"(one thread: {t1['qps']:,.0f}); i.e. about "
                       f"{1e6 / cpu['requests_per_cpu_s'] - 1e6 / t1['qps']:.0f} µs of CPU per request outside "
                       f"the search.")
        out.append("")
        out.append("| load | target req/s | achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "fraction" not in r:
                continue
            out.append(f"| {r['fraction'] * 100:.0f} % | {r['target_rps']:,.0f} | {r['achieved_rps']:,.0f} | "
                       f"{r['p50_us'] / 1000:.2f} | {r['p90_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
                       f"{r['p999_us'] / 1000:.2f} | {r['max_us'] / 1000:.1f} | {r['errors']} |")
        out.append("")
    return "\n".join(out)


def table_overhead(res):
    out = ["| data set | ef | hnswlib (1 call / query) QPS | hnswlib-batch (1 call) QPS | µs per query: "
           "single | batch | Python overhead per call |", "|---|---|---|---|---|---|---|"]
    for ds, _ in DATASETS:
        # prefer the interleaved rounds (best of rounds: steadier) over the single peers.py pass
        rows = [r for r in read_jsonl(os.path.join(res, f"{ds}.pairs.jsonl")) if "ef" in r]
        src = "interleaved rounds, best of rounds"
        if not rows:
            rows, src = read_jsonl(os.path.join(res, f"{ds}.peers.jsonl")), "peers.py run"
        a, b = {}, {}
        for r in rows:
            for lib, d in (("hnswlib", a), ("hnswlib-batch", b)):
                if r["lib"] == lib and (r["ef"] not in d or r["qps"] > d[r["ef"]]["qps"]):
                    d[r["ef"]] = r
        for ef in (10, 64, 256):
            if ef in a and ef in b:
                ua, ub = 1e6 / a[ef]["qps"], 1e6 / b[ef]["qps"]
                out.append(f"| {ds} ({src}) | {ef} | {a[ef]['qps']:,.0f} | {b[ef]['qps']:,.0f} | {ua:.1f} | {ub:.1f} | "
                           f"{ua - ub:.1f} µs ({(ua - ub) / ua * 100:.0f} %) |")
    return "\n".join(out)


def drift(res):
    out = ["| data set | walk | ef | first run QPS | after the peers QPS | change |", "|---|---|---|---|---|---|"]
    for ds, _ in DATASETS:
        for walk in ("int8", "f32"):
            a = {r["ef"]: r for r in ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}.jsonl")))}
            b = {r["ef"]: r for r in ef_rows(read_jsonl(os.path.join(res, f"{ds}.earshot-{walk}-again.jsonl")))}
            for ef in (16, 64):
                if ef in a and ef in b:
                    out.append(f"| {ds} | {walk} | {ef} | {a[ef]['qps']:,.0f} | {b[ef]['qps']:,.0f} | "
                               f"{(b[ef]['qps'] / a[ef]['qps'] - 1) * 100:+.0f} % |")
    return "\n".join(out)


def pairs_section(res):
    """tools/bench_pairs.py results: interleaved rounds, best of rounds, per-round ratios, thread scaling."""
    out = []
    scaling = []
    for ds, title in DATASETS:
        rows = [r for r in read_jsonl(os.path.join(res, f"{ds}.pairs.jsonl")) if "ef" in r]
        if not rows:
            continue
        rounds = sorted({r["round"] for r in rows})
        libs = list(dict.fromkeys(r["lib"] for r in rows))
        efs = sorted({r["ef"] for r in rows})
        loads = [r["load1"] for r in rows if r.get("load1") is not None]

        def curve(lib, rnd=None):
            by = {}
            for r in rows:
                if r["lib"] != lib or (rnd is not None and r["round"] != rnd):
                    continue
                cur = by.get(r["ef"])
                if cur is None or r["qps"] > cur["qps"]:
                    by[r["ef"]] = r
            return Curve(lib, [(e, by[e]["recall"], by[e]["qps"]) for e in sorted(by)])

        out.append(f"### {title}")
        out.append("")
        out.append(f"{len(rounds)} interleaved rounds; best QPS of the rounds per ef; 1-min load "
                   f"{min(loads):.2f}–{max(loads):.2f}.")
        out.append("")
        shown = [e for e in efs if e in (10, 16, 24, 32, 64, 128, 256, 384, 512)]
        head = ["lib"] + [f"ef {e}" for e in shown] + ["QPS @0.95", "QPS @0.99"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * len(head)) + "|")
        curves = {lib: curve(lib) for lib in libs if lib != "earshot-int8-t2"}
        for lib, c in curves.items():
            by = {p[0]: p for p in c.points}
            cells = [f"**{lib}**" if lib.startswith("earshot") else (lib + (" ¹" if lib == "hnswlib-batch" else ""))]
            cells += [f"{by[e][1]:.3f} / {by[e][2]:,.0f}" if e in by else "—" for e in shown]
            cells += [fmt_qps_at(c.qps_at(t)) for t in TARGETS]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        for t in TARGETS:
            peers_c = [curves[x] for x in ("hnswlib", "faiss-hnsw") if x in curves]
            for lib in ("earshot-int8", "earshot-f32"):
                if lib not in curves or not peers_c:
                    continue
                best = max(peers_c, key=lambda c: c.qps_at(t)[0] or 0)
                per_round = []
                for rnd in rounds:
                    e = curve(lib, rnd).qps_at(t)
                    bp = max((curve(x.name, rnd) for x in peers_c), key=lambda c: c.qps_at(t)[0] or 0).qps_at(t)
                    per_round.append(ratio(e, bp))
                out.append(f"- recall {t}: {lib} {fmt_qps_at(curves[lib].qps_at(t))} vs {best.name} "
                           f"{fmt_qps_at(best.qps_at(t))} → **{ratio(curves[lib].qps_at(t), best.qps_at(t))}** "
                           f"(per round: {', '.join(per_round)})")
            if "hnswlib-batch" in curves and "earshot-int8" in curves:
                out.append(f"- recall {t}: earshot-int8 vs hnswlib-batch ¹ "
                           f"{fmt_qps_at(curves['hnswlib-batch'].qps_at(t))} → "
                           f"{ratio(curves['earshot-int8'].qps_at(t), curves['hnswlib-batch'].qps_at(t))}")
        out.append("")
        # thread scaling per round: t2 / t1 at each ef
        for rnd in rounds:
            t1 = {r["ef"]: r["qps"] for r in rows if r["lib"] == "earshot-int8" and r["round"] == rnd}
            t2 = {r["ef"]: r["qps"] for r in rows if r["lib"] == "earshot-int8-t2" and r["round"] == rnd}
            for e in t1:
                if e in t2:
                    scaling.append((ds, rnd, e, t2[e] / t1[e]))
    if scaling:
        out.append("### Two query threads vs one, interleaved (earshot-int8, `--threads 2` right after `--threads 1`)")
        out.append("")
        out.append("| data set | median t2/t1 over rounds × ef | best | worst | per ef (median over rounds) |")
        out.append("|---|---|---|---|---|")
        for ds, _ in DATASETS:
            xs = [x for x in scaling if x[0] == ds]
            if not xs:
                continue
            per_ef = {}
            for _, _, e, r in xs:
                per_ef.setdefault(e, []).append(r)
            out.append(f"| {ds} | {med([x[3] for x in xs]):.2f}× | {max(x[3] for x in xs):.2f}× | "
                       f"{min(x[3] for x in xs):.2f}× | "
                       + ", ".join(f"{e}: {med(v):.2f}×" for e, v in sorted(per_ef.items())) + " |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ plots

STYLE = {
    "earshot-int8": dict(color="#d62728", marker="o", lw=2.2),
    "earshot-f32": dict(color="#ff7f0e", marker="s", lw=2.2),
    "hnswlib": dict(color="#1f77b4", marker="^"),
    "hnswlib-batch": dict(color="#1f77b4", marker="^", ls=":"),
    "voyager-f32": dict(color="#2ca02c", marker="v"),
    "voyager-e4m3": dict(color="#2ca02c", marker="v", ls="--"),
    "faiss-hnsw": dict(color="#9467bd", marker="D"),
    "usearch-f32": dict(color="#8c564b", marker="P"),
    "usearch-i8": dict(color="#8c564b", marker="P", ls="--"),
}


def plot_curves(all_curves, img):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for ds, curves in all_curves.items():
        fig, ax = plt.subplots(figsize=(7, 4.4), dpi=100)
        lo = 1.0
        for c in curves:
            st = dict(STYLE.get(c.name, {}))
            st.setdefault("lw", 1.3)
            xs = [p[1] for p in c.points]
            ys = [p[2] for p in c.points]
            label = c.name + (" (1 call for all queries)" if c.name == "hnswlib-batch" else "")
            ax.plot(xs, ys, label=label, ms=4, **st)
            lo = min(lo, min(xs))
        ax.set_yscale("log")
        ax.set_xlim(max(lo, 0.85) - 0.005, 1.0005)
        for t in TARGETS:
            ax.axvline(t, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries / s, one thread (log)")
        ax.set_title(f"{ds}: recall vs QPS (ef 10 … 256), M=16, efC=200")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        p = os.path.join(img, f"bench-{ds}.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_pairs(res, img):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = [(ds, [r for r in read_jsonl(os.path.join(res, f"{ds}.pairs.jsonl")) if "ef" in r])
            for ds, _ in DATASETS]
    sets = [(ds, rows) for ds, rows in sets if rows]
    if not sets:
        return []
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.0), dpi=100)
    axes = axes if len(sets) > 1 else [axes]
    for ax, (ds, rows) in zip(axes, sets):
        for lib in dict.fromkeys(r["lib"] for r in rows):
            if lib == "earshot-int8-t2":
                continue
            by = {}
            for r in rows:
                if r["lib"] == lib and (r["ef"] not in by or r["qps"] > by[r["ef"]]["qps"]):
                    by[r["ef"]] = r
            pts = [by[e] for e in sorted(by)]
            st = dict(STYLE.get(lib, {}))
            st.setdefault("lw", 1.3)
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], label=lib, ms=4, **st)
        ax.set_yscale("log")
        ax.set_xlim(0.895, 1.0005)
        for t in TARGETS:
            ax.axvline(t, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{ds} (interleaved, best of rounds)", fontsize=9)
        ax.set_xlabel("recall@10")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    axes[0].set_ylabel("queries / s, one thread (log)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    p = os.path.join(img, "bench-pairs.png")
    fig.savefig(p)
    plt.close(fig)
    return [p]


def plot_http(res, img):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), dpi=100, sharey=True)
    any_rows = False
    for ax, mode in zip(axes, ("similar", "taste")):
        rows = [r for r in read_jsonl(os.path.join(res, f"http.{mode}.jsonl")) if "fraction" in r]
        if not rows:
            continue
        any_rows = True
        xs = [r["achieved_rps"] for r in rows]
        for key, lab in (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9")):
            ax.plot(xs, [r[key] / 1000 for r in rows], marker="o", ms=4, label=lab)
        ax.set_yscale("log")
        ax.set_xlabel("requests / s (open loop)")
        ax.set_title(f"{mode} (yes-tracks, ef 64)")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    axes[0].set_ylabel("latency ms (from intended send time)")
    if any_rows:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(img, "bench-http.png")
    if any_rows:
        fig.savefig(p)
    plt.close(fig)
    return [p] if any_rows else []


def table_build_throughput(res):
    """Step g (tools/bench_build.py): best round per (data set, lib), ratios to hnswlib in the same step."""
    rows = read_jsonl(os.path.join(res, "build-throughput.jsonl"))
    if not rows:
        return ""
    order = ["earshot-native", "earshot-native-f32", "earshot-hnsw_rs", "hnswlib", "faiss-hnsw"]
    lines = ["| data set | lib | rounds | best build s | vectors/s | CPU-µs / vector (best) | vs hnswlib, vectors/s "
             "| vs hnswlib, CPU | per-round vectors/s ratio to hnswlib | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for ds in dict.fromkeys(r["ds"] for r in rows):
        rs = [r for r in rows if r["ds"] == ds]
        libs = sorted(dict.fromkeys(r["lib"] for r in rs), key=lambda x: order.index(x) if x in order else 99)
        ref = {r["round"]: r for r in rs if r["lib"] == "hnswlib"}
        ref_best = min(ref.values(), key=lambda r: r["build_s"]) if ref else None
        for lib in libs:
            lr = [r for r in rs if r["lib"] == lib]
            b = min(lr, key=lambda r: r["build_s"])
            cpu = min(r["cpu_us_per_vector"] for r in lr)
            if ref_best:
                v = f"{b['vectors_per_s'] / ref_best['vectors_per_s']:.2f}×"
                c = f"{min(x['cpu_us_per_vector'] for x in ref.values()) / cpu:.2f}×"
                per = ", ".join(f"{r['vectors_per_s'] / ref[r['round']]['vectors_per_s']:.2f}×"
                                for r in lr if r["round"] in ref)
            else:
                v = c = per = "—"
            name = f"**{lib}**" if lib == "earshot-native" else lib
            load = f"{min(r['load1'] for r in lr):.1f}–{max(r['load1'] for r in lr):.1f}"
            lines.append(f"| {ds} | {name} | {len(lr)} | {b['build_s']:.1f} | {b['vectors_per_s']:,.0f} | {cpu:,.0f} "
                         f"| {v} | {c} | {per} | {load} |")
    return "\n".join(lines)


def main(argv=None):
    root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(root, "target", "bench"))
    ap.add_argument("--img", default=os.path.join(root, "docs", "img"))
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    res = a.results
    if not glob.glob(os.path.join(res, "*.jsonl")):
        raise SystemExit(f"no results in {res}: run bash tools/bench_all.sh first")
    steps = read_jsonl(os.path.join(res, "steps.jsonl"))
    builds = load_builds(res)
    out = []
    m = os.path.join(res, "machine.json")
    if os.path.exists(m):
        mj = json.load(open(m))
        loads = [x for s in steps for x in (s["load_before"][0], s["load_after"][0])]
        out.append(f"Machine: {mj['cpu']}, {mj['cores']} cores, {mj['mem_gib']} GiB, kernel {mj['kernel']}, "
                   f"{mj['rustc']}, {mj['python']}, commit {mj['commit'][:10]} "
                   f"(+{mj['dirty_src_files']} uncommitted src files), started {mj['date']}. 1-min load average "
                   f"over all steps: {min(loads):.2f}–{max(loads):.2f} (median {med(loads):.2f}).")
        out.append("")
    out.append("## Recall / QPS per data set\n")
    all_curves = {}
    for ds, title in DATASETS:
        t, curves = table_dataset(res, ds, title, builds, steps)
        if t:
            out.append(t)
            all_curves[ds] = curves
    out.append("¹ hnswlib-batch: a second hnswlib index (same parameters) queried with ONE knn_query call for "
               "all queries on one thread; every other peer row pays one Python call per query.\n")
    pr = pairs_section(res)
    if pr:
        out.append("## Interleaved rounds: earshot vs hnswlib / FAISS in the same minutes (tools/bench_pairs.py)\n")
        out.append(pr)
    out.append("## Two query threads vs one (earshot bench --threads 2 / --threads 1)\n")
    out.append(table_threads(res) + "\n")
    out.append("## Drift: the same earshot run before and after the peers\n")
    out.append(drift(res) + "\n")
    out.append("## Python per-call overhead (hnswlib, one call per query vs one call for all)\n")
    out.append(table_overhead(res) + "\n")
    out.append("## Bytes per vector\n")
    out.append(table_bytes(res, builds) + "\n")
    out.append("## Build throughput\n")
    out.append(table_build(res, builds) + "\n")
    bt = table_build_throughput(res)
    if bt:
        out.append("### Side by side (tools/bench_build.py)\n")
        out.append(bt + "\n")
    nr = read_jsonl(os.path.join(res, "scale.native-recall.jsonl"))
    if nr:
        out.append("### Recall of the native 1M graph (f32 walk, 1,000 queries)\n")
        out.append("| ef | recall@10 | QPS |\n|---|---|---|")
        out.append("\n".join(f"| {r['ef']} | {r['recall']:.3f} | {r['qps']:,.0f} |" for r in nr if "ef" in r) + "\n")
    o = table_open(res, builds)
    if o:
        out.append("## Open time and memory at scale\n")
        out.append(o + "\n")
    h = table_http(res)
    if h:
        out.append("## HTTP\n")
        out.append(h)
    if not a.no_plots:
        os.makedirs(a.img, exist_ok=True)
        paths = plot_curves(all_curves, a.img) + plot_pairs(res, a.img) + plot_http(res, a.img)
        out.append("Plots: " + ", ".join(f"{os.path.relpath(p, root)} ({os.path.getsize(p) // 1024} KB)"
                                         for p in paths))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
