"""The README's quickstart and cluster blocks, run as written, in order, in a fresh shell.

Each block follows a `<!-- readme-test: NAME -->` line. They run with bash in a new folder that
holds links to the checkout's files (so `make setup`, `scripts/...` and `jobs/...` resolve and
every output lands in the folder), with no virtual environment active: the README must say how
to get one. On the Spark 4 stack the blocks' `make setup` and `.venv` name that stack's venv, as
the README says to.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.default_stack]  # the quickstart is the default stack's
README = os.path.join(ROOT, "README.md")
VENV = os.path.basename(sys.prefix)  # .venv or .venv-spark4: the stack this test runs on
STACK = "spark4" if VENV == ".venv-spark4" else "spark35"
SPARK_INFO = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ", re.M)  # Spark's log4j console lines
NOISE = ("creating: ", "BigDLBasePickler", "Engine.init", "oneDNN custom operations", "absl::InitializeLog")


def blocks(text: str) -> dict[str, str]:
    """{name: bash code} of the fenced blocks that follow a `<!-- readme-test: NAME -->` line."""
    found = re.findall(r"<!-- readme-test: (\S+)[^>]*-->\s*\n```bash\n(.*?)\n```", text, re.S)
    return dict(found)


def for_stack(code: str) -> str:
    if STACK == "spark35":
        return code
    return code.replace("make setup", f"make setup STACK={STACK}").replace(".venv/bin/activate",
                                                                            f"{VENV}/bin/activate")


@pytest.fixture
def checkout(tmp_path):
    """A folder that looks like a fresh clone: the checkout's files linked, no out/."""
    for name in os.listdir(ROOT):
        if name not in ("out", ".git", "mutants", "spark-warehouse") and not name.startswith(".pytest"):
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    yield tmp_path
    # a failed cluster block must not leave its master and workers running
    subprocess.run(["scripts/standalone.sh", "stop"], cwd=tmp_path, capture_output=True,
                   env={**fresh_env(), "PYTHON": sys.executable})


# How the suite starts JVMs and torch threads (tests/jvm.py, conftest's OMP_WAIT_POLICY): they change
# how much CPU a JVM's start takes, not what a command does or needs, so the newcomer's shell keeps them
COST_ONLY = ("SPARK_SUBMIT_OPTS", "SPARK_DAEMON_JAVA_OPTS", "SPARK_LAUNCHER_OPTS", "OMP_WAIT_POLICY")


def fresh_env() -> dict:
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "JAVA_HOME", "USER", *COST_ONLY)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", **{k: os.environ[k] for k in keep if k in os.environ}}


def test_blocks_are_marked():
    with open(README) as fh:
        found = blocks(fh.read())
    assert list(found) == ["quickstart", "cluster"]


def test_quickstart_and_cluster_run_as_written(checkout):
    # `make setup` must be a no-op here: an install run from the linked folder would write that
    # folder's paths into the shared venv's entry points
    make_q = subprocess.run(["make", "-q", "setup", f"STACK={STACK}"], cwd=ROOT, capture_output=True)
    if make_q.returncode != 0:
        pytest.skip(f"{VENV} is older than its constraints: `make setup STACK={STACK}` reinstalls (make test does)")
    with open(README) as fh:
        found = blocks(fh.read())
    # one shell, as a reader follows the README: the cluster block uses the quickstart's venv and folder
    script = "\n".join(f'echo "<<block {name} $(date +%s.%N)>>"\n{for_stack(found[name])}'
                       for name in ("quickstart", "cluster")) + '\necho "<<block end $(date +%s.%N)>>"'
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=checkout, env=fresh_env(),
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"a README block failed:\n{out[-6000:]}"
    marks = re.findall(r"^<<block (\S+) ([\d.]+)>>$", r.stdout, re.M)
    assert [m[0] for m in marks] == ["quickstart", "cluster", "end"]
    blocks_out = dict(zip(["quickstart", "cluster"], re.split(r"^<<block \S+ [\d.]+>>$", r.stdout, flags=re.M)[1:]))
    # quiet by default: the jobs' own lines, Spark's progress bar and warnings, nothing else
    assert not SPARK_INFO.search(out), re.findall(r"^.*\n.*\n\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO .*$", out, re.M)[:3]
    assert not [n for n in NOISE if n in out], out[-3000:]
    quickstart, cluster = blocks_out["quickstart"], blocks_out["cluster"]
    assert "sparkgan ingest: done" in quickstart and "sparkgan predict_digits: done" in quickstart
    # python -m pipeline.runs lists the runs: ids and start times, filtered by job and status
    listed = re.findall(r"^(\w+)-\S+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (\w+) +(\w+)", quickstart, re.M)
    assert listed[:3] == [("ingest", "ingest", "succeeded"), ("train_digits", "train_digits", "succeeded"),
                          ("predict_digits", "predict_digits", "succeeded")]
    assert listed[3:] == [("train_digits", "train_digits", "succeeded")]  # --job train_digits --last 1
    assert (checkout / "out" / "my-lenet" / "confusion_matrix.png").is_file()
    assert "sparkgan ingest: done" in cluster and "sparkgan train_digits: done" in cluster
    assert (checkout / "out" / "cluster-lenet" / "model").is_dir()
    assert not (checkout / "out" / "cluster" / "work").exists()  # stopped, work dirs removed
    seconds = [float(m[1]) for m in marks]
    print(f"README blocks on {STACK}: quickstart {seconds[1] - seconds[0]:.0f} s, "
          f"cluster {seconds[2] - seconds[1]:.0f} s")
