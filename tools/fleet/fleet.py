#!/usr/bin/env python3
"""earshot fleet harness: a store, shard servers and a router on several "hosts" simulated with
network namespaces, and the measurements of issue 11 §5 (BENCHMARKS.md §10). Run as root.

Network: one namespace per host (`esf-NAME`), each with one veth `eth0` into a bridge that lives
in its own switch namespace (`esf-sw`), addresses 10.77.0.0/24. The namespaces have **no default
route**, and before anything is sent from a namespace to an address, `ip -n NS route get ADDR`
must say `dev eth0` without a gateway — otherwise the run aborts. The root namespace is never
given an address in the range, so nothing here ever leaves the machine.

Every process started is remembered by PID and ended on exit (also on SIGINT/SIGTERM); the
namespaces are deleted. Every load is bounded in requests and seconds.

    python3 tools/fleet/fleet.py prep       # builds yes-tracks: one index, 2 and 4 shards
    python3 tools/fleet/fleet.py recall     # N = 1, 2, 4 through the router vs one server
    python3 tools/fleet/fleet.py efficiency # queries per CPU-second, N = 2 vs one server
    python3 tools/fleet/fleet.py fault-kill | fault-slow | fault-store | fault-publish
    python3 tools/fleet/fleet.py selftest   # namespaces, route checks, relay: no earshot needed

Results: JSON lines in $FLEET_WORK/results/*.jsonl (default /tmp/fleet). See README.md here.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from netns import Fleet, Proc, log, sh  # noqa: E402  (hosts, route checks, processes)
REPO = os.path.dirname(os.path.dirname(HERE))
Y = os.path.join(os.path.dirname(REPO), "shared", "datasets", "yes-tracks")


class Data:
    """A data set: how to build it, name it and query it."""

    def __init__(self, name, work):
        self.name = name
        if name == "yes":
            self.coll, self.metric = "yes-tracks", "cosine"
            self.vectors, self.meta = f"{Y}/tracks_minilm384.npy", f"{Y}/tracks.csv"
            self.cols = ["--id-column", "song_id", "--creator-column", "artist"]
            self.root = os.path.join(work, "idx")
        elif name == "synth":
            d = os.path.join(work, "synth", "data")
            self.coll, self.metric = "synth", "l2"
            self.vectors, self.meta = f"{d}/tracks.npy", f"{d}/tracks.csv"
            self.cols = ["--id-column", "track_id", "--creator-column", "creator",
                         "--popularity-column", "popularity"]
            self.queries, self.gt_dist = f"{d}/queries.npy", f"{d}/gt_dist.npy"
            self.root = os.path.join(work, "synth", "idx")
        elif name in ("pub1", "pub2"):
            # Two versions of one small synthetic catalogue: the same IDs, different vectors (seeds
            # 1 and 2), so an answer's scores tell which version's vectors produced it.
            d = os.path.join(work, "pub", name)
            self.coll, self.metric = "pubtest", "cosine"
            self.vectors, self.meta = f"{d}/tracks.npy", f"{d}/tracks.csv"
            self.cols = ["--id-column", "track_id", "--creator-column", "creator",
                         "--popularity-column", "popularity"]
            self.root = os.path.join(d, "idx")
            self.datadir = d
        else:
            raise SystemExit(f"unknown data set {name}")

    def build_cmd(self, earshot, out, threads=2):
        return [earshot, "build", "--vectors", self.vectors, "--meta", self.meta] + self.cols + [
            "--metric", self.metric, "--out", out, "--quantize", "int8", "--m", "16",
            "--ef-construction", "200", "--threads", str(threads)]

    def recall_args(self, url):
        if self.name == "yes":
            return ["--collection", self.coll, "--meta", self.meta, "--query-rows", f"{Y}/track_query_rows.npy",
                    "--gt-dist", f"{Y}/gt_track_to_track_angular_dist.npy", "--skip-self", "--metric", "cosine",
                    "--vectors", self.vectors]
        return ["--collection", self.coll, "--queries", self.queries, "--gt-dist", self.gt_dist, "--metric", "l2",
                "--tolerance", "1e-4", "--vectors", self.vectors, "--meta", self.meta, "--id-column", "track_id"]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / 100.0


# ---------------------------------------------------------------------------------------------
# Index preparation

def idx_dir(data, n, i):
    """Index root of shard i of n (n = 0: the unsharded collection)."""
    return os.path.join(data.root, "single" if n == 0 else f"n{n}-s{i}")


def as_version(root, coll, version="v1"):
    """Turns ROOT/COLL (a plain build) into version `version` of a versioned collection
    (ROOT/.versions/COLL/V + the symlink ROOT/COLL), so every shard — built separately, at
    different times — serves the same version name, as `publish --version` does through a store.
    A plain directory's version would be its build time, different on every shard."""
    link = os.path.join(root, coll)
    if os.path.islink(link):
        return
    home = os.path.join(root, ".versions", coll)
    os.makedirs(home, exist_ok=True)
    os.rename(link, os.path.join(home, version))
    os.symlink(os.path.join(".versions", coll, version), link)


