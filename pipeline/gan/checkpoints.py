"""The checkpoint folder of a GAN run: what rank 0 writes there and how the driver reads it back.

    checkpoint.pt          G, D, both optimizers, step, the run's settings (written whole or not at all)
    generator.pt           the final generator's state dict
    metrics.jsonl          one {"step", "name", "value"} object per line
    samples_NNNNNN.npy     DCGAN sample grids (uint8, 64x1x32x32) at step NNNNNN
"""

from __future__ import annotations

import json
import os
import re

CHECKPOINT, GENERATOR, METRICS = "checkpoint.pt", "generator.pt", "metrics.jsonl"
_SAMPLE = re.compile(r"^samples_(\d{6})\.npy$")


def latest_checkpoint(folder: str) -> str | None:
    path = os.path.join(folder, CHECKPOINT)
    return path if os.path.isfile(path) else None


def sample_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"samples_{step:06d}.npy")


def samples(folder: str) -> list[tuple[int, str]]:
    """(step, path) of every sample grid, by step."""
    found = ((_SAMPLE.match(name), name) for name in os.listdir(folder))
    return sorted((int(m.group(1)), os.path.join(folder, name)) for m, name in found if m)


def read_metrics(folder: str) -> list[dict]:
    with open(os.path.join(folder, METRICS)) as fh:
        return [json.loads(line) for line in fh]


class MetricLog:
    """Rank 0's metric rows; a resume drops rows past its step, so a rerun does not repeat them."""

    def __init__(self, folder: str, resume_step: int):
        self.path = os.path.join(folder, METRICS)
        kept = []
        if resume_step and os.path.exists(self.path):
            with open(self.path) as fh:
                kept = [line for line in fh if json.loads(line)["step"] <= resume_step]
        with open(self.path, "w") as fh:
            fh.writelines(kept)

    def add(self, step: int, **values) -> None:
        with open(self.path, "a") as fh:
            for name, value in values.items():
                fh.write(json.dumps({"step": step, "name": name, "value": float(value)}) + "\n")
