"""MLflow tracking and the registry against a real `mlflow server` (SQLite backend, local artifacts, the
session's `mlflow_server` fixture): runs, metrics, figures and model versions read back through
MLflow's client; models:/ URIs as job inputs; pyfunc and spark_udf on the registered models."""

import os
import re
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from conftest import ROOT, digits_table

mlflow = pytest.importorskip("mlflow", reason="MLflow tracking: mlflow is not installed in this venv (make setup)")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(autouse=True)
def _no_tracking_uri_after(monkeypatch):
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ, which every later job of
    this xdist worker would read (and its subprocesses inherit) as an order to track: undone after
    each test. Found when a Connect test ran after this file's and its jobs logged to this server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)  # mlflow's own default again, in this process


def _runs(path):
    return pq.read_table(str(path)).to_pandas().sort_values("started_at")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_of(client, job_run_id: str):
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               filter_string=f"tags.`sparkgan.run_id` = '{job_run_id}'")
    assert len(found) == 1, found
    return found[0]


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_the_core_runs_without_mlflow_and_a_uri_without_it_is_one_line(tmp_path):
    """mlflow blocked from import: a job runs untracked; a tracking URI then is one line, exit 2."""
    code = f"""
import sys
sys.modules["mlflow"] = None  # `import mlflow` raises ImportError
from pipeline.cli import main
assert main(["ingest", "--source", "digits", "--output", {str(tmp_path / 'ds')!r}, "--runs-table",
             {str(tmp_path / 'runs')!r}]) == 0
assert "mlflow" not in [m for m in sys.modules if sys.modules[m] is not None]
sys.exit(main(["ingest", "--source", "digits", "--output", {str(tmp_path / 'ds2')!r}, "--runs-table",
               {str(tmp_path / 'runs')!r}, "--tracking-uri", "sqlite:///{tmp_path}/m.db"]))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (f"sparkgan ingest: error: --tracking-uri sqlite:///{tmp_path}/m.db: "
                                                 "mlflow is not installed (pip install 'sparkgan[mlflow]') (set "
                                                 "tracking.on_error: continue in the profile to run without tracking)")
    assert (tmp_path / "ds" / "images").is_dir() and not (tmp_path / "ds2").exists()


def test_a_server_that_is_down_stops_the_job_before_spark_or_is_skipped_when_configured(cli, tmp_path, caplog):
    dead = f"http://127.0.0.1:{_dead_port()}"
    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "ds", "--tracking-uri", dead)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"sparkgan ingest: error: --tracking-uri {dead}: the tracking server does not answer")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "runs").exists()  # no work, no runs row

    profile = tmp_path / "profile.yaml"
    with open(os.path.join(ROOT, "conf", "local.yaml")) as fh:
        text = fh.read().replace("spark_defaults: ", f"spark_defaults: {ROOT}/conf/")
    profile.write_text(text + f"tracking:\n  uri: {dead}\n  on_error: continue\n")
    caplog.set_level("WARNING", logger="pipeline.tracking")
    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "ds", "--conf-file", profile)
    assert code == 0, err
    assert f"tracking off for this run: {dead}: the tracking server does not answer" in caplog.text
    assert _runs(tmp_path / "runs").mlflow_run_id.isna().all()

    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "x", "--register-as", "m",
                       "--tracking-uri", dead)
    assert code == 2 and "--register-as m: ingest trains no model" in err, err


@pytest.mark.slow  # two TorchDistributor launches
def test_lenet5_run_resume_registry_and_pyfunc(spark, cli, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    digits = digits_table(tmp_path / "digits", 400, 150)  # small real digits: the test is about tracking
    out = tmp_path / "lenet"
    common = ["--engine", "torch", "--input", digits, "--output", out, "--augment", 0, "--tracking-uri", mlflow_server]
    code, _, err = cli("train_digits", *common, "--epochs", 1, "--register-as", "lenet5",
                       "--tracking-tag", "sparkgan.logical_date=2026-11-30")  # as the DAG tags its tasks
    assert code == 0, err
    row = _runs(tmp_path / "runs").iloc[-1]
    run = _run_of(client, row.run_id)
    assert row.mlflow_run_id == run.info.run_id and run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "sparkgan-train_digits"
    assert run.data.params["epochs"] == "1" and run.data.params["engine"] == "torch"
    assert run.data.params["input"] == digits
    tags = run.data.tags
    assert tags["sparkgan.spark_app_id"] == spark.sparkContext.applicationId
    # (the revision the row names may be newer: the checkout's HEAD, read again at the row's end)
    assert re.fullmatch(r"[0-9a-f]{7,40}", tags["mlflow.source.git.commit"])
    assert tags["sparkgan.runs_table"] == str(tmp_path / "runs") and tags["sparkgan.logical_date"] == "2026-11-30"
    # per-epoch metrics from rank 0, final ones and the row counts from the driver
    assert _steps(client, run.info.run_id, "val_top1") == [1]
    assert run.data.metrics["test_top1"] == pytest.approx(dict(row.metrics)["test_top1"])
    assert run.data.metrics["rows_in"] == row.rows_in == 550
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/confusion_matrix.png", "figures/training_curves.png"}
    version = client.get_model_version("lenet5", "1")
    assert version.run_id == run.info.run_id

    # a resume continues the same MLflow run: epoch 2 added, epoch 1 not logged twice
    code, _, err = cli("train_digits", *common, "--epochs", 2, "--resume", "--mode", "overwrite",
                       "--register-as", "lenet5")
    assert code == 0, err
    row2 = _runs(tmp_path / "runs").iloc[-1]
    assert row2.mlflow_run_id == run.info.run_id and row2.run_id != row.run_id
    again = client.get_run(run.info.run_id)
    assert _steps(client, run.info.run_id, "val_top1") == [1, 2]
    assert again.data.params["epochs"] == "1" and again.data.tags["sparkgan.resumed_with.epochs"] == "2"
    assert again.data.tags["sparkgan.run_ids"] == f"{row.run_id},{row2.run_id}"
    client.set_registered_model_alias("lenet5", "champion", "2")

    # the registered model as a job input, and as MLflow's pyfunc: the same predictions
    code, _, err = cli("predict_digits", "--model", "models:/lenet5@champion", "--input", digits, "--output",
                       tmp_path / "p", "--tracking-uri", mlflow_server)
    assert code == 0, err
    ours = spark.read.parquet(str(tmp_path / "p")).where("split = 'test'").select("path", "prediction")
    mlflow.set_tracking_uri(mlflow_server)
    udf = mlflow.pyfunc.spark_udf(spark, "models:/lenet5@champion", result_type="integer", env_manager="local")
    images = spark.read.parquet(digits).where("split = 'test'")
    theirs = images.select("path", udf("height", "width", "nChannels", "data").alias("mlflow"))
    both = ours.join(theirs, "path").toPandas()
    assert len(both) == 150 and (both.prediction == both.mlflow).all()
    model = mlflow.pyfunc.load_model("models:/lenet5/2")
    sample = images.limit(3).toPandas()
    assert list(model.predict(sample[["height", "width", "nChannels", "data"]])) == \
        both.set_index("path").loc[sample.path, "prediction"].tolist()

    code, _, err = cli("predict_digits", "--model", "models:/lenet5/9", "--input", digits, "--output",
                       tmp_path / "p9", "--tracking-uri", mlflow_server)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("sparkgan predict_digits: error: --model models:/lenet5/9: ")


def test_transfer_logs_its_pipeline_model_in_the_spark_flavor(spark, cli, mlflow_server, tmp_path):
    digits = digits_table(tmp_path / "digits", 300, 100)
    code, _, err = cli("transfer", "--input", digits, "--output", tmp_path / "lr", "--tracking-uri", mlflow_server,
                       "--register-as", "transfer-lr")
    assert code == 0, err
    client = MlflowClient(mlflow_server)
    run = _run_of(client, _runs(tmp_path / "runs").iloc[-1].run_id)
    assert "figures/confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.spark.load_model("models:/transfer-lr/1")
    from pipeline.transfer import load_features

    features = load_features(spark, digits)[0]
    theirs = model.transform(features).select("path", F.col("prediction").cast("int").alias("mlflow"))
    ours = spark.read.parquet(str(tmp_path / "lr" / "predictions")).select("path", "prediction")
    both = ours.join(theirs, "path").toPandas()
    assert len(both) > 0 and (both.prediction == both.mlflow).all()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("photos")
    assert main(["ingest", "--source", "photos", "--output", str(root / "ds"), "--runs-table", str(root / "runs")]) == 0
    return f"{root}/ds/images"


@pytest.mark.slow  # two TorchDistributor launches
def test_gan_generators_per_step_metrics_registry_and_pyfunc(spark, cli, mnist, photos, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    code, _, err = cli("train_gan", "--model", "dcgan", "--input", mnist, "--output", tmp_path / "dc", "--steps", 20,
                       "--batch-size", 16, "--width", 8, "--log-every", 5, "--checkpoint-every", 10,
                       "--tracking-uri", mlflow_server, "--register-as", "dcgan")
    assert code == 0, err
    run = _run_of(client, _runs(tmp_path / "runs").iloc[-1].run_id)
    assert client.get_experiment(run.info.experiment_id).name == "sparkgan-train_gan"
    for key in ("loss_g", "loss_d", "images_per_s"):  # rank 0's step lines, as they happened
        assert _steps(client, run.info.run_id, key) == [5, 10, 15, 20], key
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "figures/samples")]
    assert grids == ["figures/samples/epoch_001_step_000020.png"]
    generator = mlflow.pyfunc.load_model("models:/dcgan/1")
    drawn = generator.predict(pd.DataFrame({"seed": [3, 4, 3]}))
    assert list(drawn.height) == [32] * 3 and list(drawn.nChannels) == [1] * 3
    assert drawn.data[0] == drawn.data[2] and drawn.data[0] != drawn.data[1]  # a seed draws one image

    code, _, err = cli("train_gan", "--model", "srgan", "--input", photos, "--output", tmp_path / "sr", "--steps", 4,
                       "--pretrain-steps", 2, "--crop", 32, "--width", 8, "--blocks", 1, "--batch-size", 4,
                       "--log-every", 2, "--checkpoint-every", 4, "--tracking-uri", mlflow_server,
                       "--register-as", "srresnet")
    assert code == 0, err
    row = _runs(tmp_path / "runs").iloc[-1]
    run = _run_of(client, row.run_id)
    assert run.data.metrics["psnr_sr"] == pytest.approx(dict(row.metrics)["psnr_sr"])  # the held-out scores
    assert {"figures/sr_comparison_0.png", "figures/loss_curves.png"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    model = mlflow.pyfunc.load_model("models:/srresnet/1")
    example = model.input_example
    up = model.predict(example)
    assert list(up.height) == list(example.height * 4) and list(up.width) == list(example.width * 4)

    client.set_registered_model_alias("srresnet", "prod", "1")
    code, _, err = cli("upscale", "--generator", "models:/srresnet@prod", "--input", photos, "--split", "test",
                       "--output", tmp_path / "up", "--tracking-uri", mlflow_server)
    assert code == 0, err
    assert spark.read.parquet(str(tmp_path / "up" / "images")).count() == _runs(tmp_path / "runs").iloc[-1].rows_out


def test_the_ui_shows_the_run_and_its_figure(mlflow_server, tmp_path):
    """The MLflow UI's run page, rendered by headless Chromium: the job's figure is on it, fetched."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("MLflow UI check: no headless Chromium here (apt-get install chromium; .ci/run installs it)")
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`sparkgan.job` = 'train_digits'")
    if not runs:
        pytest.skip("MLflow UI check: no tracked train_digits run in this session (run the whole module)")
    run = runs[0]
    page = (f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/"
            "figures/training_curves.png")
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--virtual-time-budget=15000", "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert run.info.run_name in r.stdout  # the page is the run's
    # the figure itself: an <img> of the artifact, its bytes fetched from the server into a blob
    assert re.search(r'<img alt="figures/training_curves.png" src="blob:', r.stdout), r.stdout[-3000:]
