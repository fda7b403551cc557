#!/usr/bin/env bash
# Run the earshot-client test suite against real `earshot serve` processes.
#
#   bash clients/python/run_tests.sh [pytest args]     # from anywhere; tests/python_client.rs runs it
#
# Creates (once) a venv at <repo>/target/py-client-venv, installs this package with its `test`
# extra (pytest, anyio, numpy, mypy; from PyPI), type-checks the package (mypy --strict) and runs
# pytest. The binary is $EARSHOT_BIN, else target/debug/earshot, else target/release/earshot.
# Set PYTHON to pick the interpreter (default python3).
# Re-runs reinstall only when pyproject.toml changed (the package itself is installed editable).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${EARSHOT_PY_VENV:-$root/target/py-client-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.earshot-client.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "run_tests.sh: creating $venv" >&2
    "$python" -m venv "$venv"
fi
want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "run_tests.sh: installing earshot-client[test] into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test]" >&2
    echo "$want" > "$stamp"
fi

if [[ -z "${EARSHOT_BIN:-}" ]]; then
    for b in "$root/target/debug/earshot" "$root/target/release/earshot"; do
        if [[ -x "$b" ]]; then export EARSHOT_BIN="$b"; break; fi
    done
fi
cd "$here"
# The package ships py.typed: keep its annotations honest.
"$venv/bin/python" -m mypy --strict --cache-dir "$root/target/py-client-mypy-cache" src/earshot_client
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
