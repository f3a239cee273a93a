"""`python -m pipeline.runs [RUNS_TABLE] [--last N] [--job JOB] [--status STATUS]`: the latest rows
of the runs table, readably: run id, start time, job, status, duration, row counts, headline
metrics, outputs and the error of a failed run."""

from __future__ import annotations

import argparse
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq

HEADLINE = ("top1", "psnr", "accuracy")  # the metrics worth a line; the rest are in the row


def default_table() -> str:
    """Where the jobs write by default: the runs_table of conf/local.yaml."""
    from pipeline.config import load_profile
    from pipeline.errors import PipelineError

    try:
        return load_profile(None).runs_table
    except PipelineError:
        return "out/runs"


def select(table, job: str | None, status: str | None, last: int):
    """The `last` newest rows of `job` with `status` (either None: any), oldest first."""
    for column, value in (("job", job), ("status", status)):
        if value is not None:
            table = table.filter(pc.equal(table[column], value))
    table = table.sort_by("started_at")
    return table.slice(max(0, table.num_rows - last))


def _when(started) -> str:
    return started.strftime("%Y-%m-%d %H:%M:%S") if started is not None else "?"


def _duration(seconds) -> str:
    return f"{seconds:7.1f}s" if seconds is not None else "       -"


def describe(r: dict) -> list[str]:
    """The lines of one run."""
    counts = ", ".join(f"{name} {r[col]}" for name, col in (("in", "rows_in"), ("out", "rows_out"),
                                                             ("rejected", "rows_rejected")) if r[col] is not None)
    lines = [f"{r['run_id']}  {_when(r['started_at'])}  {r['job']:<14} {r['status']:<9} "
             f"{_duration(r['duration_s'])}  {counts}".rstrip()]
    metrics = dict(r["metrics"] or [])
    shown = {k: round(v, 4) for k, v in metrics.items() if any(h in k for h in HEADLINE)}
    if shown:
        lines.append(f"    metrics: {shown}")
    for name, path in json.loads(r["outputs"] or "{}").items():
        lines.append(f"    {name:<12} {path}")
    if r["error"]:
        lines.append(f"    error: {r['error'].strip().splitlines()[0]}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.runs", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", nargs="?", help=f"runs table (default: {default_table()}, from conf/local.yaml)")
    ap.add_argument("--last", type=int, default=5, help="newest runs to show (default: 5)")
    ap.add_argument("--job", help="only runs of this job, e.g. train_digits")
    ap.add_argument("--status", help="only runs with this status, e.g. failed or succeeded")
    args = ap.parse_args(argv)
    if args.last < 1:
        ap.exit(2, f"{ap.prog}: error: --last {args.last}: expected a positive number\n")
    path = args.table or default_table()
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        print(f"no runs table at {path} ({exc})")
        return 1
    rows = select(table, args.job, args.status, args.last).to_pylist()  # ints stay ints (pandas: floats)
    if not rows:
        wanted = " ".join(f"--{k} {v}" for k, v in (("job", args.job), ("status", args.status)) if v)
        print(f"no runs in {path}" + (f" match {wanted}" if wanted else ""))
        return 0
    for r in rows:
        print("\n".join(describe(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
