"""What BigDL's settings do to LeNet-5 here: batch size (BigDL splits each batch over the cores),
learning rate scaled with it, optimizer, epochs; each run's samples/s, training seconds until the
held-out top-1 first reaches 97 %, and job wall time. The fastest to 97 % sets the engine's
defaults (`pipeline/digits/job.py`). Spark 3.5 stack only (BigDL).

    python bench/bigdl_sweep.py [--configs 32:adam:0.001:6,128:adam:0.004:6]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

from common import local_spark
from digits import engine_run

from pipeline.cli import main as cli
from pipeline.session import bigdl_missing

CONFIGS = "32:adam:0.001:6,64:adam:0.002:6,128:adam:0.004:6,256:adam:0.006:8,128:sgd:0.05:6"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default=CONFIGS, help="batch:optimizer:learning rate:epochs, comma-separated")
    args = ap.parse_args()
    if bigdl_missing():
        raise SystemExit(f"bench/bigdl_sweep.py: {bigdl_missing()}")
    work = tempfile.mkdtemp(prefix="bench-bigdl-")
    spark = local_spark(bigdl=True)
    runs = ["--runs-table", f"{work}/runs"]
    assert cli(["ingest", "--source", "mnist", "--output", f"{work}/mnist", *runs]) == 0
    images = f"{work}/mnist/images"
    samples = spark.read.parquet(images).where("split = 'train'").count() * 3
    results = []
    for i, config in enumerate(args.configs.split(",")):
        batch, optimizer, lr, epochs = config.split(":")
        results.append((config, *engine_run(
            spark, work, images, samples, f"run{i}", "--engine", "bigdl", "--batch-size", batch,
            "--optimizer", optimizer, "--learning-rate", lr, "--epochs", epochs)))
    spark.stop()
    print(f"BigDL engine, local[2], LeNet-5, {samples} samples per epoch")
    print(f"{'batch:optimizer:lr:epochs':<28} {'samples/s':>9} {'to 97 %':>9} {'job':>7} {'final top-1':>11}")
    for config, rate, to_97, wall, top1 in results:
        print(f"{config:<28} {rate:9.0f} {to_97:8.1f}s {wall:6.1f}s {top1:11.4f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