def cmd_prep(a):
    data = a.data
    if data.name == "synth" and not os.path.exists(data.gt_dist):
        d = os.path.dirname(data.vectors)
        subprocess.run([a.earshot, "generate", "--out", d, "--tracks", "1000000", "--dim", "128",
                        "--queries", "1000"], check=True)
        subprocess.run([a.numpy_python, os.path.join(HERE, "gt.py"), "--base", data.vectors, "--queries",
                        data.queries, "--k", "10", "--out", data.gt_dist], check=True)
    if data.name in ("pub1", "pub2") and not os.path.exists(data.vectors):
        subprocess.run([a.earshot, "generate", "--out", data.datadir, "--tracks", "100000", "--dim", "64",
                        "--queries", "10", "--seed", data.name[-1]], check=True)
    for n in [0] + [int(x) for x in a.shards.split(",")]:
        for i in range(max(n, 1)):
            out = os.path.join(idx_dir(data, n, i), data.coll)
            if os.path.exists(os.path.join(out, "manifest.json")):
                as_version(idx_dir(data, n, i), data.coll)
                continue
            cmd = data.build_cmd(a.earshot, out)
            if n:
                cmd += ["--shard", f"{i}/{n}"]
            t = time.time()
            subprocess.run(cmd, check=True)
            log(f"built {out} in {time.time() - t:.1f} s")
            as_version(idx_dir(data, n, i), data.coll)


# ---------------------------------------------------------------------------------------------
# Topologies

