"""Atomic outputs, the driver's file operations and the `runs` table.

Files go through pyarrow's filesystems (no JVM, so every job runs on classic Spark and on Spark
Connect alike): outputs are written to `<out>.__tmp_<run_id>`, then renamed into place on success.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import traceback
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.schemas import RUNS_SCHEMA

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def absolute(path: str) -> str:
    """Local paths become absolute, so driver and executors agree on them; URIs pass through."""
    return path if _SCHEME.match(path) else os.path.abspath(path)


def arrow_uri(table: str) -> str:
    """A table's location as pyarrow spells it: local paths absolute, Hadoop's s3a:// as s3://."""
    return re.sub(r"^s3[an]://", "s3://", absolute(table))


def arrow_filesystem(table: str):
    """(pyarrow filesystem, path in it) for a table given as a local path or a URI: what workers
    read tables through (file:, hdfs://, s3://)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(arrow_uri(table))


# What pyarrow's S3 filesystem reads from the environment (the AWS SDK's standard variables): how every
# job reaches an object store, its endpoint included (AWS_ENDPOINT_URL: MinIO, Ceph, moto, R2...).
OBJECT_STORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_EC2_METADATA_DISABLED")


def object_store_env() -> dict[str, str]:
    """The driver's object-store settings, for its tasks: executors started before they were set
    (or on other machines) do not have them."""
    return {k: os.environ[k] for k in OBJECT_STORE_ENV if k in os.environ}


def use_object_store_env(env: dict[str, str]) -> None:
    """In a task: the driver's object-store settings, where the executor has none of its own."""
    for k, v in env.items():
        os.environ.setdefault(k, v)


def file_uri(path: str) -> str:
    """A local file URI as Spark's image source and file-sink log spell it, file:///x (binaryFile and
    Hadoop listings say file:/x); paths and other URIs unchanged. The one home of this spelling."""
    return re.sub(r"^file:/+", "file:///", path)


def is_local(path: str) -> bool:
    return not _SCHEME.match(path) or path.startswith("file:")


HIDDEN = ("_", ".")  # name prefixes Spark's readers skip


def is_hidden(relative: str) -> bool:
    """Spark's rule for what its readers skip: a name, or any part of a path below a table's folder,
    starting with _ or . (_SUCCESS, _spark_metadata, .crc files, staging folders)."""
    return any(part.startswith(HIDDEN) for part in relative.split("/"))


def local_path(path: str) -> str:
    return re.sub(r"^file:(//)?", "", path) if path.startswith("file:") else path


class Files:
    """The few file operations the driver needs, through pyarrow's filesystems (file:, hdfs://, s3://,
    gs://): the same layer the tasks and the ranks read and write through, and no JVM, so the jobs run
    on a Spark Connect session as on a classic one. Paths are local paths or URIs; `qualify` gives the
    spelling Spark's readers use for them (file:/x, hdfs://nn/x, s3://bucket/x)."""

    def _fs(self, path: str):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(arrow_uri(path))
        return filesystem, inner.rstrip("/") or "/"

    def _info(self, path: str):
        filesystem, inner = self._fs(path)
        return filesystem, inner, filesystem.get_file_info(inner)

    def exists(self, path: str) -> bool:
        from pyarrow import fs

        return self._info(path)[2].type != fs.FileType.NotFound

    def delete(self, path: str) -> None:
        from pyarrow import fs

        filesystem, inner, info = self._info(path)
        if info.type == fs.FileType.Directory:
            filesystem.delete_dir(inner)
        elif info.type != fs.FileType.NotFound:
            filesystem.delete_file(inner)

    def rename(self, src: str, dst: str) -> None:
        filesystem, inner = self._fs(src)
        try:
            filesystem.move(inner, self._fs(dst)[1])
        except OSError as exc:
            raise PipelineError(f"could not move {src} to {dst} ({exc})") from None

    @staticmethod
    def qualify(path: str) -> str:
        path = absolute(path)
        return f"file:{local_path(path)}" if is_local(path) else path

    def write_bytes(self, path: str, data: bytes) -> None:
        filesystem, inner = self._fs(path)
        filesystem.create_dir(inner.rsplit("/", 1)[0] or "/", recursive=True)
        with filesystem.open_output_stream(inner) as out:
            out.write(data)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    def write_parquet(self, folder: str, name: str, table: pa.Table) -> None:
        """One small Parquet file written from the driver, without a Spark job (one costs ~0.2 s
        even for a row), appearing whole: written under a hidden name, which readers skip, then
        renamed. Timestamps are INT96, as Spark writes them, so files from both read as one table."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, use_deprecated_int96_timestamps=True)
        hidden = f"{folder}/.{name}.inprogress"
        self.write_bytes(hidden, sink.getvalue().to_pybytes())
        self.rename(hidden, f"{folder}/{name}")

    def read_text(self, path: str) -> str:
        filesystem, inner = self._fs(path)
        with filesystem.open_input_stream(inner) as fh:
            return fh.read().decode("utf-8")

    def mkdirs(self, path: str) -> None:
        filesystem, inner = self._fs(path)
        filesystem.create_dir(inner, recursive=True)

    def _uri(self, path: str, inner: str) -> str:
        """A path of `path`'s filesystem, back in the spelling `qualify` gives."""
        if is_local(path):
            return f"file:{inner}"
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/]*)", path)
        scheme, authority = path.split("://", 1)[0], m.group(1) if m else ""
        if scheme.startswith("s3") or scheme in ("gs", "gcs"):
            return f"{scheme}://{inner}"
        return f"{authority}{inner}"

    def visible_files(self, path: str):
        """(uri, size) of every visible file under a folder, recursively (Spark's rule: no part of the
        path below the folder starts with _ or .)."""
        from pyarrow import fs

        filesystem, root = self._fs(path)
        for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
            if info.type == fs.FileType.File and not is_hidden(info.path[len(root) + 1:]):
                yield self._uri(path, info.path), info.size

    def list_files(self, path: str) -> list[str]:
        return [uri for uri, _ in self.visible_files(path)]

    def list_dirs(self, path: str) -> list[str]:
        """Names of the visible sub-folders (Spark's own rule: names starting with . or _ are hidden)."""
        from pyarrow import fs

        filesystem, root = self._fs(path)
        return sorted(i.base_name for i in filesystem.get_file_info(fs.FileSelector(root))
                      if i.type == fs.FileType.Directory and not is_hidden(i.base_name))

    def list_names(self, path: str) -> list[str]:
        """Names of everything directly in a folder (hidden ones too); [] when it does not exist."""
        from pyarrow import fs

        filesystem, root = self._fs(path)
        try:
            return sorted(i.base_name for i in filesystem.get_file_info(fs.FileSelector(root)))
        except FileNotFoundError:
            return []


