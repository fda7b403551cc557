#!/usr/bin/env bash
# Every measurement behind BENCHMARKS.md, in one command:
#
#   bash tools/bench_all.sh                       # ~1.5-2 h on 2 cores (the 1M builds dominate)
#   nohup bash tools/bench_all.sh > target/bench/run.log 2>&1 &    # and poll run.log
#   .venv/bin/python tools/bench_report.py        # tables (markdown) + PNG plots from the results
#
# What it does (raw JSON lines go to target/bench/*.jsonl; the step log with the load average before
# and after every step to target/bench/steps.jsonl):
#   a. builds the release binary once and copies it to target/bench/bin/earshot, so every step
#      runs the same code even if src/ changes during the run (machine.json records the commit);
#   b. prepares data: bash tools/venv.sh (pinned peers + matplotlib), tools/fashion_mnist.py
#      (needs `apt-get install -y dataset-fashion-mnist`); yes-tracks and Last.fm are read in place
#      from ../shared/datasets (research / non-commercial licences: never copied into the repo);
#   c. per data set: `earshot build --quantize int8 --m 16 --ef-construction 200 --threads 2`
#      (timed with /usr/bin/time), `earshot bench` on one thread walking the int8 codes and with
#      --exact-walk (f32), both again with --threads 2, tools/peers.py with the six peers (+ hnswlib
#      with one batched call, to size Python's per-call overhead), then the int8 bench once more
#      (drift check: the machine is shared);
#   d. the open-time experiment: `earshot generate` N x 128 (N = BENCH_SCALE_N, default 1,000,000),
#      build, then `earshot bench --lazy` and the default (checksum-verifying) open, 3 times each,
#      and tools/peers_load.py: hnswlib load_index / voyager Index.load time and RSS on the same data,
#      and hnswlib's recall at ef 64 on the same 100 queries (a check of the earshot graph at scale);
#   e. HTTP: `earshot serve` on the data sets' indexes, `earshot bench-http --mode similar` and
#      `--mode taste` on yes-tracks at ef 64 (closed-loop max, then open-loop at 25/50/75/90 %), plus the
#      server's CPU time and request count (http.server-cpu.jsonl) and the in-process QPS at ef 64;
#   f. interleaved rounds (tools/bench_pairs.py): per data set, 3 rounds of earshot (int8, f32, int8 on
#      2 threads) then hnswlib, FAISS and batched hnswlib over ef 10 … 512, back to back, so the headline
#      ratios and the thread scaling come from the same minutes even when the machine's load drifts.
#   g. build throughput (tools/bench_build.py): per data set, BENCH_BUILD_ROUNDS (default 2) rounds of
#      earshot's native builder (int8 and f32 beam search), earshot with hnsw_rs, hnswlib and FAISS, each build in a fresh process
#      with the same M, ef_construction and 2 threads; then at scale (N x 128) one round of earshot
#      native vs hnswlib, and the recall of the native 1M graph over an ef sweep on 1,000 queries.
#   Order: c, e, f, g, then d (the longest).
#
# Environment knobs:
#   BENCH_DATASETS="yes-tracks fashion-mnist lastfm"   which data sets (step c)
#   BENCH_SKIP_SCALE=1      skip step d        BENCH_SCALE_N=300000   smaller scale run
#   BENCH_SKIP_PEERS=1      skip peers.py      BENCH_SKIP_HTTP=1      skip step e
#   BENCH_EF=10,16,...      the ef sweep       BENCH_PORT=7791        the HTTP port (loopback only)
#   BENCH_SKIP_SETS=1       skip step c (the data sets' indexes from an earlier run are reused)
#   BENCH_SKIP_PAIRS=1      skip step f        BENCH_ROUNDS=3         rounds in step f
#   BENCH_KEEP=1            keep earlier *.jsonl results instead of starting clean
#   BENCH_NO_BUILD=1        reuse target/bench/bin/earshot (e.g. to add a step to an earlier run)
#   BENCH_SKIP_BUILDS=1     skip step g        BENCH_BUILD_ROUNDS=2   rounds in step g
#   BENCH_OUT=target/bench  where results go (a second directory keeps an earlier run)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
shared="$(cd "$root/.." && pwd)/shared/datasets"
out="$root/${BENCH_OUT:-target/bench}"
bin="$out/bin/earshot"
py="$root/.venv/bin/python"
EFS="${BENCH_EF:-10,16,24,32,48,64,96,128,256}"
DATASETS="${BENCH_DATASETS:-yes-tracks fashion-mnist lastfm}"
SCALE_N="${BENCH_SCALE_N:-1000000}"
PORT="${BENCH_PORT:-7791}"
BUILD_FLAGS=(--quantize int8 --m 16 --ef-construction 200 --threads 2 --force)