class Setup:
    """A client, then either one server, or N shards × R replicas behind a router."""

    def __init__(self, fleet, a, shards, replicas=1, relay_delay_ms=None, serve_extra=(), store=None):
        self.fleet, self.a, self.data, self.store = fleet, a, a.data, store
        self.client = fleet.host("client")
        self.servers = {}  # (shard, replica) -> (proc, url)
        self.router = None
        self.relay = None
        self.shards, self.replicas = shards, replicas
        self.serve_extra = list(serve_extra)
        if shards == 0:
            ip = fleet.host("single")
            proc = self._serve("single", "single", 0, 0, ip)
            self.servers[(0, 0)] = (proc, f"http://{ip}:7700")
            self.url = f"http://{ip}:7700"
            fleet.check_all_routes()
            fleet.wait_http("client", self.url)
            return
        rip = fleet.host("router")
        for s in range(shards):
            for r in range(replicas):
                name = f"s{s}r{r}"
                ip = fleet.host(name)
                proc = self._serve(name, name, s, r, ip)
                self.servers[(s, r)] = (proc, f"http://{ip}:7700")
        fleet.check_all_routes()
        for (s, r), (proc, url) in self.servers.items():
            fleet.wait_http("router", url)
        targets = {k: url for k, (_, url) in self.servers.items()}
        if relay_delay_ms is not None:
            # The relay runs on the slow replica's host, in front of it, on port 7701.
            ip = fleet.hosts["s0r1"]
            self.relay = fleet.spawn("relay-s0r1", "s0r1", [
                sys.executable, os.path.join(HERE, "relay.py"), "--listen", f"{ip}:7701",
                "--target", f"{ip}:7700", "--delay-ms", str(relay_delay_ms), "--max-seconds", "900"])
            targets[(0, 1)] = f"http://{ip}:7701"
            fleet.wait_port("router", f"http://{ip}:7701/healthz")
        topo = os.path.join(a.work, f"topology-n{shards}r{replicas}.toml")
        with open(topo, "w") as f:
            f.write(f"[collections.{json.dumps(self.data.coll)}]\nshards = [\n")
            for s in range(shards):
                f.write("  [" + ", ".join(json.dumps(targets[(s, r)]) for r in range(replicas)) + "],\n")
            f.write("]\n")
        self.topology = topo
        self.router = fleet.spawn("router", "router", [a.earshot, "route", "--topology", topo,
                                                       "--addr", f"{rip}:7700"] + a.route_args.split())
        self.url = f"http://{rip}:7700"
        fleet.wait_http("client", self.url)

    def _serve(self, name, host, s, r, ip):
        if self.store is None:
            where = ["--index-root", idx_dir(self.data, self.shards, s)]
            env = None
        else:
            # A replica's own cache, filled from the object store.
            cache = os.path.join(self.a.work, "cache", name)
            os.makedirs(cache, exist_ok=True)
            where = ["--store", self.store.url, "--index-root", cache, "--watch-interval", "1"]
            if self.shards:
                where += ["--shard", f"{s}/{self.shards}"]
            env = self.store.env()
        return self.fleet.spawn(name, host, [self.a.earshot, "serve"] + where +
                                ["--addr", f"{ip}:7700"] + self.serve_extra, env=env)

    def restart(self, s, r):
        name = f"s{s}r{r}"
        ip = self.fleet.hosts[name]
        proc = self._serve(name, name, s, r, ip)
        self.servers[(s, r)] = (proc, f"http://{ip}:7700")
        return proc

    def pids(self):
        p = [proc.pid for proc, _ in self.servers.values() if proc.alive()]
        if self.router:
            p.append(self.router.pid)
        return p

    def named_pids(self):
        p = [f"{proc.name}:{proc.pid}" for proc, _ in self.servers.values() if proc.alive()]
        if self.router:
            p.append(f"router:{self.router.pid}")
        return p


def httpq(fleet, setup, args, timeout):
    fleet.check_route("client", urllib.parse.urlsplit(setup.url).hostname)
    out = fleet.run("client", [sys.executable, os.path.join(HERE, "httpq.py")] + args, timeout=timeout)
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def bench_http(fleet, setup, a, extra, timeout):
    fleet.check_route("client", urllib.parse.urlsplit(setup.url).hostname)
    cmd = [a.earshot, "bench-http", "--url", setup.url, "--index", a.bench_index, "--k", "10"] + extra
    out = fleet.run("client", cmd, timeout=timeout)
    return [json.loads(l) for l in out.splitlines() if l.strip().startswith("{")]


