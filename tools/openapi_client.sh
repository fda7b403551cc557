#!/usr/bin/env bash
# Generate an HTTP client for another language from the committed API contract (docs/openapi.json).
#
#   bash tools/openapi_client.sh go     target/openapi-clients/go
#   bash tools/openapi_client.sh python target/openapi-clients/python   # (Python users: clients/python)
#   bash tools/openapi_client.sh typescript-fetch target/openapi-clients/ts
#
# GENERATOR is any OpenAPI Generator name (`list` prints them); extra arguments go to `generate`
# (e.g. --additional-properties=packageName=earshot). Needs Java 11+ and python3. OpenAPI
# Generator comes from PyPI (openapi-generator-cli: the generator's jar inside a wheel, so nothing is
# downloaded at run time) into a venv at target/openapi-gen-venv. Generated code is not kept in the
# repo: regenerate it when docs/openapi.json changes. The generator calls its OpenAPI 3.1 support beta.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/openapi-gen-venv"
version=7.26.0
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0" >&2; exit 2; }
gen="$1"
shift
command -v java >/dev/null || { echo "openapi_client.sh: java (11+) is needed" >&2; exit 1; }
if [[ ! -x "$venv/bin/openapi-generator-cli" || "$("$venv/bin/pip" show openapi-generator-cli 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]]; then
    echo "openapi_client.sh: installing openapi-generator-cli $version into $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "openapi-generator-cli==$version" >&2
fi
if [[ "$gen" == list ]]; then
    exec "$venv/bin/openapi-generator-cli" list
fi
[[ $# -ge 1 ]] || { echo "usage: $0 GENERATOR OUT_DIR [generate options]" >&2; exit 2; }
out="$1"
shift
exec "$venv/bin/openapi-generator-cli" generate -i "$root/docs/openapi.json" -g "$gen" -o "$out" "$@"
