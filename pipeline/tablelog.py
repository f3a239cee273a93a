"""Appendable tables: each append commits through a file-sink log, `<table>/_spark_metadata`.

That log is what Structured Streaming's file sink writes, in Spark's own format (version "v1", one
JSON `SinkFileStatus` per line, every 10th entry a `.compact` one that repeats everything before
it), written here by the driver through pyarrow's filesystems, so no JVM is needed and it works on
Spark Connect. When it exists, `spark.read.parquet(table)` reads only the files it lists, so files
of an append that died part-way are invisible to every reader, and the next append deletes them.
An entry appears whole: it is written under a hidden name (which Spark's log reader skips) and
renamed to its number without replacing one that exists, so of two writers only one can commit a
batch number. Workers without pyspark read the log with `committed_files`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid

from pipeline.io import Files, arrow_filesystem, file_uri, is_hidden, is_local, local_path

log = logging.getLogger(__name__)

LOG_DIR = "_spark_metadata"
COMPACT_INTERVAL = 10  # Spark's default spark.sql.streaming.fileSink.log.compactInterval
_ENTRY = re.compile(r"(\d+)(\.compact)?")


class TableLog:
    """One table's commit log, on the driver."""

    def __init__(self, spark, table: str):
        self.fs = Files()
        self.table = self.fs.qualify(table)
        self._dir = f"{self.table}/{LOG_DIR}"

    def _entries(self, folder: str) -> dict[int, str]:
        found = ((_ENTRY.fullmatch(n), n) for n in self.fs.list_names(folder))
        return {int(m.group(1)): f"{folder}/{n}" for m, n in found if m}

    def committed(self) -> set[str]:
        return {file_uri(f) for f in _read_log(self.fs, self._entries(self._dir))}

    def _write_entry(self, folder: str, batch: int, files: dict[str, tuple[int, int]]) -> None:
        """Entry `batch` listing `files` ({uri: (size, mtime ms)}), created whole and never replacing one."""
        from pipeline.safety import rename_noreplace

        name = f"{batch}.compact" if (batch + 1) % COMPACT_INTERVAL == 0 else str(batch)
        lines = ["v1", *(json.dumps({"path": file_uri(f), "size": size, "isDir": False, "modificationTime": mtime,
                                      "blockReplication": 1, "blockSize": 33554432, "action": "add"},
                                     separators=(",", ":")) for f, (size, mtime) in files.items())]
        hidden = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        self.fs.write_text(hidden, "\n".join(lines))
        try:
            if is_local(folder):
                rename_noreplace(local_path(hidden), local_path(f"{folder}/{name}"))
            elif self.fs.exists(f"{folder}/{name}"):
                raise FileExistsError(name)
            else:
                self.fs.rename(hidden, f"{folder}/{name}")
        except FileExistsError:
            self.fs.delete(hidden)
            raise RuntimeError(f"{self.table}: log entry {batch} was written by someone else meanwhile") from None

    def _statuses(self, files: list[str]) -> dict[str, tuple[int, int]]:
        from pyarrow import fs as pafs

        # many files of a folder: one listing of it (1,000 names a request), not one request per
        # file (on an object store a commit of 10,000 task files would be 10,000 HEAD requests);
        # a few: one request each, as a folder that grows every night would make its listing long
        out, folders = {}, {}
        for f in files:
            folders.setdefault(f.rsplit("/", 1)[0], []).append(f)
        for folder, wanted in folders.items():
            filesystem, inner = self.fs._fs(folder)
            if len(wanted) >= 64:
                infos = filesystem.get_file_info(pafs.FileSelector(inner))
            else:
                infos = filesystem.get_file_info([self.fs._fs(f)[1] for f in wanted])
            found = {i.base_name: i for i in infos if i.type == pafs.FileType.File}
            for f in wanted:
                info = found.get(f.rsplit("/", 1)[1])
                if info is None:
                    raise FileNotFoundError(f)
                out[f] = (info.size, int((info.mtime.timestamp() if info.mtime else time.time()) * 1000))
        return out

    def add(self, files: list[str]) -> int:
        """Commit `files` (already in place under the table) as the next entry; its number. A compact
        entry (every 10th) lists every committed file, as Spark's compaction does."""
        entries = self._entries(self._dir)
        batch = max(entries) + 1 if entries else 0
        listed = self._statuses(files)
        if (batch + 1) % COMPACT_INTERVAL == 0:
            listed = {**_read_log(self.fs, entries, statuses=True), **listed}
        self._write_entry(self._dir, batch, listed)
        return batch

    def start(self) -> None:
        """Before an append: a table written in one go gets a log whose entry 0 holds its files
        (built aside, then renamed into place); files of an append that died part-way (never
        committed) and its staging folders are deleted. Only with the dataset's lease held
        (pipeline/safety.py): so they are a dead run's."""
        for name in self.fs.list_names(self.table):
            if name.startswith(("_staging-", "_bootstrap")):
                self.fs.delete(f"{self.table}/{name}")
        if not self.fs.exists(self._dir):
            aside = f"{self.table}/_bootstrap{LOG_DIR}"
            self.fs.mkdirs(aside)
            self._write_entry(aside, 0, self._statuses(self.fs.list_files(self.table)))
            self.fs.rename(aside, self._dir)
            return
        committed = self.committed()
        orphans = [f for f in self.fs.list_files(self.table) if file_uri(f) not in committed]
        for f in orphans:
            self.fs.delete(f)
        if orphans:
            log.warning("%s: deleted %d files of an append that did not commit", self.table, len(orphans))


def _read_log(fs: Files, entries: dict[int, str], statuses: bool = False):
    """The files an entry set commits, read as Spark reads it: the newest compacted entry, then every
    entry after it; {uri: (size, mtime)} with `statuses`, else the uris."""
    if not entries:
        return {} if statuses else []
    latest = max(entries)
    first = max((b for b, p in entries.items() if p.endswith(".compact")), default=0)
    files: dict[str, tuple | None] = {}
    for batch in range(first, latest + 1):
        version, *lines = fs.read_text(entries[batch]).splitlines()
        if version != "v1":
            raise ValueError(f"{entries[batch]}: unsupported log version {version!r}")
        for line in lines:
            entry = json.loads(line)
            files[entry["path"]] = (entry["size"], entry["modificationTime"]) if entry["action"] == "add" else None
    kept = {p: st for p, st in files.items() if st is not None}
    return kept if statuses else list(kept)


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
