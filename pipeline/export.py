"""Export: an images table → WebDataset tar shards, with a Parquet index, for training outside Spark.

One Spark job: the rows are hashed by path over --partitions tasks (so a shard mixes the classes a
folder-per-class ingest lists one after another), each task encodes its rows (PNG or JPEG) and
streams them into tar shards of at most --shard-size samples or bytes through the output's pyarrow
filesystem (local, s3://, hdfs://, gs://), never staging a shard on local disk. Output:

    <output>/<split>/shard-PPPPP-NNNN-<run>-<attempt>.tar   KEY.png|KEY.jpg, KEY.cls, KEY.json per sample
    <output>/index/part-PPPPP-<run>-<attempt>.parquet       key, shard, offset, size, path, label, ...
    <output>/rejected/part-PPPPP-<run>-<attempt>.parquet    rows that could not be encoded (path, reason)
    <output>/manifest.parquet                               the commit: one row per file above

Every name carries the run and the task attempt, so attempts never write over each other and no
data file is renamed on an object store. The driver commits by writing `manifest.parquet` last
(locally inside `<output>.__tmp_<run>`, renamed into place by io.atomic_output; on an object store
one PUT, which replaces an older manifest whole): readers trust only the manifest, which lists
exactly one attempt's files per task (`shard_urls`, `read_index`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import tarfile
import time
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from pipeline import images as im
from pipeline import options
from pipeline.errors import PipelineError
from pipeline.io import Files, absolute, arrow_filesystem, atomic_output, is_local, object_store_env, use_object_store_env
from pipeline.schemas import REJECTED_SCHEMA

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
FORMATS = {"png": ("png", "PNG"), "jpeg": ("jpg", "JPEG")}  # --format → (member extension, PIL format)
REQUIRED = ("path", "height", "width", "nChannels", "data")  # the images contract's columns export needs
BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE  # a tar is 512-byte blocks, closed to 10 KiB records
# one row per sample of a shard (OUT/index/): where its members start in the shard and how many bytes they take
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()),
                          ("size", pa.int64()), ("path", pa.string()), ("label", pa.string()),
                          ("label_index", pa.int32()), ("split", pa.string())])
# what a task reports of each file it wrote, and what manifest.parquet holds: one row per committed file
FILES_SCHEMA = pa.schema([("kind", pa.string()), ("file", pa.string()), ("split", pa.string()),
                          ("rows", pa.int64()), ("bytes", pa.int64())])
FILES_DDL = "kind string, file string, split string, rows long, bytes long"


# ---------------------------------------------------------------- options

_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


@dataclass(frozen=True)
class ShardSize:
    """--shard-size: `samples` per shard, or at most `bytes` per shard file."""

    text: str
    samples: int | None = None
    bytes: int | None = None

    def __str__(self) -> str:
        return self.text


def parse_shard_size(text: str) -> ShardSize:
    """'10000' → 10,000 samples a shard; '256MB' (also KB, GB, KiB, MiB, GiB) → at most that many bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:([kKmMgG][iI]?)[bB]|([bB]))?\s*", text)
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"bad shard size {text!r}: expected a number of samples (10000) or of "
                                         "bytes with a unit (256MB, 1GB, 64MiB)")
    if not (m.group(2) or m.group(3)):
        return ShardSize(text.strip(), samples=int(m.group(1)))
    size = int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if size < RECORD:
        raise argparse.ArgumentTypeError(f"bad shard size {text!r}: a tar file takes at least {RECORD} bytes "
                                         f"(it is written in {RECORD // 1024} KiB records)")
    return ShardSize(text.strip(), bytes=size)


def parse_splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(","))
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in names):
        raise argparse.ArgumentTypeError(f"bad split {text!r}: expected split names such as train or train,test")
    return names