def emit(a, name, rec):
    os.makedirs(os.path.join(a.work, "results"), exist_ok=True)
    rec = dict(rec, at=time.strftime("%Y-%m-%dT%H:%M:%S"), load1=os.getloadavg()[0], earshot=a.earshot,
               route_args=a.route_args)
    with open(os.path.join(a.work, "results", f"{name}.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def recall_args(setup, a, pids):
    return ["recall", "--url", setup.url] + a.data.recall_args(setup.url) + [
        "--k", "10", "--ef", a.ef, "--repeat", str(a.repeat), "--limit", str(a.limit),
        "--cpu-pids", ",".join(pids)]


# ---------------------------------------------------------------------------------------------
# Experiments

def cmd_recall(a):
    """Recall@10 and server CPU per query: one server, then N shards behind the router.
    Configurations are interleaved over --rounds so drift hits all alike."""
    for rnd in range(a.rounds):
        for n in [0] + [int(x) for x in a.shards.split(",")]:
            fleet = Fleet(a.work, a.earshot)
            try:
                setup = Setup(fleet, a, n)
                for rec in httpq(fleet, setup, recall_args(setup, a, setup.named_pids()), timeout=900):
                    emit(a, "recall", dict(rec, data=a.data.name, config="single" if n == 0 else f"router-n{n}",
                                           round=rnd))
            finally:
                fleet.teardown()


def cmd_efficiency(a):
    """Server CPU per request under a fixed open-loop rate (bench-http --max-rate), one server vs
    N shards + router, at each ef; rounds interleaved."""
    for rnd in range(a.rounds):
        for n in [0] + [int(x) for x in a.shards.split(",")]:
            fleet = Fleet(a.work, a.earshot)
            try:
                setup = Setup(fleet, a, n)
                for ef in a.ef.split(","):
                    pids = setup.pids()
                    c0, t0 = cpu_seconds(pids), time.time()
                    lines = bench_http(fleet, setup, a, [
                        "--ef", ef, "--max-rate", str(a.rate), "--fractions", "1", "--duration", str(a.duration),
                        ] + (["--query-rows", f"{Y}/track_query_rows.npy"] if a.data.name == "yes" else []),
                        timeout=a.duration + 60)
                    cpu = cpu_seconds(pids) - c0
                    run = [l for l in lines if "achieved_rps" in l][-1]
                    n_req = run["ok"] + run["errors"]
                    emit(a, "efficiency", {"data": a.data.name,
                                           "config": "single" if n == 0 else f"router-n{n}", "round": rnd,
                                           "ef": int(ef), "rate": a.rate, "requests": n_req,
                                           "errors": run["errors"], "server_cpu_s": round(cpu, 2),
                                           "queries_per_cpu_s": round(n_req / cpu, 1) if cpu else None,
                                           "cpu_us_per_query": round(cpu / n_req * 1e6, 1),
                                           "p50_us": run["p50_us"], "p99_us": run["p99_us"],
                                           "wall_s": round(time.time() - t0, 1)})
            finally:
                fleet.teardown()


def capacity(fleet, setup, a):
    lines = bench_http(fleet, setup, a, ["--ef", str(a.fault_ef), "--fractions", "0.5", "--duration", "5",
                                         "--sustain-p99-ms", str(a.sustain_p99_ms)], timeout=300)
    head = [l for l in lines if "max_rps" in l][0]
    return head["max_rps"]


def fault_load(fleet, setup, a, rate, name, during):
    """bench-http at `rate` for --fault-seconds in the background; `during(t0)` injects the fault."""
    fleet.check_route("client", urllib.parse.urlsplit(setup.url).hostname)
    cmd = [a.earshot, "bench-http", "--url", setup.url, "--index", a.bench_index,
           "--k", "10", "--ef", str(a.fault_ef), "--max-rate", str(rate), "--fractions", "1",
           "--duration", str(a.fault_seconds), "--timeout-ms", "5000"]
    p = fleet.spawn(f"load-{name}", "client", cmd)
    t0 = time.time()
    notes = during(t0)
    p.popen.wait(timeout=a.fault_seconds + 60)
    with open(p.log) as f:
        lines = [json.loads(l) for l in f.read().splitlines() if l.startswith("{") and "achieved_rps" in l]
    return lines[-1], dict(notes, router_metrics=router_metrics(fleet, setup))


def router_metrics(fleet, setup):
    """The router's own counters (requests per replica and outcome, hedges, ejections, version
    re-asks), from its /metrics."""
    if setup.router is None:
        return {}
    out = fleet.run("client", ["curl", "-s", "--max-time", "5", f"{setup.url}/metrics"], timeout=10)
    keep = {}
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        if any(w in line for w in ("router_upstream_requests", "router_hedges", "router_ejections",
                                   "router_partial", "router_version_reasks")):
            name, _, value = line.rpartition(" ")
            if float(value) != 0:
                keep[name.replace('collection="' + setup.data.coll + '",', "")] = float(value)
    return keep


def cmd_fault_kill(a):
    fleet = Fleet(a.work, a.earshot)
    try:
        setup = Setup(fleet, a, a.fault_shards, replicas=2)
        cap = capacity(fleet, setup, a)
        rate = round(cap * 0.5)

        def during(t0):
            time.sleep(a.fault_seconds / 3)
            proc, _ = setup.servers[(0, 0)]
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
            killed = time.time() - t0
            time.sleep(5)
            setup.restart(0, 0)
            fleet.wait_http("router", setup.servers[(0, 0)][1], timeout=60)
            return {"killed_at_s": round(killed, 1), "back_at_s": round(time.time() - t0, 1)}

        run, notes = fault_load(fleet, setup, a, rate, "kill", during)
        emit(a, "faults", dict(fault="kill -9 s0r0, restart after 5 s", shards=a.fault_shards, replicas=2,
                               capacity_rps=cap, rate=rate, seconds=a.fault_seconds, **notes, **run))
    finally:
        fleet.teardown()


def cmd_fault_slow(a):
    """p99 with every replica healthy vs with replica s0r1 behind a +50 ms relay."""
    for slow in (False, True):
        fleet = Fleet(a.work, a.earshot)
        try:
            # The relay runs in both cases (0 ms when healthy), so the path is the same.
            setup = Setup(fleet, a, a.fault_shards, replicas=2, relay_delay_ms=a.slow_ms if slow else 0)
            rate = a.slow_rate
            run, notes = fault_load(fleet, setup, a, rate, "slow" if slow else "healthy", lambda t0: {})
            emit(a, "faults", dict(fault=f"s0r1 +{a.slow_ms} ms (relay)" if slow else "healthy (relay 0 ms)",
                                   shards=a.fault_shards, replicas=2, rate=rate, seconds=a.fault_seconds,
                                   **notes, **run))
        finally:
            fleet.teardown()


class S3:
    """s3s-fs (a real S3-compatible server) on its own host."""

    KEY, SECRET = "fleet-key", "fleet-secret-key"

    def __init__(self, fleet, a):
        self.fleet, self.a = fleet, a
        fleet.host("client")
        self.ip = fleet.host("store")
        self.dir = os.path.join(a.work, "s3data")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "earshot"))
        self.url = "s3://earshot/fleet"
        self.proc = None
        self.start()

    def start(self):
        self.proc = self.fleet.spawn("s3s-fs", "store", [
            self.a.s3s, "--host", self.ip, "--port", "9000", "--access-key", self.KEY,
            "--secret-key", self.SECRET, self.dir])
        self.fleet.wait_port("client", f"http://{self.ip}:9000/")

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=5)

    def env(self):
        e = dict(os.environ)
        e.update({"AWS_ENDPOINT": f"http://{self.ip}:9000", "AWS_ACCESS_KEY_ID": self.KEY,
                  "AWS_SECRET_ACCESS_KEY": self.SECRET, "AWS_REGION": "us-east-1",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                  "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"})
        return e

    def publish(self, data, shards, version):
        """Publishes every shard of `data` as `version`, from the publisher host."""
        self.fleet.host("publisher")
        self.fleet.check_route("publisher", self.ip)
        out = []
        for i in range(max(shards, 1)):
            d = os.path.join(idx_dir(data, shards, i), data.coll)
            t = time.time()
            line = self.fleet.run("publisher", [self.a.earshot, "publish", d, "--store", self.url,
                                                "--version", version], timeout=600, env=self.env())
            out.append({"shard": i, "seconds": round(time.time() - t, 2), "out": line.strip()[-300:]})
        return out


