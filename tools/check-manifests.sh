#!/usr/bin/env bash
# Check the deployment files: render every kustomization (the base and each overlay) with
# `kubectl kustomize` and the Helm chart with `helm template` (its defaults and every values
# example in charts/backend-injector/examples/, after `helm lint --strict` of each and a check
# that values.schema.json is what tools/gen-values-schema.py generates), validate every
# rendered object strictly against the Kubernetes JSON schemas of several Kubernetes versions
# (kubernetes-validate), and lint the Dockerfile with hadolint. Exits non-zero on the first
# kind of failure it meets, after reporting all of it.
#
# Environment: KUBECTL (kubectl on PATH, else the one tools/build-binaries.sh builds), HELM
# (likewise), PYTHON (.venv/bin/python), HADOLINT (.venv/bin/hadolint), KUBE_VERSIONS
# (space-separated).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

PYTHON=${PYTHON:-$repo/.venv/bin/python}
HADOLINT=${HADOLINT:-$repo/.venv/bin/hadolint}
# 1.30: the oldest release with the preStop sleep action on by default; 1.32: the kubectl and
# Docker Desktop of this project's machines; 1.37: the control plane of the e2e suite.
KUBE_VERSIONS=${KUBE_VERSIONS:-1.30.0 1.32.0 1.37.0}

# find_binary NAME OVERRIDE: OVERRIDE when set, else NAME on PATH, else the newest one that
# tools/build-binaries.sh built from its Go module (bin/NAME-VERSION/NAME in the cache).
find_binary() {
    local name=$1 override=$2
    if [[ -n $override ]]; then
        echo "$override"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        compgen -G "$HOME/.cache/backend-injector/bin/$name-*/$name" | sort | tail -n 1
    fi
}

kubectl=$(find_binary kubectl "${KUBECTL:-}")
helm=$(find_binary helm "${HELM:-}")
for tool in kubectl helm; do
    if [[ -z ${!tool} ]]; then
        echo "check-manifests: no $tool found (set ${tool^^})" >&2
        exit 2
    fi
done

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
# helm's own cache and config stay out of the user's home.
export HELM_CACHE_HOME=$rendered/.helm/cache HELM_CONFIG_HOME=$rendered/.helm/config
export HELM_DATA_HOME=$rendered/.helm/data

kustomizations=(manifests/base manifests/overlays/docker-desktop manifests/overlays/cert-manager)
for dir in "${kustomizations[@]}"; do
    out="$rendered/$(echo "$dir" | tr / _).yaml"
    "$kubectl" kustomize "$dir" >"$out"
    echo "check-manifests: rendered $dir"
done

chart=charts/backend-injector
"$PYTHON" tools/gen-values-schema.py --check
echo "check-manifests: $chart/values.schema.json is up to date"
values_files=("" "$chart"/examples/*.yaml)
for values in "${values_files[@]}"; do
    args=()
    if [[ -n $values ]]; then args=(-f "$values"); fi
    "$helm" lint --strict --quiet "$chart" "${args[@]}"
    out="$rendered/helm_$(basename "${values:-defaults.yaml}")"
    "$helm" template backend-injector "$chart" -n backend-injector "${args[@]}" >"$out"
    echo "check-manifests: helm lint and template of $chart ${values:-(defaults)}"
done

# Validate with kubernetes-validate's Python API rather than its CLI: the CLI only warns about
# a kind it has no schema for, which would let a typo in apiVersion or kind through.
"$PYTHON" - "$KUBE_VERSIONS" "$rendered"/*.yaml <<'PY'
"""Validate rendered manifests strictly; custom resources of known CRD groups are skipped."""

import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# Custom resources: there is no schema for them here; tests/test_manifests.py checks their
# fields instead.
CRD_GROUPS = ("cert-manager.io/",)

versions = sys.argv[1].split()
failures = 0
checked = 0
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as handle:
        objects = [item for item in yaml.safe_load_all(handle) if item]
    for item in objects:
        name = f"{item.get('kind')}/{item.get('metadata', {}).get('name')}"
        if item.get("apiVersion", "").startswith(CRD_GROUPS):
            print(f"check-manifests: {path.rsplit('/', 1)[-1]}: {name}: custom resource, not validated")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except ValidationError as error:
                where = ".".join(str(part) for part in error.path)
                print(f"check-manifests: INVALID {name} for {version}: {where}: {error.message}")
                failures += 1
            except SchemaNotFoundError as error:
                print(f"check-manifests: UNKNOWN {name}: {error.message}")
                failures += 1
        checked += 1
print(
    f"check-manifests: {checked} objects validated against Kubernetes {', '.join(versions)}"
    f" (strict): {failures} errors"
)
sys.exit(1 if failures else 0)
PY

"$HADOLINT" --failure-threshold warning Dockerfile
echo "check-manifests: hadolint: Dockerfile clean"
