"""`python -m pipeline.runs [RUNS_TABLE] [--last N]`: the latest rows of the runs table, readably."""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("table", nargs="?", default="out/runs")
    ap.add_argument("--last", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        table = pq.read_table(args.table)
    except (OSError, ValueError) as exc:
        print(f"no runs table at {args.table} ({exc})")
        return 1
    latest = table.sort_by("started_at").slice(max(0, table.num_rows - args.last))
    # rows as Python values: nullable counts stay ints (pandas would make them floats)
    for r in latest.to_pylist():
        counts = ", ".join(f"{name} {r[col]}" for name, col in (("in", "rows_in"), ("out", "rows_out"),
                                                                 ("rejected", "rows_rejected")) if r[col] is not None)
        print(f"{r['job']:<14} {r['status']:<9} {r['duration_s']:6.1f}s  {counts}")
        metrics = dict(r["metrics"] or [])
        shown = {k: round(v, 4) for k, v in metrics.items() if "top1" in k or "psnr" in k or "accuracy" in k}
        if shown:
            print(f"{'':<14} metrics: {shown}")
        for name, path in json.loads(r["outputs"] or "{}").items():
            print(f"{'':<14} {name:<12} {path}")
        if r["error"]:
            print(f"{'':<14} error: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
