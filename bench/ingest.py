"""Ingest throughput: Spark (local[2]) vs a plain single-process loop on the same 20,000 PNG files.

Both decode with the same function and write the same rows to Parquet; the ratio is
images/s(Spark) / images/s(plain), measured in the same run. Then the driver's peak RSS
for an input 10x larger, each run in a fresh process.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--photos", type=int, default=5_000, help="256x256 JPEGs for the second workload")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    src = make_pngs(args.images)
    small = make_pngs(args.images // 10)
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    from pipeline.cli import main as cli

    spark = local_spark()
    results = []
    for name, folder, batch in (("MNIST 28x28 PNG", src, 2000), ("photos 256x256 JPEG", make_jpegs(args.photos), 64)):
        best_plain = best_spark = float("inf")
        for r in range(args.repeats):
            out = f"{work}/{len(results)}-{r}"
            os.makedirs(f"{out}-plain")
            t, n = timed(plain_ingest, folder, f"{out}-plain")
            best_plain = min(best_plain, t)
            t, code = timed(cli, ["ingest", "--source", folder, "--output", f"{out}-spark", "--partitions", "2",
                                  "--batch-rows", str(batch), "--runs-table", f"{work}/runs"])
            assert code == 0
            best_spark = min(best_spark, t)
            assert spark.read.parquet(f"{out}-spark/images").count() == n
        results.append((name, n, best_plain, best_spark))
    spark.stop()
    for name, n, best_plain, best_spark in results:
        print(f"{name}: plain loop {n / best_plain:7.0f} images/s, spark local[2] {n / best_spark:7.0f} images/s "
              f"({n} images) -> ratio spark/plain {best_plain / best_spark:.2f}x (target >= 1.5)")

    rss = {}
    for label, folder in (("1x", small), ("10x", src)):
        code, py_mb, jvm_mb = peak_rss_mb(
            [sys.executable, "-m", "pipeline", "ingest", "--source", folder, "--output", f"{work}/rss{label}",
             "--partitions", "2", "--runs-table", f"{work}/runs", "--conf", "spark.master=local[2]"], cwd=ROOT)
        assert code == 0
        rss[label] = (py_mb, jvm_mb)
        print(f"driver peak RSS, {label:>3} input ({len(os.listdir(folder))} classes): "
              f"python {py_mb:6.0f} MiB, JVM {jvm_mb:6.0f} MiB")
    print(f"driver RSS growth at 10x input: python {rss['10x'][0] / rss['1x'][0]:.2f}x, "
          f"JVM {rss['10x'][1] / rss['1x'][1]:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
