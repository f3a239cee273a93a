"""Ingest's sources at scale: manifests, WebDataset tar shards, Parquet of image bytes, object stores.

The driver never lists images: it reads at most a manifest's footer or first line, a list of shards or
Parquet files, or an object store's top-level names. Everything else happens in the tasks, through
pyarrow's filesystems (file:, s3://, gs://, hdfs://; no Hadoop jars): a manifest's slices are read,
URIs fetched, shards streamed, row groups read, and folders listed, one task per unit.

Every source is planned as `rows(known)`: the DataFrame of inputs to decode, those whose `path` is in
`known` (the dataset's committed paths, --incremental) left out, arranged so that each task gets whole
units (a shard, a row group). Each task counts the inputs it decoded beside the files it wrote, so
`rows_in` is what the tasks read and `rows_out + rows_rejected` what the committed files' footers hold.

On an object store (s3://, gs://) a dataset is two tables with commit logs (pipeline/tablelog.py) from
the start: tasks write their files at their final names, unique per task attempt, and the commit is one
log entry per table. No data file is ever renamed (an object store copies to rename); files that no entry
lists (a failed attempt's, a killed run's) are invisible to readers and deleted by the next run.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import posixpath
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache

import pyarrow as pa

from pipeline import images as im
from pipeline import tarstream, taskwrite
from pipeline.errors import PipelineError
from pipeline.io import Files, absolute, arrow_filesystem, is_hidden, is_local, object_store_env, use_object_store_env
from pipeline.schemas import MANIFEST_SCHEMA, REJECTED_SCHEMA

log = logging.getLogger(__name__)

KINDS = ("manifest", "tar", "parquet", "objects")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "gif")
OBJECT_STORES = ("s3", "s3a", "s3n", "gs", "gcs")
SLICE_BYTES = 64 << 20  # a CSV/JSONL manifest is read in byte ranges of this size, one task each
NO_URI = "#row-without-uri-"  # the key of a manifest row with no URI: <manifest>#row-without-uri-<slice>-<row>
INPUTS = "_inputs"  # the manifest row in which a task reports how many inputs it read


def is_object_store(path: str) -> bool:
    """Where renames are copies: outputs there are committed through logs, never by renaming."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", path)
    return bool(m) and m.group(1).lower() in OBJECT_STORES


def add_arguments(p) -> dict:
    p.add_argument("--uri-column", help="manifest sources: the column of image URIs (relative ones are "
                                        "resolved against the manifest's folder)")
    p.add_argument("--label-column", help="manifest and Parquet sources: the column kept as the label")
    p.add_argument("--image-column", help="Parquet sources: the encoded-image column (binary, or the Hugging "
                                          "Face image struct {bytes, path}); names the source a Parquet of bytes")
    return {"uri_column": "uri", "label_column": None, "image_column": None}


@dataclass
class Plan:
    """A planned source: `rows(known)` → the inputs to decode; `decoder` the mapInArrow body."""

    rows: object
    decoder: object
    hidden: int = 0
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------- classifying --source

def classify(opts):
    """(kind, location, units) for the sources this module plans, or None for ingest's own (a local
    folder of images, IDX files, a bundled set). Reads names and at most one footer or line."""
    from pyarrow import fs as pafs

    source = opts.source
    if is_local(source) and not Files().exists(absolute(source)):
        return None  # a bundled set's name, or ingest's own "no such folder"
    location = Files.qualify(source)
    try:
        filesystem, root = arrow_filesystem(location)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as exc:
        if is_local(source):
            raise
        log.info("--source %s: pyarrow cannot reach it (%s); Spark's binaryFile reads it", source, exc)
        return None
    if info.type == pafs.FileType.NotFound:
        raise PipelineError(f"--source {source}: no such file, folder or prefix")
    if info.type == pafs.FileType.File:
        if opts.image_column:
            return "parquet", location, [(location, info.size)]
        if location.lower().endswith(MANIFEST_SUFFIXES):
            return "manifest", location, [(location, info.size)]
        raise PipelineError(f"--source {source}: a file, but not a manifest (expected one of "
                            f"{', '.join(MANIFEST_SUFFIXES)}) nor a Parquet of bytes (--image-column)")
    files = []
    for info in walk(filesystem, root):
        uri = _uri_of(location, root, info.path)
        if not opts.image_column and uri.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            files = []  # a folder of images: the tasks list it (ingest's own listing, locally)
            break
        files.append((uri, info.size))
    if not files and not opts.image_column:
        return None if is_local(source) else ("objects", location, [])
    if opts.image_column:
        parquet = [(u, s) for u, s in files if u.endswith(".parquet")]
        if not parquet:
            raise PipelineError(f"--source {source}: --image-column names a Parquet source, but the folder "
                                "holds no .parquet files")
        return "parquet", location, sorted(parquet)
    tars = sorted((u, s) for u, s in files if u.endswith(".tar"))
    if tars:
        return "tar", location, tars
    return None if is_local(source) else ("objects", location, [])