def store_setup(a, shards=2, replicas=2):
    fleet = Fleet(a.work, a.earshot)
    store = S3(fleet, a)
    fleet.host("client")
    for n in range(shards):
        for r in range(replicas):
            fleet.host(f"s{n}r{r}")
    fleet.host("router")
    fleet.check_all_routes()
    v1 = Data("pub1", a.work)
    pub = store.publish(v1, shards, "v1")
    log("published v1", pub)
    a.data = v1
    a.bench_index = os.path.join(idx_dir(v1, 0, 0), v1.coll)
    setup = Setup(fleet, a, shards, replicas=replicas, store=store)
    return fleet, store, setup


def versions_now(fleet, setup):
    out = fleet.run("client", ["curl", "-s", "-D", "-", "-o", "/dev/null",
                               f"{setup.url}/v1/{setup.data.coll}/demo%3Atrack%3A0000001/similar?k=3"], timeout=10)
    for line in out.splitlines():
        if line.lower().startswith("x-earshot-version:"):
            return line.split(":", 1)[1].strip()
    return None


def cmd_fault_publish(a):
    """Publish v2 mid-load: failed requests, and every answer's scores checked against the
    vectors of the version its x-earshot-version names."""
    fleet, store, setup = store_setup(a, shards=a.fault_shards, replicas=2)
    try:
        v2 = Data("pub2", a.work)
        fleet.check_route("client", urllib.parse.urlsplit(setup.url).hostname)
        bench, cap = None, None
        if a.publish_bench_http:
            # bench-http brings the total to 50 % of the measured capacity; httpq.py's share is
            # the part whose versions and scores are checked.
            cap = capacity(fleet, setup, a)
            extra = max(1, round(cap * 0.5 - a.publish_rate))
            bench = fleet.spawn("load-publish-bench", "client", [
                a.earshot, "bench-http", "--url", setup.url, "--index", a.bench_index, "--k", "10",
                "--ef", str(a.fault_ef), "--max-rate", str(extra), "--fractions", "1",
                "--duration", str(a.fault_seconds), "--timeout-ms", "5000"])
        load = fleet.spawn("load-publish", "client", [
            sys.executable, os.path.join(HERE, "httpq.py"), "load", "--url", setup.url, "--collection", "pubtest",
            "--meta", Data("pub1", a.work).meta, "--id-column", "track_id", "--rate", str(a.publish_rate),
            "--duration", str(a.fault_seconds), "--threads", "16",
            "--check-vectors", f"v1={Data('pub1', a.work).datadir},v2={v2.datadir}"])
        t0 = time.time()
        time.sleep(a.fault_seconds / 3)
        pub = store.publish(v2, a.fault_shards, "v2")
        published = time.time() - t0
        landed = None
        while time.time() - t0 < a.fault_seconds:
            if versions_now(fleet, setup) == "v2":
                landed = time.time() - t0
                break
            time.sleep(0.5)
        load.popen.wait(timeout=a.fault_seconds + 120)
        with open(load.log) as f:
            res = [json.loads(l) for l in f.read().splitlines() if l.startswith("{")][-1]
        if bench is not None:
            bench.popen.wait(timeout=a.fault_seconds + 60)
            with open(bench.log) as f:
                b = [json.loads(l) for l in f.read().splitlines() if l.startswith("{") and "achieved_rps" in l][-1]
            res["bench_http"] = {"capacity_rps": cap, **{k: b[k] for k in ("target_rps", "achieved_rps", "ok",
                                                                             "errors", "p50_us", "p99_us")}}
        emit(a, "faults", dict(fault="publish v2 mid-load", shards=a.fault_shards, replicas=2,
                               rate=a.publish_rate, seconds=a.fault_seconds,
                               published_at_s=round(published, 1),
                               v2_answered_at_s=round(landed, 1) if landed else None, publish=pub, **res))
    finally:
        fleet.teardown()