def check_writable(output: str, mode: str) -> None:
    """Fail before any work when a local output cannot be created, or exists without overwrite."""
    if not is_local(output):
        return
    out = local_path(output)
    if os.path.exists(out) and mode != "overwrite":
        raise PipelineError(f"--output {output} already exists (use --mode overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(out)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise PipelineError(f"--output {output}: cannot create {parent} ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"--output {output}: {parent} is not writable")


@contextlib.contextmanager
def atomic_output(spark, output: str, record: "Run", mode: str = "error"):
    """Yield a temporary path to write into; move it to `output` only if the block succeeds and
    the run's rows balance (the one place every job's count check happens).

    The temporary folder holds the project's marker from the start (pipeline/safety.py), so it and,
    once renamed, the output are recognisably this project's; an existing output is replaced only when
    it holds one. Locally the final rename never replaces a folder that appeared meanwhile, and a rename
    that fails deletes nothing: the result stays in the temporary folder, which the message names.
    """
    if not is_local(output):
        with _atomic_remote(spark, output, record, mode) as tmp:
            yield tmp
        return
    from pipeline import safety

    out = local_path(output)
    if os.path.lexists(out) and mode != "overwrite":
        raise PipelineError(f"--output {output} already exists (use --mode overwrite to replace it)")
    tmp = f"{out}.__tmp_{record.run_id}"
    safety.write_marker(tmp, record.job, record.run_id)
    record.doing = f"writing {output}"
    try:
        yield tmp
        record.check_counts()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # what this run wrote itself, and nothing else
        raise
    record.doing = f"committing {output}"
    old = f"{out}.__old_{record.run_id}"
    if os.path.lexists(out):
        if mode != "overwrite":
            raise PipelineError(f"--output {output} appeared while the job ran (another writer?): nothing was "
                                f"replaced; this run's result is in {tmp}")
        if os.path.islink(out) or not safety.is_ours(out):
            raise PipelineError(f"--output {output} was not written by sparkgan (no {safety.MARKER} in it): "
                                f"refusing to replace it; this run's result is in {tmp}")
        os.rename(out, old)
    try:
        safety.rename_noreplace(tmp, out)
    except OSError as exc:
        if os.path.lexists(old) and not os.path.lexists(out):
            os.rename(old, out)
        raise PipelineError(f"--output {output}: could not move the result into place ({exc.strerror}); "
                            f"nothing was deleted, the result is in {tmp}") from None
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _atomic_remote(spark, output: str, record: "Run", mode: str):
    """atomic_output on HDFS and object stores, through pyarrow's filesystems."""
    from pipeline.safety import MARKER

    fs = Files()
    if fs.exists(output) and mode != "overwrite":
        raise PipelineError(f"--output {output} already exists (use --mode overwrite to replace it)")
    tmp = f"{output}.__tmp_{record.run_id}"
    fs.write_text(f"{tmp}/{MARKER}", json.dumps({"job": record.job, "run_id": record.run_id}))
    record.doing = f"writing {output}"
    try:
        yield tmp
        record.check_counts()
    except BaseException:
        fs.delete(tmp)
        raise
    record.doing = f"committing {output}"
    old = f"{output}.__old_{record.run_id}"
    if fs.exists(output):
        if mode != "overwrite" or not fs.exists(f"{output}/{MARKER}"):
            raise PipelineError(f"--output {output} exists and is not this run's to replace; the result is in {tmp}")
        fs.rename(output, old)
    fs.rename(tmp, output)
    fs.delete(old)