def walk(filesystem, root: str):
    """The visible files under `root`, one folder's listing at a time (never the whole tree in memory;
    hidden names, Spark's rule, skipped with what is below them)."""
    from pyarrow import fs as pafs

    todo = [root.rstrip("/")]
    while todo:
        for info in filesystem.get_file_info(pafs.FileSelector(todo.pop())):
            if is_hidden(info.base_name):
                continue
            if info.type == pafs.FileType.Directory:
                todo.append(info.path)
            elif info.type == pafs.FileType.File:
                yield info


def _uri_of(location: str, root: str, inner: str) -> str:
    """A pyarrow path under `root` back in `location`'s spelling (file:/x, s3://bucket/x)."""
    return location.rstrip("/") + inner[len(root.rstrip("/")):]


@lru_cache(maxsize=64)
def _filesystem(prefix: str):
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(prefix)[0] if "://" in prefix else pafs.LocalFileSystem()


def open_uri(uri: str):
    """(filesystem, path) for a URI, one filesystem per scheme and bucket per Python worker (an S3
    client costs more to make than a small image to fetch)."""
    from pipeline.io import arrow_uri

    uri = arrow_uri(uri)
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/]*)(/.*)?$", uri)
    if uri.startswith("file:"):
        return _filesystem("file"), re.sub(r"^file:(//)?", "", uri)
    if not m:
        return _filesystem("file"), uri
    prefix, rest = m.group(1), m.group(2) or "/"
    if prefix.startswith(("s3://", "gs://", "gcs://")):
        return _filesystem(prefix), prefix.split("://", 1)[1] + rest
    return _filesystem(prefix), rest


def fetch(uri: str, limit: int) -> bytes:
    """The bytes at `uri`, refusing more than `limit` (an image within --max-pixels needs no more)."""
    filesystem, path = open_uri(uri)
    try:
        with filesystem.open_input_stream(path) as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise im.DecodeError("no such file (the URI names nothing)") from None
    except OSError as exc:
        reason = str(exc).splitlines()[0][:200]
        if "NotFound" in reason or "NO_SUCH_KEY" in reason or "does not exist" in reason:
            raise im.DecodeError("no such file (the URI names nothing)") from None
        raise im.DecodeError(f"unreadable: {reason}") from None
    if len(data) > limit:
        raise im.DecodeError(f"file too large: more than {limit:,} bytes, more than an image within --max-pixels needs")
    return data


def label_index(label):
    """An integer label is its own index (WebDataset's .cls, Hugging Face's ClassLabel, MNIST's digits)."""
    return int(label) if label is not None and re.fullmatch(r"-?\d+", label) else None


# ---------------------------------------------------------------- decoders (executor side)

FETCHES_IN_FLIGHT = 16  # per task: an object-store GET waits tens of ms, a small image decodes in less


