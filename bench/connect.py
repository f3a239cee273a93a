"""Spark Connect against classic Spark, same jobs, same data, same run (Spark 4 stack).

    .venv-spark4/bin/python bench/connect.py [--repeats 2]

Each job runs as a user runs it (`python -m pipeline JOB ...`): on a classic local[2] session, and
with `--remote` on a Connect server started by scripts/connect.sh (local[2] too). The time compared
is the runs row's `duration_s`: the job's own work, from its session being up to its commit, so the
classic run's JVM start and the client's connection are left out of both. Printed: the best of
--repeats for each, and the ratio classic / Connect (>= 1: Connect is as fast).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
from common import ROOT

JOBS = {
    "ingest 20,000 PNGs": lambda d: ["ingest", "--source", f"{d}/pngs", "--output", f"{d}/OUT", "--partitions", "2"],
    "featurize 1,797 digits (MobileNetV2)": lambda d: ["featurize", "--input", f"{d}/digits/images", "--output",
                                                       f"{d}/OUT", "--model-name", "MobileNetV2", "--weights",
                                                       "random", "--batch-size", "64"],
    "train_digits torch, 2 epochs": lambda d: ["train_digits", "--engine", "torch", "--input", f"{d}/mnist/images",
                                               "--output", f"{d}/OUT", "--epochs", "2", "--num-processes", "1"],
}


def job(args, runs, extra=()):
    r = subprocess.run([sys.executable, "-m", "pipeline", *args, "--mode", "overwrite", "--runs-table", runs, *extra],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    rows = pq.read_table(runs).to_pylist()
    return max(rows, key=lambda row: row["started_at"])["duration_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from PIL import Image

    from pipeline.ingest import load_bundled

    data = tempfile.mkdtemp(prefix="sparkgan-connect-bench-")
    x, y = load_bundled("mnist")
    for i in range(20_000):
        os.makedirs(f"{data}/pngs/{y[i % 5000]}", exist_ok=True)
        Image.fromarray(np.roll(x[i % 5000], i // 5000, axis=1)).save(f"{data}/pngs/{y[i % 5000]}/{i:05d}.png")
    for name in ("digits", "mnist"):
        job(["ingest", "--source", name, "--output", f"{data}/{name}"], f"{data}/runs")
    env = {**os.environ, "PYTHON": sys.executable, "SPARKGAN_CONNECT_DIR": f"{data}/connect"}
    script = os.path.join(ROOT, "scripts", "connect.sh")
    url = subprocess.run([script, "start", "", "local[2]"], env=env, capture_output=True, text=True,
                         check=True).stdout.split()[-1]
    try:
        print(f"{'job':<40} {'classic s':>10} {'Connect s':>10} {'classic/Connect':>16}")
        for name, make in JOBS.items():
            classic = min(job(make(data), f"{data}/runs") for _ in range(args.repeats))
            remote = min(job(make(data), f"{data}/runs", ["--remote", url]) for _ in range(args.repeats))
            print(f"{name:<40} {classic:>10.2f} {remote:>10.2f} {classic / remote:>15.2f}x")
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
