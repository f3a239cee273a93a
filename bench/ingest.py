"""Ingest throughput: Spark (local[2]) vs a plain single-process loop on the same files.

Both decode with the same function and write the same rows to Parquet; the ratio is
images/s(Spark) / images/s(plain), measured in the same run, for 100,000 small PNGs and 5,000
photo-sized JPEGs. The job's fixed cost (an ingest of 20 files) is printed separately.

`--scale` ingests 10,000, 100,000 and 500,000 small PNGs, each in a fresh driver process as
spark-submit would start it (heap capped at 1 GiB), and prints images/s (the job's own duration
from the runs table, JVM start excluded), the rate between sizes, and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import DATA, ROOT, local_spark, peak_rss_mb, timed
from PIL import Image

from pipeline import images as im
from pipeline.ingest import _image_row, load_bundled, parse_split, split_of


def make_pngs(n: int) -> str:
    """n MNIST digits as PNG files in a folder-per-class tree (the 5,000 real ones, flipped/rotated)."""
    folder = os.path.join(DATA, f"mnist-png-{n}")
    if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    x, y = load_bundled("mnist")
    variants = [lambda a: a, np.fliplr, np.flipud, np.transpose]
    for i in range(n):
        label = str(y[i % len(x)])
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        Image.fromarray(variants[(i // len(x)) % 4](x[i % len(x)])).save(os.path.join(folder, label, f"{i:06d}.png"))
    return folder


def make_jpegs(n: int, size: int = 256) -> str:
    """n photo-sized JPEGs: random crops of scikit-image's real photographs, a class per photo."""
    folder = os.path.join(DATA, f"photo-jpg-{n}-{size}")
    if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    photos = [p for p in load_bundled("photos")[0] if p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) > size]
    rng = np.random.default_rng(0)
    for i in range(n):
        k = i % len(photos)
        h, w = photos[k].shape[:2]
        y, x = rng.integers(0, h - size), rng.integers(0, w - size)
        os.makedirs(os.path.join(folder, f"photo{k}"), exist_ok=True)
        Image.fromarray(photos[k][y:y + size, x:x + size]).save(os.path.join(folder, f"photo{k}", f"{i:06d}.jpg"),
                                                               quality=90)
    return folder


def plain_ingest(src: str, out: str) -> int:
    """What one would write without Spark: walk, decode, write one Parquet file."""
    split = parse_split("train=0.8,test=0.2")
    classes = sorted(os.listdir(src))
    rows = []
    for label in classes:
        for name in sorted(os.listdir(os.path.join(src, label))):
            path = os.path.join(src, label, name)
            with open(path, "rb") as fh:
                arr = im.decode_image(fh.read())
            rows.append(_image_row(f"file:{path}", label, classes.index(label), arr,
                                   split_of(f"{label}/{name}", split), None)[:-1])
    table = pa.Table.from_pylist([dict(zip(im.IMAGE_COLUMNS, r)) for r in rows])
    pq.write_table(table, os.path.join(out, "images.parquet"))
    return len(rows)


def spark_ingest(cli, folder: str, out: str, runs: str, batch: int) -> float:
    t, code = timed(cli, ["ingest", "--source", folder, "--output", out, "--partitions", "2",
                          "--batch-rows", str(batch), "--runs-table", runs])
    assert code == 0
    return t


def throughput(args, work: str) -> None:
    from pipeline.cli import main as cli

    spark = local_spark()
    tiny = make_pngs(20)
    fixed = min(spark_ingest(cli, tiny, f"{work}/fixed{r}", f"{work}/runs", 256) for r in range(3))
    results = []
    for name, folder, batch, target in (("MNIST 28x28 PNG", make_pngs(args.images), 2000, 1.5),
                                        ("photo 256x256 JPEG", make_jpegs(args.photos), 64, 1.6)):
        best_plain = best_spark = float("inf")
        for r in range(args.repeats):
            out = f"{work}/{len(results)}-{r}"
            os.makedirs(f"{out}-plain")
            t, n = timed(plain_ingest, folder, f"{out}-plain")
            best_plain = min(best_plain, t)
            best_spark = min(best_spark, spark_ingest(cli, folder, f"{out}-spark", f"{work}/runs", batch))
            assert spark.read.parquet(f"{out}-spark/images").count() == n
            shutil.rmtree(f"{out}-plain")
            shutil.rmtree(f"{out}-spark")
        results.append((name, n, best_plain, best_spark, target))
    spark.stop()
    print(f"fixed cost of an ingest job (20 files, warm session): {fixed:.2f} s")
    for name, n, plain, spark_s, target in results:
        print(f"{name}: plain loop {n / plain:7.0f} images/s, spark local[2] {n / spark_s:7.0f} images/s "
              f"({n} images; {n / (spark_s - fixed):7.0f} without the fixed cost) "
              f"-> ratio spark/plain {plain / spark_s:.2f}x (target >= {target})")


def scale(sizes: list[int], work: str) -> None:
    """Each size in a fresh driver: images/s from the runs row, peak RSS of Python and the JVM."""
    rows = []
    for n in sizes:
        folder = make_pngs(n)
        runs = f"{work}/scale-runs-{n}"
        code, py_mb, jvm_mb = peak_rss_mb(
            [sys.executable, "-m", "pipeline", "ingest", "--source", folder, "--output", f"{work}/scale{n}",
             "--partitions", "2", "--batch-rows", "2000", "--runs-table", runs, "--conf", "spark.master=local[2]",
             "--conf", "spark.driver.memory=1g"],
            cwd=ROOT)
        assert code == 0
        seconds = pq.read_table(runs).column("duration_s")[0].as_py()
        rows.append((n, seconds, py_mb, jvm_mb))
        shutil.rmtree(f"{work}/scale{n}")
    # a fresh driver's first jobs are slow (Python workers start, the JVM warms up): the rate
    # between two sizes is what the growth costs
    print(f"{'files':>9} {'job s':>7} {'images/s':>9} {'marginal/s':>11} {'driver RSS: python':>19} {'JVM':>8}")
    prev = None
    for n, seconds, py_mb, jvm_mb in rows:
        marginal = f"{(n - prev[0]) / (seconds - prev[1]):>11,.0f}" if prev else f"{'':>11}"
        print(f"{n:>9,} {seconds:>7.1f} {n / seconds:>9,.0f} {marginal} {py_mb:>15,.0f} MiB {jvm_mb:>5,.0f} MiB")
        prev = (n, seconds)
    (n0, _, p0, j0), (n1, _, p1, j1) = rows[0], rows[-1]
    print(f"from {n0:,} to {n1:,} files: driver RSS python x{p1 / p0:.2f}, JVM x{j1 / j0:.2f} (in local mode the "
          "JVM is the executor too; its heap is capped at spark.driver.memory=1g here)")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--photos", type=int, default=5_000, help="256x256 JPEGs for the second workload")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale", action="store_true", help="images/s and driver RSS at 10k, 100k, 500k files")
    ap.add_argument("--scale-sizes", default="10000,100000,500000")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        if args.scale:
            scale([int(n) for n in args.scale_sizes.split(",")], work)
        else:
            throughput(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