def _prefetched(rows, fetcher, limit, threads: int):
    """(row, bytes or DecodeError) in order, with up to `threads` fetches running ahead (pyarrow
    releases the GIL while it waits on the network)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def get(row):
        try:
            return fetcher(row, limit)
        except im.DecodeError as exc:
            return exc

    if threads <= 1:
        for row in rows:
            yield row, get(row)
        return
    with ThreadPoolExecutor(threads) as pool:
        window = deque()
        for row in rows:
            window.append((row, pool.submit(get, row)))
            if len(window) >= threads:
                r, fut = window.popleft()
                yield r, fut.result()
        while window:
            r, fut = window.popleft()
            yield r, fut.result()


def _rows_decoder(split, resize, max_pixels, fetcher, threads: int = 1):
    """mapInArrow body over rows of `path` and `label` (plus whatever `fetcher` reads): one image or
    rejected row per input, bytes from `fetcher(row)` (`threads` of them in flight)."""
    from pipeline import ingest

    limit = im.max_file_bytes(max_pixels)

    def rows_of(batches):
        for batch in batches:
            yield from batch.to_pylist()

    def decode(batches):
        out, size = [], 0
        for row, content in _prefetched(rows_of(batches), fetcher, limit, threads):
            try:
                if isinstance(content, im.DecodeError):
                    raise content
                arr = im.decode_image(content, resize, max_pixels)
                label = row.get("label")
                out.append(ingest._image_row(row["path"], label, row.get("label_index", label_index(label)),
                                             arr, ingest.split_of(row["path"], split), None))
                size += arr.nbytes
            except im.DecodeError as exc:
                out.append(ingest._rejected_row(row["path"], str(exc)))
            if size >= ingest.BATCH_BYTES:
                yield ingest._batch(out)
                out, size = [], 0
        if out:
            yield ingest._batch(out)
    return decode


def _fetch_uri(row, limit):
    return fetch(row["path"], limit)


class _RowGroups:
    """One cached row group per worker: the rows of a task arrive grouped by (file, row group)."""

    def __init__(self, image_column: str, label_column: str | None):
        self.columns = [image_column] + ([label_column] if label_column else [])
        self.key, self.table = None, None

    def get(self, file: str, group: int):
        import pyarrow.parquet as pq

        if self.key != (file, group):
            filesystem, path = open_uri(file)
            with filesystem.open_input_file(path) as fh:
                self.table = pq.ParquetFile(fh).read_row_group(group, columns=self.columns)
            self.key = (file, group)
        return self.table


def decode_parquet(split, resize, max_pixels, image_column, label_column):
    """mapInArrow body over rows of (`path`, `file`, `rg`, `row`): the bytes (and the label) read from
    the row's row group, one row group held per worker."""
    groups = _RowGroups(image_column, label_column)

    def fetcher(row, limit):
        table = groups.get(row["file"], row["rg"])
        if label_column:
            value = table.column(1)[row["row"]].as_py()
            row["label"] = None if value is None else str(value)
        value = table.column(0)[row["row"]].as_py()
        if isinstance(value, dict):  # the Hugging Face image struct: bytes, or a path beside them
            if value.get("bytes"):
                value = value["bytes"]
            elif value.get("path"):
                value = fetch(_resolve(value["path"], row["file"].rsplit("/", 1)[0]), limit)
            else:
                value = None
        if not value:
            raise im.DecodeError(f"no image bytes in column {image_column}")
        if len(value) > limit:
            raise im.DecodeError(f"image bytes too large: {len(value):,}, more than --max-pixels needs")
        return value
    return _rows_decoder(split, resize, max_pixels, fetcher)


def decode_tar(split, resize, max_pixels):
    """mapInArrow body over shards (`shard`, `known`: keys already in the dataset): each shard streamed
    (pipeline/tarstream.py: never extracted, never seeked), members grouped into samples by WebDataset's rule (a
    member's key is its path up to the first dot of its name; one sample's members are consecutive)."""
    from pipeline import ingest

    limit = im.max_file_bytes(max_pixels)

    def sample_row(path, members):
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            kinds = ", ".join(sorted(members)) or "none"
            raise im.DecodeError(f"no image member (members: {kinds})")
        label = _tar_label(members)
        arr = im.decode_image(image, resize, max_pixels)
        return ingest._image_row(path, label, label_index(label), arr, ingest.split_of(path, split), None)

    def decode(batches):
        out, size = [], 0
        for batch in batches:
            for shard, known in zip(batch.column("shard").to_pylist(), batch.column("known").to_pylist()):
                known = set(known or ())
                for key, members, error in _samples(shard, limit):
                    path = f"{shard}#{key}"
                    if key in known:
                        continue
                    if error:
                        out.append(ingest._rejected_row(path, error))
                        continue
                    try:
                        row = sample_row(path, members)
                        out.append(row)
                        size += len(row[8])
                    except im.DecodeError as exc:
                        out.append(ingest._rejected_row(path, str(exc)))
                    if size >= ingest.BATCH_BYTES:
                        yield ingest._batch(out)
                        out, size = [], 0
        if out:
            yield ingest._batch(out)
    return decode


def _tar_label(members: dict):
    if "cls" in members:
        return members["cls"].decode("utf-8", "replace").strip()
    if "json" in members:
        try:
            doc = json.loads(members["json"])
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for k in ("label", "cls", "class"):
                if k in doc and doc[k] is not None:
                    return str(doc[k])
    if "txt" in members:
        return members["txt"].decode("utf-8", "replace").strip()
    return None


