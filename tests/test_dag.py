"""The Airflow DAG, in Airflow's own venv (.venv-airflow: its dependencies clash with the stack)."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.session import bigdl_missing
from pipeline import schemas as S
from tests.conftest import ROOT, assert_schema, digit_tree, photo_folder

AIRFLOW = os.path.join(ROOT, ".venv-airflow", "bin")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(AIRFLOW, "airflow")),
                                reason="no .venv-airflow: run `make airflow-setup` (make test does)")


@pytest.fixture
def airflow_env(tmp_path):
    return {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ROOT, "dags"), "SPARKGAN_PYTHON": sys.executable,
            "AIRFLOW_CONN_SPARK_SPARKGAN": json.dumps({"conn_type": "spark", "host": "local[2]"})}


CHECK = """
from airflow.dag_processing.dagbag import DagBag
import json
bag = DagBag(dag_folder="dags")
dag = bag.dags["sparkgan"]
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": sorted(t.task_id for t in dag.tasks),
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
    "catchup": dag.catchup, "schedule": dag.timetable.expression, "max_active_tasks": dag.max_active_tasks,
    "pools": sorted({t.pool for t in dag.tasks}),
    "args": {t.task_id: list(t.application_args) for t in dag.tasks if hasattr(t, "application_args")},
    "retries": dag.default_args["retries"], "params": sorted(dag.params.keys()),
    "train_digits": [dag.get_task("train_digits")._conn_id, dag.get_task("train_digits").application,
                     bool(dag.get_task("train_digits").jars)],
}))
"""


def test_dag_imports_and_wires_the_jobs(airflow_env):
    r = subprocess.run([os.path.join(AIRFLOW, "python"), "-c", CHECK], cwd=ROOT, env=airflow_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    dag = json.loads(r.stdout.strip().splitlines()[-1])
    assert dag["errors"] == {}
    assert dag["tasks"] == ["featurize", "ingest_digits", "ingest_photos", "pick_featurizer", "train_dcgan",
                            "train_digits", "train_srgan", "transfer", "transfer_demo", "upscale"]
    up = dag["upstream"]
    # edges follow the data: a task waits only for the tasks whose outputs it reads
    assert up["pick_featurizer"] == ["ingest_digits"] and up["transfer"] == ["featurize"]
    assert up["featurize"] == up["transfer_demo"] == ["pick_featurizer"]
    assert up["train_digits"] == up["train_dcgan"] == ["ingest_digits"]
    assert up["train_srgan"] == ["ingest_photos"] and up["upscale"] == ["train_srgan"]
    assert dag["max_active_tasks"] == 2 and dag["pools"] == ["default_pool"]
    for task, args in dag["args"].items():  # a retry of a training task continues from its checkpoint
        resumes = any(a == "--resume" and b == "auto" for a, b in zip(args, args[1:]))
        assert resumes == task.startswith("train_"), task
        # the datasets grow: ingest adds only new files to one folder; the rest replace a dated one
        assert ("--incremental" in args) == task.startswith("ingest_") != ("--mode" in args), task
        # every task logs to the DAG's tracking server, if one is set, tagged with the night it belongs to
        assert "--tracking-uri={{ params.tracking_uri }}" in args, task
        assert any(a.startswith("--tracking-tag=sparkgan.logical_date={{ ds or ") for a in args), task
    assert dag["catchup"] is False and dag["retries"] == 2 and dag["schedule"] == "0 2 * * *"
    assert {"data", "digits_source", "photos_source", "model_file"} <= set(dag["params"])
    conn, app, jars = dag["train_digits"]
    assert conn == "spark_sparkgan" and app == os.path.join(ROOT, "jobs", "train_digits.py")
    assert jars == (bigdl_missing() is None)  # BigDL's jars from the jobs' env, on the stack that has them


@pytest.mark.slow
def test_dag_runs_every_job_on_local_spark(airflow_env, tmp_path, request):
    """Spark 3.5: every task on classic local Spark. Spark 4: every task on a Spark Connect server
    (the DAG's `remote` param), as on Databricks serverless."""
    from pipeline.session import spark_major

    air = os.path.join(AIRFLOW, "airflow")
    r = subprocess.run([air, "db", "migrate"], env=airflow_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # folder-per-class trees, as a team brings its own: 600 of the bundled digits, and the bundled
    # photos at most 128 pixels across (the jobs' costs scale with pixels, the DAG's promises do not)
    digits, photos = digit_tree(tmp_path / "digits-src", 600), photo_folder(tmp_path / "photos-src", 128)
    params = {"data": str(tmp_path / "data"), "digits_source": digits, "photos_source": photos, "digits_epochs": 1,
              "dcgan_steps": 40, "srgan_steps": 12, "srgan_crop": 48}
    server = request.getfixturevalue("connect_server") if spark_major() >= 4 else None
    if server:
        params["remote"] = server["url"]
    r = subprocess.run([air, "dags", "test", "sparkgan", "2026-11-25", "-c", json.dumps(params)], cwd=tmp_path,
                       env=airflow_env, capture_output=True, text=True, timeout=1500)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    runs = pq.read_table(tmp_path / "data" / "runs").to_pandas()
    assert sorted(runs.job) == ["ingest", "ingest", "train_digits", "train_gan", "train_gan", "transfer_demo",
                                "upscale"]
    assert set(runs.status) == {"succeeded"}
    if server:  # every task was a session of the one server's application
        assert runs.app_id.nunique() == 1 and runs.app_id.iloc[0].startswith("local-")
    else:
        assert runs.app_id.nunique() == len(runs)  # an application per task
    ingested = runs[runs.job == "ingest"]
    assert sorted(ingested.rows_in) == [18, 600] and sorted(ingested.rows_out + ingested.rows_rejected) == [18, 600]
    assert (tmp_path / "data" / "datasets" / "digits" / "images").is_dir()
    day = tmp_path / "data" / "2026-11-25"
    assert pq.read_table(day / "upscaled" / "images").num_rows == 18
    assert (day / "lenet5" / "confusion_matrix.png").exists() and (day / "dcgan" / "samples").is_dir()
    # every table the jobs wrote is the one pipeline/schemas.py declares
    data = tmp_path / "data" / "datasets"
    for path, schema in [(data / "digits" / "images", S.IMAGE_SCHEMA), (data / "photos" / "images", S.IMAGE_SCHEMA),
                         (data / "digits" / "rejected", S.REJECTED_SCHEMA), (day / "lenet5" / "predictions",
                         S.PREDICTIONS_SCHEMA), (day / "lenet5" / "metrics", S.METRICS_SCHEMA),
                         (day / "dcgan" / "metrics", S.METRICS_SCHEMA), (day / "dcgan" / "generated", S.GENERATED_SCHEMA),
                         (day / "dcgan" / "rejected", S.REJECTED_SCHEMA), (day / "upscaled" / "images", S.UPSCALED_SCHEMA),
                         (day / "upscaled" / "rejected", S.REJECTED_SCHEMA), (tmp_path / "data" / "runs", S.RUNS_SCHEMA)]:
        assert_schema(path, schema)