def cmd_fault_store(a):
    """The object store killed for --store-down seconds under load; then v2 published once it is
    back must reach the replicas."""
    fleet, store, setup = store_setup(a, shards=a.fault_shards, replicas=2)
    try:
        cap = capacity(fleet, setup, a)
        rate = round(cap * 0.5)

        def during(t0):
            time.sleep(10)
            store.kill()
            killed = time.time() - t0
            time.sleep(a.store_down)
            store.start()
            back = time.time() - t0
            pub = store.publish(Data("pub2", a.work), a.fault_shards, "v2")
            landed = None
            while time.time() - t0 < a.fault_seconds + 30:
                if versions_now(fleet, setup) == "v2":
                    landed = time.time() - t0
                    break
                time.sleep(0.5)
            return {"store_killed_at_s": round(killed, 1), "store_back_at_s": round(back, 1),
                    "v2_published_s": round(time.time() - t0, 1) if pub else None,
                    "v2_answered_at_s": round(landed, 1) if landed else None}

        run, notes = fault_load(fleet, setup, a, rate, "store", during)
        emit(a, "faults", dict(fault=f"object store killed {a.store_down} s", shards=a.fault_shards, replicas=2,
                               capacity_rps=cap, rate=rate, seconds=a.fault_seconds, **notes, **run))
    finally:
        fleet.teardown()