def _samples(shard: str, limit: int):
    """(key, {extension: bytes}, error) per sample of a shard, streamed. A shard that breaks part-way
    yields the samples before the break, then one row keyed `!shard` with the reason."""
    filesystem, path = open_uri(shard)
    key, members = None, {}
    try:
        with filesystem.open_input_stream(path) as stream:
            for name, data in tarstream.members(stream, limit):
                base = name.rsplit("/", 1)[-1]
                if base.startswith(HIDDEN_TAR) or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                k = f"{name[:len(name) - len(base)]}{stem}"
                if k != key:
                    if key is not None:
                        yield key, members, None
                    key, members = k, {}
                members[ext.lower()] = b"" if data is None else data  # None: over the limit, left unread
    except (tarfile.TarError, OSError, EOFError) as exc:
        if key is not None:
            yield key, members, f"tar shard broken inside this sample: {exc}"
        else:
            yield "!shard", {}, f"unreadable tar shard: {str(exc).splitlines()[0][:200]}"
        return
    if key is not None:
        yield key, members, None


HIDDEN_TAR = ("._", ".")  # macOS resource forks and dot files a tar may carry


# ---------------------------------------------------------------- planning (driver side)

def _resolve(uri: str, base: str) -> str:
    """A manifest's URI as a full URI: relative ones against the manifest's folder."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", uri):
        return uri
    if uri.startswith("/"):
        return f"file:{uri}" if base.startswith("file:") else base.split("://", 1)[0] + "://" + uri.lstrip("/")
    scheme, _, rest = base.partition(":")
    prefix = re.match(r"^(//[^/]*)?", rest).group(0)
    return f"{scheme}:{prefix}{posixpath.normpath(rest[len(prefix):].rstrip('/') + '/' + uri)}"


def _manifest_reader(location: str, fmt: str, uri_column: str, label_column: str | None, header):
    """mapInArrow body over manifest slices (`start`, `end`: a row group's index, or a byte range)."""
    base = location.rsplit("/", 1)[0]
    env = object_store_env()

    def rows_of(start, end):
        filesystem, path = open_uri(location)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with filesystem.open_input_file(path) as fh:
                t = pq.ParquetFile(fh).read_row_group(start, columns=[uri_column] + ([label_column] if label_column else []))
            uris = t.column(0).to_pylist()
            labels = t.column(1).to_pylist() if label_column else [None] * len(uris)
            return list(zip(uris, labels))
        out = []
        with filesystem.open_input_file(path) as fh:
            for line in _lines(fh, start, end, skip_first=(fmt == "csv" and start == 0)):
                if not line.strip():
                    continue
                if fmt == "csv":
                    values = next(csv.reader([line]))
                    row = dict(zip(header, values))
                else:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = {}
                out.append((row.get(uri_column), row.get(label_column) if label_column else None))
        return out

    def read(batches):
        use_object_store_env(env)
        for batch in batches:
            for start, end in zip(batch.column("start").to_pylist(), batch.column("end").to_pylist()):
                rows = rows_of(start, end)
                # a row without a URI gets a key of its place in the manifest: rejected once, not each run
                paths = [f"{location}{NO_URI}{start}-{i}" if u is None or u == "" else _resolve(str(u), base)
                         for i, (u, _) in enumerate(rows)]
                labels = [None if v is None else str(v) for _, v in rows]
                yield pa.RecordBatch.from_arrays([pa.array(paths, pa.string()), pa.array(labels, pa.string())],
                                                 names=["path", "label"])
    return read


def _lines(fh, start: int, end: int, skip_first: bool):
    """The lines that begin in [start, end) of a file (Hadoop's rule for splitting text)."""
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":  # mid-line: that line belongs to the slice before
            _readline(fh)
    pos = fh.tell()
    reader = _io.BufferedReader(_Raw(fh), 1 << 20)
    first = True
    while pos < end:
        line = reader.readline()
        if not line:
            break
        pos += len(line)
        if first and skip_first:
            first = False
            continue
        first = False
        yield line.decode("utf-8", "replace").rstrip("\r\n")


class _Raw(_io.RawIOBase):
    def __init__(self, fh):
        self.fh = fh

    def readable(self):
        return True

    def readinto(self, b):
        data = self.fh.read(len(b))
        b[:len(data)] = data
        return len(data)


def _readline(fh) -> None:
    while True:
        chunk = fh.read(4096)
        if not chunk:
            return
        i = chunk.find(b"\n")
        if i >= 0:
            fh.seek(fh.tell() - len(chunk) + i + 1)
            return


_ARROW = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "boolean": pa.bool_()}


