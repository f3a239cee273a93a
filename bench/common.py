"""Helpers shared by the benchmarks: a warm local SparkSession, timing, peak RSS of a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "bench", ".data")
sys.path.insert(0, ROOT)


def local_spark(master: str = "local[2]", bigdl: bool = False, **conf):
    from pipeline.config import load_profile
    from pipeline.session import get_session

    profile = load_profile(None, ["spark.ui.showConsoleProgress=false", *(f"{k}={v}" for k, v in conf.items())])
    profile.master = master
    spark = get_session(profile, "sparkgan-bench", bigdl=bigdl)
    spark.range(100).selectExpr("sum(id)").collect()  # JVM and Python workers warm before timing
    return spark


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def peak_rss_mb(cmd: list[str], **kwargs) -> tuple[int, float, float]:
    """Run cmd; return (exit code, peak RSS MiB of the process itself, of its biggest child, the JVM)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    peaks = {"self": 0, "child": 0}

    def poll():
        while proc.poll() is None:
            peaks["self"] = max(peaks["self"], _hwm_kb(proc.pid))
            for child in _children(proc.pid):
                peaks["child"] = max(peaks["child"], _hwm_kb(child))
            time.sleep(0.05)
    t = threading.Thread(target=poll)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        sys.stderr.write(err.decode()[-2000:])
    return proc.returncode, peaks["self"] / 1024, peaks["child"] / 1024
