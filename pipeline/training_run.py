"""A training run's checkpoint folder, for both trainers: train_digits (either engine) and train_gan.

    OUT.checkpoints/
      _sparkgan.json      whose folder this is (pipeline/safety.py): only ours is ever replaced
      fingerprint.json    the settings a checkpoint must share with the run that continues it
      epoch-NNNN/         train_digits: one checkpoint per epoch, complete once it holds DONE
      step-NNNNNN/        train_gan: one every --checkpoint-every steps, complete once it holds DONE
      metrics.jsonl       rank 0's metric rows, {"step", "name", "value"} per line
      ...                 what else a trainer keeps there (GAN sample grids, BigDL summaries)

The driver decides whether to continue (`decide`, for --resume on|auto|off) and starts a fresh
folder otherwise (`start_fresh`); rank 0 writes checkpoints (`new`, then `seal` once whole: a kill
between the two leaves a folder without DONE, which is ignored) and metric rows (`MetricLog`,
cut at the step it resumed from, so a resumed run repeats none). Neither torch nor Spark is
imported here: the ranks, the driver and BigDL's driver loop all use it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from pipeline.io import local_path

FINGERPRINT_FILE = "fingerprint.json"
METRICS_FILE = "metrics.jsonl"
DONE = "DONE"
UNITS = {"epoch": 4, "step": 6}  # a checkpoint folder's unit and the digits of its number


@dataclass(frozen=True)
class Checkpoint:
    folder: str  # the checkpoint's own folder, e.g. OUT.checkpoints/epoch-0003
    done: int    # epochs (or steps) it has trained


@dataclass(frozen=True)
class Resume:
    """What --resume decided: the checkpoint to continue from (None: start fresh) and the line that says why."""

    checkpoint: Checkpoint | None
    why: str

    @property
    def done(self) -> int:
        return self.checkpoint.done if self.checkpoint else 0


def data_version(table: str) -> str:
    """The committed files of a table (names and sizes), hashed: part of both trainers' fingerprints,
    so a table replaced or appended to at the same path is other data and its checkpoints are not
    continued. One listing of the table, on the driver."""
    from pipeline.io import arrow_filesystem
    from pipeline.tablelog import committed_files

    fs, root = arrow_filesystem(table)
    files = committed_files(table)
    digest = hashlib.sha1()
    for info in fs.get_file_info(files):
        digest.update(f"{info.path[len(root):]}\t{info.size}\n".encode())
    return digest.hexdigest()[:16]


class CheckpointFolder:
    """OUT.checkpoints (or --checkpoint-dir) of one trainer; `unit` is "epoch" or "step"."""

    def __init__(self, path: str, unit: str):
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r}: expected one of {', '.join(UNITS)}")
        self.path, self.unit = local_path(path), unit

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (one with its DONE marker), or None."""
        done = sorted(glob.glob(os.path.join(self.path, f"{self.unit}-*", DONE)))
        if not done:
            return None
        folder = os.path.dirname(done[-1])
        return Checkpoint(folder, int(os.path.basename(folder).split("-")[1]))

    def saved_fingerprint(self) -> dict:
        try:
            with open(os.path.join(self.path, FINGERPRINT_FILE)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def decide(self, mode: str, fingerprint: dict) -> Resume:
        """--resume on|auto|off against this run's fingerprint (the data, model and optimizer settings;
        the number of epochs or steps may grow: more of them extend a run)."""
        latest = self.latest() if mode != "off" else None
        found = f"{latest.folder} ({self.unit} {latest.done} done)" if latest else None
        from pipeline.options import resume_decision

        resume, why = resume_decision(mode, found, self.saved_fingerprint(), fingerprint)
        return Resume(latest if resume else None, why)

    def start_fresh(self, fingerprint: dict, job: str, run_id: str) -> None:
        """Drop an earlier run's checkpoints (only a folder of ours: pipeline/safety.py) and record
        whose the next ones are."""
        from pipeline.safety import fresh_folder

        fresh_folder(self.path, "checkpoint folder", job, run_id)
        with open(os.path.join(self.path, FINGERPRINT_FILE), "w") as fh:
            json.dump(fingerprint, fh, sort_keys=True)

    def new(self, done: int) -> str:
        """An empty folder to write the checkpoint after `done` epochs or steps into; `seal` it once whole."""
        folder = os.path.join(self.path, f"{self.unit}-{done:0{UNITS[self.unit]}d}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        return folder

    def seal(self, folder: str, keep: int = 2) -> None:
        """Mark a checkpoint complete and keep the newest `keep` of them."""
        open(os.path.join(folder, DONE), "w").close()
        for old in sorted(glob.glob(os.path.join(self.path, f"{self.unit}-*")))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def metrics(self) -> list[tuple[int, str, float]]:
        """Every metric row rank 0 logged, as (step, name, value)."""
        try:
            with open(os.path.join(self.path, METRICS_FILE)) as fh:
                rows = [json.loads(line) for line in fh]
        except FileNotFoundError:
            return []
        return [(r["step"], r["name"], r["value"]) for r in rows]


class MetricLog:
    """Rank 0's metric rows in the checkpoint folder; a resume drops the rows past its step, so the
    resumed run does not repeat them (and a killed try's rows after its checkpoint are gone)."""

    def __init__(self, folder: str, resumed_at: int):
        os.makedirs(local_path(folder), exist_ok=True)  # a rank run without the job (tests, gpu_check) has none yet
        self.path = os.path.join(local_path(folder), METRICS_FILE)
        kept = []
        if resumed_at and os.path.exists(self.path):
            with open(self.path) as fh:
                kept = [line for line in fh if json.loads(line)["step"] <= resumed_at]
        with open(self.path, "w") as fh:
            fh.writelines(kept)

    def add(self, step: int, **values) -> None:
        with open(self.path, "a") as fh:
            for name, value in values.items():
                fh.write(json.dumps({"step": step, "name": name, "value": float(value)}) + "\n")