def git_rev() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from pipeline import __version__
        return __version__


def new_run_id(job: str) -> str:
    return f"{job}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass
class Run:
    """One job execution; becomes one row of the `runs` table."""

    job: str
    config: dict
    run_id: str = ""
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    rows_in: int | None = None
    rows_out: int | None = None
    rows_rejected: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    doing: str = "running"  # what a failure's one line says the job was doing
    mlflow_run_id: str | None = None  # its MLflow run, when tracked (pipeline/tracking.py)

    def __post_init__(self):
        self.run_id = self.run_id or new_run_id(self.job)

    def check_counts(self) -> None:
        """Nothing read is lost: every input row is either written or rejected. A job whose outputs
        are not rows of its input (a trained model) records rows_in only, and has nothing to balance."""
        if self.rows_out is None and self.rows_rejected is None:
            return
        if self.rows_in != (self.rows_out or 0) + (self.rows_rejected or 0):
            raise PipelineError(f"row accounting failed: read {self.rows_in}, wrote {self.rows_out}, "
                                f"rejected {self.rows_rejected}; nothing was committed")





def _runs_row(spark, run: Run, status: str, error: str | None, ended: dt.datetime | None) -> dict:
    from pipeline.session import setting

    row = (run.run_id, run.job, status, run.started_at, ended,
           (ended - run.started_at).total_seconds() if ended else None,
           git_rev(), socket.gethostname(), setting(spark, "spark.master"), setting(spark, "spark.app.id"),
           json.dumps(run.config, default=str, sort_keys=True), json.dumps(run.outputs, sort_keys=True),
           run.rows_in, run.rows_out, run.rows_rejected, {k: float(v) for k, v in run.metrics.items()}, error,
           run.mlflow_run_id)
    return dict(zip(RUNS_SCHEMA.names, row))


def write_runs_row(runs_table: str, row: dict) -> None:
    """A run's row as its own Parquet file, `part-<run_id>.parquet`, written whole (under a hidden name,
    then renamed over the run's earlier row: the `running` row becomes the final one). Through pyarrow's
    filesystem, no Spark job (one costs ~0.2 s even for a row). Timestamps are INT96, as Spark writes
    them, so files from both read as one table."""
    fs, root = arrow_filesystem(runs_table)
    root = root.rstrip("/")
    fs.create_dir(root, recursive=True)
    name = f"part-{row['run_id']}.parquet"
    hidden = f"{root}/.{name}.inprogress"
    pq.write_table(pa.Table.from_pylist([row], RUNS_SCHEMA), hidden, filesystem=fs,
                   use_deprecated_int96_timestamps=True)
    fs.move(hidden, f"{root}/{name}")


def mark_abandoned(runs_table: str, run_ids, by: str) -> None:
    """The `running` rows of runs that died (their leftovers were found by run `by`) become `abandoned`."""
    fs, root = arrow_filesystem(runs_table)
    for run_id in sorted(run_ids):
        path = f"{root.rstrip('/')}/part-{run_id}.parquet"
        try:
            row = pq.read_table(path, filesystem=fs).to_pylist()[0]
        except (OSError, IndexError, ValueError):
            continue  # a run that died before its first row, or a row of another shape
        if row["status"] == "running":
            row.update(status="abandoned", ended_at=dt.datetime.now(dt.timezone.utc),
                       error=f"abandoned: its process died; its leftovers were cleaned up by run {by}")
            write_runs_row(runs_table, row)


@contextlib.contextmanager
def recorded_run(spark, runs_table: str, job: str, config: dict, run: Run | None = None):
    """Run a job body with its row in the runs table: `running` from the start (so a killed run is
    visible, and later shown as abandoned), then `succeeded` or `failed`."""
    run = run or Run(job=job, config=config)
    run.started_at = dt.datetime.now(dt.timezone.utc)  # the job's own time, Spark's start-up excluded
    try:
        write_runs_row(runs_table, _runs_row(spark, run, "running", None, None))
    except Exception as exc:  # a broken runs table must not stop the job; its final row says so again
        log.error("could not write to runs table %s: %s", runs_table, exc)
    status, error = "succeeded", None
    try:
        yield run
    except PipelineError as exc:  # the user's to fix: its message says it all
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    except BaseException:
        status, error = "failed", traceback.format_exc()  # the whole trace, for whoever is on call
        raise
    finally:
        try:
            write_runs_row(runs_table, _runs_row(spark, run, status, error, dt.datetime.now(dt.timezone.utc)))
        except Exception as exc:  # a broken runs table must not hide the job's own outcome
            log.error("could not append to runs table %s: %s", runs_table, exc)
