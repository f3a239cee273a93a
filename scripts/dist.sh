#!/usr/bin/env bash
# Build what a cluster needs to run the jobs when its nodes lack the Python packages:
#   dist/sparkgan-VERSION-py3-none-any.whl        the package (pip install -c constraints/STACK.txt on an edge node)
#   dist/sparkgan-pyfiles.zip                     the pipeline package for spark-submit --py-files
#   dist/sparkgan-env-STACK-FLAVOR.tar.gz         a packed virtualenv for --archives ...#environment
# STACK: spark35 (default; BigDL included) or spark4, the tested set in constraints/STACK.txt.
# FLAVOR: full (every job) or core (no torch/TensorFlow: ingest, BigDL digits, transfer on
# features). The env holds no pyspark: executors use their cluster's Spark, which must be the
# stack's version. The packed env links to the base interpreter
# ($(python -c 'import sys; print(sys.base_prefix)')), which must exist at the same path on every
# node (same OS image), as with venv-pack everywhere.
#   STACK=spark35 scripts/dist.sh [full|core]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, but not through the venv's symlink
stack=${STACK:-spark35}
flavor=${1:-full}
constraints=constraints/$stack.txt
[ -f "$constraints" ] || { echo "scripts/dist.sh: STACK=$stack: no $constraints (expected spark35 or spark4)" >&2; exit 2; }
case "$flavor" in
  full) extras='[torch,tf]' ;;
  core) extras='' ;;
  *) echo "scripts/dist.sh: unknown flavor '$flavor' (expected full or core)" >&2; exit 2 ;;
esac
mkdir -p dist build
rm -f dist/sparkgan-*.whl dist/sparkgan-pyfiles.zip "dist/sparkgan-env-$stack-$flavor.tar.gz"

rm -rf build/lib build/bdist.*  # setuptools reuses them: a module deleted since would ship again
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w dist . >/dev/null
wheel=$(ls dist/sparkgan-*.whl)
rm -rf build/pyfiles && mkdir -p build/pyfiles
cp -r pipeline build/pyfiles/ && find build/pyfiles -name __pycache__ -prune -exec rm -rf {} +
(cd build/pyfiles && "$PY" -m zipfile -c "$OLDPWD/dist/sparkgan-pyfiles.zip" pipeline)

env_dir=build/env-$stack-$flavor
rm -rf "$env_dir"
"$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv "$env_dir"
# uv where `make setup` put it (the core env 69 -> 27 s here), else pip; uv reads no
# pip config, so pip's local sources (a wheel folder, local indexes) are handed on by scripts/uv_env.sh
if [ -x "$(dirname "$PY")/uv" ]; then
  # shellcheck source=scripts/uv_env.sh
  . scripts/uv_env.sh "$PY"
  pip_env=("$(dirname "$PY")/uv" pip install -q --compile-bytecode --python "$env_dir/bin/python" -c "$constraints")
else
  pip_env=("$env_dir/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints")
fi
# The cluster's own Spark runs the executors: the env must not shadow it, so the wheel goes in
# without its dependencies and they go in from its metadata, less pyspark (and so py4j).
# (Installing pyspark only to uninstall it cost ~5 s per env here, with pip's cache warm.)
"$PY" - "$wheel" "$extras" > "build/requirements-$stack-$flavor.txt" <<'EOF'
import sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement

wheel, extras = sys.argv[1], [e for e in sys.argv[2].strip("[]").split(",") if e] or [""]
with zipfile.ZipFile(wheel) as z:
    meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.name != "pyspark" and (req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)):
        print(f"{req.name}{req.specifier}")
EOF
"${pip_env[@]}" -r "build/requirements-$stack-$flavor.txt"
"${pip_env[@]}" --no-deps "$wheel"
if [ "$stack" = spark35 ]; then
  "${pip_env[@]}" --no-deps -r requirements-bigdl.txt
fi
if "$env_dir/bin/python" -c 'import pyspark' 2>/dev/null; then
  echo "scripts/dist.sh: pyspark got into $env_dir: it would shadow the cluster's Spark" >&2; exit 1
fi
"$(dirname "$PY")/venv-pack" -q -p "$env_dir" -o "dist/sparkgan-env-$stack-$flavor.tar.gz"
ls -lh dist/