def _units_frame(spark, units: list[tuple], ddl: str, tasks: int):
    """A DataFrame of work units in `tasks` tasks, contiguous runs of them, made without a shuffle
    (spark.range's partitions, each turning its ids into units): a unit's task starts at once."""
    fields = [c.split() for c in ddl.split(",")]
    schema = pa.schema([(name, _ARROW[kind]) for name, kind in fields])
    units = list(units)

    def expand(batches):
        for batch in batches:
            ids = batch.column(0).to_pylist()
            yield pa.RecordBatch.from_arrays([pa.array([units[i][j] for i in ids], f.type)
                                              for j, f in enumerate(schema)], schema=schema)
    k = max(1, min(tasks, len(units)))
    return spark.range(0, len(units), 1, k).mapInArrow(expand, ddl)


def plan_manifest(spark, opts, location: str, size: int) -> Plan:

    fmt = "parquet" if location.endswith(".parquet") else "csv" if location.endswith(".csv") else "jsonl"
    filesystem, path = open_uri(location)
    header = None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with filesystem.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh)
            names = meta.schema_arrow.names
            units = [(g, g + 1) for g in range(meta.num_row_groups)]
    else:
        with filesystem.open_input_stream(path) as fh:
            first = fh.read(1 << 20).split(b"\n", 1)[0].decode("utf-8", "replace")
        if fmt == "csv":
            header = next(csv.reader([first]), [])
            names = header
        else:
            try:
                names = list(json.loads(first)) if first.strip() else []
            except ValueError:
                raise PipelineError(f"--source {opts.source}: the first line is not a JSON object") from None
        units = [(s, min(s + SLICE_BYTES, size)) for s in range(0, max(size, 1), SLICE_BYTES)]
    for option in ("uri_column", "label_column"):
        column = getattr(opts, option)
        if column and column not in names:
            raise PipelineError(f"--source {opts.source}: no column {column!r} (--{option.replace('_', '-')}); "
                                f"its columns: {', '.join(names[:20])}")
    slices = _units_frame(spark, units, "start long, end long", len(units))
    entries = slices.mapInArrow(_manifest_reader(location, fmt, opts.uri_column, opts.label_column, header),
                                "path string, label string")
    n = max(1, opts.partitions)

    def rows(known):
        # a URI listed twice is one input; the one shuffle (by path, into n tasks) also spreads the
        # fetches evenly over the tasks
        df = entries.repartition(n, "path").dropDuplicates(["path"])
        return df if known is None else df.join(known, "path", "left_anti")
    return Plan(rows, _rows_decoder(opts.split, opts.resize, opts.max_pixels, _manifest_or_missing, FETCHES_IN_FLIGHT))


def _manifest_or_missing(row, limit):
    if NO_URI in row["path"]:
        raise im.DecodeError("manifest row without a URI")
    return fetch(row["path"], limit)


def plan_tar(spark, opts, location: str, shards: list) -> Plan:
    from pyspark.sql import functions as F

    frame = _units_frame(spark, [(u,) for u, _ in shards], "shard string", len(shards))

    def rows(known):
        if known is None:
            return frame.withColumn("known", F.lit(None).cast("array<string>"))
        keyed = known.select(F.regexp_extract("path", r"^(.*)#([^#]*)$", 1).alias("shard"),
                             F.regexp_extract("path", r"^(.*)#([^#]*)$", 2).alias("key"))
        per_shard = keyed.where(F.col("shard") != "").groupBy("shard").agg(F.collect_list("key").alias("known"))
        return frame.join(per_shard, "shard", "left").repartition(len(shards), "shard")
    return Plan(rows, decode_tar(opts.split, opts.resize, opts.max_pixels), notes={"shards": len(shards)})


