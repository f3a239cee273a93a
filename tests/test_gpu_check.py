"""scripts/gpu_check.py runs without Spark; on a machine without CUDA it says so and runs on the CPU."""

import os
import subprocess
import sys

from tests.conftest import ROOT

# pyspark made unimportable: the check needs torch, numpy, Pillow and pyarrow alone
WITHOUT_PYSPARK = ("import runpy, sys; sys.modules['pyspark'] = None; "
                   "runpy.run_path('scripts/gpu_check.py', run_name='__main__')")


def test_gpu_check_runs_its_cpu_fallback_without_spark():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU run, also where a GPU is present
    r = subprocess.run([sys.executable, "-c", WITHOUT_PYSPARK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("gpu_check: no CUDA device here")
    table = lines[lines.index("") + 1:]
    assert table[0].startswith("measured on the CPU (no CUDA)") and "peak GPU memory" in table[0]
    assert [row.split(",")[0] for row in table[1:]] == (["SRGAN training"] * 2 + ["DCGAN training"] +
                                                        ["upscale 160x128 photo"] * 4)
    assert all("images/s" in row or "steps/s" in row for row in table[1:])