mkdir -p "$out/bin" "$out/idx" "$out/logs"
if [[ -z "${BENCH_KEEP:-}" ]]; then
    rm -f "$out"/*.jsonl "$out"/machine.json
fi

loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' ','; }
now() { date +%s.%N; }
log() { echo "[$(date +%H:%M:%S) load $(loadavg)] $*" >&2; }

# step NAME OUTFILE CMD...: runs CMD with stdout appended to target/bench/OUTFILE (unless OUTFILE
# is -) and stderr to logs/NAME.log; records start time, duration and load in steps.jsonl.
step() {
    local name="$1" file="$2"
    shift 2
    local l0 t0 rc=0
    l0="$(loadavg)"
    t0="$(now)"
    log "$name: $*"
    if [[ "$file" == "-" ]]; then
        "$@" >> "$out/logs/$name.log" 2>&1 || rc=$?
    else
        "$@" >> "$out/$file" 2>> "$out/logs/$name.log" || rc=$?
    fi
    printf '{"step":"%s","start":%s,"secs":%.3f,"load_before":[%s],"load_after":[%s],"rc":%d}\n' \
        "$name" "$t0" "$(awk -v a="$(now)" -v b="$t0" 'BEGIN{print a-b}')" "$l0" "$(loadavg)" "$rc" >> "$out/steps.jsonl"
    if [[ $rc -ne 0 ]]; then
        # not fatal: the report shows what is missing; a failed build stops at its manifest below
        log "$name FAILED (rc=$rc), see $out/logs/$name.log"
    fi
}

# ------------------------------------------------------------------ a. binary, machine facts
if [[ -z "${BENCH_NO_BUILD:-}" || ! -x "$bin" ]]; then
    log "building the release binary"
    cargo build --release --quiet
    cp target/release/earshot "$bin"
fi
[[ -n "${BENCH_KEEP:-}" && -f "$out/machine.json" ]] || {
    printf '{"cpu":%s,"cores":%s,"mem_gib":%s,"kernel":"%s","rustc":"%s","commit":"%s",' \
        "$(lscpu | sed -n 's/^Model name: *//p' | head -1 | jq -R .)" "$(nproc)" \
        "$(free -g | awk '/^Mem:/{print $2}')" "$(uname -r)" "$(rustc --version)" "$(git rev-parse HEAD)"
    printf '"dirty_src_files":%s,"date":"%s","kernels":"%s","python":"%s","load_at_start":[%s]}\n' \
        "$(git status --porcelain -- src | wc -l)" "$(date -u +%FT%TZ)" \
        "$(grep -o -m1 -w 'avx512_vnni' /proc/cpuinfo || echo none)" "$("$py" --version 2>&1)" "$(loadavg)"
} > "$out/machine.json"

# ------------------------------------------------------------------ b. data
bash tools/venv.sh
if [[ " $DATASETS " == *" fashion-mnist "* ]]; then
    if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
        echo "Fashion-MNIST needs: apt-get install -y dataset-fashion-mnist" >&2
        exit 1
    fi
    "$py" tools/fashion_mnist.py
fi
Y="$shared/yes-tracks"
F="$root/target/datasets/fashion-mnist"
L="$shared/lastfm-hetrec2k"

