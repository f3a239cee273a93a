"""The one place that builds a SparkSession (and, when asked, the BigDL context on it)."""

from __future__ import annotations

import glob
import logging
import os
import sys

from pipeline.config import Profile, conf_dir

log = logging.getLogger(__name__)


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway to Python through these variables.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_major() -> int:
    import pyspark

    return int(pyspark.__version__.split(".")[0])


def stack() -> str:
    """The tested set this pyspark belongs to: constraints/<stack>.txt."""
    return "spark4" if spark_major() >= 4 else "spark35"


def bigdl_missing() -> str | None:
    """Why BigDL cannot run on this stack, or None when it can. The one place that knows that
    BigDL's jars are Scala 2.12 builds, which Spark 4 (Scala 2.13) cannot load."""
    import importlib.util

    import pyspark

    if spark_major() >= 4:
        return f"BigDL needs Spark 3.5 (its jars are Scala 2.12 builds; this is Spark {pyspark.__version__})"
    if importlib.util.find_spec("bigdl") is None:
        return "BigDL is not installed (pip install --no-deps -r requirements-bigdl.txt; Spark 3.5 only)"
    return None


def bigdl_jars() -> list[str]:
    import bigdl  # the jars ship inside the pip wheels

    roots = [os.path.join(p, "share") for p in bigdl.__path__]
    jars = sorted(j for root in roots for j in glob.glob(os.path.join(root, "*", "lib", "*.jar")))
    if not jars:
        from pipeline.errors import PipelineError
        raise PipelineError("BigDL is installed but its jars are missing (expected bigdl/share/*/lib/*.jar)")
    return jars


def base_conf(profile: Profile, *, bigdl: bool = False) -> dict[str, str]:
    """Settings every job gets, then the profile's, then what BigDL needs."""
    log4j = conf_dir() / "log4j2.properties"
    java_opts = f"-Dlog4j2.configurationFile=file:{log4j}"
    conf = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.sql.sources.partitionOverwriteMode": "static",
        "spark.ui.showConsoleProgress": "true",
    }
    conf.update(profile.spark)
    if bigdl:
        from bigdl.dllib.utils.common import get_bigdl_conf

        for key, value in get_bigdl_conf().items():
            if key != "spark.driver.extraJavaOptions":  # theirs only turns log4j2 debug on
                conf.setdefault(key, value)
        jars = bigdl_jars()
        conf["spark.jars"] = ",".join(filter(None, [conf.get("spark.jars"), *jars]))
        conf["spark.driver.extraClassPath"] = ":".join(
            filter(None, [*jars, conf.get("spark.driver.extraClassPath")]))
    return conf


def _check_bigdl_conf(spark_conf) -> None:
    """BigDL's own failures here are Java stack traces; say what to change instead."""
    from pipeline.errors import PipelineError

    master = spark_conf.get("spark.master", "")
    if not master.startswith("local") and not spark_conf.get("spark.executor.cores", None):
        raise PipelineError("BigDL needs the executor core count on a cluster: pass --executor-cores N to "
                            "spark-submit (or set spark.executor.cores in the profile, as conf/cluster.yaml does)")
    if master.startswith("spark://") and not spark_conf.get("spark.cores.max", None):
        raise PipelineError("BigDL needs the total core count on a standalone cluster: pass "
                            "--total-executor-cores N to spark-submit (or set spark.cores.max in the profile)")
    if _under_spark_submit():
        from py4j.java_gateway import JavaClass
        from pyspark import SparkContext

        if not isinstance(SparkContext._jvm.com.intel.analytics.bigdl.dllib.utils.Engine, JavaClass):
            raise PipelineError("BigDL's jars are not on the driver: add --jars $(python -m pipeline.jars) "
                                "to spark-submit")


def _init_bigdl(spark_conf=None):
    from bigdl.dllib.nncontext import init_nncontext

    # BigDL sets PYTHONHOME to the venv, which breaks every Python started from this process
    # (a venv has no standard library of its own). Keep whatever was there before.
    saved = os.environ.get("PYTHONHOME")
    try:
        return init_nncontext(spark_conf, redirect_spark_log=False) if spark_conf is not None \
            else init_nncontext(redirect_spark_log=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONHOME", None)
        else:
            os.environ["PYTHONHOME"] = saved


def get_session(profile: Profile, app_name: str, *, bigdl: bool = False):
    """Build (or join) the SparkSession for a job.

    Under spark-submit the command line owns the master and any key it set; the profile fills
    in the rest. Run as `python -m pipeline ...` the profile's master is used.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if not _under_spark_submit():
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        if profile.master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: stay on loopback
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    conf = base_conf(profile, bigdl=bigdl)
    if SparkContext._active_spark_context is None:
        submitted: dict[str, str] = {}
        if _under_spark_submit():
            SparkContext._ensure_initialized()  # join spark-submit's JVM so its settings are visible
            spark_conf = SparkConf()
            submitted = dict(spark_conf.getAll())
        else:
            spark_conf = SparkConf().setMaster(profile.master)
        spark_conf.setAppName(app_name)
        for key, value in conf.items():
            if key not in submitted:
                spark_conf.set(key, value)
        if bigdl:
            _check_bigdl_conf(spark_conf)
            sc = _init_bigdl(spark_conf)
        else:
            sc = SparkContext.getOrCreate(spark_conf)
        sc.setLogLevel("WARN")
        log.info("Spark %s on %s, UI at %s", sc.version, sc.master, sc.uiWebUrl)
    elif bigdl:
        _init_bigdl()  # an existing context: only start BigDL's engine
    return SparkSession.builder.getOrCreate()
