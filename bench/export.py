"""Export throughput: the export job (local[2]) against reading the same table in the same tasks.

The baseline reads the images table, spreads it over the same tasks by the same hash and hands every
row's pixels to Python (what export does before it encodes); the ratio is images/s(export) /
images/s(read), measured in the same run, for 50,000 MNIST digits (28x28 gray) and 1,000 photo
crops (256x256 RGB), as PNG and as JPEG, and with --partitions 0 (no shuffle). The job's fixed cost
(an export of 20 rows) is printed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import DATA, local_spark, timed

from pipeline import images as im
from pipeline.ingest import load_bundled


def digits_table(n: int) -> str:
    """n MNIST digits as an images table (the 5,000 real ones, flipped/transposed past 5,000)."""
    folder = os.path.join(DATA, f"export-mnist-{n}")
    if os.path.isdir(folder):
        return folder
    x, y = load_bundled("mnist")
    variants = [lambda a: a, np.fliplr, np.flipud, np.transpose]
    return _write(folder, ((f"bench:mnist/{i:06d}", variants[(i // len(x)) % 4](x[i % len(x)]), int(y[i % len(x)]))
                           for i in range(n)))


def photo_table(n: int, size: int = 256) -> str:
    """n photo crops of scikit-image's real photographs, a class per photo."""
    folder = os.path.join(DATA, f"export-photos-{n}-{size}")
    if os.path.isdir(folder):
        return folder
    photos = [p for p in load_bundled("photos")[0] if p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) > size]
    rng = np.random.default_rng(0)

    def rows():
        for i in range(n):
            k = i % len(photos)
            h, w = photos[k].shape[:2]
            r, c = rng.integers(0, h - size), rng.integers(0, w - size)
            yield f"bench:photos/{i:06d}", photos[k][r:r + size, c:c + size], k
    return _write(folder, rows())


def _write(folder: str, rows) -> str:
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    out = {"path": [], "origin": [], "label": [], "label_index": [], "height": [], "width": [], "nChannels": [],
           "mode": [], "data": [], "split": []}
    for path, arr, label in rows:
        h, w, c, mode, data = im.array_to_row(arr)
        for k, v in zip(out, (path, path, str(label), label, h, w, c, mode, data, "train")):
            out[k].append(v)
    table = pa.table(out).drop_columns(["split"])
    os.makedirs(os.path.join(tmp, "split=train"))
    for i in range(0, table.num_rows, 2000):  # several files, so the read is split over the tasks
        # small pages: pyarrow puts up to write_batch_size (1,024) values in a page, and Spark's Snappy
        # reader (parquet-mr's NonBlockedDecompressor) grows its buffer for a page chunk by chunk, so a
        # page of 1,000 photos (200 MB) took minutes to read
        pq.write_table(table.slice(i, 2000), os.path.join(tmp, "split=train", f"part-{i // 2000:05d}.parquet"),
                       use_dictionary=["label"], write_statistics=[n for n in table.column_names if n != "data"],
                       write_batch_size=16)
    os.rename(tmp, folder)
    return folder


def read_rate(spark, table: str, partitions: int) -> tuple[float, int]:
    """Seconds to read the table into Python tasks, spread as export spreads it, touching every pixel."""
    from pyspark.sql import functions as F

    def touch(batches):
        for b in batches:
            yield pa.RecordBatch.from_pydict({"n": [b.num_rows], "bytes": [sum(len(d) for d in b.column("data").to_pylist())]})

    df = spark.read.parquet(table)
    if partitions:
        df = df.repartition(partitions, "path").sortWithinPartitions(F.xxhash64("path"))
    seconds, rows = timed(lambda: df.mapInArrow(touch, "n long, bytes long").groupBy().sum("n").collect())
    return seconds, rows[0][0]


def export_rate(table: str, out: str, runs: str, *args: str) -> float:
    from pipeline.cli import main

    shutil.rmtree(out, ignore_errors=True)
    seconds, code = timed(main, ["export", "--input", table, "--output", out, "--runs-table", runs, *args])
    assert code == 0
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--digits", type=int, default=50_000)
    ap.add_argument("--photos", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    spark = local_spark()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
    work = tempfile.mkdtemp(prefix="bench-export-")
    runs = os.path.join(work, "runs")
    tables = {"mnist 28x28": digits_table(args.digits), "photos 256x256": photo_table(args.photos)}
    small = os.path.join(work, "small")
    _write(small, ((f"bench:small/{i}", load_bundled("mnist")[0][i], 0) for i in range(20)))
    fixed = [export_rate(small, os.path.join(work, "s"), runs, "--partitions", "2") for _ in range(2)]
    print(f"fixed cost: an export of 20 rows takes {fixed[1]:.2f} s (the first, with cold Python workers, {fixed[0]:.2f} s)")
    print(f"{'table':<16} {'variant':<26} {'rows':>7} {'read img/s':>11} {'export img/s':>13} {'ratio':>6} {'MB/s out':>9}")
    for name, table in tables.items():
        for variant, extra, parts in (("png", ["--format", "png"], args.partitions),
                                      ("jpeg q95", ["--format", "jpeg"], args.partitions),
                                      ("png, --partitions 0", ["--format", "png"], 0)):
            read_s, rows = read_rate(spark, table, parts)
            out = os.path.join(work, "out")
            seconds = export_rate(table, out, runs, "--partitions", str(parts), "--shard-size", "64MB", *extra)
            size = sum(f.stat().st_size for f in os.scandir(os.path.join(out, "train")))
            print(f"{name:<16} {variant:<26} {rows:>7} {rows / read_s:>11.0f} {rows / seconds:>13.0f} "
                  f"{read_s / seconds:>6.2f} {size / seconds / 1e6:>9.1f}")
    shutil.rmtree(work, ignore_errors=True)
    spark.stop()


if __name__ == "__main__":
    main()