# ------------------------------------------------------------------ c. per data set
# build_index DS OUT-DIR build args...: timed earshot build; one line in builds.jsonl.
build_index() {
    local ds="$1" dir="$2"
    shift 2
    local tfile="$out/logs/$ds.build.time"
    step "$ds.build" - /usr/bin/time -o "$tfile" \
        -f '{"wall_s":%e,"user_s":%U,"sys_s":%S,"max_rss_kb":%M}' \
        "$bin" build "$@" --out "$dir" "${BUILD_FLAGS[@]}"
    jq -c --arg ds "$ds" --slurpfile t "$tfile" --arg load "$(loadavg)" \
        '{ds:$ds, lib:"earshot", n:.count, dim:.dim, metric:.metric, m:.hnsw.m,
          ef_construction:.hnsw.ef_construction, threads:2, build_s:.build_seconds,
          vectors_per_s:(.count / .build_seconds), wall_s:$t[0].wall_s, cpu_s:($t[0].user_s + $t[0].sys_s),
          max_rss_mb:($t[0].max_rss_kb / 1024), load_after:$load}' "$dir/manifest.json" >> "$out/builds.jsonl"
    # bytes on disk per file (the report derives bytes per vector for the f32 and int8 walks)
    (cd "$dir" && find . -maxdepth 1 -type f -printf '%f %s\n') |
        jq -R -s -c --arg ds "$ds" --slurpfile m "$dir/manifest.json" \
            '{ds:$ds, n:$m[0].count, dim:$m[0].dim,
              files:(split("\n") | map(select(length > 0) | split(" ") | {(.[0]): (.[1] | tonumber)}) | add)}' \
        >> "$out/files.jsonl"
}

# run_ds DS METRIC BUILD-ARGS... -- BENCH-ARGS... -- PEER-ARGS...
run_ds() {
    local ds="$1" metric="$2" repeat="$3"
    shift 3
    local build_args=() bench_args=() peer_args=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do build_args+=("$1"); shift; done
    shift
    while [[ $# -gt 0 && "$1" != "--" ]]; do bench_args+=("$1"); shift; done
    shift
    peer_args=("$@")
    local dir="$out/idx/$ds"
    build_index "$ds" "$dir" --metric "$metric" "${build_args[@]}"
    local b=("$bin" bench --index "$dir" --k 10 --ef "$EFS" --repeat "$repeat" "${bench_args[@]}")
    step "$ds.earshot-int8" "$ds.earshot-int8.jsonl" "${b[@]}"
    step "$ds.earshot-f32" "$ds.earshot-f32.jsonl" "${b[@]}" --exact-walk
    step "$ds.earshot-int8-t2" "$ds.earshot-int8-t2.jsonl" "${b[@]}" --threads 2
    step "$ds.earshot-f32-t2" "$ds.earshot-f32-t2.jsonl" "${b[@]}" --threads 2 --exact-walk
    if [[ -z "${BENCH_SKIP_PEERS:-}" ]]; then
        step "$ds.peers" "$ds.peers.jsonl" "$py" tools/peers.py --metric "$metric" --ef "$EFS" \
            --m 16 --ef-construction 200 --threads 2 \
            --libs hnswlib,voyager-f32,voyager-e4m3,faiss-hnsw,usearch-f32,usearch-i8,hnswlib-batch \
            "${peer_args[@]}"
    fi
    # the same int8 run again after the peers: how much the shared machine drifted
    step "$ds.earshot-int8-again" "$ds.earshot-int8-again.jsonl" "${b[@]}"
    step "$ds.earshot-f32-again" "$ds.earshot-f32-again.jsonl" "${b[@]}" --exact-walk
}

for ds in $DATASETS; do
    [[ -z "${BENCH_SKIP_SETS:-}" ]] || break
    case "$ds" in
        yes-tracks)
            run_ds yes-tracks cosine 5 \
                --vectors "$Y/tracks_minilm384.npy" --meta "$Y/tracks.csv" --id-column song_id \
                --creator-column artist \
                -- --query-rows "$Y/track_query_rows.npy" --skip-self --gt "$Y/gt_track_to_track_angular_ids.npy" \
                -- --base "$Y/tracks_minilm384.npy" --query-rows "$Y/track_query_rows.npy" --skip-self \
                --gt "$Y/gt_track_to_track_angular_ids.npy" --gt-dist "$Y/gt_track_to_track_angular_dist.npy"
            ;;
        fashion-mnist)
            run_ds fashion-mnist l2 3 \
                --vectors "$F/base.npy" \
                -- --queries "$F/queries.npy" --gt "$F/gt_ids.npy" \
                -- --base "$F/base.npy" --queries "$F/queries.npy" --gt "$F/gt_ids.npy" --gt-dist "$F/gt_dist.npy"
            ;;
        lastfm)
            run_ds lastfm dot 10 \
                --vectors "$L/artists_als64.npy" \
                -- --queries "$L/users_als64.npy" --gt "$L/gt_users_to_artists_dot_ids.npy" \
                -- --base "$L/artists_als64.npy" --queries "$L/users_als64.npy" \
                --gt "$L/gt_users_to_artists_dot_ids.npy" --gt-dist "$L/gt_users_to_artists_dot_scores.npy"
            ;;
        *) echo "unknown data set $ds" >&2; exit 1 ;;
    esac
