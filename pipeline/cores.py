"""How many cores a job's Spark will run tasks on, known before Spark starts (or None).

BigDL splits every batch evenly over Spark's default parallelism; knowing it from the
configuration lets `train_digits` refuse a batch size before a JVM starts instead of after.
"""

from __future__ import annotations

import os
import re

from pipeline.config import load_profile


def planned_cores(master: str, spark: dict[str, str]) -> int | None:
    """Spark's defaultParallelism for this master and these settings, where the configuration
    fixes it: spark.default.parallelism, local[N] / local[*], or a cluster's core totals."""
    if spark.get("spark.default.parallelism"):
        return int(spark["spark.default.parallelism"])
    if master == "local":
        return 1
    m = re.fullmatch(r"local\[(\d+|\*)(?:,\s*\d+)?\]", master)
    if m:
        return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))
    if spark.get("spark.cores.max"):  # standalone: the cores the application may take in total
        return int(spark["spark.cores.max"])
    if spark.get("spark.executor.instances") and spark.get("spark.executor.cores"):  # YARN, Kubernetes
        return int(spark["spark.executor.instances"]) * int(spark["spark.executor.cores"])
    return None  # dynamic allocation or an unset total: only the running Spark knows


def submitted_settings() -> dict[str, str]:
    """What spark-submit set (its --master, --conf, --total-executor-cores, ...): the JVM is already
    running when Python starts, with them as system properties; empty outside spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def job_cores(opts, job: str) -> int | None:
    """planned_cores of a job's resolved options (their --conf-file and --conf), spark-submit's
    own settings winning as they do in session.get_session."""
    try:
        profile = load_profile(opts.conf_file, opts.conf, job)
        settings = {**profile.spark, **submitted_settings()}
        return planned_cores(settings.get("spark.master", profile.master), settings)
    except ValueError:  # a non-numeric core setting: Spark itself will say so
        return None
