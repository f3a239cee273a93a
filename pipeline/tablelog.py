"""Appendable tables: each append commits through Spark's file-sink log, `<table>/_spark_metadata`.

That log is what Structured Streaming's file sink writes: an atomic, numbered entry per batch
listing the batch's files. When it exists, `spark.read.parquet(table)` reads only the files it
lists, so files of an append that died part-way are invisible to every reader, and the next
append deletes them. The driver writes entries with Spark's own log class (compaction every 10
entries included); workers without pyspark read it with `committed_files`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re

from pipeline.io import HadoopFS, arrow_filesystem, is_hidden

log = logging.getLogger(__name__)

LOG_DIR = "_spark_metadata"
_ENTRY = re.compile(r"(\d+)(\.compact)?")


def _uri(path: str) -> str:
    """One spelling per file: the log says file:///x, Hadoop's listings file:/x."""
    return re.sub(r"^file:/+", "file:///", path)


class TableLog:
    """One table's commit log, on the driver."""

    def __init__(self, spark, table: str):
        from pipeline.session import spark_major

        pkg = spark.sparkContext._jvm.org.apache.spark.sql.execution.streaming
        self._ns = pkg.sinks if spark_major() >= 4 else pkg  # Spark 4 moved the sink classes
        self._spark = spark
        self.fs = HadoopFS(spark)
        self.table = self.fs.qualify(table)
        self._dir = f"{self.table}/{LOG_DIR}"

    def _open(self, folder: str):
        # Spark's class creates its folder when built: build it only once the log is to exist,
        # since an empty _spark_metadata would make the table unreadable
        cls = self._ns.FileStreamSinkLog
        return cls(cls.VERSION(), self._spark._jsparkSession, folder, getattr(cls, "$lessinit$greater$default$4")())

    def _statuses(self, files: list[str]):
        statuses = self._spark.sparkContext._gateway.new_array(self._ns.SinkFileStatus, len(files))
        for i, f in enumerate(files):
            statuses[i] = self._ns.SinkFileStatus.apply(self.fs.status(f))
        return statuses

    def committed(self) -> set[str]:
        return {_uri(s.path()) for s in self._open(self._dir).allFiles()}

    def add(self, files: list[str]) -> int:
        """Commit `files` (already in place under the table) as the next entry; its number."""
        log = self._open(self._dir)
        latest = log.getLatestBatchId()
        batch = latest.get() + 1 if latest.isDefined() else 0
        if not log.add(batch, self._statuses(files)):
            raise RuntimeError(f"{self.table}: log entry {batch} was written by someone else meanwhile")
        return batch

    def start(self) -> None:
        """Before an append: a table written in one go gets a log whose entry 0 holds its files
        (built aside, then renamed into place); files of an append that died part-way (never
        committed) and its staging folders are deleted."""
        jfs, root = self.fs._resolve(self.table)
        for s in jfs.listStatus(root):
            if s.getPath().getName().startswith(("_staging-", "_bootstrap")):
                self.fs.delete(s.getPath().toString())
        if not self.fs.exists(self._dir):
            aside = f"{self.table}/_bootstrap{LOG_DIR}"
            self._open(aside).add(0, self._statuses(self.fs.list_files(self.table)))
            self.fs.rename(aside, self._dir)
            return
        committed = self.committed()
        orphans = [f for f in self.fs.list_files(self.table) if _uri(f) not in committed]
        for f in orphans:
            self.fs.delete(f)
        if orphans:
            log.warning("%s: deleted %d files of an append that did not commit", self.table, len(orphans))


@contextlib.contextmanager
def appending(spark, tables: list[str], record):
    """Yield a staging folder per table; if the block succeeds and the run's rows balance, move the
    staged files into their tables and commit them, one log entry per table.

    A table's entry is atomic; between two tables' entries a crash leaves the first committed and
    the second not, so the caller must be able to redo the second from what the first holds (the
    ingest job does: a file is new until it is in images or rejected)."""
    logs = [TableLog(spark, t) for t in tables]
    for t in logs:
        t.start()
    staging = [f"{t.table}/_staging-{record.run_id}" for t in logs]
    record.doing = f"writing {', '.join(tables)}"
    try:
        yield staging
        record.check_counts()
        record.doing = f"committing {', '.join(tables)}"
        for t, stage in zip(logs, staging):
            moved = []
            if t.fs.exists(stage):
                prefix = len(t.fs.qualify(stage).rstrip("/")) + 1
                for f in t.fs.list_files(stage):
                    # part-*-<write job's uuid>.parquet: unique names, kept as they are
                    dest = f"{t.table}/{f[prefix:]}"
                    t.fs.mkdirs(dest.rsplit("/", 1)[0])
                    t.fs.rename(f, dest)
                    moved.append(dest)
            if moved:
                batch = t.add(moved)
                log.info("%s: committed %d files as log entry %d", t.table, len(moved), batch)
    finally:
        for t, stage in zip(logs, staging):
            t.fs.delete(stage)


def committed_files(table: str) -> list[str]:
    """The committed files of `table` as paths of its pyarrow filesystem (none when it does not
    exist): the files its commit log lists, read as Spark does (the newest compacted entry, then
    every entry after it), or, without a log, every visible file (Spark's rule for hidden names)."""
    from pyarrow import fs as pafs

    fs, root = arrow_filesystem(table)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{LOG_DIR}"))
    except FileNotFoundError:
        infos = []
    entries = {int(m.group(1)): i.path for i in infos if (m := _ENTRY.fullmatch(i.base_name))}
    if not entries:
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        except FileNotFoundError:
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and not is_hidden(i.path[len(root) + 1:]))
    latest = max(entries)
    first = max((b for b, p in entries.items() if p.endswith(".compact")), default=0)
    files: dict[str, bool] = {}
    for batch in range(first, latest + 1):
        with fs.open_input_stream(entries[batch]) as fh:
            version, *lines = fh.read().decode().splitlines()
        if version != "v1":
            raise ValueError(f"{entries[batch]}: unsupported log version {version!r}")
        for line in lines:
            entry = json.loads(line)
            files[entry["path"]] = entry["action"] == "add"
    return sorted(_arrow_path(p) for p, added in files.items() if added)


def _arrow_path(uri: str) -> str:
    """file:///x → /x; hdfs://nn/x → /x; s3a://bucket/x → bucket/x (pyarrow's spelling)."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(//[^/]*)?(/.*)$", uri)
    if not m:
        return uri
    scheme, authority, path = m.groups()
    if scheme.startswith("s3") or scheme in ("gs", "gcs"):
        return f"{(authority or '//')[2:]}{path}"
    return path
