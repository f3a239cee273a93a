"""Training batches streamed from an images table, each rank reading only its own Parquet files."""

import glob
import os
import random

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline import images as im

COLUMNS = ["height", "width", "nChannels", "data"]


def shard_files(table: str, split: str, rank: int, world: int) -> tuple[list[str], bool]:
    """(files for this rank, whether rows must be further split by index).

    With at least as many files as ranks each rank reads whole files of its own; otherwise every
    rank reads all of them and keeps rows i % world == rank.
    """
    files = sorted(glob.glob(os.path.join(table, f"split={split}", "*.parquet")))
    if not files:
        raise FileNotFoundError(f"{table}: no Parquet files in split={split}")
    if len(files) >= world:
        return files[rank::world], False
    return files, True


def iter_images(table: str, split: str, rank: int, world: int, seed: int):
    """Endless RGB-or-gray uint8 arrays of this rank's shard, reshuffled every pass."""
    files, by_row = shard_files(table, split, rank, world)
    rng = random.Random(seed * 1000 + rank)
    epoch = 0
    while True:
        rng.shuffle(files)
        buffer = []
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=COLUMNS):
                for i, (h, w, c, d) in enumerate(zip(*(batch.column(k).to_pylist() for k in COLUMNS))):
                    if by_row and i % world != rank:
                        continue
                    buffer.append(im.row_to_array(h, w, c, d))
                if len(buffer) >= 1024:
                    rng.shuffle(buffer)
                    yield from buffer
                    buffer = []
        rng.shuffle(buffer)
        yield from buffer
        epoch += 1


def digit_batches(table: str, rank: int, world: int, batch: int, seed: int = 0, size: int = 32):
    """DCGAN batches: gray images resized to size x size, scaled to [-1, 1], as Bx1xHxW float32."""
    stream = iter_images(table, "train", rank, world, seed)
    while True:
        out = np.empty((batch, 1, size, size), np.float32)
        for k in range(batch):
            arr = next(stream)
            gray = arr[:, :, 0] if arr.shape[2] == 1 else np.asarray(Image.fromarray(arr[:, :, :3]).convert("L"))
            out[k, 0] = im.resize_array(gray, (size, size)) / 127.5 - 1.0
        yield out


def sr_pair(arr: np.ndarray, crop: int, scale: int, rng: np.random.Generator):
    """(LR, HR) float32 CxHxW in [0, 1]: a random HR crop, flipped, and its bicubic downscale."""
    rgb = im.to_rgb(arr)
    h, w = rgb.shape[:2]
    if min(h, w) < crop:  # small images are enlarged so a crop fits
        f = crop / min(h, w)
        rgb = np.asarray(Image.fromarray(rgb).resize((max(crop, round(w * f)), max(crop, round(h * f))),
                                                     Image.Resampling.BICUBIC))
        h, w = rgb.shape[:2]
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    hr = rgb[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        hr = hr[:, ::-1]
    if rng.random() < 0.5:
        hr = hr[::-1]
    hr = np.ascontiguousarray(hr)
    lr = np.asarray(Image.fromarray(hr).resize((crop // scale, crop // scale), Image.Resampling.BICUBIC))
    return lr.transpose(2, 0, 1).astype(np.float32) / 255.0, hr.transpose(2, 0, 1).astype(np.float32) / 255.0


def sr_batches(table: str, rank: int, world: int, batch: int, crop: int = 96, scale: int = 4, seed: int = 0,
               crops_per_image: int = 4):
    """SRGAN batches (LR Bx3x(crop/4)^2, HR Bx3xcrop^2); a few crops per decoded image."""
    stream = iter_images(table, "train", rank, world, seed)
    rng = np.random.default_rng(seed * 1000 + rank)
    pending = []
    while True:
        while len(pending) < batch:
            arr = next(stream)
            pending += [sr_pair(arr, crop, scale, rng) for _ in range(crops_per_image)]
        rng.shuffle(pending)
        take, pending = pending[:batch], pending[batch:]
        yield np.stack([p[0] for p in take]), np.stack([p[1] for p in take])
