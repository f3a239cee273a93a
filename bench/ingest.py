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
import json
import os
import shutil
import subprocess
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


def pack_sources(folder: str, n: int, shard_size: int = 1000) -> dict[str, str]:
    """The PNGs of `folder` as WebDataset shards, a Parquet manifest of their URIs and a Hugging Face
    style Parquet of {bytes, path}: the same images in each source's shape."""
    import io
    import tarfile

    out = f"{folder}-sources-{shard_size}"
    names = sorted((label, f) for label in os.listdir(folder) for f in os.listdir(os.path.join(folder, label)))
    if not os.path.isdir(out):
        os.makedirs(f"{out}/shards")
        os.makedirs(f"{out}/hf")
        structs = []
        for s in range(0, len(names), shard_size):
            with tarfile.open(f"{out}/shards/{s // shard_size:05d}.tar", "w") as tar:
                for label, name in names[s:s + shard_size]:
                    data = open(os.path.join(folder, label, name), "rb").read()
                    stem = name.split(".")[0]
                    for member, payload in ((f"{stem}.png", data), (f"{stem}.cls", label.encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    structs.append({"image": {"bytes": data, "path": name}, "label": int(label)})
        pq.write_table(pa.Table.from_pylist(structs), f"{out}/hf/data.parquet", row_group_size=1000)
        pq.write_table(pa.table({"uri": [f"file:{folder}/{label}/{name}" for label, name in names],
                                 "label": [label for label, _ in names]}), f"{out}/manifest.parquet")
    return {"shards": f"{out}/shards", "manifest": f"{out}/manifest.parquet", "hf": f"{out}/hf"}


def sources(args, work: str) -> None:
    """Images/s of each source against the local-folder ingest of the same PNGs, in one warm session."""
    from pipeline.cli import main as cli

    local_spark()
    folder = make_pngs(args.images)
    packed = pack_sources(folder, args.images, args.shard_size)
    kinds = [("folder", [folder]), ("tar shards", [packed["shards"]]),
             ("manifest", [packed["manifest"], "--label-column", "label"]),
             ("parquet bytes", [packed["hf"], "--image-column", "image", "--label-column", "label"])]
    best = {}
    for r in range(args.repeats):
        for name, source in kinds:
            out = f"{work}/{name.replace(' ', '-')}-{r}"
            t, code = timed(cli, ["ingest", "--source", *source, "--output", out, "--partitions", "2",
                                  "--batch-rows", "2000", "--runs-table", f"{work}/runs"])
            assert code == 0
            best[name] = min(best.get(name, float("inf")), t)
            shutil.rmtree(out)
    base = args.images / best["folder"]
    for name, _ in kinds:
        rate = args.images / best[name]
        print(f"{name:>14}: {rate:7.0f} images/s ({args.images} MNIST PNGs, best of {args.repeats}) "
              f"-> {rate / base:.2f}x the folder ingest")


def manifest_scale(sizes: list[int], work: str) -> None:
    """The driver's time and peak RSS planning and counting a Parquet manifest of n rows (fresh
    process each), and a full ingest where n is small enough to fetch here."""
    folder = make_pngs(1000)
    files = sorted(f"file:{folder}/{label}/{f}" for label in os.listdir(folder) for f in os.listdir(f"{folder}/{label}"))
    script = ("import sys,time,json; sys.path.insert(0, %r)\n"
              "from pipeline.config import load_profile; from pipeline.session import get_session\n"
              "from pipeline import sources\n"
              "import argparse; o = argparse.Namespace(source=sys.argv[1], uri_column='uri', label_column='label',"
              " image_column=None, partitions=2, split=(('train', 0.8), ('test', 0.2)), resize=None, max_pixels=1<<26)\n"
              "p = load_profile(None, ['spark.ui.showConsoleProgress=false']); p.master = 'local[2]'\n"
              "spark = get_session(p, 'bench', bigdl=False)\n"
              "t = time.perf_counter(); kind, loc, units = sources.classify(o)\n"
              "plan = sources.plan(spark, o, kind, loc, units); planned = time.perf_counter() - t\n"
              "n = plan.rows(None).count(); print(json.dumps([planned, time.perf_counter() - t, n]))\n") % ROOT
    print(f"{'rows':>9} {'distinct':>9} {'plan s':>7} {'plan+count s':>13} {'driver RSS: python':>19} {'JVM':>8}")
    for n in sizes:
        # every row a distinct URI (the same 1,000 names under copy<k>/): planning and the inputs' count
        # read the manifest only, no URI is fetched
        uris = [files[i % len(files)].replace(folder, f"{folder}/copy{i // len(files)}") for i in range(n)]
        path = f"{work}/manifest-{n}.parquet"
        pq.write_table(pa.table({"uri": uris, "label": ["0"] * n}), path, row_group_size=100_000)
        out = f"{work}/plan-{n}.json"
        with open(out, "w") as fh:
            code = subprocess.run([sys.executable, "-c", script, path], stdout=fh, stderr=subprocess.DEVNULL,
                                  cwd=ROOT).returncode
        assert code == 0
        _, py_mb, jvm_mb = peak_rss_mb([sys.executable, "-c", script, path], cwd=ROOT)
        planned, total, distinct = json.load(open(out))
        print(f"{n:>9,} {distinct:>9,} {planned:>7.2f} {total:>13.2f} {py_mb:>15,.0f} MiB {jvm_mb:>5,.0f} MiB")


def commit_cost(counts: list[int], work: str, s3: bool) -> None:
    """A table commit against the number of task files: the rename commit (taskwrite: one move per
    file) and the log commit (one entry listing every file, no data file moved), locally and (--s3)
    on moto's S3 server."""
    from types import SimpleNamespace

    from pipeline import taskwrite
    from pipeline.tablelog import TableLog

    small = pa.table({"path": ["x"], "reason": ["r"], "stage": ["s"], "run_id": ["id"]})
    places = [("local", f"{work}/commit")]
    server = None
    if s3:
        import socket
        import time
        import urllib.request

        from pyarrow import fs as pafs

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"http://127.0.0.1:{port}",
                          scheme="http").create_dir("bench-commit")
        places.append(("s3 (moto)", "s3://bench-commit/commit"))
    print(f"{'files':>7} {'where':>10} {'rename commit s':>16} {'log commit s':>13}")
    for where, base in places:
        for k in counts:
            for how in ("rename", "log"):
                table = f"{base}-{how}-{k}"
                fs, root = taskwrite.arrow_filesystem(table)
                staged = f"{taskwrite.TEMPORARY}/1" if how == "rename" else ""
                sink = pa.BufferOutputStream()
                pq.write_table(small, sink)
                payload = sink.getvalue().to_pybytes()
                manifest = []
                for i in range(k):
                    name = f"part-{i:05d}-bench.parquet"
                    path = f"{root}/{staged}/{name}" if staged else f"{root}/{name}"
                    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                    with fs.open_output_stream(path) as o:
                        o.write(payload)
                    manifest.append(SimpleNamespace(table="t", staged=f"{staged}/{name}" if staged else name,
                                                    file=name, rows=1))
                if how == "rename":
                    t, _ = timed(taskwrite.commit, {"t": table}, manifest)
                    rename_s = t
                else:
                    log_ = TableLog(None, table)
                    log_.fs.mkdirs(f"{log_.table}/_spark_metadata")
                    t, _ = timed(taskwrite.commit, {"t": table}, manifest, direct=True)
                    t2, _ = timed(log_.add, [f"{log_.table}/{m.file}" for m in manifest])
                    log_s = t + t2
            print(f"{k:>7,} {where:>10} {rename_s:>16.2f} {log_s:>13.2f}")
    if server is not None:
        server.kill()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--photos", type=int, default=5_000, help="256x256 JPEGs for the second workload")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale", action="store_true", help="images/s and driver RSS at 10k, 100k, 500k files")
    ap.add_argument("--scale-sizes", default="10000,100000,500000")
    ap.add_argument("--sources", action="store_true", help="tar shards, a manifest and Parquet bytes vs the folder")
    ap.add_argument("--shard-size", type=int, default=1000,
                    help="--sources: images per tar shard (a multiple of the cores' share keeps every core busy)")
    ap.add_argument("--manifest-scale", default="", help="e.g. 10000,100000,1000000: driver time/RSS per manifest size")
    ap.add_argument("--commit", default="", help="e.g. 1,10,100,1000,10000: commit cost per number of task files")
    ap.add_argument("--s3", action="store_true", help="--commit on moto's S3 server too")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        if args.sources:
            sources(args, work)
        elif args.manifest_scale:
            manifest_scale([int(n) for n in args.manifest_scale.split(",")], work)
        elif args.commit:
            commit_cost([int(n) for n in args.commit.split(",")], work, args.s3)
        elif args.scale:
            scale([int(n) for n in args.scale_sizes.split(",")], work)
        else:
            throughput(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