def plan_parquet(spark, opts, location: str, files: list) -> Plan:
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    units = []
    for uri, _ in files:
        filesystem, path = open_uri(uri)
        with filesystem.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh)
            schema = meta.schema_arrow
            first = 0
            for g in range(meta.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                units.append((uri, g, n))
                first += n
        for option in ("image_column", "label_column"):
            column = getattr(opts, option)
            if column and column not in schema.names:
                raise PipelineError(f"--source {uri}: no column {column!r} (--{option.replace('_', '-')}); "
                                    f"its columns: {', '.join(schema.names[:20])}")
        kind = schema.field(opts.image_column).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or
                (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
            raise PipelineError(f"--source {uri}: column {opts.image_column!r} is {kind}; expected encoded image "
                                "bytes (binary) or the Hugging Face image struct {bytes, path}")
    n = max(1, opts.partitions)
    groups = _units_frame(spark, units, "file string, rg int, n int", n)
    exploded = groups.select("file", "rg", F.explode(F.sequence(F.lit(0), F.col("n") - 1)).alias("row"))
    inputs = exploded.where(F.col("row") >= 0).select(
        F.concat("file", F.lit("#"), F.col("rg").cast("string"), F.lit("-"), F.lpad(F.col("row").cast("string"), 6, "0"))
        .alias("path"), "file", "rg", "row")

    def rows(known):
        if known is None:
            return inputs
        return (inputs.join(known, "path", "left_anti").repartition(n, "file", "rg")
                .sortWithinPartitions("file", "rg", "row"))
    decoder = decode_parquet(opts.split, opts.resize, opts.max_pixels, opts.image_column, opts.label_column)
    return Plan(rows, decoder, notes={"row_groups": len(units)})


def _list_tree(location: str, classes: list[str]):
    """mapInArrow body over top-level names of a remote folder: each task lists its subtree through
    pyarrow (streamed) and yields its files' URIs with their class folder as the label."""

    index = {c: i for i, c in enumerate(classes)}
    env = object_store_env()

    def list_(batches):
        use_object_store_env(env)
        filesystem, root = open_uri(location)
        root = root.rstrip("/")
        for batch in batches:
            for name, is_dir in zip(batch.column("name").to_pylist(), batch.column("is_dir").to_pylist()):
                if not is_dir:
                    yield pa.RecordBatch.from_pydict({"path": [f"{location.rstrip('/')}/{name}"], "label": [None],
                                                      "label_index": pa.array([None], pa.int32())})
                    continue
                paths = []
                for info in walk(filesystem, f"{root}/{name}"):
                    paths.append(f"{location.rstrip('/')}/{info.path[len(root) + 1:]}")
                    if len(paths) >= 10_000:
                        yield _labelled(paths, name, index.get(name))
                        paths = []
                if paths:
                    yield _labelled(paths, name, index.get(name))
    return list_


def _labelled(paths, label, idx):
    return pa.RecordBatch.from_pydict({"path": paths, "label": [label] * len(paths),
                                       "label_index": pa.array([idx] * len(paths), pa.int32())})


def plan_objects(spark, opts, location: str) -> Plan:
    from pyarrow import fs as pafs

    filesystem, root = open_uri(location)
    top = [(i.base_name, i.type == pafs.FileType.Directory)
           for i in filesystem.get_file_info(pafs.FileSelector(root.rstrip("/")))
           if not is_hidden(i.base_name) and i.type in (pafs.FileType.File, pafs.FileType.Directory)]
    classes = sorted(name for name, is_dir in top if is_dir)
    names = _units_frame(spark, top, "name string, is_dir boolean", max(len(top), 1))
    listed = names.mapInArrow(_list_tree(location, classes), "path string, label string, label_index int")
    n = max(1, opts.partitions)

    def rows(known):
        df = listed if known is None else listed.join(known, "path", "left_anti")
        return df.repartition(n)
    return Plan(rows, _rows_decoder(opts.split, opts.resize, opts.max_pixels, _fetch_uri, FETCHES_IN_FLIGHT))


def plan(spark, opts, kind: str, location: str, units) -> Plan:
    if kind == "manifest":
        return plan_manifest(spark, opts, location, units[0][1])
    if kind == "tar":
        return plan_tar(spark, opts, location, units)
    if kind == "parquet":
        return plan_parquet(spark, opts, location, units)
    return plan_objects(spark, opts, location)


def from_ingest_plan(p, opts) -> Plan:
    """ingest's own plans (a local folder, IDX files, a bundled set) as `rows(known)`."""
    n = max(1, opts.partitions)

    def rows(known):
        if known is None:
            return p.rows
        new = p.inputs.join(known, "path", "left_anti")
        return (new if p.rows is p.inputs else p.rows.join(new, "path")).repartition(n)
    return Plan(rows, p.decoder, p.hidden)


# ---------------------------------------------------------------- decoding, writing, committing

def _counted(decoder, tables, run_id, direct):
    """ingest's writing body, which also reports the inputs this task decoded (one row each)."""
    from pipeline import ingest

    env = object_store_env()

    def run(batches):
        use_object_store_env(env)
        seen = [0]

        def counting(bs):
            for b in decoder(bs):
                seen[0] += b.num_rows
                yield b
        yield from ingest.writing(counting, tables, run_id, direct=direct)(batches)
        yield pa.RecordBatch.from_pylist([{"table": INPUTS, "staged": "", "file": "", "rows": seen[0]}],
                                         schema=MANIFEST_SCHEMA)
    return run


def decode_write(spark, rows, decoder, tables: dict, run_id: str, direct: bool):
    """Decode `rows` into `tables` (images, rejected), each task writing its own files; (inputs read,
    {split: rows landed}, rejected rows landed, committed file URIs per table)."""
    fs = Files()
    tables = {name: fs.qualify(t) for name, t in tables.items()}
    if not direct:
        taskwrite.setup(tables.values())
    manifest = rows.mapInArrow(_counted(decoder, tables, run_id, direct), taskwrite.MANIFEST_DDL).collect()
    inputs = sum(r.rows for r in manifest if r.table == INPUTS)
    files = [r for r in manifest if r.table != INPUTS]
    landed = taskwrite.commit(tables, files, direct=direct)
    per_split = {folder.split("=", 1)[1]: n for (table, folder), n in landed.items() if table == "images"}
    committed = {name: [f"{t}/{r.file}" for r in files if r.table == name] for name, t in tables.items()}
    return inputs, per_split, landed.get(("rejected", ""), 0), committed


def known_paths(spark, tables: list[str]):
    """The committed `path`s of tables, read by tasks through pyarrow (no Hadoop jars needed on an
    object store); the driver handles only the list of committed files."""
    from pipeline.tablelog import committed_files

    files = [(t, f) for t in tables for f in committed_files(t) if f.endswith(".parquet")]
    if not files:
        return spark.createDataFrame([], "path string")

    env = object_store_env()

    def read(batches):
        import pyarrow.parquet as pq

        use_object_store_env(env)
        for batch in batches:
            for table, f in zip(batch.column("table").to_pylist(), batch.column("file").to_pylist()):
                filesystem, _ = arrow_filesystem(table)
                t = pq.read_table(f, columns=["path"], filesystem=filesystem)
                yield pa.RecordBatch.from_arrays([t.column("path").combine_chunks()], names=["path"])
    return _units_frame(spark, files, "table string, file string", min(len(files), 64)).mapInArrow(read, "path string")


def rejected_reasons(table: str, limit: int = 3) -> list[str]:
    import pyarrow.parquet as pq

    from pipeline.tablelog import committed_files

    filesystem, _ = arrow_filesystem(table)
    reasons: list[str] = []
    for f in committed_files(table):
        for r in pq.read_table(f, columns=["reason"], filesystem=filesystem).column("reason").to_pylist():
            if r not in reasons:
                reasons.append(r)
            if len(reasons) >= limit:
                return reasons
    return reasons


# ---------------------------------------------------------------- the job's two paths

def run(spark, opts, record, kind: str, location: str, units, ingest_plan=None) -> dict:
    """Ingest a source of this module (or one of ingest's own, `ingest_plan`, into an object store)."""
    from pipeline import ingest

    tables = {"images": f"{opts.output}/images", "rejected": f"{opts.output}/rejected"}
    source = ingest.Source(kind, location)
    exists = Files().exists(f"{tables['images']}")
    incremental = opts.incremental and exists
    with tempfile.TemporaryDirectory(prefix="sparkgan-inputs-") as scratch:
        def planned():
            if ingest_plan is not None:
                return from_ingest_plan(ingest_plan(scratch), opts)
            return plan(spark, opts, kind, location, units)

        if incremental:
            ingest.check_settings(spark, opts, source)
        if is_object_store(opts.output):
            per_split, hidden = _object_store(spark, opts, record, source, tables, planned, incremental)
        elif incremental:
            per_split, hidden = _append_local(spark, opts, record, tables, planned)
        else:
            per_split, hidden = _create_local(spark, opts, record, source, planned)
    record.outputs = tables
    record.metrics["skipped_hidden"] = hidden
    record.metrics.update({f"rows_{k}": v for k, v in per_split.items()})
    return {"source": f"{kind}:{location}", "rows_in": record.rows_in, "rows_out": record.rows_out,
            "rows_rejected": record.rows_rejected, "per_split": per_split, "incremental": incremental,
            "hidden_files": hidden, **record.outputs}


def _settle(opts, record, inputs, per_split, rejected, rejected_table, first: bool):
    record.rows_in, record.rows_rejected = inputs, rejected
    record.rows_out = sum(per_split.values())
    if first and record.rows_in == 0:
        raise PipelineError(f"--source {opts.source}: no inputs found (no manifest rows, samples or files)")
    if first and not per_split:
        raise PipelineError(f"--source {opts.source}: no input could be decoded (e.g. "
                            f"{'; '.join(rejected_reasons(rejected_table))}); nothing was written")


def _create_local(spark, opts, record, source, planned):
    from pipeline import ingest
    from pipeline.io import atomic_output

    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        fs = Files()
        fs.write_text(f"{tmp}/{ingest.SETTINGS_FILE}", json.dumps(ingest.dataset_settings(source, opts)))
        p = planned()
        tables = {"images": f"{tmp}/images", "rejected": f"{tmp}/rejected"}
        inputs, per_split, rejected, _ = decode_write(spark, p.rows(None), p.decoder, tables, record.run_id, False)
        _settle(opts, record, inputs, per_split, rejected, tables["rejected"], True)
        if not rejected:
            fs.write_parquet(tables["rejected"], "part-00000-empty.parquet", REJECTED_SCHEMA.empty_table())
        log.info("ingested %d inputs from %s:%s", inputs, source.kind, source.location)
    return per_split, p.hidden


def _append_local(spark, opts, record, tables, planned):
    from pipeline.tablelog import appending

    with appending(spark, [tables["images"], tables["rejected"]], record) as (images, rejected):
        p = planned()
        known = known_paths(spark, [tables["images"], tables["rejected"]])
        inputs, per_split, n_rejected, _ = decode_write(spark, p.rows(known), p.decoder,
                                                        {"images": images, "rejected": rejected}, record.run_id, False)
        _settle(opts, record, inputs, per_split, n_rejected, rejected, False)
    return per_split, p.hidden


def _object_store(spark, opts, record, source, tables, planned, incremental: bool):
    """Both tables get a commit log from the start (an empty entry 0 on creation, so a reader sees no
    file before the commit); the tasks write at final names; the commit is one entry per table."""
    from pipeline import ingest
    from pipeline.safety import MARKER
    from pipeline.tablelog import TableLog

    fs = Files()
    if not incremental:
        if fs.exists(opts.output) and fs.list_names(opts.output):
            if opts.mode != "overwrite":
                raise PipelineError(f"--output {opts.output} already exists (use --mode overwrite to replace it)")
            if not fs.exists(f"{opts.output}/{MARKER}"):
                raise PipelineError(f"--output {opts.output} was not written by sparkgan (no {MARKER} in it): "
                                    "refusing to replace it")
            fs.delete(opts.output)
        fs.write_text(f"{opts.output}/{MARKER}", json.dumps({"job": record.job, "run_id": record.run_id}))
        fs.write_text(f"{opts.output}/{ingest.SETTINGS_FILE}", json.dumps(ingest.dataset_settings(source, opts)))
        for t in tables.values():
            log_ = TableLog(spark, t)
            log_.fs.mkdirs(f"{log_.table}/_spark_metadata")
            log_._write_entry(f"{log_.table}/_spark_metadata", 0, {})
    logs = {name: TableLog(spark, t) for name, t in tables.items()}
    for t in logs.values():
        t.start()  # a killed run's files (never committed) are deleted here
    record.doing = f"writing {opts.output}"
    p = planned()
    known = known_paths(spark, list(tables.values())) if incremental else None
    inputs, per_split, rejected, committed = decode_write(spark, p.rows(known), p.decoder, tables, record.run_id, True)
    _settle(opts, record, inputs, per_split, rejected, tables["rejected"], not incremental)
    record.check_counts()
    record.doing = f"committing {opts.output}"
    for name in ("images", "rejected"):
        if committed[name]:
            batch = logs[name].add(committed[name])
            log.info("%s: committed %d files as log entry %d", logs[name].table, len(committed[name]), batch)
    return per_split, p.hidden
