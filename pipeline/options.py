"""Options and input checks several jobs share, declared once (as pyspark.ml shares HasInputCol)."""

from __future__ import annotations

import argparse
import os

from pipeline.errors import PipelineError
from pipeline.io import absolute, check_writable, is_local, local_path


def add_output(p: argparse.ArgumentParser, help: str) -> dict:
    p.add_argument("--output", required=True, help=help)
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"mode": "error"}


def add_distributor(p: argparse.ArgumentParser) -> dict:
    """How TorchDistributor runs the training processes."""
    p.add_argument("--num-processes", type=int, help="training processes (one per GPU on GPU workers)")
    p.add_argument("--use-gpu", choices=("on", "off"), help="train on GPUs (NCCL) instead of CPUs (gloo)")
    p.add_argument("--local-mode", choices=("auto", "on", "off"),
                   help="on: processes on the driver; off: barrier tasks; auto: on for CPU training on a local master")
    p.add_argument("--threads", type=int, help="torch threads per CPU process (0: Spark's cores / --num-processes)")
    return {"num_processes": 2, "use_gpu": "off", "local_mode": "auto", "threads": 0}


def check_distributor(opts) -> None:
    """The distributor's options, and a global batch that splits evenly over the processes."""
    positive(opts, "num_processes")
    if opts.threads < 0:
        raise PipelineError(f"--threads {opts.threads}: expected 0 (Spark's cores / --num-processes) or more")
    if opts.batch_size % opts.num_processes:
        raise PipelineError(f"--batch-size {opts.batch_size} does not split evenly over --num-processes "
                            f"{opts.num_processes}")


def local_mode(spark, opts) -> bool:
    """Whether TorchDistributor starts the ranks on the driver (--local-mode, auto by default).

    auto is on for CPU training in a classic session on a `local[...]` master: its tasks are the
    driver's own processes, so a barrier stage would only add a Spark stage and a Python worker's
    start to every launch (bench/ddp_launch.py). It is off elsewhere: on a cluster the ranks belong
    on the executors, on Spark Connect the driver is the client's machine, and GPU ranks take the
    GPUs Spark schedules to tasks (conf/gpu.yaml).
    """
    if opts.local_mode != "auto":
        return opts.local_mode == "on"
    from pipeline.session import is_connect, setting

    master = setting(spark, "spark.master") or ""
    return opts.use_gpu == "off" and not is_connect(spark) and master.startswith("local")


def threads_per_process(spark, opts) -> int:
    """--threads, or (0) the cores Spark has shared out over the processes: on CPUs one process
    with every core beats gloo's all-reduce between processes on the same cores."""
    from pipeline.session import parallelism

    return opts.threads or max(1, parallelism(spark) // opts.num_processes)


def positive(opts, *names: str) -> None:
    for name in names:
        if getattr(opts, name) < 1:
            raise PipelineError(f"--{name.replace('_', '-')} {getattr(opts, name)}: expected a positive number")


def input_table(path: str, option: str = "--input", what: str = "images table", hint: str = "") -> str:
    """The absolute path of an input table; a missing local one is a one-line error."""
    path = absolute(path)
    if is_local(path) and not os.path.isdir(local_path(path)):
        raise PipelineError(f"{option} {path}: no such {what}{hint}")
    return path


def output(opts) -> None:
    """Make --output absolute and check, before any work, that it can be written."""
    opts.output = absolute(opts.output)
    check_writable(opts.output, opts.mode)


RESUME = ("off", "on", "auto")


def add_resume(p: argparse.ArgumentParser, what: str) -> dict:
    """--resume [on|auto|off]: what a retry does with the checkpoints of an earlier try."""
    p.add_argument("--resume", nargs="?", const="on", choices=RESUME,
                   help=f"on (or the bare flag): continue from {what}, which must exist and be of this "
                        "configuration; auto: continue from it when it is of this configuration, else "
                        "start fresh, saying which (what an Airflow retry wants); off: start fresh")
    return {"resume": "off"}


def resume_decision(mode: str, found: str | None, saved: dict, current: dict) -> tuple[bool, str]:
    """(continue from `found`?, the line that says why) for --resume on|auto|off.

    `found` names the newest complete checkpoint (None: there is none), `saved` the configuration
    it was written with, `current` this run's: a checkpoint continues only a run of the same
    configuration; `on` refuses another one, `auto` starts fresh and names what changed.
    """
    if mode == "off" or found is None:
        return False, "starting fresh" + (" (no checkpoint yet)" if mode != "off" else "")
    changed = sorted(k for k in current.keys() | saved.keys() if saved.get(k) != current.get(k))
    if not changed:
        return True, f"resuming from {found}"
    what = ", ".join(f"{k} {saved.get(k)!r} → {current.get(k)!r}" for k in changed)
    if mode == "on":
        raise PipelineError(f"--resume: the checkpoint {found} is of another configuration ({what}); "
                            "use --resume auto to start fresh instead")
    return False, f"starting fresh: the checkpoint {found} is of another configuration ({what})"
