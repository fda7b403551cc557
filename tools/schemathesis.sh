#!/usr/bin/env bash
# Property-based API test: schemathesis drives a live `earshot serve` from its own
# /openapi.json and fails on any server error (5xx) or any response that the document does
# not describe (status, content type, headers, body schema).
#
#   bash tools/schemathesis.sh                    # ~1-2 min after the cargo build
#   MAX_EXAMPLES=50 SEED=7 bash tools/schemathesis.sh
#
# Steps: installs the pinned schemathesis (tools/requirements-schemathesis.txt) into the
# git-ignored .venv/ (once; re-run when the file changes), builds earshot, generates a small
# synthetic catalogue (`earshot generate`, 8-d: the request examples in the document use
# 8-d vectors and the demo's `demo:track:…` IDs), builds `tracks` + `creators`, serves them
# on a free loopback port, runs schemathesis, stops the server; then once more against a
# server with API keys, sending a query key (401/403 paths, `ignored_auth`). Exit status 0
# only when both runs passed and each server stayed up with no panic in its log.
#
# Environment: MAX_EXAMPLES (default 300 per operation and phase), KEYED_EXAMPLES (default
# 50, the run with keys), SEED (default 1; "random" for a new one each run), CHECKS (default
# below), EARSHOT_BIN (skip the cargo build), PYTHON (interpreter for a new venv, default
# python3), KEEP=1 (keep the work directory).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv"
req="$here/requirements-schemathesis.txt"
stamp="$venv/.schemathesis-requirements.sha256"
python="${PYTHON:-python3}"
max_examples="${MAX_EXAMPLES:-300}"
keyed_examples="${KEYED_EXAMPLES:-50}"
seed="${SEED:-1}"
checks="${CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance}"

log() { echo "schemathesis.sh: $*" >&2; }

# --- schemathesis, pinned, in .venv
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/schemathesis" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating $venv"
        "$python" -m venv "$venv"
    fi
    log "installing pinned schemathesis from $req"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$stamp"
fi
"$venv/bin/schemathesis" --version >&2

# --- earshot
if [[ -n "${EARSHOT_BIN:-}" ]]; then
    bin="$EARSHOT_BIN"
else
    log "cargo build"
    (cd "$root" && cargo build --locked --quiet --bin earshot)
    bin="$root/target/debug/earshot"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/earshot-schemathesis.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $work"
    else
        rm -rf -- "$work"
    fi
}
trap cleanup EXIT

log "building a small index in $work"
"$bin" generate --out "$work/data" --tracks 3000 --dim 8 --queries 1 2>/dev/null
"$bin" build --vectors "$work/data/tracks.npy" --meta "$work/data/tracks.csv" \
    --id-column track_id --creator-column creator --popularity-column popularity \
    --metric cosine --out "$work/indexes/tracks" --creators-out "$work/indexes/creators" \
    --threads 2 >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

# --- serve on a free port; the server prints `listening on http://ADDR` when ready
url=""
start_server() { # NAME [ENV=VALUE ...]
    local name="$1"
    shift
    env "$@" "$bin" serve --index-root "$work/indexes" --addr 127.0.0.1:0 \
        >"$work/$name.out" 2>"$work/$name.err" &
    server_pid=$!
    url=""
    for _ in $(seq 1 600); do
        url="$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "$work/$name.out" | head -n 1)"
        [[ -n "$url" ]] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            log "earshot serve exited:"
            cat "$work/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    [[ -n "$url" ]] || { log "earshot serve did not start within 60 s"; exit 1; }
    log "$name: server at $url (pid $server_pid)"
}

# Stops the server; fails if it died during the run or logged a panic.
stop_server() { # NAME
    local name="$1" ok=0
    if ! kill -0 "$server_pid" 2>/dev/null; then
        log "FAIL: $name: the server died during the run:"
        tail -n 50 "$work/$name.err" >&2
        ok=1
    else
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    if grep -q "panicked" "$work/$name.err"; then
        log "FAIL: $name: the server log holds a panic:"
        grep -n -A5 "panicked" "$work/$name.err" | head -n 40 >&2
        ok=1
    fi
    return "$ok"
}

seed_args=()
[[ "$seed" != random ]] && seed_args=(--seed "$seed")
status=0

# 1. No API keys (the default): /v1/* open, /admin/* for loopback clients.
start_server open
"$venv/bin/schemathesis" run "$url/openapi.json" \
    --checks "$checks" \
    --max-examples "$max_examples" \
    "${seed_args[@]}" \
    --request-timeout 30 \
    --report junit --report-dir "$work/report-open" \
    || status=$?
stop_server open || status=1

# 2. With API keys, sending a query key: 401s for requests schemathesis sends without it
#    (ignored_auth), 403 on /admin/*.
query_key="schemathesis-query-$RANDOM$RANDOM"
start_server keyed EARSHOT_QUERY_KEYS="$query_key" EARSHOT_ADMIN_KEYS="schemathesis-admin-$RANDOM$RANDOM"
"$venv/bin/schemathesis" run "$url/openapi.json" \
    --checks "$checks,ignored_auth" \
    --max-examples "$keyed_examples" \
    "${seed_args[@]}" \
    --request-timeout 30 \
    -H "Authorization: Bearer $query_key" \
    --report junit --report-dir "$work/report-keyed" \
    || status=$?
stop_server keyed || status=1

if [[ "$status" == 0 ]]; then
    log "PASS: 0 server errors, 0 responses outside the schema"
else
    log "FAIL (exit $status); rerun with KEEP=1 to keep $work (server logs, junit reports)"
fi
exit "$status"
