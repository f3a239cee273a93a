"""Peak memory of ingest's Python workers at the pixel limit (README, Safety), against small images.

    python bench/limits.py [--max-pixels 40000000] [--images 4]

Makes a folder of images of exactly --max-pixels pixels (JPEG, RGB) and one of the same count of
small images, ingests each with local[2], and prints the highest VmHWM of the Spark Python workers
(the processes that decode), with the ratio between the two: what one image at the limit costs a
worker. A worker holds one input batch, one decoded image and its output buffer (BATCH_BYTES), so
its peak is the base plus a few copies of the largest image.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile

import numpy as np
from common import _hwm_kb, local_spark
from PIL import Image


def make_images(folder: str, n: int, pixels: int) -> None:
    w = int(math.sqrt(pixels * 4 / 3))
    h = pixels // w
    ramp = np.linspace(0, 255, w, dtype=np.uint8)
    for i in range(n):
        os.makedirs(os.path.join(folder, f"c{i % 2}"), exist_ok=True)
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[:] = ramp[None, :, None]
        rgb[:, :, i % 3] = (np.arange(h, dtype=np.uint32) * 255 // h).astype(np.uint8)[:, None]
        Image.fromarray(rgb).save(os.path.join(folder, f"c{i % 2}", f"{i}.jpg"), quality=85)


def worker_peak_mb() -> float:
    """The highest peak RSS among this machine's Spark Python workers (daemon and its forks)."""
    peaks = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"pyspark.daemon" in cmd or b"pyspark/daemon.py" in cmd or b"pyspark.worker" in cmd:
            peaks.append(_hwm_kb(int(pid)))
    return max(peaks, default=0) / 1024


def ingest_peak(spark, folder: str, out: str, max_pixels: int) -> float:
    from pipeline.cli import main

    spark.stop()  # a fresh worker pool, so the peak is this run's
    spark = local_spark()
    code = main(["ingest", "--source", folder, "--output", out, "--partitions", "2", "--max-pixels",
                 str(max_pixels), "--runs-table", out + ".runs"])
    assert code == 0, code
    return spark, worker_peak_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-pixels", type=int, default=40_000_000)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sparkgan-limits-")
    try:
        make_images(f"{tmp}/big", args.images, args.max_pixels)
        make_images(f"{tmp}/small", args.images, 256 * 256)
        spark = local_spark()
        spark, small = ingest_peak(spark, f"{tmp}/small", f"{tmp}/out-small", args.max_pixels)
        spark, big = ingest_peak(spark, f"{tmp}/big", f"{tmp}/out-big", args.max_pixels)
        raw = args.max_pixels * 3 / 2 ** 20
        print(f"worker peak RSS: {big:.0f} MiB with {args.images} images of {args.max_pixels:,} pixels "
              f"({raw:.0f} MiB decoded each), {small:.0f} MiB with 256x256 ones: "
              f"+{big - small:.0f} MiB = {(big - small) / raw:.1f}x one decoded image")
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
