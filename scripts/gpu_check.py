#!/usr/bin/env python
"""GPU check of the worker-side code, without Spark: `python scripts/gpu_check.py` on one GPU.

Runs the code Spark's GPU tasks run (pipeline.gan.train.train_worker, pipeline.gan.sr) on data
made here, and prints one table: SRGAN training images/s (batch 16, 96x96 HR crops) in fp32 and
bf16, DCGAN steps/s, SR inference of a 2048x1536 photo tiled and untiled, and the peak GPU
memory of each. Needs torch, numpy, Pillow, pyarrow and this repository; takes a few minutes.
Without CUDA it says so in one line, runs the same code on small sizes on the CPU, and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import ddp  # noqa: E402
from pipeline.gan import data, sr  # noqa: E402
from pipeline.gan.config import TrainConfig  # noqa: E402
from pipeline.gan.train import train_worker  # noqa: E402
from pipeline.training_run import CheckpointFolder  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """The GPU run's sizes, or the CPU run's (the same code, small enough for a test)."""

    sr_batch: int = 16
    crop: int = 96
    sr_width: int = 64
    sr_blocks: int = 16
    sr_steps: int = 60
    dcgan_batch: int = 64
    dcgan_steps: int = 200
    photo: tuple[int, int] = (1536, 2048)  # HxW
    tile: int = sr.DEFAULT_TILE
    sr_infer_batch: int = 16
    repeats: int = 5


CPU_SIZES = Sizes(sr_batch=4, crop=32, sr_width=16, sr_blocks=2, sr_steps=3, dcgan_batch=16, dcgan_steps=12,
                  photo=(128, 160), tile=48, sr_infer_batch=4, repeats=1)


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like RGB image: smooth colour fields plus fine texture (SR work does not depend on content)."""
    coarse = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    return (smooth + rng.integers(-20, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


def make_tables(root: str, size: Sizes) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    digits = [(rng.random((28, 28, 1)) ** 3 * 255).astype(np.uint8) for _ in range(512)]
    photos = [photo(rng, 2 * size.crop + 8, 3 * size.crop) for _ in range(32)]
    data.write_table(os.path.join(root, "digits"), digits)
    data.write_table(os.path.join(root, "photos"), photos)
    return os.path.join(root, "digits"), os.path.join(root, "photos")


class Peak:
    """Peak GPU memory allocated inside the block (GiB), or None on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.gib = cuda, None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2 ** 30


def train_rate(cfg: TrainConfig, cuda: bool) -> tuple[float, float | None]:
    """(images/s: median of the logged rates after the first, as the training log reports them, peak GiB)."""
    with Peak(cuda) as peak:
        train_worker(cfg)
    rates = [v for _, name, v in CheckpointFolder(cfg.checkpoint_dir, "step").metrics() if name == "images_per_s"]
    return statistics.median(rates[1:] or rates), peak.gib


def upscale_rate(model, image: np.ndarray, size: Sizes, tile: int, cuda: bool) -> tuple[float, float | None]:
    """SR images/s of one photo (upscale's inference; its CPU scoring, PSNR/SSIM, is left out), peak GiB."""
    run = lambda: sr.super_resolve(model, [image], tile=tile, batch=size.sr_infer_batch, precision="bf16")  # noqa: E731
    run()  # warm-up: cuDNN picks its algorithms
    with Peak(cuda) as peak:
        t0 = time.perf_counter()
        for _ in range(size.repeats):
            run()
        elapsed = time.perf_counter() - t0
    return size.repeats / elapsed, peak.gib


def precision(bf16: bool, cuda: bool) -> str:
    """What runs: bf16 autocast only on a GPU that has bf16 (pipeline.ddp.autocast); fp32 on a GPU
    has cuDNN's TF32 convolutions (torch's default)."""
    if bf16 and cuda and ddp.bf16_native(torch.device("cuda", 0)):
        return "bf16"
    if cuda and torch.backends.cudnn.allow_tf32:
        return "fp32, TF32 convs"
    return "fp32 (bf16 asked)" if bf16 else "fp32"


def training_rows(root: str, size: Sizes, cuda: bool) -> tuple[list, TrainConfig]:
    """SRGAN (whole GAN steps: G and D) in fp32 and bf16, DCGAN; and the last SRGAN run's settings."""
    digits, photos = make_tables(root, size)
    common = {"use_gpu": cuda, "threads": 1, "lr": 1e-4}  # threads: CPU ranks only
    rows = []
    for amp in (False, True):
        sr_cfg = TrainConfig(model="srgan", input=photos, checkpoint_dir=os.path.join(root, f"srgan-{amp}"),
                             steps=size.sr_steps, batch_size=size.sr_batch, width=size.sr_width,
                             blocks=size.sr_blocks, crop=size.crop, pretrain_steps=0, amp=amp,
                             log_every=max(1, size.sr_steps // 6), checkpoint_every=size.sr_steps, **common)
        rate, gib = train_rate(sr_cfg, cuda)
        rows.append((f"SRGAN training, batch {size.sr_batch}, {size.crop}x{size.crop} HR", precision(amp, cuda),
                     f"{rate:9.1f} images/s", gib))
    cfg = TrainConfig(model="dcgan", input=digits, checkpoint_dir=os.path.join(root, "dcgan"), width=32,
                      steps=size.dcgan_steps, batch_size=size.dcgan_batch, log_every=max(1, size.dcgan_steps // 8),
                      checkpoint_every=size.dcgan_steps, sample_every=size.dcgan_steps, **common)
    rate, gib = train_rate(cfg, cuda)
    rows.append((f"DCGAN training, batch {size.dcgan_batch}, 32x32", precision(True, cuda),
                 f"{rate / size.dcgan_batch:9.1f} steps/s", gib))
    return rows, sr_cfg


def upscale_rows(sr_cfg: TrainConfig, size: Sizes, cuda: bool) -> list:
    """SR of one large photo as `upscale` does it, --from-hr on and off, tiled and whole."""
    # the generator just trained, loaded as the upscale job loads it (its weights do not matter here)
    with open(os.path.join(sr_cfg.checkpoint_dir, "generator.json"), "w") as fh:
        json.dump(sr_cfg.generator_meta(), fh)
    model = sr.load_generator(sr_cfg.checkpoint_dir, torch.device("cuda", 0) if cuda else "cpu")
    big = photo(np.random.default_rng(1), *size.photo)
    (h, w), rows = size.photo, []
    for what, image in ((f"upscale {w}x{h} photo, --from-hr on ({w // 4}x{h // 4} -> {w}x{h})", sr.downscale(big)[1]),
                        (f"upscale {w}x{h} photo, --from-hr off (-> {w * 4}x{h * 4})", big)):
        for tile in (size.tile, 0):
            label = f"{what}, {f'tile {tile}' if tile else 'untiled'}"
            try:
                rate, gib = upscale_rate(model, image, size, tile, cuda)
                rows.append((label, precision(True, cuda), f"{rate:9.2f} images/s", gib))
            except RuntimeError as exc:  # out of memory (or past 32-bit indexing): what tiling is for
                if tile:
                    raise
                rows.append((label, precision(True, cuda), f"failed: {str(exc).splitlines()[0][:50]}", None))
                if cuda:
                    torch.cuda.empty_cache()
    return rows


def main() -> int:
    logging.basicConfig(level=logging.WARNING)  # the training loop's progress lines would bury the table
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        head = f"measured on {props.name}"
        print(f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")
    else:
        head = "measured on the CPU (no CUDA)"
        print("gpu_check: no CUDA device here; a short CPU run of the same code follows (CPU figures, not GPU ones)")
        torch.set_num_threads(1)  # small sizes: one thread is as fast, and steady on a busy machine
    size = Sizes() if cuda else CPU_SIZES
    with tempfile.TemporaryDirectory() as root:
        rows, sr_cfg = training_rows(root, size, cuda)
        rows += upscale_rows(sr_cfg, size, cuda)
    width = max(len(head), *(len(r[0]) for r in rows))
    print(f"\n{head:<{width}}  {'precision':<17}  {'result':<18}  peak GPU memory")
    for what, prec, result, gib in rows:
        print(f"{what:<{width}}  {prec:<17}  {result:<18}  {f'{gib:.2f} GiB' if gib is not None else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
