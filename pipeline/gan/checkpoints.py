"""What a GAN run keeps in its checkpoint folder besides what pipeline/training_run.py lays out.

    step-NNNNNN/checkpoint.pt   G, D, both optimizers, step, the run's settings (complete once DONE is beside it)
    generator.pt                the final generator's state dict
    samples_NNNNNN.npy          DCGAN sample grids (uint8, 64x1x32x32) at step NNNNNN
"""

from __future__ import annotations

import os
import re

CHECKPOINT, GENERATOR = "checkpoint.pt", "generator.pt"
_SAMPLE = re.compile(r"^samples_(\d{6})\.npy$")


def sample_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"samples_{step:06d}.npy")


def samples(folder: str) -> list[tuple[int, str]]:
    """(step, path) of every sample grid, by step."""
    found = ((_SAMPLE.match(name), name) for name in os.listdir(folder))
    return sorted((int(m.group(1)), os.path.join(folder, name)) for m, name in found if m)
