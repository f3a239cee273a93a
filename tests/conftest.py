import os
import signal
import sys

import pytest

from pipeline.config import load_profile
from pipeline.session import bigdl_missing, get_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts extra JVMs, clusters or long training (CI runs them)")
    config.addinivalue_line("markers", "spark: uses the session's SparkSession (set on every test that needs the "
                                       "spark fixture; `-m 'not spark'` leaves the Spark-free tests)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark():
    profile = load_profile(None, ["spark.sql.shuffle.partitions=4", "spark.ui.showConsoleProgress=false"])
    profile.master = "local[2]"
    # BigDL's jars for the in-process jobs, on the stack that has it
    session = get_session(profile, "sparkgan-tests", bigdl=bigdl_missing() is None)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mnist(spark, tmp_path_factory):
    """The bundled 5,000 real MNIST digits' images table, ingested once for the whole run: the
    tests that use it only read it."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("mnist") / "ds"
    assert main(["ingest", "--source", "mnist", "--output", str(out), "--runs-table", str(out) + ".runs"]) == 0
    return f"{out}/images"


@pytest.fixture
def cli(spark, tmp_path, capsys):
    """Run a job in-process (sharing the test SparkSession): returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    def run(*args):
        code = main([*map(str, args), "--runs-table", str(tmp_path / "runs")])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def python():
    return sys.executable


# A test of the BigDL engine, skipped (with the reason) on a stack without it, e.g. Spark 4.
needs_bigdl = pytest.mark.skipif(bigdl_missing() is not None, reason=f"BigDL engine: {bigdl_missing()}")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
    return found


def kill_tree(proc) -> None:
    """Like a lost machine: the driver, its JVM, Spark's Python workers, torchrun and the ranks all
    die at once (the ranks start their own sessions, so a process-group kill misses them)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def digits_table(path, n_train: int, n_test: int) -> str:
    """A small images table of scikit-learn's real 8x8 digits, written with pyarrow (no Spark):
    the first n_train rows in split=train, the next n_test in split=test."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    from pipeline import images as im

    d = load_digits()
    rows = []
    for i in range(n_train + n_test):
        h, w, c, mode, data = im.array_to_row(np.round(d.images[i] * 255 / 16).astype(np.uint8))
        rows.append({"path": f"bundled:digits/{i:05d}", "origin": None, "label": str(d.target[i]),
                     "label_index": int(d.target[i]), "height": h, "width": w, "nChannels": c, "mode": mode,
                     "data": data, "split": "train" if i < n_train else "test"})
    pq.write_to_dataset(pa.Table.from_pylist(rows), str(path), partition_cols=["split"])
    return str(path)


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """Spark's own Connect server (scripts/connect.sh: sbin/start-connect-server.sh from the pyspark
    package) on a loopback port, local[2], once per test session; its Python workers are this venv's.
    Spark 4 only."""
    import subprocess

    from pipeline.session import spark_major

    if spark_major() < 4:
        pytest.skip("Spark Connect: the Spark 3.5 stack has no Connect server (its jar comes from Maven)")
    env = {**os.environ, "PYTHON": sys.executable, "SPARKGAN_CONNECT_DIR": str(tmp_path_factory.mktemp("connect"))}
    script = os.path.join(ROOT, "scripts", "connect.sh")
    r = subprocess.run([script, "start", "", "local[2]"], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    yield {"url": r.stdout.strip().splitlines()[-1]}
    subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
