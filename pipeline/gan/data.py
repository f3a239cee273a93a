"""Training batches streamed from an images table, each rank reading only its own Parquet files.

Files are listed and read through pyarrow's filesystem layer, so a table on a local or shared
disk (a path or file:), on HDFS (hdfs://, needs libhdfs and the Hadoop CLASSPATH on the
workers) or on S3 (s3://; Hadoop's s3a:// is read as s3://) works the same. `prefetch` makes
the batches on a background thread, ahead of the training step that takes them.
"""

from __future__ import annotations

import os
import queue
import random
import threading

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipeline import images as im
from pipeline.io import arrow_filesystem
from pipeline.tablelog import committed_files

COLUMNS = ["height", "width", "nChannels", "data"]


def shard_files(table: str, split: str, rank: int, world: int) -> tuple[pafs.FileSystem, list[str], bool]:
    """(filesystem, files for this rank, whether rows must be further split by index).

    With at least as many files as ranks each rank reads whole files of its own; otherwise every
    rank reads all of them and keeps rows i % world == rank.
    """
    fs, root = arrow_filesystem(table)
    folder = f"{root.rstrip('/')}/split={split}"
    files = [f for f in committed_files(table) if f.startswith(folder + "/") and f.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"{table}: no Parquet files in split={split}")
    if len(files) >= world:
        return fs, files[rank::world], False
    return fs, files, True


def row_problem(h: int, w: int, c: int, nbytes: int, min_side: int, max_pixels: int = im.MAX_PIXELS) -> str | None:
    """Why an images-table row cannot be trained on (its reason as a rejected row), or None. The driver
    counts and records these rows (pipeline.gan.job); every rank skips them with this same test."""
    if h * w > max_pixels:
        return f"image too large: {h}x{w} is {h * w:,} pixels, over --max-pixels {max_pixels:,}"
    if nbytes != h * w * c:
        return f"undecodable image row: data has {nbytes} bytes, expected {h * w * c} for {h}x{w}x{c}"
    if min(h, w) < min_side:
        return f"image {h}x{w} is too small: training needs at least {min_side} pixels a side"
    return None


def iter_images(table: str, split: str, rank: int, world: int, seed: int, min_side: int = 1,
                max_pixels: int = im.MAX_PIXELS):
    """Endless RGB-or-gray uint8 arrays of this rank's shard, reshuffled every pass; rows with a
    `row_problem` are skipped (the job has recorded them as rejected)."""
    fs, files, by_row = shard_files(table, split, rank, world)
    rng = random.Random(seed * 1000 + rank)
    while True:
        rng.shuffle(files)
        buffer = []
        for path in files:
            with fs.open_input_file(path) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=256, columns=COLUMNS):
                    for i, (h, w, c, d) in enumerate(zip(*(batch.column(k).to_pylist() for k in COLUMNS))):
                        if (by_row and i % world != rank) or row_problem(h, w, c, len(d or b""), min_side,
                                                                             max_pixels):
                            continue
                        buffer.append(im.row_to_array(h, w, c, d))
                    if len(buffer) >= 1024:
                        rng.shuffle(buffer)
                        yield from buffer
                        buffer = []
        rng.shuffle(buffer)
        yield from buffer


def digit_batches(table: str, rank: int, world: int, batch: int, seed: int = 0, size: int = 32,
                  max_pixels: int = im.MAX_PIXELS):
    """DCGAN batches: gray images resized to size x size, scaled to [-1, 1], as Bx1xHxW float32."""
    stream = iter_images(table, "train", rank, world, seed, 1, max_pixels)
    while True:
        out = np.empty((batch, 1, size, size), np.float32)
        for k in range(batch):
            out[k, 0] = im.resize_array(im.to_gray(next(stream)), (size, size)) / 127.5 - 1.0
        yield out


def min_side(crop: int) -> int:
    """The shortest image side SRGAN trains on: smaller ones would be enlarged more than twice to fit
    an HR crop, which teaches the network to undo an upscale, not a camera's detail."""
    return crop // 2


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
               crops_per_image: int = 4, max_pixels: int = im.MAX_PIXELS):
    """SRGAN batches (LR Bx3x(crop/4)^2, HR Bx3xcrop^2); a few crops per decoded image."""
    stream = iter_images(table, "train", rank, world, seed, min_side(crop), max_pixels)
    rng = np.random.default_rng(seed * 1000 + rank)
    pending = []
    while True:
        while len(pending) < batch:
            arr = next(stream)
            pending += [sr_pair(arr, crop, scale, rng) for _ in range(crops_per_image)]
        rng.shuffle(pending)
        take, pending = pending[:batch], pending[batch:]
        yield np.stack([p[0] for p in take]), np.stack([p[1] for p in take])


def prefetch(items, depth: int, prepare=None):
    """What `items` yields, passed through `prepare`, made up to `depth` items ahead on a
    background thread, so reading, decoding and cropping overlap the training step (PIL, numpy
    and Parquet release the GIL for their heavy parts). The order is unchanged, so the batches
    are the same as without it; an error in the thread is raised here. depth 0: inline.
    """
    prepare = prepare or (lambda item: item)
    if depth <= 0:
        return (prepare(item) for item in items)
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill():
        try:
            for item in items:
                if not offer((prepare(item), None)):
                    return
            offer((_END, None))
        except BaseException as exc:  # hand it to the consumer, which would otherwise wait forever
            offer((None, exc))

    threading.Thread(target=fill, name="batch-prefetch", daemon=True).start()  # starts now, not at next()
    return _drain(ready, stop)


_END = object()


def _drain(ready: queue.Queue, stop: threading.Event):
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()  # the consumer stopped (or failed): let the thread end


def write_table(table: str, arrays, split: str = "train") -> None:
    """HxWxC uint8 arrays (RGB or gray) → an images table with one Parquet file, written with
    pyarrow alone: data for checks that run without Spark (scripts/gpu_check.py, tests)."""
    import pyarrow as pa

    rows = [(f"mem:{split}/{i:05d}", None, None, None, *im.array_to_row(a)) for i, a in enumerate(arrays)]
    names = ["path", "origin", "label", "label_index", "height", "width", "nChannels", "mode", "data"]
    types = [pa.string()] * 3 + [pa.int32()] * 5 + [pa.binary()]
    batch = pa.table([pa.array(col, t) for col, t in zip(zip(*rows), types)], names=names)
    os.makedirs(os.path.join(table, f"split={split}"), exist_ok=True)
    pq.write_table(batch, os.path.join(table, f"split={split}", "part-00000.parquet"))
