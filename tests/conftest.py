import os
import sys

import pytest

from pipeline.config import load_profile
from pipeline.session import bigdl_missing, get_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts extra JVMs, clusters or long training (CI runs them)")


@pytest.fixture(scope="session")
def spark():
    profile = load_profile(None, ["spark.sql.shuffle.partitions=4", "spark.ui.showConsoleProgress=false"])
    profile.master = "local[2]"
    # BigDL's jars for the in-process jobs, on the stack that has it
    session = get_session(profile, "sparkgan-tests", bigdl=bigdl_missing() is None)
    yield session
    session.stop()


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
