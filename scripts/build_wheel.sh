#!/usr/bin/env bash
# Build what clusters get:
#   dist/xray_spark-<ver>-py3-none-any.whl   for `pip install` on nodes / a Databricks cluster library
#   dist/xray_spark-<ver>-pyfiles.zip        for `spark-submit --py-files` (same bytes as the wheel)
#
#   scripts/build_wheel.sh [OUT_DIR]        (default OUT_DIR: dist/)
#
# Why the .zip twin: PySpark puts only .py/.zip/.egg/.jar files from --py-files on the executors' sys.path
# (pyspark SparkContext.PACKAGE_EXTENSIONS); a .whl is shipped to every executor but never importable
# there, so jobs fail with "No module named 'xray_spark'" on executors while the driver works. A pure-Python
# wheel is a zip archive with the package at its root, so the same bytes under a .zip name import fine.
#
# The build runs on a staged copy of pyproject.toml + src/ so the working tree gets no build/ or egg-info
# churn. It uses the current environment's setuptools when present (offline-safe); otherwise pip builds in
# an isolated environment, which needs PyPI. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$repo/pyproject.toml" "$stage/"
[[ -f "$repo/README.md" ]] && cp "$repo/README.md" "$stage/"
[[ -f "$repo/LICENSE" ]] && cp "$repo/LICENSE" "$stage/"
mkdir -p "$stage/src"
# copy the package without bytecode caches or stale egg-info
(cd "$repo/src" && tar --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' -cf - xray_spark) \
    | (cd "$stage/src" && tar -xf -)

isolation=(--no-build-isolation)
if ! "$py" -c "import setuptools, wheel" >/dev/null 2>&1; then
    isolation=()  # no local build backend: let pip fetch setuptools from PyPI
fi
rm -f "$out"/xray_spark-*.whl "$out"/xray_spark-*-pyfiles.zip
PYTHONWARNINGS=ignore "$py" -m pip wheel --quiet --no-deps "${isolation[@]}" --wheel-dir "$out" "$stage"
whl="$(ls "$out"/xray_spark-*.whl)"
base="$(basename "$whl" .whl)"         # xray_spark-0.1.0-py3-none-any
cp "$whl" "$out/${base%%-py3-*}-pyfiles.zip"
ls "$out"/xray_spark-*
