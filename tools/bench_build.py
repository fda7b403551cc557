#!/usr/bin/env python3
"""Build throughput, side by side: earshot (native and hnsw_rs builders) vs hnswlib / FAISS / Voyager.

earshot variants: earshot-native (the default: beam search over int8 codes, links on exact distances),
earshot-native-f32 (--build-walk f32, hnswlib's way), earshot-hnsw_rs (--graph-builder hnsw-rs).

Every build runs in a fresh process, one after the other, for ROUNDS rounds (order rotated each round),
with the same M, ef_construction and thread count. Each line records wall seconds and CPU seconds of
the build (CPU = user + system of the child process: robust to other jobs on a shared machine, which
wall time is not) and the 1-minute load average before it.

    .venv/bin/python tools/bench_build.py --earshot target/release/earshot --metric cosine \\
        --base ../shared/datasets/yes-tracks/tracks_minilm384.npy --threads 2 --rounds 3 \\
        --libs earshot-native,earshot-hnsw_rs,hnswlib,faiss-hnsw >> target/bench/build.jsonl

earshot's figure is the manifest's `build_seconds` (graph + int8 codes when --quantize, after reading
the inputs, before writing the files) and, for CPU, the whole `earshot build` process (reading and
writing included, so it is an upper bound). Peers: the add call only (wall), the whole Python process
(CPU, minus the CPU it used before the add call).

Output: one JSON line per (round, lib): {"lib","round","n","dim","threads","build_s","cpu_s",
"vectors_per_s","cpu_us_per_vector","load1"}; with --summary a markdown table of the best round per lib
and its ratio to hnswlib follows.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PEER_SCRIPT = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r})
import numpy as np, peers
class A: pass
a = A(); a.m = {m}; a.ef_construction = {efc}; a.threads = {threads}
base = np.ascontiguousarray(np.load({base!r}), dtype=np.float32)
lib = peers.make_lib({lib!r}, {metric!r})
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = ru.ru_utime + ru.ru_stime
t = time.perf_counter()
lib.build(base, a)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"build_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime - cpu0, "n": base.shape[0], "dim": base.shape[1]}}))
"""


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def child_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_earshot(a, variant, out_dir):
    """variant: native (int8 beam search, the default), native-f32 (--build-walk f32) or hnsw_rs."""
    out = os.path.join(out_dir, f"idx-{variant}")
    builder, _, walk = variant.partition("-")
    cmd = [a.earshot, "build", "--vectors", a.base, "--metric", a.metric, "--out", out, "--force",
           "--m", str(a.m), "--ef-construction", str(a.ef_construction), "--threads", str(a.threads),
           "--graph-builder", builder.replace("_", "-")]
    if walk:
        cmd += ["--build-walk", walk]
    if a.quantize:
        cmd += ["--quantize", "int8"]
    cpu0 = child_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True)
    cpu = child_cpu() - cpu0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed: {r.stderr.strip()}")
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    return {"build_s": m["build_seconds"], "cpu_s": cpu, "n": m["count"], "dim": m["dim"], "index": out}


def run_peer(a, lib):
    code = PEER_SCRIPT.format(here=HERE, m=a.m, efc=a.ef_construction, threads=a.threads, base=a.base,
                              lib=lib, metric=a.metric)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{lib} build failed: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--earshot", default="target/release/earshot")
    p.add_argument("--base", required=True, help=".npy float32 vectors")
    p.add_argument("--metric", required=True, choices=["cosine", "l2", "dot"])
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quantize", action="store_true", help="earshot: also write int8 codes (--quantize int8)")
    p.add_argument("--libs", default="earshot-native,earshot-native-f32,earshot-hnsw_rs,hnswlib,faiss-hnsw",
                   help="earshot-native, earshot-native-f32, earshot-hnsw_rs, and any builder of tools/peers.py")
    p.add_argument("--ds", default=None, help="data set label for the output lines")
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    ds = a.ds or os.path.basename(a.base)
    best = {}
    with tempfile.TemporaryDirectory(prefix="earshot-bench-build-") as tmp:
        for rnd in range(a.rounds):
            order = libs[rnd % len(libs):] + libs[:rnd % len(libs)]
            for lib in order:
                load = loadavg1()
                if lib.startswith("earshot-"):
                    r = run_earshot(a, lib.split("-", 1)[1], tmp)
                    r.pop("index")
                else:
                    r = run_peer(a, lib)
                line = {"ds": ds, "lib": lib, "round": rnd, "threads": a.threads, **r,
                        "vectors_per_s": round(r["n"] / r["build_s"], 1),
                        "cpu_us_per_vector": round(r["cpu_s"] / r["n"] * 1e6, 1), "load1": load}
                print(json.dumps(line), flush=True)
                if lib not in best or line["build_s"] < best[lib]["build_s"]:
                    best[lib] = line
    if a.summary:
        ref = best.get("hnswlib")
        print(f"\n| lib | best build s | vectors/s | CPU-µs/vector | vs hnswlib (vectors/s) | vs hnswlib (CPU) |")
        print("|---|---|---|---|---|---|")
        for lib in libs:
            b = best[lib]
            r1 = f"{b['vectors_per_s'] / ref['vectors_per_s']:.2f}×" if ref else "—"
            r2 = f"{ref['cpu_us_per_vector'] / b['cpu_us_per_vector']:.2f}×" if ref else "—"
            print(f"| {lib} | {b['build_s']:.1f} | {b['vectors_per_s']:,.0f} | {b['cpu_us_per_vector']:,.0f} | {r1} | {r2} |")


if __name__ == "__main__":
    main()
