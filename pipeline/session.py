"""The one place that builds a SparkSession (and, when asked, the BigDL context on it)."""

from __future__ import annotations

import contextlib
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
    from pipeline import quiet

    conf = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.sources.partitionOverwriteMode": "static",
        "spark.ui.showConsoleProgress": "true",
        **quiet.spark_settings(),
    }
    if not quiet.verbose():  # --verbose: Spark's own log4j2 defaults, INFO lines included
        java_opts = f"-Dlog4j2.configurationFile=file:{conf_dir() / 'log4j2.properties'}"
        conf["spark.driver.extraJavaOptions"] = conf["spark.executor.extraJavaOptions"] = java_opts
    # how to reach Spark is not a setting of the session itself (pipeline.session.connect_url)
    conf.update({k: v for k, v in profile.spark.items() if k not in ("spark.remote", "spark.api.mode")})
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


def _init_bigdl(spark_conf=None, app_name: str = "sparkgan"):
    from bigdl.dllib.nncontext import init_nncontext

    from pipeline import quiet

    # BigDL prints to stdout from Python and from the JVM: both to the log instead (--verbose: not)
    quiet.bigdl_prints_to_log()
    quiet.jvm_stdout_to_file(spark_conf, app_name)

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
    url = connect_url(profile)
    if url is not None:
        return _connect_session(profile, app_name, url, bigdl)
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    from pipeline import quiet

    conf = base_conf(profile, bigdl=bigdl)
    if SparkContext._active_spark_context is None:
        submitted: dict[str, str] = {}
        if _under_spark_submit():
            SparkContext._ensure_initialized()  # join spark-submit's JVM so its settings are visible
            # that JVM started with Spark's log4j2 defaults (INFO): ours, before the context logs
            quiet.use_log4j2_file(SparkContext._jvm, conf_dir() / "log4j2.properties")
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
            sc = _init_bigdl(spark_conf, app_name)
        else:
            sc = SparkContext.getOrCreate(spark_conf)
        if not quiet.verbose():
            sc.setLogLevel("WARN")
        log.info("Spark %s on %s, UI at %s", sc.version, sc.master, sc.uiWebUrl)
    elif bigdl:
        _init_bigdl(app_name=app_name)  # an existing context: only start BigDL's engine
    return SparkSession.builder.getOrCreate()


# ---------------------------------------------------------------- Spark Connect

def connect_url(profile: Profile) -> str | None:
    """The Spark Connect server a job is pointed at: `--remote`, `SPARK_REMOTE` or `spark.remote`
    (sc://HOST:PORT; spark-submit's own --remote sets it too), or "local" for `spark.api.mode=connect`
    in the profile, a --conf or spark-submit's settings (a server in the driver, on its master).
    None: a classic session."""
    from pipeline.cores import submitted_settings

    submitted = submitted_settings()
    url = profile.spark.get("spark.remote") or os.environ.get("SPARK_REMOTE") or submitted.get("spark.remote")
    mode = (profile.spark.get("spark.api.mode") or submitted.get("spark.api.mode")
            or os.environ.get("SPARK_API_MODE", "")).lower()
    if not url and mode != "connect":
        return None
    if spark_major() < 4:
        from pipeline.errors import PipelineError

        raise PipelineError("Spark Connect needs the Spark 4 stack (make setup STACK=spark4): Spark 3.5's Connect "
                            "server is a separate jar from Maven, which pip's pyspark does not carry")
    return url or f"local:{submitted.get('spark.master') or profile.master}"


def _connect_session(profile: Profile, app_name: str, url: str, bigdl: bool):
    from pyspark.sql import SparkSession

    from pipeline.errors import PipelineError

    if bigdl:
        raise PipelineError("--engine bigdl needs a classic Spark session (BigDL drives the JVM through py4j, "
                            "which Spark Connect has not): use --engine torch")
    conf = base_conf(profile)
    builder = SparkSession.builder.appName(app_name)
    if url.startswith("local:"):  # a Connect server in this process's JVM, started with every setting
        builder = builder.master(url[len("local:"):]).config("spark.api.mode", "connect")
    else:  # a server of its own: it owns its static settings; this session sets the SQL ones it may
        # spark-submit --master (as Airflow's operator passes it) names the launcher's master, which
        # pyspark refuses beside a remote: the server has its own
        os.environ.pop("MASTER", None)
        builder = builder.remote(url)
        conf = {k: v for k, v in conf.items() if k.startswith("spark.sql.") and k != "spark.sql.sources.partitionOverwriteMode"}
    import warnings

    # the in-driver server starts with every setting; the session then tries the static ones again
    warnings.filterwarnings("ignore", message="Failed to set spark", module="pyspark.sql.connect.conf")
    spark = builder.config(map={k: v for k, v in conf.items() if k not in ("spark.remote", "spark.api.mode")}).getOrCreate()
    log.info("Spark %s over Spark Connect (%s)", spark.version, url)
    return spark


def stop_connect() -> None:
    """Stop this process's Spark Connect session, if any (with an in-driver server, that one too)."""
    import sys

    if "pyspark.sql.connect.session" not in sys.modules:
        return
    from pyspark.sql.connect.session import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def is_connect(spark) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def setting(spark, key: str, default: str | None = None) -> str | None:
    """A Spark setting as the session sees it (classic or Connect), or `default`."""
    if spark is None:
        return default
    try:
        return spark.conf.get(key, default)
    except Exception:  # a key a Connect server will not tell
        return default


def parallelism(spark) -> int:
    """The task slots of the session's cluster: Spark's defaultParallelism on a classic session; on
    Connect (no SparkContext) what its settings fix (pipeline.cores.planned_cores), else 2."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    from pipeline.cores import planned_cores

    keys = ("spark.default.parallelism", "spark.cores.max", "spark.executor.instances", "spark.executor.cores")
    settings = {k: v for k in keys if (v := setting(spark, k))}
    return planned_cores(setting(spark, "spark.master") or "", settings) or 2


# ---------------------------------------------------------------- a job's own settings

# The open scoped_conf blocks, innermost last: each maps a key to (session, its value before the
# block, None where it had none). Jobs run one at a time in a driver, so a plain stack will do.
_scopes: list[dict] = []


@contextlib.contextmanager
def scoped_conf(spark, settings: dict | None = None):
    """Spark SQL settings for the length of a block: `settings` at once, and whatever `set_conf`
    adds inside it. On exit, error or not, each key is back to its value before the block, or
    unset if it had none, so the next job in the same session (the tests' shared one, a notebook,
    a Connect server) does not run with this one's batch sizes and file-splitting rules."""
    saved: dict = {}
    _scopes.append(saved)
    try:
        for key, value in (settings or {}).items():
            set_conf(spark, key, value)
        yield
    finally:
        _scopes.pop()
        for key, (session, before) in saved.items():
            if before is None:
                session.conf.unset(key)
            else:
                session.conf.set(key, before)


def set_conf(spark, key: str, value) -> None:
    """spark.conf.set until the innermost scoped_conf block ends (cli runs every job in one).

    Outside a block it refuses: the setting would outlive the job. `spark.conf.get(key, None)`
    reads only what was set, not Spark's default, so an unset key is unset again afterwards.
    """
    if not _scopes:
        raise RuntimeError(f"set_conf({key!r}) outside scoped_conf: the setting would outlive the job")
    if key not in _scopes[-1]:
        _scopes[-1][key] = (spark, spark.conf.get(key, None))
    spark.conf.set(key, str(value))
