#!/usr/bin/env python3
"""Recall of a log-fed replica split by where the query comes from (BENCHMARKS.md §11): starts
the replica of a finished `tools/delta_quality.py --work WORK` run (its store and log) and that
run's full rebuild, asks `similar` for the same 1,000 tracks, and counts recall@10 separately for
queries from base items and from delta items (and for true neighbours in the base and the delta).

    python tools/delta_recall_split.py EARSHOT WORK [EF]      (numpy needed)
"""
import json, subprocess, time, urllib.request, urllib.parse, csv, os, sys
import numpy as np
B, w = sys.argv[1], sys.argv[2]
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "yes-tracks")
os.makedirs(f"{w}/split", exist_ok=True)
vectors=np.load(f"{DATA}/tracks_minilm384.npy").astype(np.float32)
rows=list(csv.DictReader(open(f"{DATA}/tracks.csv",newline="")))
ids=[r["song_id"] for r in rows]; n=len(ids)
perm=np.random.default_rng(1).permutation(n); nd=int(n*0.1); delta_rows=set(perm[:nd].tolist())
procs=[]
def serve(args,port):
    p=subprocess.Popen([B,"serve","--addr",f"127.0.0.1:{port}",*args],stdout=subprocess.DEVNULL,stderr=open(f"{w}/split/{port}.log","w")); procs.append(p)
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status==200: return
        except Exception: pass
        time.sleep(0.2)
serve(["--store",f"file://{w}/store","--index-root",f"{w}/split/cache","--log-poll-ms","200"],7821)
serve(["--index-root",f"{w}/full"],7822)
time.sleep(15)
unit=vectors/np.linalg.norm(vectors,axis=1,keepdims=True)
q=np.random.default_rng(2).choice(n,1000,replace=False)
sims=unit[q]@unit.T; sims[np.arange(len(q)),q]=-np.inf
truth=np.argsort(-sims,axis=1)[:,:10]
ef=int(sys.argv[3]) if len(sys.argv)>3 else 16
stats={}
for port,name in [(7821,"delta"),(7822,"full")]:
    s={"qbase":[0,0],"qdelta":[0,0],"tbase":[0,0],"tdelta":[0,0]}
    for qi,r in enumerate(q):
        body=urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tracks/{urllib.parse.quote(ids[r],safe='')}/similar?k=10&ef={ef}").read()
        got={h["id"] for h in json.loads(body)["results"]}
        k="qdelta" if r in delta_rows else "qbase"
        for t in truth[qi]:
            hit=ids[t] in got
            s[k][0]+=hit; s[k][1]+=1
            kk="tdelta" if t in delta_rows else "tbase"
            s[kk][0]+=hit; s[kk][1]+=1
    stats[name]={k:(round(v[0]/v[1],4),v[1]) for k,v in s.items()}
print(json.dumps(stats))
for p in procs: p.terminate()