def add_arguments(p: argparse.ArgumentParser) -> dict:
    p.add_argument("--input", required=True, help="an images table (ingest's OUT/images, or any table in its contract)")
    defaults = options.add_output(p, "folder or prefix (s3://bucket/x) for the shards, their index and manifest")
    p.add_argument("--shard-size", type=parse_shard_size,
                   help="samples per shard (10000), or at most this many bytes per shard file (256MB, 1GiB)")
    p.add_argument("--format", choices=tuple(FORMATS), help="how the images are encoded in the shards")
    p.add_argument("--quality", type=int, help="JPEG quality, 1-100 (--format jpeg only)")
    p.add_argument("--split", type=parse_splits, help="only these splits, e.g. train or train,val (default: every row)")
    p.add_argument("--partitions", type=int,
                   help="tasks, each writing its own shards; rows are spread over them by a hash of the path "
                        "(0: keep the table's own partitioning and row order, no shuffle)")
    return {**defaults, "shard_size": parse_shard_size("256MB"), "format": "png", "quality": 95, "split": None,
            "partitions": 4}


def validate(opts) -> None:
    if not 1 <= opts.quality <= 100:
        raise PipelineError(f"--quality {opts.quality}: expected 1 to 100")
    if opts.partitions < 0:
        raise PipelineError(f"--partitions {opts.partitions}: expected 0 (the table's partitioning) or more")
    opts.input = options.input_table(opts.input)
    opts.output = absolute(opts.output)
    if is_local(opts.output):
        options.output(opts)
    elif opts.mode != "overwrite" and Files().exists(opts.output):
        raise PipelineError(f"--output {opts.output} already exists (use --mode overwrite to replace it)")


# ---------------------------------------------------------------- executor side

def sample_key(path: str) -> str:
    """A row's sample key: the same for the same path on every machine and every run, and only hex
    digits, as WebDataset needs (it splits a member name into key and extension at the first dot)."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _padded(n: int) -> int:
    return BLOCK + -(-n // BLOCK) * BLOCK  # a member: its header block, then its data in whole blocks


def _closed(offset: int) -> int:
    """A tar's file size once closed at `offset`: two end blocks, then padding to a whole record."""
    return -(-(offset + 2 * BLOCK) // RECORD) * RECORD


def encode(h: int, w: int, c: int, data: bytes, pil_format: str, quality: int) -> bytes:
    """Image-schema pixels → PNG or JPEG bytes (RGB(A) order, as PIL and WebDataset's decoders expect);
    JPEG has no alpha channel, so RGBA is written as RGB."""
    from PIL import Image

    arr = im.row_to_array(h, w, c, data)
    if c not in (1, 3, 4):
        raise im.DecodeError(f"unsupported channel count {c}")
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    if pil_format == "JPEG" and c == 4:
        img = img.convert("RGB")
    buf = io.BytesIO()
    if pil_format == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=1)  # level 1: most of level 6's saving at a fraction of its time
    return buf.getvalue()


def _meta(row: dict) -> bytes:
    """The sample's `.json` member: every column but the pixels."""
    return json.dumps({k: v for k, v in row.items() if not isinstance(v, (bytes, bytearray))},
                      default=str, sort_keys=True).encode()


