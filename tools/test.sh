#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up, lint, type-check, check the deployment
# files, then run every test (unit, fixtures, HTTP over TLS, and e2e against a real
# kube-apiserver). Extra arguments go to pytest.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# --all: besides the test extra, the e2e tests need the node's Debian packages, the binaries
# and the images, and the chart and manifest tests helm and kubectl (with --test alone, the
# unit tests run and those skip).
bash tools/setup.sh --all

echo "== ruff" >&2
.venv/bin/ruff check webhook tests benchmarks
echo "== import contracts" >&2
.venv/bin/lint-imports
echo "== mypy" >&2
.venv/bin/mypy
echo "== manifests and Dockerfile" >&2
# PYTHON chose the interpreter that made .venv above; the checks run in .venv.
PYTHON="$repo/.venv/bin/python" bash tools/check-manifests.sh
echo "== pytest" >&2
# Property tests run their full 10,000 examples here (see tests/rules/test_properties.py).
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
.venv/bin/python -m pytest "$@"
