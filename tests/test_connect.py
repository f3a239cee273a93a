"""Every job but BigDL's on a real Spark Connect server (Spark 4), with the same outputs as classic mode.

The server is Spark's own (`start-connect-server.sh` from the pyspark package, conftest's
`connect_server`); the jobs run as a user runs them, `python -m pipeline JOB ... --remote sc://...`,
and their outputs are compared with the same job run on a classic session in this process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.session import spark_major
from tests.conftest import ROOT, digits_table, photo_folder

needs_connect = pytest.mark.skipif(spark_major() < 4, reason="Spark Connect: the Spark 3.5 stack has no Connect "
                                                             "server (its jar comes from Maven)")


@pytest.mark.skipif(spark_major() >= 4, reason="Spark 3.5 only: this stack cannot run Connect")
def test_connect_on_spark35_is_one_line_naming_the_spark4_stack(cli, tmp_path):
    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "ds", "--remote", "sc://127.0.0.1:1")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Spark Connect needs the Spark 4 stack" in err and "Maven" in err and not (tmp_path / "ds").exists()


def on_connect(server, tmp_path, job, *args, python=sys.executable, env=None, extra=()):
    r = subprocess.run([python, "-m", "pipeline", job, *map(str, args), "--runs-table", str(tmp_path / "runs-connect"),
                        *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def remote(server):
    return ["--remote", server["url"]]


def table(path, *sort):
    return pq.read_table(path).sort_by([(c, "ascending") for c in sort]).to_pylist()


def last_run(runs, job):
    rows = [r for r in pq.read_table(runs).to_pylist() if r["job"] == job]
    return max(rows, key=lambda r: r["started_at"])


def tiny_keras_model(path):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(path)
    return path


@needs_connect
@pytest.mark.slow
def test_jobs_on_connect_equal_classic_ones(spark, cli, connect_server, tmp_path):
    from pipeline.cli import main

    c, k = tmp_path / "classic", tmp_path / "connect"
    r = remote(connect_server)
    assert main(["ingest", "--source", "digits", "--output", str(c / "ds"), "--runs-table", str(tmp_path / "runs")]) == 0
    on_connect(connect_server, tmp_path, "ingest", "--source", "digits", "--output", k / "ds", extra=r)
    assert table(c / "ds" / "images", "path") == table(k / "ds" / "images", "path")
    for key in ("status", "rows_in", "rows_out", "rows_rejected"):
        assert last_run(tmp_path / "runs", "ingest")[key] == last_run(tmp_path / "runs-connect", "ingest")[key]
    assert last_run(tmp_path / "runs-connect", "ingest")["spark_master"] == "local[2]"  # from the server's settings

    digits = ["--engine", "torch", "--epochs", 1, "--threads", 1, "--num-processes", 1, "--augment", 0]
    code, _, err = cli("train_digits", "--input", c / "ds" / "images", "--output", c / "lenet", *digits)
    assert code == 0, err
    on_connect(connect_server, tmp_path, "train_digits", "--input", k / "ds" / "images", "--output", k / "lenet",
               *digits, extra=r)
    ours, theirs = table(c / "lenet" / "predictions", "path"), table(k / "lenet" / "predictions", "path")
    assert [p["prediction"] for p in ours] == [p["prediction"] for p in theirs] and len(ours) == 1797
    assert sorted(os.listdir(c / "lenet")) == sorted(os.listdir(k / "lenet"))  # figures and tables alike
    top1 = [dict(last_run(runs, "train_digits")["metrics"])["test_top1"] for runs in (tmp_path / "runs",
                                                                                        tmp_path / "runs-connect")]
    assert top1[0] == top1[1] > 0.2  # one epoch of 1,415 8x8 digits: far above chance (0.1), the same both ways

    on_connect(connect_server, tmp_path, "predict_digits", "--model", k / "lenet" / "model", "--input",
               c / "ds" / "images", "--output", k / "preds", extra=r)
    assert [p["prediction"] for p in table(k / "preds", "path")] == [p["prediction"] for p in ours]

    model = tiny_keras_model(tmp_path / "tiny.keras")
    feat = ["--model-file", model, "--feature-layer", "pooled", "--batch-size", 128]
    code, _, err = cli("featurize", "--input", c / "ds" / "images", "--output", c / "feat", *feat)
    assert code == 0, err
    on_connect(connect_server, tmp_path, "featurize", "--input", k / "ds" / "images", "--output", k / "feat", *feat,
               extra=r)
    a, b = (np.stack([row["features"]["values"] for row in table(d / "feat" / "features", "path")]) for d in (c, k))
    assert a.shape == (1797, 4)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())

    code, out, err = cli("transfer", "--input", c / "feat" / "features", "--output", c / "lr")
    assert code == 0, err
    on_connect(connect_server, tmp_path, "transfer", "--input", k / "feat" / "features", "--output", k / "lr", extra=r)
    acc = [dict(last_run(runs, "transfer")["metrics"])["test_accuracy"] for runs in (tmp_path / "runs",
                                                                                     tmp_path / "runs-connect")]
    assert acc[0] == pytest.approx(acc[1], abs=1e-9) and acc[0] > 0.2  # 4 random conv features, 10 classes
    assert (k / "lr" / "confusion_matrix.png").stat().st_size > 0 and (k / "lr" / "model").is_dir()


@needs_connect
@pytest.mark.slow
def test_gans_upscale_and_the_transfer_demo_on_connect(spark, cli, connect_server, tmp_path):
    r = remote(connect_server)
    k = tmp_path / "connect"
    # the bundled photos at 128 px: full-size 4x upscales, twice, were most of this test's time
    source = photo_folder(tmp_path / "photos-src", 128)
    on_connect(connect_server, tmp_path, "ingest", "--source", source, "--output", k / "photos", extra=r)
    photos = k / "photos" / "images"
    on_connect(connect_server, tmp_path, "train_gan", "--model", "srgan", "--input", photos, "--output", k / "sr",
               "--steps", 6, "--pretrain-steps", 3, "--crop", 32, "--log-every", 2, extra=r)
    up = ["--generator", k / "sr", "--input", photos, "--split", "test"]
    on_connect(connect_server, tmp_path, "upscale", *up, "--output", k / "up", extra=r)
    code, _, err = cli("upscale", *up, "--output", tmp_path / "classic-up")
    assert code == 0, err
    ours, theirs = table(tmp_path / "classic-up" / "images", "path"), table(k / "up" / "images", "path")
    assert len(ours) == 3 and [(x["path"], x["data"]) for x in ours] == [(x["path"], x["data"]) for x in theirs]

    digits = digits_table(tmp_path / "digits", 400, 200)
    dc = ["--model", "dcgan", "--input", digits, "--output", k / "dc", "--checkpoint-every", 10]
    on_connect(connect_server, tmp_path, "train_gan", *dc, "--steps", 20, extra=r)
    on_connect(connect_server, tmp_path, "train_gan", *dc, "--steps", 30, "--resume", "--mode", "overwrite", extra=r)
    run = last_run(tmp_path / "runs-connect", "train_gan")
    assert run["status"] == "succeeded" and dict(run["metrics"])["resumed_from_step"] == 20
    steps = [m["step"] for m in pq.read_table(k / "dc" / "metrics").to_pylist() if m["name"] == "loss_g"]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 30

    on_connect(connect_server, tmp_path, "transfer_demo", "--input", digits, "--output", k / "demo", extra=r)
    report = json.loads((k / "demo" / "report.json").read_text())
    assert report["base_test_accuracy"] > 0.8 and set(report["test_accuracy"]) == {
        "transferred CNN features", "raw pixels", "untrained CNN features"}


@needs_connect
@pytest.mark.slow
def test_a_job_is_pointed_at_connect_every_way_pyspark_users_expect(connect_server, tmp_path, python):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(src / f"{i}.png")
    args = ["--source", tmp_path / "src"]
    on_connect(connect_server, tmp_path, "ingest", *args, "--output", tmp_path / "env",
               env={"SPARK_REMOTE": connect_server["url"]})
    submit = subprocess.run([os.path.join(os.path.dirname(python), "spark-submit"), "--remote", connect_server["url"],
                             os.path.join(ROOT, "jobs", "ingest.py"), *map(str, args), "--output", str(tmp_path / "sub"),
                             "--runs-table", str(tmp_path / "runs-connect")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYSPARK_PYTHON": python})
    assert submit.returncode == 0, submit.stderr[-3000:]
    # spark.api.mode=connect: a Connect server in the driver, on the profile's master
    on_connect(connect_server, tmp_path, "ingest", *args, "--output", tmp_path / "inproc", "--conf",
               "spark.api.mode=connect")
    for out in ("env", "sub", "inproc"):
        assert pq.read_table(tmp_path / out / "images").num_rows == 3
    runs = pq.read_table(tmp_path / "runs-connect").to_pylist()
    assert len(runs) == 3 and {r["status"] for r in runs} == {"succeeded"}


CLIENT = os.path.join(ROOT, ".venv-client", "bin", "python")


@needs_connect
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CLIENT), reason="no .venv-client: `make client-setup` (make test does on "
                                                       "Spark 4) installs the thin client, pyspark-client")
def test_the_thin_client_runs_jobs_with_no_jvm(connect_server, tmp_path):
    """A venv with pyspark-client only (no JVM, no Spark jars, no TensorFlow): ingest, featurize and a
    predictions read, against the server; the server's Python workers do the decoding and inference."""
    env = {"PYTHONPATH": ROOT}
    check = subprocess.run([CLIENT, "-c", "import importlib.util as u; print(u.find_spec('pyspark.core') is None, "
                                          "u.find_spec('tensorflow') is None)"], capture_output=True, text=True)
    assert check.stdout.split() == ["True", "True"]
    r = remote(connect_server)
    on_connect(connect_server, tmp_path, "ingest", "--source", "digits", "--output", tmp_path / "ds", python=CLIENT,
               env=env, extra=r)
    model = tiny_keras_model(tmp_path / "tiny.keras")
    on_connect(connect_server, tmp_path, "featurize", "--input", tmp_path / "ds" / "images", "--output",
               tmp_path / "feat", "--model-file", model, "--feature-layer", "pooled", python=CLIENT, env=env, extra=r)
    # a script file: pyspark's Connect client takes a `python -c` main module for a doctest run
    (tmp_path / "read.py").write_text("import sys\nfrom pyspark.sql import SparkSession\n"
                                      "s = SparkSession.builder.remote(sys.argv[1]).getOrCreate()\n"
                                      "print(s.read.parquet(sys.argv[2]).where('features IS NOT NULL').count())\n")
    read = subprocess.run([CLIENT, str(tmp_path / "read.py"), connect_server["url"], str(tmp_path / "feat" / "features")],
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.split()[-1] == "1797"


SQL_ON_CONNECT = """
import sys
from pyspark.sql import SparkSession
from pipeline.featurize import register_udf

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
register_udf(spark, "tiny", model=sys.argv[2], featureLayer="pooled")
spark.read.parquet(sys.argv[3]).createOrReplaceTempView("images")
rows = spark.sql("SELECT path, tiny(height, width, nChannels, data) AS f FROM images ORDER BY path").collect()
print(len(rows), sum(r.f is not None and len(r.f) == 4 for r in rows))
"""


@needs_connect
@pytest.mark.slow
def test_a_model_as_a_sql_function_on_connect(connect_server, tmp_path):
    """sparkdl's registerKerasImageUDF, on a Connect session: analysts' `SELECT tiny(...) FROM images`."""
    images = digits_table(tmp_path / "digits", 30, 10)
    model = tiny_keras_model(tmp_path / "tiny.keras")
    (tmp_path / "sql.py").write_text(SQL_ON_CONNECT)
    r = subprocess.run([sys.executable, str(tmp_path / "sql.py"), connect_server["url"], str(model), images],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["40", "40"]