@lru_cache(maxsize=64)
def _template(length: int) -> bytes:
    """tarfile's own USTAR header of a read-only member with a name of this length (mtime 0: the same
    bytes on every rerun), for `header` to fill in."""
    info = tarfile.TarInfo("0" * length)
    info.mode, info.mtime = 0o444, 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def header(name: str, size: int) -> bytes:
    """The USTAR header tarfile writes for `name` and `size`: its template with the two fields and the
    checksum patched (tarfile building each header from scratch took ~45 % of a small sample's time)."""
    raw = name.encode("ascii")
    buf = bytearray(_template(len(raw)))
    buf[:len(raw)] = raw
    buf[124:136] = b"%011o\0" % size
    buf[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


class _Shard:
    """One tar shard being streamed to its file, with its samples' index rows."""

    def __init__(self, fs, root: str, file: str):
        self.file, self.offset, self.samples = file, 0, 0
        path = f"{root}/{file}"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self._out = pa.BufferedOutputStream(fs.open_output_stream(path), 1 << 20)

    def add(self, key: str, members: list[tuple[str, bytes]]) -> tuple[int, int]:
        start = self.offset
        for ext, payload in members:
            self._out.write(header(f"{key}.{ext}", len(payload)))
            self._out.write(payload)
            self._out.write(bytes(-len(payload) % BLOCK))
            self.offset += _padded(len(payload))
        self.samples += 1
        return start, self.offset - start

    def close(self) -> int:
        size = _closed(self.offset)
        self._out.write(bytes(size - self.offset))  # two zero blocks end a tar, then zeros to a whole record
        self._out.close()
        return size


def writing(output: str, run_id: str, shard_size: ShardSize, fmt: str, quality: int):
    """mapInArrow body: this task's rows encoded into its shards (one series per split), its index and
    rejected rows written beside them; yields one FILES_SCHEMA row per file written."""
    ext, pil_format = FORMATS[fmt]
    tag = run_id.rsplit("-", 1)[-1]
    env = object_store_env()

    def write(batches):
        from pyspark import TaskContext

        from pipeline.workers import skip_zip_rereads

        skip_zip_rereads()
        use_object_store_env(env)
        ctx = TaskContext.get()
        part, name = ctx.partitionId(), f"{ctx.partitionId():05d}-{tag}-{ctx.taskAttemptId()}"
        fs, root = arrow_filesystem(output)
        root = root.rstrip("/")
        open_shards: dict[str, _Shard] = {}
        numbers: dict[str, int] = {}
        index, rejected, files, seen = [], [], [], set()
        started, samples, payload_bytes = time.time(), 0, 0

        def finish(split: str) -> None:
            shard = open_shards.pop(split)
            files.append(("shard", shard.file, split, shard.samples, shard.close()))

        for batch in batches:
            for row in batch.to_pylist():
                path, split = row["path"], row.get("split")
                try:
                    if path is None:
                        raise im.DecodeError("no path: a sample needs one for its key")
                    key = sample_key(path)
                    if key in seen:
                        raise im.DecodeError("duplicate path: an earlier row of this path was exported")
                    image = encode(row["height"], row["width"], row["nChannels"], row["data"], pil_format, quality)
                except (im.DecodeError, ValueError, TypeError) as exc:
                    rejected.append((str(path), str(exc) or type(exc).__name__, "export", run_id))
                    continue
                seen.add(key)
                members = [(ext, image)]
                if row.get("label_index") is not None:
                    members.append(("cls", str(row["label_index"]).encode()))
                members.append(("json", _meta(row)))
                size = sum(_padded(len(p)) for _, p in members)
                folder = split or "shards"
                shard = open_shards.get(folder)
                if shard is not None and (shard.samples == shard_size.samples or (
                        shard_size.bytes and _closed(shard.offset + size) > shard_size.bytes)):
                    finish(folder)
                    shard = None
                if shard is None:
                    n = numbers[folder] = numbers.get(folder, -1) + 1
                    shard = open_shards[folder] = _Shard(fs, root, f"{folder}/shard-{part:05d}-{n:04d}-{tag}-"
                                                                   f"{ctx.taskAttemptId()}.tar")
                offset, length = shard.add(key, members)
                index.append((key, shard.file, offset, length, path, row.get("label"), row.get("label_index"),
                              split))
                samples, payload_bytes = samples + 1, payload_bytes + size
        for folder in list(open_shards):
            finish(folder)
        for kind, rows, schema in (("index", index, INDEX_SCHEMA), ("rejected", rejected, REJECTED_SCHEMA)):
            if rows:
                import pyarrow.parquet as pq

                file = f"{kind}/part-{name}.parquet"
                table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(zip(*rows), schema)], schema=schema)
                fs.create_dir(f"{root}/{kind}", recursive=True)
                pq.write_table(table, f"{root}/{file}", filesystem=fs)
                files.append((kind, file, None, len(rows), fs.get_file_info(f"{root}/{file}").size))
        seconds = time.time() - started
        log.info("task %d: %d samples (%.1f MB) in %d shards, %d rejected, %.0f samples/s", part, samples,
                 payload_bytes / 1e6, sum(f[0] == "shard" for f in files), len(rejected), samples / max(seconds, 1e-9))
        yield pa.RecordBatch.from_arrays([pa.array(c, f.type) for c, f in zip(zip(*files), FILES_SCHEMA)]
                                         if files else [pa.array([], f.type) for f in FILES_SCHEMA],
                                         schema=FILES_SCHEMA)
    return write


