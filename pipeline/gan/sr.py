"""4x super-resolution with a trained SRResNet: batched, tiled inference and its evaluation.

Used by the `upscale` job (in Spark tasks) and by `train_gan` (held-out previews on the driver);
no pyspark here. Images are HxWx3 uint8 RGB arrays.

Tiling: each image is cut into `tile` x `tile` LR windows, each run with `overlap` pixels of
real context on every inner side, and only each window's core is kept; since the network's
layers are local, cores stitch into what the whole image would give (within rounding), while
memory depends on the tile, not on the image. Windows of the same size from all the images of
a call are run `batch` at a time, so many small images fill the GPU as well as one large one.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from itertools import product

import numpy as np
import torch
from PIL import Image

from pipeline import ddp
from pipeline.gan.config import DEFAULT_OVERLAP, DEFAULT_TILE, SCALE
from pipeline.gan.models import SRResNet


def load_generator(folder: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The SRResNet saved by `train_gan --model srgan` in `folder`, in eval mode on `device`."""
    with open(os.path.join(folder, "generator.json")) as fh:
        meta = json.load(fh)
    if meta["model"] != "srgan":
        raise ValueError(f"{folder}: a {meta['model']} generator, not an SRResNet")
    model = SRResNet(meta["blocks"], meta["width"], SCALE, meta["bicubic_skip"])
    model.load_state_dict(torch.load(os.path.join(folder, "generator.pt"), map_location=device, weights_only=True))
    model = model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else model


def _spans(n: int, tile: int, overlap: int) -> tuple[int, list[tuple[int, int, int]]]:
    """One axis: (window length, [(window start, core start, core end)]).

    Windows are tile + 2 * overlap long, spread evenly from one edge to the other (so they all
    have the same size and stack into one batch), at most `tile` apart; each core ends in the
    middle of the overlap with the next window, which leaves at least `overlap` pixels of real
    context on every inner side of every core.
    """
    win = tile + 2 * overlap
    if tile <= 0 or n <= win:
        return n, [(0, 0, n)]
    k = -(-(n - win) // tile) + 1
    starts = [i * (n - win) // (k - 1) for i in range(k)]
    cuts = [0, *((a + b + win) // 2 for a, b in zip(starts, starts[1:])), n]
    return win, [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


def _windows(shape: tuple[int, int], tile: int, overlap: int):
    """(window size, window origin, core box in the image) per window of an HxW image."""
    (lh, ys), (lw, xs) = _spans(shape[0], tile, overlap), _spans(shape[1], tile, overlap)
    for (wy, y0, y1), (wx, x0, x1) in product(ys, xs):
        yield (lh, lw), (wy, wx), (y0, y1, x0, x1)


def _run(model, crops: list[np.ndarray], precision: str) -> np.ndarray:
    """A batch of same-size LR crops → their SR outputs, uint8 BxHxWx3 on the CPU."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        # uint8 travels to the device (4x less than float), the division happens there
        x = torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float().div_(255)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with ddp.autocast(device, precision == "bf16"):
            y = model(x)
        return y.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def super_resolve(model, images: list[np.ndarray], *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                  batch: int = 8, precision: str = "bf16") -> list[np.ndarray]:
    """LR images → their 4x SR, in `batch`-window forward passes (tile 0: whole images).

    precision "bf16" runs bf16 autocast on GPUs that have it, "fp32" never; CPUs run fp32.
    """
    out = [np.empty((im.shape[0] * SCALE, im.shape[1] * SCALE, 3), np.uint8) for im in images]
    groups = defaultdict(list)  # window size → [(image index, window origin, core box)]
    for i, img in enumerate(images):
        for size, origin, box in _windows(img.shape[:2], tile, overlap):
            groups[size].append((i, origin, box))
    for (h, w), todo in groups.items():
        for k in range(0, len(todo), batch):
            chunk = todo[k:k + batch]
            result = _run(model, [images[i][wy:wy + h, wx:wx + w] for i, (wy, wx), _ in chunk], precision)
            for sr, (i, (wy, wx), (y0, y1, x0, x1)) in zip(result, chunk):
                out[i][y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = \
                    sr[(y0 - wy) * SCALE:(y1 - wy) * SCALE, (x0 - wx) * SCALE:(x1 - wx) * SCALE]
    return out


def downscale(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An HR image → (HR cropped to a multiple of 4, its bicubic 4x downscale, that upscaled bicubically)."""
    h, w = rgb.shape[0] // SCALE * SCALE, rgb.shape[1] // SCALE * SCALE
    hr = np.ascontiguousarray(rgb[:h, :w])
    lr = np.asarray(Image.fromarray(hr).resize((w // SCALE, h // SCALE), Image.Resampling.BICUBIC))
    bicubic = np.asarray(Image.fromarray(lr).resize((w, h), Image.Resampling.BICUBIC))
    return hr, lr, bicubic


def restore_from_hr(model, images: list[np.ndarray], **kwargs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """HR images → (HR, SR of its 4x downscale, bicubic of the same) each: what SR is judged on,
    as SR papers do it. kwargs go to `super_resolve`."""
    triples = [downscale(rgb) for rgb in images]
    srs = super_resolve(model, [lr for _, lr, _ in triples], **kwargs)
    return [(hr, sr, bicubic) for (hr, _, bicubic), sr in zip(triples, srs)]


def sr_scores(sr: np.ndarray, bicubic: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """Y-channel PSNR/SSIM (border-cropped) of SR and of bicubic against HR."""
    from pipeline import metrics

    return {"psnr_sr": metrics.psnr_y(sr, hr), "psnr_bicubic": metrics.psnr_y(bicubic, hr),
            "ssim_sr": metrics.ssim_y(sr, hr), "ssim_bicubic": metrics.ssim_y(bicubic, hr)}
