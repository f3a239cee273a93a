"""sparkgan, nightly: ingest digits and photos; then, each as soon as its input is there:
featurize → transfer (or the offline transfer demo), LeNet-5 digits, DCGAN; SRGAN → upscale.

Every task is one `spark-submit jobs/<job>.py ...` (Airflow's SparkSubmitOperator): Airflow
schedules, retries and records; Spark does the work. Settings come from `conf/airflow.yaml`;
run parameters (dataset paths, training lengths) are DAG params, overridable per run, e.g.
`airflow dags trigger sparkgan -c '{"digits_epochs": 8}'`. Outputs land in
DATA/<logical date>/<step>, written atomically by the jobs, so a retry or a rerun of the same
date replaces them (`--mode overwrite`) and never leaves half of one. The datasets grow instead:
DATA/datasets/<name> is ingested with `--incremental`, which adds each night only the files
not yet in it, exactly once (a killed try commits nothing; its retry redoes just that).
"""

from __future__ import annotations

import glob
import os
from datetime import datetime, timedelta

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, task

HOME = os.environ.get("SPARKGAN_HOME", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.environ.get("SPARKGAN_DAG_CONF", os.path.join(HOME, "conf", "airflow.yaml"))) as fh:
    SETTINGS = yaml.safe_load(fh)
PYTHON = os.environ.get("SPARKGAN_PYTHON", os.path.join(HOME, SETTINGS["python"]))
PROFILE = os.path.join(HOME, os.environ.get("SPARKGAN_CONF_FILE", SETTINGS["profile"]))
# BigDL's jars ship in its wheel, inside the jobs' Python environment (Spark 3.5 stack); without
# them (Spark 4) train_digits picks its torch engine
PREFIX = os.path.dirname(os.path.dirname(PYTHON))
BIGDL_JARS = ",".join(sorted(glob.glob(f"{PREFIX}/lib/python3*/site-packages/bigdl/share/*/lib/*.jar")))
# relative data paths are under the project root; manual runs without a logical date use the run's day
DATA = "{{ under_home(params.data) }}"
LOG4J = f"-Dlog4j2.configurationFile=file:{os.path.dirname(PROFILE)}/log4j2.properties"
DAY = "{{ ds or dag_run.run_after.strftime('%Y-%m-%d') }}"
RUN = f"{DATA}/{DAY}"
DATASETS = DATA + "/datasets"


def spark_job(job: str, *args: str, bigdl: bool = False, incremental: bool = False, **kwargs) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=kwargs.pop("task_id", job),
        application=os.path.join(HOME, "jobs", f"{job}.py"),
        # params.remote (conf/airflow.yaml): a Spark Connect server for every task; empty: classic Spark
        application_args=[*args, "--conf-file", PROFILE, "--runs-table", f"{DATA}/runs",
                          "--conf", "spark.remote={{ params.remote }}",
                          # params.tracking_uri: every task's MLflow run, one night's runs found by their tag
                          "--tracking-uri={{ params.tracking_uri }}", f"--tracking-tag=sparkgan.logical_date={DAY}",
                          "--tracking-tag=airflow.dag_run_id={{ run_id }}",
                          *(["--incremental"] if incremental else ["--mode", "overwrite"])],
        conn_id=SETTINGS["conn_id"],
        conf={"spark.driver.extraJavaOptions": LOG4J, "spark.executor.extraJavaOptions": LOG4J,
              **SETTINGS.get("spark_conf", {}), "spark.pyspark.python": PYTHON, "spark.pyspark.driver.python": PYTHON},
        jars=(BIGDL_JARS or None) if bigdl else None,
        name=f"sparkgan-{job}",
        # spark-submit from the jobs' environment (Airflow's own venv may hold another pyspark)
        env_vars={"PATH": f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                  "PYSPARK_PYTHON": PYTHON, "SPARKGAN_CONF_DIR": os.path.dirname(PROFILE)},
        **kwargs)


with DAG(
    dag_id="sparkgan",
    description=__doc__.splitlines()[0],
    schedule=SETTINGS["schedule"],
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    # at most this many jobs share the cluster at once (conf/airflow.yaml); the pool caps them
    # across DAGs too
    max_active_tasks=SETTINGS["max_active_tasks"],
    default_args={"retries": SETTINGS["retries"], "retry_delay": timedelta(minutes=SETTINGS["retry_delay_minutes"]),
                  "pool": SETTINGS["pool"]},
    params={k: Param(v, type="integer" if isinstance(v, int) else "string")
            for k, v in SETTINGS["params"].items()},
    user_defined_macros={"under_home": lambda path: os.path.join(HOME, path)},
    tags=["sparkgan", "spark"],
    doc_md=__doc__,
) as dag:
    # the datasets grow night after night: only new files are decoded (pipeline/ingest.py)
    ingest_digits = spark_job("ingest", "--source", "{{ params.digits_source }}", "--output", f"{DATASETS}/digits",
                              incremental=True, task_id="ingest_digits")
    ingest_photos = spark_job("ingest", "--source", "{{ params.photos_source }}", "--output", f"{DATASETS}/photos",
                              incremental=True, task_id="ingest_photos")

    @task.branch
    def pick_featurizer(params=None) -> str:
        """A pretrained Keras model given: featurize with it. None: the offline transfer demo."""
        return "featurize" if params["model_file"] else "transfer_demo"

    featurize = spark_job("featurize", "--input", f"{DATASETS}/digits/images", "--output", f"{RUN}/features",
                          "--model-file", "{{ params.model_file }}", "--feature-layer={{ params.feature_layer }}")
    transfer = spark_job("transfer", "--input", f"{RUN}/features", "--output", f"{RUN}/transfer")
    transfer_demo = spark_job("transfer_demo", "--input", f"{DATASETS}/digits/images", "--output", f"{RUN}/transfer")
    # training tasks: an Airflow retry continues from the failed try's checkpoint (--resume auto)
    train_digits = spark_job("train_digits", "--input", f"{DATASETS}/digits/images", "--output", f"{RUN}/lenet5",
                             "--epochs", "{{ params.digits_epochs }}", "--resume", "auto", bigdl=True)
    train_dcgan = spark_job("train_gan", "--model", "dcgan", "--input", f"{DATASETS}/digits/images",
                            "--output", f"{RUN}/dcgan", "--steps", "{{ params.dcgan_steps }}", "--resume", "auto",
                            task_id="train_dcgan")
    train_srgan = spark_job("train_gan", "--model", "srgan", "--input", f"{DATASETS}/photos/images",
                            "--output", f"{RUN}/srgan", "--steps", "{{ params.srgan_steps }}",
                            "--crop", "{{ params.srgan_crop }}", "--resume", "auto", task_id="train_srgan")
    upscale = spark_job("upscale", "--generator", f"{RUN}/srgan", "--input", f"{DATASETS}/photos/images",
                        "--output", f"{RUN}/upscaled")

    # Edges only where a task reads another's output: a failed transfer never holds up SR training.
    ingest_digits >> pick_featurizer() >> [featurize, transfer_demo]
    featurize >> transfer
    ingest_digits >> [train_digits, train_dcgan]
    ingest_photos >> train_srgan >> upscale