done

# ------------------------------------------------------------------ e. HTTP (before d: d is long)
if [[ -z "${BENCH_SKIP_HTTP:-}" && -d "$out/idx/yes-tracks" ]]; then
    rm -f "$out"/http.*.jsonl  # a re-run (BENCH_KEEP=1) replaces this step's results
    unset EARSHOT_QUERY_KEYS EARSHOT_ADMIN_KEYS
    "$bin" serve --index-root "$out/idx" --addr "127.0.0.1:$PORT" --default-ef 64 \
        > "$out/logs/serve.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null && break
        sleep 0.5
    done
    curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null
    # the load generator shares the 2 cores with the server: also record the server's own CPU time
    # (utime + stime) and the requests it answered (from /metrics), i.e. requests per server CPU-second
    server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server/stat"; }
    served() {
        curl -sf "http://127.0.0.1:$PORT/metrics" |
            awk '/^earshot_http_requests_total/ && /route="\/v1\// && /status="200"/ {s += $NF} END {print s + 0}'
    }
    for mode in similar taste; do
        c0="$(server_cpu)"; r0="$(served)"; t0="$(now)"
        step "http.$mode" "http.$mode.jsonl" "$bin" bench-http --url "http://127.0.0.1:$PORT" \
            --index "$out/idx/yes-tracks" --mode "$mode" --ef 64 --k 10 --duration 10 \
            --fractions 0.25,0.5,0.75,0.9
        c1="$(server_cpu)"; r1="$(served)"
        awk -v m="$mode" -v c="$(awk -v a="$c1" -v b="$c0" 'BEGIN{print a-b}')" -v r="$((r1 - r0))" \
            -v w="$(awk -v a="$(now)" -v b="$t0" 'BEGIN{print a-b}')" \
            'BEGIN{printf "{\"mode\":\"%s\",\"server_cpu_s\":%.2f,\"requests\":%d,\"wall_s\":%.1f,\"requests_per_cpu_s\":%.0f}\n", m, c, r, w, (c > 0 ? r / c : 0)}' \
            >> "$out/http.server-cpu.jsonl"
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
    trap - EXIT
    # in-process figures at the same ef right after, for the ratio
    step "http.inprocess-t1" "http.inprocess.jsonl" "$bin" bench --index "$out/idx/yes-tracks" --k 10 --ef 64 \
        --repeat 10 --query-rows "$Y/track_query_rows.npy" --skip-self --gt "$Y/gt_track_to_track_angular_ids.npy"
    step "http.inprocess-t2" "http.inprocess.jsonl" "$bin" bench --index "$out/idx/yes-tracks" --k 10 --ef 64 \
        --repeat 10 --threads 2 --query-rows "$Y/track_query_rows.npy" --skip-self \
        --gt "$Y/gt_track_to_track_angular_ids.npy"
fi

# ------------------------------------------------------------------ f. interleaved rounds
if [[ -z "${BENCH_SKIP_PAIRS:-}" ]]; then
    pairs=("$py" tools/bench_pairs.py --earshot "$bin" --rounds "${BENCH_ROUNDS:-3}" --repeat 3
           --m 16 --ef-construction 200 --threads 2)
    for ds in $DATASETS; do
        [[ -d "$out/idx/$ds" ]] || continue
        rm -f "$out/$ds.pairs.jsonl"
        case "$ds" in
            yes-tracks)
                step "$ds.pairs" "$ds.pairs.jsonl" "${pairs[@]}" --ds "$ds" --index "$out/idx/$ds" \
                    --metric cosine --base "$Y/tracks_minilm384.npy" --query-rows "$Y/track_query_rows.npy" \
                    --skip-self --gt "$Y/gt_track_to_track_angular_ids.npy" ;;
            fashion-mnist)
                step "$ds.pairs" "$ds.pairs.jsonl" "${pairs[@]}" --ds "$ds" --index "$out/idx/$ds" \
                    --metric l2 --base "$F/base.npy" --queries "$F/queries.npy" --gt "$F/gt_ids.npy" ;;
            lastfm)
                step "$ds.pairs" "$ds.pairs.jsonl" "${pairs[@]}" --ds "$ds" --index "$out/idx/$ds" \
                    --metric dot --base "$L/artists_als64.npy" --queries "$L/users_als64.npy" \
                    --gt "$L/gt_users_to_artists_dot_ids.npy" ;;
        esac
    done
