"""Invariants of a rendered overlay that no schema can check (run by deploy/validate.sh).

    check_manifests.py FLEET.yaml BUILD.yaml

FLEET is `kubectl kustomize deploy/overlays/X`, BUILD `kubectl kustomize deploy/builds/X`.
Every failure is listed, then the exit code is 1.
"""

import re
import sys
import tomllib

import yaml

GI = 1024**3
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": GI, "Ti": 1024**4, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
REQUEST_TIMEOUT_S = 5  # earshot's default --request-timeout-ms, 5000

problems = []


def need(ok, what):
    if not ok:
        problems.append(what)


def quantity(q):
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    return float(m.group(1)) * UNITS.get(m.group(2), 1)


def flag(args, name):
    """The value after `name` in a container's args, or None."""
    return args[args.index(name) + 1] if name in args else None


def pod_checks(kind_name, pod):
    """Non-root, read-only root, no privilege escalation: for every container of a pod."""
    sc = pod.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, f"{kind_name}: pod securityContext.runAsNonRoot is not true")
    need(sc.get("runAsUser", 0) != 0, f"{kind_name}: pod runs as uid 0")
    need(pod.get("automountServiceAccountToken") is False, f"{kind_name}: mounts an API token it never uses")
    for c in pod.get("initContainers", []) + pod["containers"]:
        csc = c.get("securityContext", {})
        where = f"{kind_name} container {c['name']}"
        need(csc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable")
        need(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped")
        need("memory" in c.get("resources", {}).get("limits", {}), f"{where}: no memory limit")
        need(not c["image"].endswith(":latest") and ":" in c["image"], f"{where}: image {c['image']} has no pinned tag")


def main(fleet_path, build_path):
    fleet = [d for d in yaml.safe_load_all(open(fleet_path)) if d]
    build = [d for d in yaml.safe_load_all(open(build_path)) if d]
    by_kind = {}
    for d in fleet:
        by_kind.setdefault(d["kind"], []).append(d)
    need(not any(d["kind"] == "Secret" for d in fleet + build), "a Secret is rendered: credentials never live in the repo")

    fleet_cm = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"] == "earshot-fleet")
    n = int(fleet_cm["data"]["EARSHOT_SHARDS"])
    need(n >= 1, "EARSHOT_SHARDS < 1")

    # Deployments: probes, grace period above the drain, sizing, Prometheus, a PDB each.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    shard_labels = []
    for dep in by_kind.get("Deployment", []):
        name = dep["metadata"]["name"]
        tmpl = dep["spec"]["template"]
        pod = tmpl["spec"]
        pod_checks(f"Deployment {name}", pod)
        labels = tmpl["metadata"]["labels"]
        ann = tmpl["metadata"].get("annotations", {})
        need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics",
             f"Deployment {name}: no Prometheus scrape annotations")
        for c in pod["containers"]:
            rp = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
            lp = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
            need(rp == "/readyz", f"Deployment {name}: readinessProbe is not GET /readyz")
            need(lp == "/healthz", f"Deployment {name}: livenessProbe is not GET /healthz")
            args = c.get("args", [])
            drain = flag(args, "--drain-seconds")
            need(drain is not None, f"Deployment {name}: no --drain-seconds (SIGTERM would drop requests)")
            timeout = int(flag(args, "--request-timeout-ms") or REQUEST_TIMEOUT_S * 1000) / 1000
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if drain is not None:
                need(grace > int(drain) + timeout,
                     f"Deployment {name}: terminationGracePeriodSeconds {grace} <= --drain-seconds {drain} + request timeout {timeout:g} s")
        need(any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
                 and p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == labels.get("app.kubernetes.io/component")
                 for p in pdbs), f"Deployment {name}: no PodDisruptionBudget selects its pods")
        if labels.get("app.kubernetes.io/component") != "shard":
            continue
        shard_labels.append(labels.get("earshot.dev/shard"))
        c = next(c for c in pod["containers"] if c["name"] == "serve")
        args = c["args"]
        need(flag(args, "--shard") == "$(SHARD_INDEX)/$(EARSHOT_SHARDS)", f"Deployment {name}: --shard is not $(SHARD_INDEX)/$(EARSHOT_SHARDS)")
        keep = int(flag(args, "--keep") or 3)
        res = c["resources"]
        mem = quantity(res["requests"]["memory"])
        need(res["limits"]["memory"] == res["requests"]["memory"], f"Deployment {name}: memory limit != request")
        cache = next(v for v in pod["volumes"] if v["name"] == "cache")
        cache_size = quantity(cache["emptyDir"]["sizeLimit"])
        # The formula (README, capacity planning): cache = (keep + 1) × S, memory = 2 × S + 1 GiB.
        shard_bytes = cache_size / (keep + 1)
        need(mem >= 2 * shard_bytes + 1 * GI - 0.05 * GI,
             f"Deployment {name}: memory {res['requests']['memory']} < 2 × S + 1 GiB for S = cache / {keep + 1} = {shard_bytes / GI:.1f} GiB")
        need(quantity(res["requests"].get("ephemeral-storage", 0)) >= cache_size,
             f"Deployment {name}: ephemeral-storage request below the cache sizeLimit")

    # N in one place: shard Deployments, their labels, the topology and the Job agree with it.
    need(sorted(shard_labels) == sorted(str(i) for i in range(n)),
         f"shard Deployments carry earshot.dev/shard {sorted(shard_labels)}, EARSHOT_SHARDS={n} wants 0 … {n - 1}")
    headless = {s["metadata"]["name"]: s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"}
    topo_cm = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"].startswith("earshot-topology"))
    topo = tomllib.loads(topo_cm["data"]["topology.toml"])
    for coll, spec in topo["collections"].items():
        shards = spec["shards"]
        need(len(shards) == n, f"topology: collection {coll} has {len(shards)} shards, EARSHOT_SHARDS={n}")
        for i, replicas in enumerate(shards):
            for url in replicas:
                m = re.fullmatch(r"dns://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", url)
                need(m is not None, f"topology: {url} is not dns://SERVICE.NAMESPACE.svc.cluster.local:PORT")
                if not m:
                    continue
                svc = headless.get(m.group(1))
                need(svc is not None, f"topology: {url} names no headless Service")
                if svc is None:
                    continue
                need(svc["metadata"].get("namespace") == m.group(2), f"topology: {url} is not in namespace {svc['metadata'].get('namespace')}")
                need(svc["spec"]["selector"].get("earshot.dev/shard") == str(i),
                     f"topology: shard {i} of {coll} is {url}, whose Service selects shard {svc['spec']['selector'].get('earshot.dev/shard')}")
                need(any(p["port"] == int(m.group(3)) for p in svc["spec"]["ports"]), f"topology: {url}: no such port")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        dep = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == target]
        need(bool(dep), f"HPA {hpa['metadata']['name']}: no Deployment {target}")
        need(all("replicas" not in d["spec"] for d in dep), f"Deployment {target}: has replicas although an HPA scales it")

    # The build: only the Job, Indexed, one completion per shard, each building shard I of N.
    need([d["kind"] for d in build] == ["Job"], f"deploy/builds renders {[d['kind'] for d in build]}, not only the Job")
    for job in build:
        spec = job["spec"]
        pod = spec["template"]["spec"]
        pod_checks(f"Job {job['metadata']['name']}", pod)
        need(job["metadata"].get("namespace") == fleet_cm["metadata"].get("namespace"), "Job: not in the fleet's namespace")
        need(spec.get("completionMode") == "Indexed", "Job: completionMode is not Indexed")
        need(spec.get("completions") == n, f"Job: completions {spec.get('completions')} != EARSHOT_SHARDS {n}")
        need(1 <= spec.get("parallelism", 1) <= n, "Job: parallelism outside 1 … N")
        b = next(c for c in pod["initContainers"] if c["name"] == "build")
        need(flag(b["args"], "--shard") == "$(JOB_COMPLETION_INDEX)/$(EARSHOT_SHARDS)", "Job: build --shard is not $(JOB_COMPLETION_INDEX)/$(EARSHOT_SHARDS)")
        p = next(c for c in pod["containers"] if c["name"] == "publish")
        need(flag(p["args"], "--version") == "$(EARSHOT_VERSION)", "Job: publish --version is not $(EARSHOT_VERSION)")

    for p in problems:
        print("FAILED:", p)
    if problems:
        sys.exit(1)
    print(f"   invariants hold: {n} shard(s), {len(by_kind.get('Deployment', []))} Deployments, the build Job")


if __name__ == "__main__":
    main(*sys.argv[1:])