def cmd_build_shards(a):
    """Wall time: one build (2 threads) vs N shard builds, --parallel processes at a time
    (--shard-threads each), as an Indexed Job with JOB_COMPLETION_INDEX would run them on a
    2-core node. The builds land where `prep` puts them (then `recall --data synth` uses them)."""
    data = a.data
    n = int(a.shards.split(",")[-1])

    def fresh(root):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        return os.path.join(root, data.coll)

    for rnd in range(a.rounds):
        t = time.time()
        r0 = os.times()
        subprocess.run(data.build_cmd(a.earshot, fresh(idx_dir(data, 0, 0))), check=True,
                       stdout=subprocess.DEVNULL)
        r1 = os.times()
        single = time.time() - t
        as_version(idx_dir(data, 0, 0), data.coll)
        emit(a, "build", {"data": data.name, "round": rnd, "what": "one build, --threads 2",
                          "wall_s": round(single, 1), "load1_before": os.getloadavg()[0],
                          "cpu_s": round(r1.children_user + r1.children_system - r0.children_user - r0.children_system, 1)})
        t = time.time()
        r0 = os.times()
        pending = list(range(n))
        running = []
        while pending or running:
            while pending and len(running) < a.parallel:
                i = pending.pop(0)
                env = dict(os.environ, JOB_COMPLETION_INDEX=str(i))
                cmd = data.build_cmd(a.earshot, fresh(idx_dir(data, n, i)), threads=a.shard_threads)
                cmd += ["--shard", f"{i}/{n}"]
                running.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
            time.sleep(0.2)
            for p in list(running):
                if p.poll() is not None:
                    if p.returncode != 0:
                        raise SystemExit(f"shard build exited {p.returncode}")
                    running.remove(p)
        r1 = os.times()
        for i in range(n):
            as_version(idx_dir(data, n, i), data.coll)
        emit(a, "build", {"data": data.name, "round": rnd,
                          "what": f"{n} shard builds, {a.parallel} at a time, --threads {a.shard_threads}",
                          "wall_s": round(time.time() - t, 1),
                          "cpu_s": round(r1.children_user + r1.children_system - r0.children_user - r0.children_system, 1),
                          "single_wall_s": round(single, 1)})


def cmd_shard_recall(a):
    """yes-tracks: recall of each shard's answer to the router's per-shard request, owner shard
    vs the others (why `similar` through the router can lose recall at equal ef)."""
    n = int(a.shards.split(",")[-1])
    fleet = Fleet(a.work, a.earshot)
    try:
        setup = Setup(fleet, a, n)
        urls = [url for _, url in setup.servers.values()]
        for u in urls:
            fleet.check_route("client", urllib.parse.urlsplit(u).hostname)
        out = fleet.run("client", [a.numpy_python, os.path.join(HERE, "shard_recall.py"), "--queries",
                                   str(a.limit or 300), "--ef", a.ef] + urls, timeout=1800)
        for l in out.splitlines():
            emit(a, "shard_recall", json.loads(l))
    finally:
        fleet.teardown()


