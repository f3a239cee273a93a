"""The training loop each process runs (launched by TorchDistributor, or directly for one process).

Everything it needs comes in one plain dict (`cfg`), so it pickles to the workers. DDP over gloo
(CPU) or NCCL (GPU); on CUDA, bf16/fp16 autocast and channels_last. Rank 0 logs, appends metric
rows to `metrics.jsonl`, writes samples, and checkpoints every `checkpoint_every` steps
(write to a temporary file, then rename: a checkpoint is whole or absent).
"""

import json
import logging
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("pipeline.gan")


def _setup(cfg):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cfg["use_gpu"] and not torch.cuda.is_available():
        # hours of silent CPU training would be worse than stopping here
        import socket
        raise RuntimeError(f"--use-gpu on, but PyTorch sees no CUDA device on {socket.gethostname()} "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                           f"{torch.__version__}): a CPU build of torch, or no GPU given to this task")
    cuda = cfg["use_gpu"]
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cfg.get("threads", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(cfg["seed"] + rank)
    return rank, world, device, cuda


def _wrap(model, device, world, cuda):
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    return model


def _unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def latest_checkpoint(folder: str):
    path = os.path.join(folder, "checkpoint.pt")
    return path if os.path.isfile(path) else None


def _save(folder, state):
    tmp = os.path.join(folder, "checkpoint.pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(folder, "checkpoint.pt"))


def _step(opt, loss) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _discriminator_step(D, opt_d, real, fake, bce, amp):
    """One discriminator update, real vs (detached) generated; returns its loss."""
    ones, zeros = torch.ones(len(real), device=real.device), torch.zeros(len(real), device=real.device)
    with amp:
        loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
    _step(opt_d, loss_d)
    return loss_d


class MetricLog:
    """Rank 0's metric rows, one JSON object per line; a resume drops rows past its step."""

    def __init__(self, folder, resume_step):
        self.path = os.path.join(folder, "metrics.jsonl")
        kept = []
        if resume_step and os.path.exists(self.path):
            with open(self.path) as fh:
                kept = [line for line in fh if json.loads(line)["step"] <= resume_step]
        with open(self.path, "w") as fh:
            fh.writelines(kept)

    def add(self, step, **values):
        with open(self.path, "a") as fh:
            for name, value in values.items():
                fh.write(json.dumps({"step": step, "name": name, "value": float(value)}) + "\n")


def train_worker(cfg: dict):
    from pipeline.gan import data, models

    if not logging.getLogger().handlers:  # a fresh worker process: make the progress lines visible
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank, world, device, cuda = _setup(cfg)
    folder = cfg["checkpoint_dir"]
    os.makedirs(folder, exist_ok=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.get("amp", True) else torch.autocast(
        "cpu", enabled=False)
    local_batch = cfg["batch_size"] // world

    if cfg["model"] == "dcgan":
        G, D = models.DCGANGenerator(cfg["nz"], cfg["width"]), models.DCGANDiscriminator(cfg["width"])
        G.apply(models.dcgan_init)
        D.apply(models.dcgan_init)
        batches = data.digit_batches(cfg["input"], rank, world, local_batch, cfg["seed"])
        betas, lr = (0.5, 0.999), cfg["lr"]
    else:
        G = models.SRResNet(cfg["blocks"], cfg["width"], 4, cfg["bicubic_skip"])
        D = models.SRDiscriminator()
        batches = data.sr_batches(cfg["input"], rank, world, local_batch, cfg["crop"], 4, cfg["seed"])
        betas, lr = (0.9, 0.999), cfg["lr"]
    G, D = _wrap(G, device, world, cuda), _wrap(D, device, world, cuda)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    vgg = models.VGG19Features(cfg["vgg19_weights"]).to(device) if cfg.get("vgg19_weights") else None
    bce = nn.BCEWithLogitsLoss()

    start = 0
    ckpt = latest_checkpoint(folder) if cfg["resume"] else None
    if ckpt:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        _unwrap(G).load_state_dict(state["G"])
        _unwrap(D).load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start = state["step"]
        if rank == 0:
            log.info("resuming %s from step %d (%s)", cfg["model"], start, ckpt)
    metrics = MetricLog(folder, start) if rank == 0 else None
    fixed_z = torch.randn(64, cfg["nz"], 1, 1, generator=torch.Generator().manual_seed(cfg["seed"])).to(device)
    if rank == 0 and cfg["model"] == "srgan" and vgg is None:
        log.info("VGG19 content loss is off (no --vgg19-weights file): content loss is pixel MSE only")

    t_last, seen = time.perf_counter(), 0
    for step in range(start + 1, cfg["steps"] + 1):
        G.train()
        if cfg["model"] == "dcgan":
            real = torch.from_numpy(next(batches)).to(device)
            z = torch.randn(len(real), cfg["nz"], 1, 1, device=device)
            with amp:
                fake = G(z)
            loss_d = _discriminator_step(D, opt_d, real, fake, bce, amp)
            with amp:
                loss_g = bce(D(fake), torch.ones(len(real), device=device))
            _step(opt_g, loss_g)
            values = {"loss_d": loss_d.item(), "loss_g": loss_g.item()}
        else:
            lr_img, hr = (torch.from_numpy(a).to(device) for a in next(batches))
            gan_stage = step > cfg["pretrain_steps"]
            with amp:
                sr = G(lr_img)
                content = F.mse_loss(sr.float(), hr)
                if vgg is not None:
                    content = content + 0.006 * F.mse_loss(vgg(sr.float()), vgg(hr))
            values = {"loss_content": content.item()}
            if gan_stage:
                loss_d = _discriminator_step(D, opt_d, hr, sr, bce, amp)
                with amp:
                    adversarial = bce(D(sr), torch.ones(len(hr), device=device))
                loss_g = content + 1e-3 * adversarial
                values.update(loss_d=loss_d.item(), loss_adversarial=adversarial.item())
            else:
                loss_g = content
            _step(opt_g, loss_g)
            values["loss_g"] = loss_g.item()
        seen += cfg["batch_size"]

        if rank == 0 and (step % cfg["log_every"] == 0 or step == cfg["steps"]):
            now = time.perf_counter()
            rate = seen / (now - t_last)
            t_last, seen = now, 0
            metrics.add(step, images_per_s=rate, **values)
            log.info("%s step %d/%d  %s  %.1f images/s", cfg["model"], step, cfg["steps"],
                     "  ".join(f"{k} {v:.4f}" for k, v in values.items()), rate)
        if rank == 0 and cfg["model"] == "dcgan" and (step % cfg["sample_every"] == 0 or step == cfg["steps"]):
            G.eval()
            with torch.no_grad():
                grid = _unwrap(G)(fixed_z).float().cpu().numpy()
            np.save(os.path.join(folder, f"samples_{step:06d}.npy"), ((grid + 1) * 127.5).clip(0, 255).astype(np.uint8))
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]:
            if rank == 0:
                _save(folder, {"G": _unwrap(G).state_dict(), "D": _unwrap(D).state_dict(),
                               "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step, "cfg": cfg})
            if world > 1:
                torch.distributed.barrier()
    if rank == 0:
        torch.save(_unwrap(G).state_dict(), os.path.join(folder, "generator.pt"))
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"steps": cfg["steps"], "resumed_from": start} if rank == 0 else None
