#!/usr/bin/env bash
# Create (or reuse) the git-ignored Python venv used by tools/peers.py, tools/fashion_mnist.py and
# tools/eval_lastfm.py.
#
#   bash tools/venv.sh            # idempotent; quiet when nothing needs doing
#   .venv/bin/python tools/peers.py --help
#
# The venv lives at <repo>/.venv and holds the exact versions pinned in tools/requirements-peers.txt
# (numpy, hnswlib, voyager, faiss-cpu, usearch, annoy; matplotlib for tools/bench_report.py), plus the
# repo's own Python client clients/python (earshot-client, installed editable: tools use the code in the
# tree) for the scripts that call the API. hnswlib has no
# wheel for every platform and may be compiled from source: gcc/g++ and python3-dev (or the python's own headers) must be present.
# Re-runs compare a hash of the requirements file and of clients/python/pyproject.toml with the one recorded after the last successful install
# and do nothing if they match. Set PYTHON=/path/to/python3 to pick the interpreter (default: python3).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv"
req="$here/requirements-peers.txt"
stamp="$venv/.peers-requirements.sha256"
python="${PYTHON:-python3}"

client="$root/clients/python"
want="$(cat "$req" "$client/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "venv.sh: creating $venv" >&2
    "$python" -m venv "$venv"
fi

echo "venv.sh: installing pinned peers from $req (hnswlib may compile from source; ~1 min)" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$client" >&2
"$venv/bin/python" -c 'import numpy, hnswlib, voyager, faiss, usearch.index, annoy, matplotlib, earshot_client' >&2

echo "$want" > "$stamp"
echo "venv.sh: ready: $venv/bin/python" >&2