def cmd_selftest(a):
    """Namespaces, route checks and the delaying relay, with a Python HTTP server as target."""
    fleet = Fleet(a.work, a.earshot)
    try:
        c = fleet.host("client")
        s = fleet.host("s0r0")
        fleet.check_all_routes()
        print(fleet.check_route("client", s))
        try:
            fleet.check_route("client", "10.77.0.250")
        except SystemExit as e:
            print("refused as expected:", e)
        fleet.spawn("http", "s0r0", [sys.executable, "-m", "http.server", "--bind", s, "7700"])
        fleet.spawn("relay", "s0r0", [sys.executable, os.path.join(HERE, "relay.py"), "--listen", f"{s}:7701",
                                      "--target", f"{s}:7700", "--delay-ms", "50", "--max-seconds", "60"])
        fleet.wait_http("client", f"http://{s}:7700", path="/")
        fleet.wait_http("client", f"http://{s}:7701", path="/")
        for port in (7700, 7701):
            out = fleet.run("client", ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
                                       f"http://{s}:{port}/"], timeout=10)
            print(f"port {port}: {float(out) * 1000:.1f} ms")
    finally:
        fleet.teardown()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["prep", "recall", "efficiency", "fault-kill", "fault-slow", "fault-store",
                                   "fault-publish", "build-shards", "shard-recall", "selftest"])
    p.add_argument("--data", default="yes", choices=["yes", "synth", "pub1", "pub2"])
    p.add_argument("--limit", type=int, default=0, help="recall: only the first N queries")
    p.add_argument("--s3s", default="/tmp/s3s/bin/s3s-fs", help="the s3s-fs binary")
    p.add_argument("--numpy-python", default="/tmp/fleet-venv/bin/python", help="a Python with numpy (gt.py)")
    p.add_argument("--store-down", type=float, default=30)
    p.add_argument("--publish-rate", type=float, default=200, help="fault-publish: requests/s (Python client)")
    p.add_argument("--publish-bench-http", action="store_true",
                   help="fault-publish: also run bench-http so the total is 50 %% of capacity")
    p.add_argument("--parallel", type=int, default=2, help="build-shards: builds at once")
    p.add_argument("--shard-threads", type=int, default=1, help="build-shards: --threads per shard build")
    p.add_argument("--work", default=os.environ.get("FLEET_WORK", "/tmp/fleet"))
    p.add_argument("--earshot", default=os.path.join(REPO, "target", "release", "earshot"))
    p.add_argument("--shards", default="1,2,4", help="shard counts (prep, recall, efficiency)")
    p.add_argument("--ef", default="16,32,64,128")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--rate", type=float, default=300, help="efficiency: requests/s")
    p.add_argument("--duration", type=float, default=15, help="efficiency: seconds per ef")
    p.add_argument("--route-args", default="", help="extra flags for `earshot route`")
    p.add_argument("--fault-shards", type=int, default=2)
    p.add_argument("--fault-seconds", type=float, default=60)
    p.add_argument("--fault-ef", type=int, default=64)
    p.add_argument("--sustain-p99-ms", type=float, default=50)
    p.add_argument("--slow-ms", type=float, default=50)
    p.add_argument("--slow-rate", type=float, default=200)
    a = p.parse_args()
    if os.geteuid() != 0 and a.cmd != "prep":
        raise SystemExit("run as root (network namespaces)")
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    a.data = Data(a.data, a.work)
    a.bench_index = os.path.join(idx_dir(a.data, 0, 0), a.data.coll)
    {"prep": cmd_prep, "recall": cmd_recall, "efficiency": cmd_efficiency, "fault-kill": cmd_fault_kill,
     "fault-slow": cmd_fault_slow, "fault-store": cmd_fault_store, "fault-publish": cmd_fault_publish,
     "build-shards": cmd_build_shards, "shard-recall": cmd_shard_recall, "selftest": cmd_selftest}[a.cmd](a)


if __name__ == "__main__":
    main()
