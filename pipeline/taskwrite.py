"""Parquet written by the Python tasks that make the rows, committed by the driver.

A Spark write of rows made in Python sends every row through the JVM (Arrow → rows → Parquet) on
the same cores that make them. Here each task writes its own rows with pyarrow, through the table's
pyarrow filesystem (as the workers read tables: file:, hdfs://, s3://), and returns one manifest row
per file. The protocol is Hadoop's FileOutputCommitter (v1), with the driver as committer:

- `setup` creates `<table>/_temporary` (a hidden name: readers skip it);
- each task attempt writes `<table>/_temporary/<attempt id>/<dir>/part-<partition>-<run id>.parquet`;
- `commit` takes the manifest Spark collected, which holds the rows of exactly one attempt per
  partition (the one Spark counted), moves those files into place, checks each file's row count
  in its footer against what the task reported, and deletes `_temporary` with whatever failed,
  retried or speculative attempts left there.

On an object store, where a rename is a copy, `direct` writes skip `_temporary`: each attempt writes
at its final name, `part-<partition>-<run id>-<attempt id>.parquet`, and `commit` only checks the
footers; the caller commits the files through the table's log (pipeline/sources.py), so a failed or
speculative attempt's file, never listed there, is invisible to readers.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.io import arrow_filesystem
from pipeline.schemas import MANIFEST_SCHEMA, ddl

MANIFEST_DDL = ddl(MANIFEST_SCHEMA)
TEMPORARY = "_temporary"
ROW_GROUP_BYTES = 32 << 20  # rows are buffered to row groups of about this size


class TaskFiles:
    """Worker side: one Parquet file per (table, dir) the task adds rows to."""

    def __init__(self, tables: dict[str, str], run_id: str, direct: bool = False):
        from pyspark import TaskContext

        from pipeline.workers import skip_zip_rereads

        skip_zip_rereads()
        ctx = TaskContext.get()
        self._tables = tables
        self._attempt = "" if direct else f"{TEMPORARY}/{ctx.taskAttemptId()}/"
        self._name = (f"part-{ctx.partitionId():05d}-{run_id}-{ctx.taskAttemptId()}.parquet" if direct
                      else f"part-{ctx.partitionId():05d}-{run_id}.parquet")
        self._files: dict[tuple[str, str], _File] = {}

    def add(self, table: str, folder: str, batch) -> None:
        """Rows for `<table>/<folder>/`; folder '' for the table's top level."""
        key = (table, folder)
        if key not in self._files:
            file = f"{folder}/{self._name}" if folder else self._name
            self._files[key] = _File(self._tables[table], f"{self._attempt}{file}", file, batch.schema)
        self._files[key].add(batch)

    def close(self):
        """Flush and close every file; the manifest, as one Arrow batch."""
        rows = [{"table": table, "staged": f.staged, "file": f.file, "rows": f.close()}
                for (table, _), f in self._files.items()]
        return pa.RecordBatch.from_pylist(rows, schema=MANIFEST_SCHEMA)


class _File:
    def __init__(self, table: str, staged: str, file: str, schema):
        self.staged, self.file, self._schema = staged, file, schema
        self._fs, root = arrow_filesystem(table)
        self._path = f"{root.rstrip('/')}/{staged}"
        self._writer, self._buffer, self._bytes, self._rows = None, [], 0, 0

    def add(self, batch) -> None:
        self._buffer.append(batch)
        self._bytes += batch.nbytes
        self._rows += batch.num_rows
        if self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._fs.create_dir(self._path.rsplit("/", 1)[0], recursive=True)
            # dictionaries only where values repeat: pixels and paths would be tried and dropped
            # no min/max statistics of the pixel bytes: pyarrow copies each value for them, which made
            # a 40-megapixel image cost a worker ~6 copies of itself (bench/limits.py), and no reader
            # filters on pixels
            self._writer = pq.ParquetWriter(self._path, self._schema, filesystem=self._fs,
                                            use_dictionary=[f.name for f in self._schema
                                                            if f.name in ("label", "reason", "stage", "run_id")],
                                            write_statistics=[f.name for f in self._schema if f.name != "data"])
        self._writer.write_table(pa.Table.from_batches(self._buffer, self._schema))
        self._buffer, self._bytes = [], 0

    def close(self) -> int:
        if self._buffer or self._writer is None:
            self._flush()
        self._writer.close()
        return self._rows


def setup(tables) -> None:
    for table in tables:
        fs, root = arrow_filesystem(table)
        fs.create_dir(f"{root.rstrip('/')}/{TEMPORARY}", recursive=True)


def commit(tables: dict[str, str], manifest, direct: bool = False) -> dict[tuple[str, str], int]:
    """Move the files of the manifest's attempts into their tables (`direct`: they are in place
    already); {(table, folder): rows}, counted from the files' footers. Through the tables' pyarrow
    filesystems, as the tasks wrote them."""
    import pyarrow.parquet as pq

    from concurrent.futures import ThreadPoolExecutor

    filesystems = {name: arrow_filesystem(table) for name, table in tables.items()}
    landed: dict[tuple[str, str], int] = {}

    def place(row) -> int:
        fs, root = filesystems[row.table]
        root = root.rstrip("/")
        if not direct:
            folder = row.file.rsplit("/", 1)[0] if "/" in row.file else ""
            fs.create_dir(f"{root}/{folder}".rstrip("/"), recursive=True)
            fs.move(f"{root}/{row.staged}", f"{root}/{row.file}")
        return pq.read_metadata(f"{root}/{row.file}", filesystem=fs).num_rows

    # the moves and footer reads are requests, not work: on an object store they overlap
    with ThreadPoolExecutor(16) as pool:
        counted = list(pool.map(place, manifest))
    for row, rows in zip(manifest, counted):
        folder = row.file.rsplit("/", 1)[0] if "/" in row.file else ""
        if rows != row.rows:
            raise RuntimeError(f"{tables[row.table]}/{row.file}: a task reported {row.rows} rows, the file holds {rows}")
        landed[(row.table, folder)] = landed.get((row.table, folder), 0) + rows
    for fs, root in filesystems.values() if not direct else ():
        fs.delete_dir(f"{root.rstrip('/')}/{TEMPORARY}")
    return landed
