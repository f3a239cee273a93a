"""Cheaper JVM starts for the suite, which starts ~100 of them (every spark-submit, every job run
as a subprocess, the cluster's daemons) on tiny data, where a JVM's own start-up is most of the
CPU it uses:

- a class-data-sharing archive of the classes a Spark driver loads (JDK 13+'s dynamic AppCDS),
  written once per venv and JDK by one short spark-submit job: classes are mapped, not parsed and
  verified again;
- the C1 compiler only (`-XX:TieredStopAtLevel=1`): C2's compile threads cost more CPU than they
  repay in a JVM that lives for seconds on a few thousand rows.

Measured here (2 cores): an `ingest --source mnist` subprocess 15 → 6.5 CPU-s (9.5 → 5.5 s),
a 2-epoch BigDL `train_digits` 54 → 38 CPU-s. Neither changes what a job computes. A JVM whose
class path does not start with the archive's (a BigDL driver's extra class path) ignores the
archive, silently (`-Xlog:cds=off`); the options a user set in the environment win.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys

QUIET = "-Xlog:cds=off,cds+dynamic=off"
C1 = "-XX:TieredStopAtLevel=1"


def _archive_path() -> str:
    import pyspark

    jars = sorted(glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*.jar")))
    # the JVM spark-class runs: $JAVA_HOME's, else the one on PATH
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else \
        shutil.which("java") or "java"
    java = os.path.realpath(java)
    key = hashlib.sha1(repr((java, [(j, os.path.getsize(j)) for j in jars])).encode()).hexdigest()[:12]
    return os.path.join(sys.prefix, ".jvm-cds", f"spark-driver-{key}.jsa")


def _write_archive(path: str, root: str) -> bool:
    """One spark-submit ingest of the bundled 8x8 digits (Spark SQL, Parquet, Arrow and Python
    workers: what most jobs load), its driver dumping the classes it loaded when it exits."""
    import tempfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    env = {**os.environ, "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={tmp} {QUIET}",
           "PYSPARK_PYTHON": sys.executable}
    try:
        with tempfile.TemporaryDirectory() as out:
            r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "spark-submit"), "--master",
                                "local[2]", os.path.join(root, "jobs", "ingest.py"), "--source", "digits", "--output",
                                f"{out}/ds", "--runs-table", f"{out}/runs"], env=env, cwd=out, capture_output=True,
                               timeout=300)
        if r.returncode == 0 and os.path.exists(tmp):
            os.replace(tmp, path)
            return True
    except (OSError, subprocess.TimeoutExpired):
        pass  # no archive: the JVMs start as Spark starts them, only slower
    if os.path.exists(tmp):
        os.remove(tmp)
    return False


def configure(root: str) -> None:
    """Set the JVM options of every Spark JVM this test session starts, in-process or not (the
    README test's fresh shell keeps them too: tests/test_readme.py COST_ONLY)."""
    path = _archive_path()
    shared = f"-XX:SharedArchiveFile={path} {QUIET} " if os.path.exists(path) or _write_archive(path, root) else ""
    os.environ.setdefault("SPARK_SUBMIT_OPTS", f"{shared}{C1}")  # drivers: spark-submit, pyspark's gateway
    os.environ.setdefault("SPARK_DAEMON_JAVA_OPTS", f"{shared}{C1}")  # scripts/standalone.sh's master, workers
    os.environ.setdefault("SPARK_LAUNCHER_OPTS", C1)  # spark-class's command builder


def executor_conf() -> list[str]:
    """spark-submit flags giving a standalone cluster's executors the daemons' options: Spark reads
    no environment variable for executors' JVMs. Measured here: an `ingest --source mnist` on the
    loopback cluster, 19 -> 15 CPU-s (two executors)."""
    opts = os.environ.get("SPARK_DAEMON_JAVA_OPTS")
    return ["--conf", f"spark.executor.extraJavaOptions={opts}"] if opts else []
