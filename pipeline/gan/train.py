"""The training loop each rank runs (launched by TorchDistributor, or called directly in one process).

One loop for both GANs; what differs is a `Model`: how G and D are built, where the batches come
from, one optimisation step, and (DCGAN) sample grids. DDP over gloo (CPU) or NCCL (GPU); on
GPUs bf16 autocast and channels_last. Batches are made on a background thread ahead of the
step (`TrainConfig.prefetch`). Rank 0 logs, appends metric rows and checkpoints every
`checkpoint_every` steps into the checkpoint folder (layout: pipeline/training_run.py and
pipeline/gan/checkpoints.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline import ddp, tracking
from pipeline.gan import checkpoints, data, models
from pipeline.training_run import CheckpointFolder, MetricLog
from pipeline.gan.config import ADVERSARIAL_LOSS_WEIGHT, SCALE, VGG_LOSS_WEIGHT, TrainConfig

log = logging.getLogger("pipeline.gan")


@dataclass
class Nets:
    """One rank's networks, optimizers and settings: what a model's step works on."""

    cfg: TrainConfig
    device: torch.device
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    features: nn.Module | None = None  # SRGAN's VGG19 for the content loss, when given
    bce = nn.BCEWithLogitsLoss()

    def autocast(self):
        return ddp.autocast(self.device, self.cfg.amp)


def _step(opt, loss) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _discriminator_step(n: Nets, real, fake):
    """One discriminator update, real vs (detached) generated; returns its loss."""
    ones, zeros = torch.ones(len(real), device=real.device), torch.zeros(len(real), device=real.device)
    with n.autocast():
        loss_d = n.bce(n.D(real), ones) + n.bce(n.D(fake.detach()), zeros)
    _step(n.opt_d, loss_d)
    return loss_d


# ---------------------------------------------------------------- DCGAN

def build_dcgan(cfg: TrainConfig, r: ddp.Rank):
    G, D = models.DCGANGenerator(cfg.nz, cfg.width), models.DCGANDiscriminator(cfg.width)
    G.apply(models.dcgan_init)
    D.apply(models.dcgan_init)
    return G, D, None


def dcgan_batches(cfg: TrainConfig, rank: int, world: int, batch: int):
    return ((real,) for real in data.digit_batches(cfg.input, rank, world, batch, cfg.seed, max_pixels=cfg.max_pixels))


def dcgan_step(n: Nets, step: int, batch) -> dict[str, float]:
    (real,) = batch
    z = torch.randn(len(real), n.cfg.nz, 1, 1, device=n.device)
    with n.autocast():
        fake = n.G(z)
    loss_d = _discriminator_step(n, real, fake)
    with n.autocast():
        loss_g = n.bce(n.D(fake), torch.ones(len(real), device=n.device))
    _step(n.opt_g, loss_g)
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def dcgan_samples(n: Nets, step: int) -> None:
    """A grid from 64 fixed latent vectors (the same every time: a seeded generator of its own)."""
    z = torch.randn(64, n.cfg.nz, 1, 1, generator=torch.Generator().manual_seed(n.cfg.seed)).to(n.device)
    n.G.eval()
    with torch.no_grad():
        grid = ddp.unwrap(n.G)(z).float().cpu().numpy()
    np.save(checkpoints.sample_path(n.cfg.checkpoint_dir, step),
            ((grid + 1) * 127.5).clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------- SRGAN

def build_srgan(cfg: TrainConfig, r: ddp.Rank):
    G, D = models.SRResNet(cfg.blocks, cfg.width, SCALE, cfg.bicubic_skip), models.SRDiscriminator()
    if not cfg.vgg19_weights:
        if r.rank == 0:
            log.info("VGG19 content loss is off (no --vgg19-weights file): content loss is pixel MSE only")
        return G, D, None
    return G, D, models.VGG19Features(cfg.vgg19_weights)


def srgan_batches(cfg: TrainConfig, rank: int, world: int, batch: int):
    return data.sr_batches(cfg.input, rank, world, batch, cfg.crop, SCALE, cfg.seed, max_pixels=cfg.max_pixels)


def srgan_step(n: Nets, step: int, batch) -> dict[str, float]:
    """Content loss only for the first `pretrain_steps` (SRResNet), then with the adversarial term."""
    lr_img, hr = batch
    with n.autocast():
        sr = n.G(lr_img)
        content = F.mse_loss(sr.float(), hr)
        if n.features is not None:
            content = content + VGG_LOSS_WEIGHT * F.mse_loss(n.features(sr.float()), n.features(hr))
    values = {"loss_content": content.item()}
    loss_g = content
    if step > n.cfg.pretrain_steps:
        loss_d = _discriminator_step(n, hr, sr)
        with n.autocast():
            adversarial = n.bce(n.D(sr), torch.ones(len(hr), device=n.device))
        loss_g = content + ADVERSARIAL_LOSS_WEIGHT * adversarial
        values.update(loss_d=loss_d.item(), loss_adversarial=adversarial.item())
    _step(n.opt_g, loss_g)
    values["loss_g"] = loss_g.item()
    return values


# ---------------------------------------------------------------- the loop

@dataclass(frozen=True)
class Model:
    build: Callable      # (cfg, rank) -> (G, D, content-loss feature net or None), initialised, on CPU
    betas: tuple[float, float]
    batches: Callable    # (cfg, rank, world, local batch) -> endless tuples of float32 arrays
    step: Callable       # (Nets, step, tuple of tensors on the device) -> {loss name: value}
    sample: Callable | None = None  # (Nets, step): rank 0's extra output every sample_every steps


MODELS = {"dcgan": Model(build_dcgan, (0.5, 0.999), dcgan_batches, dcgan_step, dcgan_samples),
          "srgan": Model(build_srgan, (0.9, 0.999), srgan_batches, srgan_step)}


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _tensors(device: torch.device):
    """Arrays → tensors on the prefetch thread; pinned for a GPU, so the copy to it is async."""
    def convert(arrays):
        tensors = tuple(torch.from_numpy(a) for a in arrays)
        if device.type != "cuda":
            return tensors
        torch.cuda.set_device(device)  # a new thread starts on GPU 0: pin through this rank's GPU
        return tuple(t.pin_memory() for t in tensors)
    return convert


def _resume(n: Nets, path: str) -> int:
    state = torch.load(path, map_location=n.device, weights_only=True)  # tensors and plain values: no code
    ddp.unwrap(n.G).load_state_dict(state["G"])
    ddp.unwrap(n.D).load_state_dict(state["D"])
    n.opt_g.load_state_dict(state["opt_g"])
    n.opt_d.load_state_dict(state["opt_d"])
    return state["step"]


def train_worker(cfg: TrainConfig):
    r = ddp.setup(cfg.use_gpu, cfg.threads, cfg.seed)
    model, folder = MODELS[cfg.model], cfg.checkpoint_dir
    os.makedirs(folder, exist_ok=True)
    G, D, features = model.build(cfg, r)
    G, D = ddp.wrap(G, r), ddp.wrap(D, r)
    n = Nets(cfg, r.device, G, D, torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=model.betas),
             torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=model.betas),
             features.to(r.device) if features is not None else None)

    start, run = 0, CheckpointFolder(folder, "step")
    ckpt = run.latest() if cfg.resume else None
    if ckpt:
        start = _resume(n, os.path.join(ckpt.folder, checkpoints.CHECKPOINT))
        if r.rank == 0:
            log.info("resuming %s from step %d (%s)", cfg.model, start, ckpt.folder)
    metrics = MetricLog(folder, start) if r.rank == 0 else None
    batches = data.prefetch(model.batches(cfg, r.rank, r.world, cfg.batch_size // r.world), cfg.prefetch,
                            _tensors(r.device))
    t_last, seen = time.perf_counter(), 0
    try:
        for step in range(start + 1, cfg.steps + 1):
            n.G.train()
            values = model.step(n, step, tuple(t.to(r.device, non_blocking=True) for t in next(batches)))
            seen += cfg.batch_size
            if r.rank == 0 and _due(step, cfg.log_every, cfg.steps):
                now = time.perf_counter()
                rate, t_last, seen = seen / (now - t_last), now, 0
                metrics.add(step, images_per_s=rate, **values)
                tracking.log_metrics({"images_per_s": rate, **values}, step)  # the job's MLflow run, if tracked
                log.info("%s step %d/%d  %s  %.1f images/s", cfg.model, step, cfg.steps,
                         "  ".join(f"{k} {v:.4f}" for k, v in values.items()), rate)
            if r.rank == 0 and model.sample and _due(step, cfg.sample_every, cfg.steps):
                model.sample(n, step)
            if _due(step, cfg.checkpoint_every, cfg.steps):
                if r.rank == 0:
                    saved = run.new(step)
                    ddp.save_atomic({"G": ddp.unwrap(G).state_dict(), "D": ddp.unwrap(D).state_dict(),
                                     "opt_g": n.opt_g.state_dict(), "opt_d": n.opt_d.state_dict(), "step": step,
                                     "cfg": cfg.to_dict()}, os.path.join(saved, checkpoints.CHECKPOINT))
                    run.seal(saved)
                ddp.barrier(r)
    finally:
        batches.close()
    if r.rank == 0:
        ddp.save_atomic(ddp.unwrap(G).state_dict(), os.path.join(folder, checkpoints.GENERATOR))
    ddp.teardown(r)
    return {"steps": cfg.steps, "resumed_from": start} if r.rank == 0 else None