# ---------------------------------------------------------------- the driver

def rows_to_export(spark, opts):
    """The input table's rows (of --split), spread over --partitions tasks by a hash of the path and
    ordered by another hash within each task, or in the table's own order with --partitions 0."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(opts.input)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise PipelineError(f"--input {opts.input}: no column {', '.join(missing)} (expected an images table: "
                            f"{', '.join(im.IMAGE_COLUMNS)})")
    if opts.split:
        if "split" not in df.columns:
            raise PipelineError(f"--split {','.join(opts.split)}: --input {opts.input} has no split column")
        df = df.where(F.col("split").isin(*opts.split))
    if opts.partitions:
        return df, df.repartition(opts.partitions, "path").sortWithinPartitions(F.xxhash64("path"))
    return df, df


def _commit_files(fs, root: str, files: list, this_run: str) -> None:
    """Delete what this run wrote that the manifest will not list (failed or speculative attempts)."""
    from pyarrow import fs as pafs

    keep = {f"{root}/{f['file']}" for f in files}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and f"-{this_run}-" in info.base_name and info.path not in keep:
            fs.delete_file(info.path)


def _check(files: list, record) -> None:
    """The rows the tasks wrote balance the rows read, and each file holds what its task reported."""
    record.rows_out = sum(f["rows"] for f in files if f["kind"] == "shard")
    record.rows_rejected = sum(f["rows"] for f in files if f["kind"] == "rejected")
    indexed = sum(f["rows"] for f in files if f["kind"] == "index")
    if indexed != record.rows_out:
        raise RuntimeError(f"the index holds {indexed} samples, the shards {record.rows_out}")
    record.check_counts()


def _export(spark, opts, record, target: str) -> list[dict]:
    table, df = rows_to_export(spark, opts)
    record.rows_in = table.count()  # before the shuffle: from the files' footers
    if record.rows_in == 0:
        raise PipelineError(f"--input {opts.input}: no rows" + (f" of split {','.join(opts.split)}" if opts.split else ""))
    log.info("exporting %d rows of %s to %s as %s shards of %s", record.rows_in, opts.input, opts.output,
             opts.format, opts.shard_size)
    started = time.time()
    files = [r.asDict() for r in df.mapInArrow(writing(target, record.run_id, opts.shard_size, opts.format,
                                                        opts.quality), FILES_DDL).collect()]
    shards = [f for f in files if f["kind"] == "shard"]
    log.info("wrote %d samples in %d shards (%.1f MB) in %.1f s: %.0f samples/s", sum(f["rows"] for f in shards),
             len(shards), sum(f["bytes"] for f in shards) / 1e6, time.time() - started,
             sum(f["rows"] for f in shards) / max(time.time() - started, 1e-9))
    fs, root = arrow_filesystem(target)
    root = root.rstrip("/")
    _commit_files(fs, root, files, record.run_id.rsplit("-", 1)[-1])
    for f in files:  # what the manifest promises is there, byte for byte
        size = fs.get_file_info(f"{root}/{f['file']}").size
        if size != f["bytes"]:
            raise RuntimeError(f"{target}/{f['file']}: a task reported {f['bytes']} bytes, the file holds {size}")
    _check(files, record)
    return files


def _manifest(files: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(sorted(files, key=lambda f: (f["kind"], f["file"])), schema=FILES_SCHEMA)


def run(spark, opts, record, _prepared) -> dict:
    from pipeline.session import set_conf

    set_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", 256)  # rows of pixels a batch, until the job ends
    fs = Files()
    if is_local(opts.output):
        with atomic_output(spark, opts.output, record, opts.mode) as tmp:
            files = _export(spark, opts, record, tmp)
            fs.write_parquet(tmp, MANIFEST, _manifest(files))
    else:
        files = _export_remote(spark, opts, record, fs)
    shards = [f for f in files if f["kind"] == "shard"]
    record.outputs = {"shards": opts.output, "manifest": f"{opts.output}/{MANIFEST}"}
    record.metrics.update(shards=len(shards), shard_bytes=sum(f["bytes"] for f in shards))
    return {"rows_in": record.rows_in, "rows_out": record.rows_out, "rows_rejected": record.rows_rejected,
            "shards": len(shards), "bytes": sum(f["bytes"] for f in shards), "output": opts.output,
            "manifest": f"{opts.output}/{MANIFEST}"}


def _export_remote(spark, opts, record, fs: Files) -> list[dict]:
    """On an object store: the tasks write straight under --output (names unique per run and attempt),
    the manifest is written last, in one PUT, and only then does an older export's data go."""
    from pipeline.safety import MARKER

    from pyarrow import fs as pafs

    if fs.exists(opts.output):
        if opts.mode != "overwrite":
            raise PipelineError(f"--output {opts.output} already exists (use --mode overwrite to replace it)")
        if not fs.exists(f"{opts.output}/{MARKER}"):
            raise PipelineError(f"--output {opts.output} was not written by sparkgan (no {MARKER} in it): "
                                "refusing to replace it")
    fs.write_text(f"{opts.output}/{MARKER}", json.dumps({"job": record.job, "run_id": record.run_id}))
    record.doing = f"writing {opts.output}"
    store, root = arrow_filesystem(opts.output)
    root = root.rstrip("/")
    try:
        files = _export(spark, opts, record, opts.output)
    except BaseException:
        _commit_files(store, root, [], record.run_id.rsplit("-", 1)[-1])  # this run's files: an older export stays whole
        raise
    record.doing = f"committing {opts.output}"
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(_manifest(files), sink)
    fs.write_bytes(f"{opts.output}/{MANIFEST}", sink.getvalue().to_pybytes())  # the commit
    # then the older export's files, and any a killed run left: the marker says the folder is ours,
    # and one writer per output is the scheduler's to ensure (pipeline/safety.py)
    kept = {f"{root}/{f['file']}" for f in files} | {f"{root}/{MANIFEST}", f"{root}/{MARKER}"}
    for info in store.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File and info.path not in kept:
            store.delete_file(info.path)
    return files


