"""Quiet output, honest --help, checks before Spark, `python -m pipeline.runs`, `pipeline.jars`."""

import os
import re
import subprocess
import sys
import time
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, runs
from pipeline.cores import planned_cores
from pipeline.session import bigdl_missing
from tests.conftest import ROOT

SPARK_INFO = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ", re.M)
BIN = os.path.dirname(sys.executable)


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare on words


def test_help_shows_the_profiles_defaults(capsys):
    text = help_text(capsys, "ingest")
    assert "(default: train=0.8,test=0.2 from conf/local.yaml)" in text
    assert "(default: 4 from conf/local.yaml)" in text and "(default: 256)" in text  # profile, built-in
    assert "--mode {error,overwrite} what to do when --output exists (default: error)" in text
    cluster = help_text(capsys, "ingest", "--conf-file", os.path.join(ROOT, "conf", "cluster.yaml"))
    assert "(default: 8 from conf/cluster.yaml)" in cluster
    digits = help_text(capsys, "train_digits")
    assert "(default: bigdl: 128, torch: 32)" in digits  # each engine's own batch
    assert "(default: 1 from conf/local.yaml)" in digits  # num_processes


@pytest.mark.parametrize("master, settings, cores", [
    ("local[3]", {}, 3), ("local[*]", {}, os.cpu_count()), ("local", {}, 1), ("local[2, 4]", {}, 2),
    ("spark://h:7077", {"spark.cores.max": "6"}, 6),
    ("yarn", {"spark.executor.instances": "3", "spark.executor.cores": "2"}, 6),
    ("local[4]", {"spark.default.parallelism": "5"}, 5),
    ("spark://h:7077", {}, None), ("yarn", {"spark.executor.cores": "2"}, None),
])
def test_planned_cores(master, settings, cores):
    assert planned_cores(master, settings) == cores


@pytest.mark.skipif(bigdl_missing() is not None, reason="BigDL needs Spark 3.5")
def test_bigdl_batch_is_refused_before_spark_starts(tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pipeline", "train_digits", "--input", str(tmp_path / "none"),
                        "--output", str(tmp_path / "out"), "--batch-size", "127",
                        "--runs-table", str(tmp_path / "runs")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    cores = os.cpu_count()
    assert f"--batch-size 127 is not a multiple of the {cores} cores" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and time.time() - t0 < 10  # no JVM was started
    assert os.listdir(tmp_path) == []  # nothing written: no runs row, no output


def runs_table(path):
    def row(run_id, job, status, minute, error=None):
        return {"run_id": run_id, "job": job, "status": status, "started_at": datetime(2026, 12, 1, 9, minute),
                "duration_s": 1.5, "rows_in": 10, "rows_out": 10 if status == "succeeded" else None,
                "rows_rejected": 0, "metrics": [("test_top1", 0.98)] if job == "train_digits" else [],
                "outputs": '{"model": "/o/model"}', "error": error}
    rows = [row("ingest-1", "ingest", "succeeded", 1), row("train_digits-2", "train_digits", "failed", 2, "boom\ntrace"),
            row("train_digits-3", "train_digits", "succeeded", 3)]
    schema = pa.schema([("run_id", pa.string()), ("job", pa.string()), ("status", pa.string()),
                        ("started_at", pa.timestamp("ns")), ("duration_s", pa.float64()), ("rows_in", pa.int64()),
                        ("rows_out", pa.int64()), ("rows_rejected", pa.int64()),
                        ("metrics", pa.map_(pa.string(), pa.float64())), ("outputs", pa.string()),
                        ("error", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema), path)
    return path


def test_runs_lists_ids_and_start_times_and_filters(tmp_path, capsys):
    table = str(runs_table(tmp_path / "runs.parquet"))
    assert runs.main([table]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ingest-1  2026-12-01 09:01:00  ingest +succeeded +1\.5s  in 10, out 10, rejected 0$", out, re.M)
    assert out.index("ingest-1") < out.index("train_digits-2") < out.index("train_digits-3")  # oldest first
    assert "error: boom" in out and "trace" not in out and "{'test_top1': 0.98}" in out
    assert runs.main([table, "--job", "train_digits", "--status", "succeeded"]) == 0
    out = capsys.readouterr().out
    assert "train_digits-3" in out and "train_digits-2" not in out and "ingest-1" not in out
    assert runs.main([table, "--last", "1"]) == 0
    assert capsys.readouterr().out.startswith("train_digits-3")
    assert runs.main([table, "--status", "running"]) == 0
    assert "no runs in" in capsys.readouterr().out


def test_jars_on_each_stack():
    r = subprocess.run([sys.executable, "-m", "pipeline.jars"], capture_output=True, text=True, cwd=ROOT)
    if bigdl_missing() is None:
        assert r.returncode == 0 and r.stdout.strip().endswith(".jar")
    else:
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.strip().splitlines() == [f"python -m pipeline.jars: error: {bigdl_missing()}"]


def test_tensorflow_start_up_lines_go_to_the_log():
    code = "from pipeline.quiet import import_tensorflow; tf = import_tensorflow(); print(int(tf.constant(2) + 1))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SPARKGAN_VERBOSE")})
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr
    assert "oneDNN" not in r.stderr and "absl" not in r.stderr, r.stderr


@pytest.mark.slow
def test_spark_submit_is_quiet_and_verbose_brings_the_log_back(tmp_path):
    def submit(*extra):
        cmd = [os.path.join(BIN, "spark-submit"), "--master", "local[2]", os.path.join(ROOT, "jobs", "ingest.py"),
               "--source", "digits", "--output", str(tmp_path / f"digits{len(extra)}"),
               "--runs-table", str(tmp_path / "runs"), *extra]
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SPARKGAN_VERBOSE")}
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # spark-submit finds Spark through the venv's python
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)

    quiet = submit()
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "sparkgan ingest: done" in quiet.stdout
    assert not SPARK_INFO.search(quiet.stderr + quiet.stdout), SPARK_INFO.search(quiet.stderr + quiet.stdout)
    loud = submit("--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert len(SPARK_INFO.findall(loud.stderr + loud.stdout)) > 10
