#!/usr/bin/env bash
# Build what a cluster needs to run the jobs when its nodes lack the Python packages:
#   dist/sparkgan-VERSION-py3-none-any.whl   the package (pip install --no-deps on an edge node)
#   dist/sparkgan-pyfiles.zip                the pipeline package for spark-submit --py-files
#   dist/sparkgan-env-FLAVOR.tar.gz          a packed virtualenv for --archives ...#environment
# FLAVOR: full (every job: the whole pinned stack) or core (executor side of ingest, BigDL
# digits and transfer: no torch/tensorflow/plotting). The env holds no pyspark: executors use their cluster's Spark.
# The packed env links to the base interpreter ($(python -c 'import sys; print(sys.base_prefix)')),
# which must exist at the same path on every node (same OS image), as with venv-pack everywhere.
#   scripts/dist.sh [full|core]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, but not through the venv's symlink
flavor=${1:-full}
case "$flavor" in
  full) drop='^(pyspark|conda-pack)==' ;;
  # executors never plot or load the bundled sets: those stay on the driver
  core) drop='^(pyspark|conda-pack|torch|tensorflow|tensorflow-cpu|keras|matplotlib|scikit-learn|scikit-image|mlxtend|tqdm)==' ;;
  *) echo "scripts/dist.sh: unknown flavor '$flavor' (expected full or core)" >&2; exit 2 ;;
esac
mkdir -p dist build
rm -f dist/sparkgan-*.whl dist/sparkgan-pyfiles.zip "dist/sparkgan-env-$flavor.tar.gz"

"$PY" -m pip wheel -q --no-deps --no-build-isolation -w dist . >/dev/null
rm -rf build/pyfiles && mkdir -p build/pyfiles
cp -r pipeline build/pyfiles/ && find build/pyfiles -name __pycache__ -prune -exec rm -rf {} +
(cd build/pyfiles && "$PY" -m zipfile -c "$OLDPWD/dist/sparkgan-pyfiles.zip" pipeline)

env_dir=build/env-$flavor
rm -rf "$env_dir"
"$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv "$env_dir"
grep -Ev "$drop" requirements.txt | grep -Ev '^\s*(#|$)' > "build/requirements-env-$flavor.txt"
"$env_dir/bin/python" -m pip install -q --disable-pip-version-check -r "build/requirements-env-$flavor.txt"
"$env_dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-bigdl.txt dist/sparkgan-*.whl
"$(dirname "$PY")/venv-pack" -q -p "$env_dir" -o "dist/sparkgan-env-$flavor.tar.gz"
ls -lh dist/
