"""What a job may touch: checked before any work, deleted only when provably its own, one writer at a time.

* `check_paths` refuses (one line, before Spark starts) an output, checkpoint folder or runs table that
  equals, contains or lies inside one of the job's inputs or another output, or that is `/`, the home
  or working directory (or holds them), or a mount point.
* Markers: a job writes `MARKER` into every folder it creates to hold results (the temporary output
  before its rename, a checkpoint folder). A folder is replaced or deleted only when it holds one; a
  folder without it is somebody else's, and the job stops instead.
* Leases: `<path>.__lease` names the one run writing `path` (host, pid, run id, start time, renewed
  while the run lives). A second writer stops with a line naming the holder; a lease whose holder is
  gone (its process is dead, or on another host it was not renewed for `LEASE_TTL_S`) is taken over,
  and said so in the log.
* `recover` runs once the lease is held: every leftover of a dead run of the same output is its own
  (the lease proves no one else writes there), so its temporary folders go, a missing output is
  restored from the `__old_` copy an interrupted overwrite left, and its runs row becomes `abandoned`.

Local paths are leased with O_EXCL creation; on other file systems (hdfs://, s3://) no lease is taken
(the jobs log that), and one writer per output is the scheduler's to ensure, as Spark's own file sink
assumes.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass

from pipeline.errors import PipelineError
from pipeline.io import absolute, is_local, local_path

log = logging.getLogger(__name__)

MARKER = "_sparkgan.json"  # an underscore name: Spark's and pyarrow's readers skip it
LEASE_SUFFIX = ".__lease"
LEASE_TTL_S = 120.0  # a lease held from another host counts as dead when not renewed for this long
RENEW_EVERY_S = 15.0
RUN_ID = re.compile(r"[A-Za-z_]+-\d{8}T\d{6}-[0-9a-f]{6}")

# The options that name what a job reads and what it writes (every job spells them the same way).
INPUT_OPTIONS = ("source", "input", "model", "generator", "model_file", "weights_file", "vgg19_weights")
OUTPUT_OPTIONS = ("output", "checkpoint_dir")


# ---------------------------------------------------------------- paths a job may write

def _norm(path: str) -> str:
    """One spelling per place: local paths resolved (symlinks, `..`), URIs without a trailing slash."""
    if is_local(path):
        return os.path.realpath(local_path(absolute(path)))
    return re.sub(r"^s3[an]://", "s3://", path).rstrip("/")


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _flag(name: str) -> str:
    return name if name.startswith(("--", "runs")) else f"--{name.replace('_', '-')}"


def job_paths(opts) -> tuple[dict[str, str], dict[str, str]]:
    """({option: input path}, {option: output path}) of a job's options; inputs that name no existing
    local path (a bundled set's name) are left out."""
    inputs, outputs = {}, {}
    for name in INPUT_OPTIONS:
        value = getattr(opts, name, None)
        if isinstance(value, str) and value and (not is_local(value) or os.path.exists(local_path(absolute(value)))):
            inputs[_flag(name)] = value
    for name in OUTPUT_OPTIONS:
        value = getattr(opts, name, None)
        if isinstance(value, str) and value:
            outputs[_flag(name)] = value
    return inputs, outputs


def check_paths(inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Refuse, before any work, every output that could destroy an input, another output, or more."""
    ins = {k: _norm(v) for k, v in inputs.items()}
    outs = {k: _norm(v) for k, v in outputs.items()}
    guarded = {"/": "the root folder", os.path.realpath(os.path.expanduser("~")): "your home folder",
               os.path.realpath(os.getcwd()): "the working directory"}
    for name, out in outs.items():
        shown = f"{name} {outputs[name]}"
        for place, what in guarded.items():
            if _inside(place, out):
                raise PipelineError(f"{shown}: is or holds {what} ({place}); choose a folder of its own")
        if is_local(outputs[name]) and os.path.ismount(out):
            raise PipelineError(f"{shown}: is a mount point; write to a folder inside it")
        for other, inp in ins.items():
            if _inside(inp, out) or _inside(out, inp):
                how = "is" if inp == out else "holds" if _inside(inp, out) else "lies inside"
                raise PipelineError(f"{shown}: {how} the input {other} {inputs[other]}; an output must be "
                                    "apart from what the job reads")
        for other, o in outs.items():
            if other != name and (_inside(o, out) or _inside(out, o)):
                raise PipelineError(f"{shown}: {'is' if o == out else 'overlaps'} {other} {outputs[other]}; "
                                    "each output needs a folder of its own")


def check_replaceable(outputs: dict[str, str], mode: str) -> None:
    """An existing local output is replaced (--mode overwrite) only when it is one of ours."""
    for name, path in outputs.items():
        out = local_path(absolute(path)) if is_local(path) else None
        if name == "--output" and mode == "overwrite" and out and os.path.lexists(out) and not is_ours(out):
            raise PipelineError(f"--output {path} exists and was not written by sparkgan (no {MARKER} in it): "
                                "refusing to replace it; move it away or choose another --output")


# ---------------------------------------------------------------- markers

def write_marker(folder: str, job: str, run_id: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, MARKER), "w") as fh:
        json.dump({"job": job, "run_id": run_id, "created": dt.datetime.now(dt.timezone.utc).isoformat()}, fh)


def is_ours(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def remove_ours(folder: str, what: str) -> None:
    """Delete a folder this project wrote (it holds MARKER); refuse one it did not."""
    if not os.path.lexists(folder):
        return
    if os.path.islink(folder) or not is_ours(folder):
        raise PipelineError(f"{what} {folder} exists and was not written by sparkgan (no {MARKER} in it): "
                            "refusing to delete it; move it away or choose another path")
    shutil.rmtree(folder)


def fresh_folder(folder: str, what: str, job: str, run_id: str) -> None:
    """An empty marked folder at `folder`: an earlier one of ours is replaced, anyone else's refused."""
    if os.path.isdir(folder) and not os.path.islink(folder) and not is_ours(folder) and not os.listdir(folder):
        os.rmdir(folder)  # an empty folder holds nothing to lose
    remove_ours(folder, what)
    write_marker(folder, job, run_id)


_libc = ctypes.CDLL(None, use_errno=True)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename that fails (FileExistsError) instead of replacing `dst`, atomically where the kernel can
    (renameat2's RENAME_NOREPLACE): a folder created by someone else meanwhile is never replaced."""
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        if fn(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # else: a file system without the flag
            raise OSError(code, os.strerror(code), dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


# ---------------------------------------------------------------- leases

@dataclass
class Holder:
    host: str
    pid: int
    run_id: str
    started: str
    renewed: float
    boot: str = ""  # the holder process's start time (/proc), so a reused pid is not mistaken for it

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {self.started})"


def _process_stat(pid: int) -> tuple[str, str]:
    """(state, start time) of a process from /proc; ("", "") where there is no /proc to read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def _alive(h: Holder) -> bool:
    if h.host != socket.gethostname():
        return time.time() - h.renewed < LEASE_TTL_S
    try:
        os.kill(h.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state, start = _process_stat(h.pid)
    # a killed holder that nobody has reaped yet (a container whose init does not reap, or a parent
    # killed with it) still answers kill(pid, 0): a zombie holds nothing
    if state in ("Z", "X"):
        return False
    return not h.boot or start in ("", h.boot)


def _read_holder(path: str) -> Holder | None:
    try:
        with open(path) as fh:
            return Holder(**json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # a torn or foreign file: nobody alive wrote it whole
        return Holder(host="?", pid=0, run_id="unknown", started="?", renewed=0.0)


class Lease:
    """The lease on one path, held by this process while the job runs (renewed by a daemon thread)."""

    def __init__(self, path: str, run_id: str, option: str):
        self.target, self.path, self.option = path, f"{path}{LEASE_SUFFIX}", option
        now = dt.datetime.now(dt.timezone.utc)
        self.holder = Holder(socket.gethostname(), os.getpid(), run_id, f"{now:%Y-%m-%d %H:%M:%S} UTC", time.time(),
                             _process_stat(os.getpid())[1])
        self.taken_from: Holder | None = None
        self._stop = threading.Event()

    def acquire(self) -> "Lease":
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        except OSError as exc:
            raise PipelineError(f"{self.option} {self.target}: cannot create {os.path.dirname(self.path)} "
                                f"({exc.strerror})") from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                if not isinstance(exc, FileExistsError):  # a place nothing can be written to
                    raise PipelineError(f"{self.option} {self.target}: cannot be written there (its lease "
                                        f"{self.path}: {exc.strerror})") from None
                current = _read_holder(self.path)
                if current is None:
                    continue  # released meanwhile: try again
                if _alive(current):
                    raise PipelineError(f"{self.option} {self.target} is being written by {current.describe()}; "
                                        f"wait for it to end (its lease: {self.path})")
                stale = f"{self.path}.stale-{self.holder.run_id}"
                try:
                    os.rename(self.path, stale)  # one taker wins; the others see it gone and retry
                except FileNotFoundError:
                    continue
                os.remove(stale)
                log.warning("%s %s: taking over the lease of %s, which is gone", self.option, self.target,
                            current.describe())
                self.taken_from = current
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(self.holder), fh)
            threading.Thread(target=self._renew, name="lease-renew", daemon=True).start()
            return self
        raise PipelineError(f"{self.option} {self.target}: could not take its lease {self.path} (changing hands)")

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            current = _read_holder(self.path)
            if current is None or current.run_id != self.holder.run_id:
                log.error("%s: the lease on %s was taken from this run", self.option, self.target)
                return
            self.holder.renewed = time.time()
            tmp = f"{self.path}.{self.holder.run_id}.tmp"
            with open(tmp, "w") as fh:
                json.dump(asdict(self.holder), fh)
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        current = _read_holder(self.path)
        if current is not None and current.run_id == self.holder.run_id:
            os.remove(self.path)


def lease_holder(path: str) -> Holder | None:
    """Who holds the lease on `path` now (None: nobody alive)."""
    current = _read_holder(f"{path}{LEASE_SUFFIX}")
    return current if current is not None and _alive(current) else None


# ---------------------------------------------------------------- what a dead run left

def recover(output: str, option: str) -> set[str]:
    """With the lease on `output` held: remove the temporary folders of dead runs of it, and put back an
    output that an interrupted overwrite left only as `__old_`; the run ids of the dead runs."""
    parent, name = os.path.split(output)
    dead, olds = set(), []
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        path = os.path.join(parent, entry)
        for kind in ("__tmp_", "__old_"):
            prefix = f"{name}.{kind}"
            if not entry.startswith(prefix) or not RUN_ID.fullmatch(entry[len(prefix):]):
                continue
            if not is_ours(path):
                log.warning("%s: %s looks like a leftover but holds no %s: left as it is", option, path, MARKER)
                continue
            dead.add(entry[len(prefix):])
            if kind == "__old_":
                olds.append(path)
            else:
                shutil.rmtree(path)
                log.warning("%s: removed %s, left by run %s, which died", option, path, entry[len(prefix):])
    if olds and not os.path.lexists(output):
        newest = max(olds, key=os.path.getmtime)
        rename_noreplace(newest, output)
        olds.remove(newest)
        log.warning("%s: restored %s from %s (an overwrite was interrupted between its renames)", option,
                    output, newest)
    for old in olds:
        shutil.rmtree(old)
        log.warning("%s: removed %s, left by an overwrite that had committed", option, old)
    return dead


# ---------------------------------------------------------------- files that must carry no code

def load_tensors(path: str, what: str, **kwargs):
    """torch.load of a checkpoint, model or generator file with weights_only=True: tensors and plain
    values load, anything else (a pickle that would run code) is refused with one line naming the file."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{what} {path} holds more than tensors and plain values ({first[:160]}); "
                            "refusing to load it (it could run code)") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise PipelineError(f"{what} {path}: not a readable torch file ({exc.__class__.__name__})") from None


def check_private(folder: str, what: str) -> None:
    """BigDL's Model.loadModel and OptimMethod.load deserialize Java objects, which can run code: load
    them only from a folder and files that are yours (or root's) and that nobody else can write."""
    me = os.geteuid()
    paths = [folder, *(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)]
    for path in paths:
        st = os.lstat(path)
        if st.st_uid not in (me, 0) or st.st_mode & 0o022:
            raise PipelineError(f"{what} {path} is writable by other users (or not yours); BigDL's loaders "
                                "run code from the files they read, so it loads only files nobody else can "
                                "write: chmod go-w, or retrain")
