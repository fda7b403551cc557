#!/usr/bin/env python3
"""Per-shard recall of yes-tracks `similar` queries, split by whether the shard owns the query
item (numpy; fleet.py shard-recall runs it in the client namespace):

    shard_recall.py --queries 300 --ef 16,64 URL_SHARD0 URL_SHARD1 …

Each shard is asked, as the router asks it, `POST /v1/search` with the item's vector, k 10, the
item excluded; the answer is compared with that shard's own exact top 10 (distance ≤ its 10th
+1e-6). Membership comes from `POST /v1/yes-tracks/items` on every shard.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpq as H  # noqa: E402

Y = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                 "..", "shared", "datasets", "yes-tracks")
p = argparse.ArgumentParser()
p.add_argument("--queries", type=int, default=300)
p.add_argument("--ef", default="16,64")
p.add_argument("shards", nargs="+")
a = p.parse_args()
ids = H.read_ids(f"{Y}/tracks.csv", "song_id")
rows = np.load(f"{Y}/track_query_rows.npy")
V = np.load(f"{Y}/tracks_minilm384.npy")
clients = [H.Client(u) for u in a.shards]
member = np.full(len(ids), -1)
for s, c in enumerate(clients):
    for i in range(0, len(ids), 1000):
        _, _, b = c.get("/v1/yes-tracks/items", json.dumps({"ids": ids[i:i + 1000]}).encode())
        missing = set(json.loads(b)["missing"])
        for k, x in enumerate(ids[i:i + 1000]):
            if x not in missing:
                member[i + k] = s
row_of = {x: i for i, x in enumerate(ids)}
for ef in [int(x) for x in a.ef.split(",")]:
    hits = {"owner": [0, 0], "other": [0, 0]}
    for qi in range(a.queries):
        q = rows[qi]
        d = 1.0 - V @ V[q]
        for s, c in enumerate(clients):
            m = np.where(member == s)[0]
            m = m[m != q]
            thr = np.sort(d[m])[9]
            body = json.dumps({"collection": "yes-tracks", "vector": V[q].tolist(), "k": 10, "ef": ef,
                               "exclude": [ids[q]]}).encode()
            _, _, b = c.get("/v1/search", body)
            got = [row_of[r["id"]] for r in json.loads(b)["results"]]
            key = "owner" if member[q] == s else "other"
            hits[key][0] += int(sum(d[g] <= thr + 1e-6 for g in got))
            hits[key][1] += 10
    print(json.dumps({"ef": ef, "queries": a.queries, "shards": len(clients),
                      "recall_owner_shard": round(hits["owner"][0] / hits["owner"][1], 4),
                      "recall_other_shards": round(hits["other"][0] / hits["other"][1], 4)}), flush=True)
