"""Quiet by default: a job's console shows its own progress, Spark's progress bar and warnings.

What else Spark, BigDL and TensorFlow print goes to a log instead, and `--verbose` (or
SPARKGAN_VERBOSE=1) brings all of it back:

* Spark's INFO lines: conf/log4j2.properties. Under `python -m pipeline` the JVM starts with it
  (session.base_conf); under spark-submit the JVM is already up when Python starts, so the file
  is loaded into its running log4j2 before the SparkContext logs anything, in a way Spark 4's
  logging reset keeps (`use_log4j2_file`).
* BigDL's Python side `print`s a `creating: ...` line per layer and object: those prints become
  DEBUG records of the `bigdl` logger (`bigdl_prints_to_log`). Its JVM side `println`s pickler
  registrations and deprecations to the JVM's stdout: that stream goes to a file in LOG_DIR
  (`jvm_stdout_to_file`); Spark's console output (progress bar, log) is on stderr and stays.
* TensorFlow's C++ start-up lines: TF_CPP_MIN_LOG_LEVEL for the driver and, through
  spark.executorEnv, every Python worker; the lines TensorFlow writes before it reads that
  variable (oneDNN, absl) are written to stderr's file descriptor while it is imported, so
  `import_tensorflow` points that descriptor at a file for the import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

VERBOSE_ENV = "SPARKGAN_VERBOSE"
TF_LEVEL = "2"  # TensorFlow C++: errors only
LOG_DIR = os.path.join(tempfile.gettempdir(), "sparkgan-logs")

log = logging.getLogger(__name__)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure(verbose_flag: bool = False) -> None:
    """Python logging for a job's driver: our own progress at INFO, other libraries' at WARNING
    (both INFO with --verbose). The flag travels in the environment, to the session and workers."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    loud = verbose()
    logging.basicConfig(level=logging.INFO if loud else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for ours in ("sparkgan", "pipeline"):
        logging.getLogger(ours).setLevel(logging.INFO)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if not loud:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LEVEL)
        # pyspark 4 warns on every pandas UDF that pandas 3 is not fully supported; the Spark 4
        # stack pins pandas 3 and its tests run every job on it, so the warning says nothing new
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)


def spark_settings() -> dict[str, str]:
    """Settings every session gets: the workers' TensorFlow log level (none with --verbose)."""
    return {} if verbose() else {"spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": TF_LEVEL}


def log_file(name: str) -> str:
    os.makedirs(LOG_DIR, exist_ok=True)
    return os.path.join(LOG_DIR, name)


def use_log4j2_file(jvm, path) -> None:
    """Load a log4j2 file into a running JVM (spark-submit's), unless the user chose their own
    (-Dlog4j2.configurationFile in --driver-java-options) or asked for --verbose."""
    if verbose() or jvm.java.lang.System.getProperty("log4j2.configurationFile"):
        return
    log4j = jvm.org.apache.logging.log4j
    log4j.core.config.Configurator.reconfigure(jvm.java.net.URI.create(f"file:{path}"))
    _keep_spark_from_resetting(jvm, log4j.LogManager.getRootLogger().getLevel())


def _keep_spark_from_resetting(jvm, level) -> None:
    """Spark 4's SparkContext resets its logging on start (Logging.uninitialize: reload Spark's own
    default profile if that is what spark-submit started with, else put the root level recorded
    then back), which would undo the file just loaded. Its Logging object keeps both facts in
    fields with public Scala accessors: record the loaded file's state as the one to keep.
    Spark 3.5 does not reset; there the accessors may be missing, and nothing needs doing."""
    from py4j.protocol import Py4JError

    try:
        spark_logging = getattr(getattr(jvm.org.apache.spark.internal, "Logging$"), "MODULE$")
        getattr(spark_logging, "org$apache$spark$internal$Logging$$defaultSparkLog4jConfig_$eq")(False)
        getattr(spark_logging, "org$apache$spark$internal$Logging$$defaultRootLevel_$eq")(level)
    except Py4JError:
        log.debug("Spark's Logging has no reset state to set (Spark 3.5)")


def jvm_stdout_to_file(spark_conf, app_name: str) -> str | None:
    """Start (or join) the JVM with its stdout in a file: BigDL's JVM side println()s there from
    class loading on. The JVM's console output (progress bar, log4j) is on stderr and stays.
    Returns the file's path (None with --verbose)."""
    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway

    if verbose():
        SparkContext._ensure_initialized(conf=spark_conf)
        return None
    path = log_file(f"{app_name}.jvm-stdout.log")
    if SparkContext._gateway is None:  # `python -m pipeline`: the JVM is our child, its fd 1 a file
        with open(path, "wb") as fh:
            SparkContext._ensure_initialized(gateway=launch_gateway(spark_conf, {"stdout": fh}))
    else:  # spark-submit's JVM: its console is ours too (Python's stdout reaches it through the
        # JVM, on a stream taken before this), so only System.out is pointed at the file
        jvm = SparkContext._jvm
        jvm.java.lang.System.setOut(jvm.java.io.PrintStream(jvm.java.io.FileOutputStream(path), True))
    log.debug("the JVM's stdout goes to %s", path)
    return path


def _print_to_log(*args, sep=" ", end="\n", file=None, flush=False):
    if file not in (None, sys.stdout):  # an explicit stream (stderr) is meant to be seen
        print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    logging.getLogger("bigdl").debug(sep.join(map(str, args)))


# Where BigDL's Python side prints: JavaValue.jvm_class_constructor (every layer, criterion,
# optimizer, trigger and metric we build inherits it) and the context set-up. Its Keras-style
# modules print too, but importing them reconfigures the JVM's logging, and no job uses them.
BIGDL_PRINTERS = ("bigdl.dllib.utils.common", "bigdl.dllib.nncontext")


def bigdl_prints_to_log() -> None:
    """BigDL's module-level `print` calls (a `creating: ...` line per object) as DEBUG records:
    a module's global `print` shadows the builtin for that module's functions."""
    if verbose():
        return
    import importlib

    for name in BIGDL_PRINTERS:
        importlib.import_module(name).print = _print_to_log


@contextlib.contextmanager
def stderr_fd_to_file(name: str):
    """Point file descriptor 2 at a log file for the block (C++ libraries write there directly)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_file(name), "ab") as fh:
            os.dup2(fh.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def import_tensorflow():
    """`import tensorflow`, its C++ start-up lines in LOG_DIR/tensorflow.log (unless verbose)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LEVEL)
    with stderr_fd_to_file("tensorflow.log"):
        import tensorflow
    return tensorflow