# ---------------------------------------------------------------- readers

def read_manifest(output: str) -> pa.Table:
    """The committed files of an export (FILES_SCHEMA); a folder without a manifest holds no export."""
    import pyarrow.parquet as pq

    fs, root = arrow_filesystem(output)
    try:
        return pq.read_table(f"{root.rstrip('/')}/{MANIFEST}", filesystem=fs)
    except FileNotFoundError:
        raise PipelineError(f"{output}: no {MANIFEST}, so no committed export there") from None


def shard_urls(output: str, split: str | None = None) -> list[str]:
    """The committed shards of an export (of one split), as URLs webdataset.WebDataset opens: local paths
    as they are, object stores as `pipe:` commands are the reader's to choose (docs/export.md)."""
    manifest = read_manifest(output).to_pylist()
    base = absolute(output).rstrip("/")
    return [f"{base}/{f['file']}" for f in manifest if f["kind"] == "shard" and (split is None or f["split"] == split)]


def read_index(output: str) -> pa.Table:
    """Every committed sample: key, shard, offset and size of its members in the shard, path, label, split."""
    import pyarrow.parquet as pq

    fs, root = arrow_filesystem(output)
    parts = [f"{root.rstrip('/')}/{f['file']}" for f in read_manifest(output).to_pylist() if f["kind"] == "index"]
    return pa.concat_tables([pq.read_table(p, filesystem=fs, schema=INDEX_SCHEMA) for p in parts]) if parts \
        else INDEX_SCHEMA.empty_table()