fi

# ------------------------------------------------------------------ g. build throughput
if [[ -z "${BENCH_SKIP_BUILDS:-}" ]]; then
    rm -f "$out"/build-throughput.jsonl
    bb=("$py" tools/bench_build.py --earshot "$bin" --m 16 --ef-construction 200 --threads 2
        --rounds "${BENCH_BUILD_ROUNDS:-2}" --libs earshot-native,earshot-native-f32,earshot-hnsw_rs,hnswlib,faiss-hnsw)
    for ds in $DATASETS; do
        case "$ds" in
            yes-tracks) step "$ds.build-throughput" build-throughput.jsonl "${bb[@]}" --ds "$ds" \
                            --metric cosine --base "$Y/tracks_minilm384.npy" ;;
            fashion-mnist) step "$ds.build-throughput" build-throughput.jsonl "${bb[@]}" --ds "$ds" \
                            --metric l2 --base "$F/base.npy" ;;
            lastfm) step "$ds.build-throughput" build-throughput.jsonl "${bb[@]}" --ds "$ds" \
                            --metric dot --base "$L/artists_als64.npy" ;;
        esac
    done
    S="$out/scale"
    if [[ "$(cat "$S/data/.n" 2>/dev/null)" != "$SCALE_N" ]]; then
        step "scale.generate" - "$bin" generate --out "$S/data" --tracks "$SCALE_N" --dim 128 --queries 1000
        echo "$SCALE_N" > "$S/data/.n"
    fi
    step "scale.build-throughput" build-throughput.jsonl "$py" tools/bench_build.py --earshot "$bin" \
        --m 16 --ef-construction 200 --threads 2 --rounds 1 --libs earshot-native,hnswlib --ds scale \
        --metric l2 --base "$S/data/tracks.npy"
    "$bin" build --vectors "$S/data/tracks.npy" --metric l2 --out "$S/idx-native" "${BUILD_FLAGS[@]}" \
        2>> "$out/logs/scale.native-build.log"
    step "scale.native-recall" scale.native-recall.jsonl "$bin" bench --index "$S/idx-native" --exact-walk \
        --queries "$S/data/queries.npy" --k 10 --ef 16,32,64,128,256
fi

# ------------------------------------------------------------------ d. open time at scale
if [[ -z "${BENCH_SKIP_SCALE:-}" ]]; then
    S="$out/scale"
    mkdir -p "$S"
    rm -f "$out"/scale.*.jsonl
    if [[ "$(cat "$S/data/.n" 2>/dev/null)" != "$SCALE_N" ]]; then
        step "scale.generate" - "$bin" generate --out "$S/data" --tracks "$SCALE_N" --dim 128 --queries 1000
        echo "$SCALE_N" > "$S/data/.n"
    fi
    "$py" -c "import numpy as np; np.save('$S/data/queries100.npy', np.load('$S/data/queries.npy')[:100])"
    build_index scale "$S/idx" --vectors "$S/data/tracks.npy" --metric l2
    for i in 1 2 3; do
        step "scale.open-lazy.$i" scale.earshot-open.jsonl "$bin" bench --index "$S/idx" --lazy \
            --queries "$S/data/queries100.npy" --k 10 --ef 64
        step "scale.open-full.$i" scale.earshot-open.jsonl "$bin" bench --index "$S/idx" \
            --queries "$S/data/queries100.npy" --k 10 --ef 64
    done
    step "scale.peers-build" scale.peers-build.jsonl "$py" tools/peers_load.py build \
        --base "$S/data/tracks.npy" --metric l2 --out "$S/peers" --threads 2
    step "scale.peers-load" scale.peers-load.jsonl "$py" tools/peers_load.py load --out "$S/peers" --repeat 3
    # sanity check of the synthetic set's difficulty: hnswlib's recall on the same 100 queries at ef 64
    step "scale.peers-recall" scale.peers-recall.jsonl "$py" tools/peers_load.py recall --out "$S/peers" \
        --base "$S/data/tracks.npy" --queries "$S/data/queries100.npy" --ef 64
fi

log "done: results in $out/*.jsonl; now: $py tools/bench_report.py"
