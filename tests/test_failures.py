"""Unexpected failures, made to happen in a real job run: one line on stderr (job, what it was
doing, the cause), exit status 1, nothing committed, the whole trace in the runs row and log file."""

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # each starts its own JVM, as a scheduler would


def ingest(tmp_path, source, output, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--source", str(source), "--output",
                           str(output), "--runs-table", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def without_daemon_noise(lines):
    """The console lines less Spark's own traces from pyspark/daemon.py for a worker whose socket the
    JVM closed while the failed job's other tasks were cancelled (EOFError or BrokenPipeError, by
    when it happens; a race: Spark 4 prints one in about one run of six to twelve). They are not the
    job's failure and name nothing of it: every frame is pyspark's."""
    kept, i = [], 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last):"):
            j = i + 1
            while j < len(lines) and lines[j].startswith(" "):
                j += 1
            frames = [line for line in lines[i + 1:j] if line.lstrip().startswith("File ")]
            if j < len(lines) and lines[j].startswith(("EOFError", "BrokenPipeError", "ConnectionResetError")) \
                    and frames and all("/pyspark/" in f for f in frames) and "daemon.py" in frames[0]:
                i = j + 1
                continue
        kept.append(lines[i])
        i += 1
    return kept


def check_one_line_failure(r, tmp_path, doing, cause):
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    failed = [line[line.index("sparkgan ingest:"):] for line in lines if "sparkgan ingest:" in line]
    assert len(failed) == 1 and failed[0].startswith(f"sparkgan ingest: failed while {doing}: "), failed
    assert cause in failed[0]
    # no stack trace on the console, Java's or Python's
    kept = without_daemon_noise(lines)
    traced = [i for i, line in enumerate(kept) if line.lstrip().startswith("at ") or "Traceback" in line]
    assert not traced, "\n".join(kept[traced[0]:traced[0] + 12]) if traced else ""
    run = pq.read_table(tmp_path / "runs").to_pandas().iloc[-1]
    assert run.status == "failed" and "Traceback (most recent call last)" in run.error and cause in run.error
    log = failed[0].rsplit("(trace: ", 1)[1].rstrip(")")
    assert log == str(tmp_path / "logs" / f"{run.run_id}.log") and cause in open(log).read()


def test_an_output_folder_that_cannot_be_created(tmp_path):
    """/proc takes no files, not even root's: the output's lease cannot be created, so the job stops
    before Spark starts, in one line (exit 2), writing nothing, not even a runs row."""
    r = ingest(tmp_path, "digits", "/proc/sparkgan-test")
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = [line for line in r.stderr.splitlines() if "sparkgan ingest:" in line]
    assert line.startswith("sparkgan ingest: error: --output /proc/sparkgan-test") and "/proc" in line
    assert not [p for p in os.listdir("/proc") if p.startswith("sparkgan-test")]
    assert not (tmp_path / "runs").exists()


def test_a_failure_injected_on_an_executor(tmp_path):
    src = tmp_path / "tree" / "a"
    src.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(src / f"{i}.png")
    # every Python process of the run (driver and executors' workers) loads this first; only the
    # executors open images
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(
        "import PIL.Image\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('injected: the disk went away')\n"
        "PIL.Image.open = broken\n")
    out = tmp_path / "ds"
    r = ingest(tmp_path, tmp_path / "tree", out, env={"PYTHONPATH": str(tmp_path / "inject")})
    check_one_line_failure(r, tmp_path, f"writing {out}", "RuntimeError: injected: the disk went away")
    assert not out.exists() and not list(tmp_path.glob("ds.__*"))
