import os
import sys

import pytest

from pipeline.config import load_profile
from pipeline.session import get_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts extra JVMs, clusters or long training (CI runs them)")


@pytest.fixture(scope="session")
def spark():
    profile = load_profile(None, ["spark.sql.shuffle.partitions=4", "spark.ui.showConsoleProgress=false"])
    profile.master = "local[2]"
    session = get_session(profile, "sparkgan-tests", bigdl=True)  # BigDL jars for the in-process jobs
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
