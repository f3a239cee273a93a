"""`train_gan`: DCGAN (digits) or SRGAN/SRResNet (4x super-resolution) handed to workers.

The driver launches `pipeline.gan.train.train_worker` through Spark's TorchDistributor (barrier
tasks on the executors, or processes on the driver with --local-mode), then writes the outputs:
generator weights, metrics Parquet, sample grids / SR comparisons as PNG, and a runs row.
Checkpoints live in OUTPUT.checkpoints, which must be on storage every worker sees.
"""

import glob
import json
import logging
import os
import shutil

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, check_writable, is_local, local_path

log = logging.getLogger(__name__)

DEFAULTS = {
    "dcgan": {"steps": 600, "batch_size": 64, "lr": 2e-4, "width": 32, "log_every": 50},
    "srgan": {"steps": 300, "batch_size": 16, "lr": 1e-4, "width": 64, "log_every": 10},
}


def add_arguments(p) -> dict:
    p.add_argument("--model", choices=("dcgan", "srgan"), help="dcgan (digits) or srgan (4x super-resolution)")
    p.add_argument("--input", required=True, help="images table (train split for training, test for previews)")
    p.add_argument("--output", required=True, help="folder for generator.pt, metrics/, PNGs")
    p.add_argument("--steps", type=int, help="total optimisation steps (a resumed run counts the earlier ones)")
    p.add_argument("--batch-size", type=int, help="global batch, split evenly over the processes")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--width", type=int, help="base channel count (DCGAN ngf/ndf, SRResNet channels)")
    p.add_argument("--blocks", type=int, help="SRResNet residual blocks")
    p.add_argument("--crop", type=int, help="SRGAN HR crop size (LR is crop/4)")
    p.add_argument("--pretrain-steps", type=int, help="SRGAN: steps of SRResNet (content-only) training first")
    p.add_argument("--bicubic-skip", choices=("on", "off"), help="SRResNet predicts the residual over bicubic")
    p.add_argument("--vgg19-weights", help="local VGG19 state dict (torchvision layout) to add the VGG loss")
    p.add_argument("--num-processes", type=int, help="training processes (one per GPU on GPU workers)")
    p.add_argument("--use-gpu", choices=("on", "off"), help="train on GPUs (NCCL) instead of CPUs (gloo)")
    p.add_argument("--local-mode", choices=("on", "off"), help="on: processes on the driver; off: barrier tasks")
    p.add_argument("--threads", type=int, help="torch threads per CPU process")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, help="steps between metric rows / log lines")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--resume", action="store_true", default=None, help="continue from OUTPUT.checkpoints")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"model": "dcgan", "steps": None, "batch_size": None, "lr": None, "width": None, "blocks": 16,
            "crop": 96, "pretrain_steps": None, "bicubic_skip": "on", "vgg19_weights": None, "num_processes": 2,
            "use_gpu": "off", "local_mode": "off", "threads": 1, "checkpoint_every": 100, "log_every": None,
            "seed": 0, "resume": False, "mode": "error"}


def validate(opts):
    for key, value in DEFAULTS[opts.model].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.pretrain_steps is None:
        opts.pretrain_steps = opts.steps * 2 // 3 if opts.model == "srgan" else 0
    for key in ("steps", "batch_size", "num_processes", "checkpoint_every", "log_every", "width", "blocks"):
        if getattr(opts, key) < 1:
            raise PipelineError(f"--{key.replace('_', '-')} {getattr(opts, key)}: expected a positive number")
    if opts.batch_size % opts.num_processes:
        raise PipelineError(f"--batch-size {opts.batch_size} does not split evenly over --num-processes "
                            f"{opts.num_processes}")
    if opts.crop % 4 or opts.crop < 16:
        raise PipelineError(f"--crop {opts.crop}: expected a multiple of 4, at least 16")
    if opts.vgg19_weights:
        if not os.path.isfile(opts.vgg19_weights):
            raise PipelineError(f"--vgg19-weights {opts.vgg19_weights}: no such file")
        from pipeline.gan.models import VGG19Features

        try:  # fail here, in one line, rather than in every worker
            VGG19Features(opts.vgg19_weights)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
    opts.input, opts.output = absolute(opts.input), absolute(opts.output)
    opts.checkpoint_dir = f"{opts.output}.checkpoints"
    if not is_local(opts.input) or not os.path.isdir(os.path.join(local_path(opts.input), "split=train")):
        raise PipelineError(f"--input {opts.input}: expected a local images table with a split=train folder")
    if opts.resume and not os.path.isfile(os.path.join(opts.checkpoint_dir, "checkpoint.pt")):
        raise PipelineError(f"--resume: no checkpoint in {opts.checkpoint_dir}")
    check_writable(opts.output, opts.mode)


def worker_config(opts, steps_per_epoch: int) -> dict:
    return {"model": opts.model, "input": local_path(opts.input), "checkpoint_dir": opts.checkpoint_dir,
            "steps": opts.steps, "batch_size": opts.batch_size, "lr": opts.lr, "width": opts.width, "nz": 100,
            "blocks": opts.blocks, "crop": opts.crop, "pretrain_steps": opts.pretrain_steps,
            "bicubic_skip": opts.bicubic_skip == "on", "vgg19_weights": opts.vgg19_weights,
            "use_gpu": opts.use_gpu == "on", "threads": opts.threads, "seed": opts.seed, "resume": opts.resume,
            "checkpoint_every": opts.checkpoint_every, "log_every": opts.log_every, "sample_every": steps_per_epoch,
            "amp": True}


def launch(spark, cfg: dict, num_processes: int, local_mode: bool, use_gpu: bool):
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.gan.train import train_worker

    slots = spark.sparkContext.defaultParallelism
    if not local_mode and not use_gpu and num_processes > slots:
        # A barrier stage waits for all its slots at once; without them it would hang silently.
        raise PipelineError(f"--num-processes {num_processes} needs {num_processes} task slots, the cluster "
                            f"has {slots}: lower it or add executors")
    return TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(train_worker, cfg)


def run(spark, opts, run, _=None) -> dict:
    from pyspark.sql import functions as F

    images = spark.read.parquet(opts.input)
    n_train = images.where(F.col("split") == "train").count()
    if n_train == 0:
        raise PipelineError(f"--input {opts.input}: the train split is empty")
    if not opts.resume:
        shutil.rmtree(opts.checkpoint_dir, ignore_errors=True)
    cfg = worker_config(opts, max(1, n_train // opts.batch_size))
    result = launch(spark, cfg, opts.num_processes, opts.local_mode == "on", opts.use_gpu == "on") or {}
    log.info("training finished: %s", result)
    return write_outputs(spark, opts, run, images, n_train, cfg)


def _metric_rows(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def write_outputs(spark, opts, run, images, n_train, cfg) -> dict:
    from pipeline import images as im
    from pipeline import metrics, plots

    rows = _metric_rows(opts.checkpoint_dir)
    summary = {}
    with atomic_output(spark, opts.output, run, opts.mode) as tmp:
        local = local_path(tmp)
        os.makedirs(local, exist_ok=True)
        shutil.copy(os.path.join(opts.checkpoint_dir, "generator.pt"), os.path.join(local, "generator.pt"))
        with open(os.path.join(local, "generator.json"), "w") as fh:
            json.dump({k: cfg[k] for k in ("model", "width", "blocks", "nz", "bicubic_skip")}, fh)
        spark.createDataFrame(metrics.metric_rows(run.run_id, [(r["step"], r["name"], r["value"]) for r in rows]),
                              metrics.METRICS_DDL).coalesce(1).write.parquet(f"{tmp}/metrics")
        series = {}
        for r in rows:
            if r["name"].startswith("loss"):
                series.setdefault(r["name"], []).append((r["step"], r["value"]))
        plots.curves_png(series, os.path.join(local, "loss_curves.png"), f"{opts.model} losses", xlabel="step")
        if opts.model == "dcgan":
            os.makedirs(os.path.join(local, "samples"))
            generated = []
            for k, path in enumerate(sorted(glob.glob(os.path.join(opts.checkpoint_dir, "samples_*.npy"))), 1):
                grid = np.load(path)[:, 0]
                step = int(os.path.basename(path)[8:14])
                plots.image_grid_png(list(grid), os.path.join(local, "samples", f"epoch_{k:03d}_step_{step:06d}.png"))
                generated += [(f"generated:{run.run_id}/step_{step:06d}/{i:02d}", step, *im.array_to_row(g))
                              for i, g in enumerate(grid)]
            # the same samples as an images table (split "generated"), for whatever reads images next
            (spark.createDataFrame(generated, "path string, step int, height int, width int, nChannels int, "
                                              "mode int, data binary")
             .selectExpr("path", "CAST(NULL AS STRING) AS origin", "CAST(NULL AS STRING) AS label",
                         "CAST(NULL AS INT) AS label_index", "height", "width", "nChannels", "mode", "data",
                         "step", "'generated' AS split")
             .coalesce(1).write.partitionBy("split").parquet(f"{tmp}/generated"))
        else:
            summary = sr_previews(spark, opts, images, local)
        run.rows_in = run.rows_out = n_train
        run.rows_rejected = 0
    last = {r["name"]: r["value"] for r in rows}
    run.metrics = {**last, **summary}
    run.outputs = {"generator": f"{opts.output}/generator.pt", "metrics": f"{opts.output}/metrics",
                   "figures": f"{opts.output}/" + ("samples/*.png" if opts.model == "dcgan" else "sr_*.png")}
    if opts.model == "dcgan":
        run.outputs["generated"] = f"{opts.output}/generated"
    return {"model": opts.model, "steps": opts.steps, **{k: round(v, 4) for k, v in summary.items()},
            **run.outputs, "checkpoints": opts.checkpoint_dir}


def sr_previews(spark, opts, images, folder: str, limit: int = 16, panels: int = 4) -> dict:
    """Y-channel PSNR/SSIM of SR and of bicubic on (up to `limit`) held-out images, and
    bicubic | SR | HR panels for the first `panels` of them."""
    from pipeline import images as im
    from pipeline import plots
    from pipeline.gan.upscale import load_generator, restore_from_hr, sr_scores

    model = load_generator(folder)
    held = images.where("split = 'test'").limit(limit).collect() or images.limit(limit).collect()
    scores = {"psnr_sr": [], "psnr_bicubic": [], "ssim_sr": [], "ssim_bicubic": []}
    for k, r in enumerate(held):
        hr, sr, bicubic = restore_from_hr(model, im.to_rgb(im.row_to_array(r.height, r.width, r.nChannels, r.data)))
        for name, value in sr_scores(sr, bicubic, hr).items():
            scores[name].append(value)
        if k >= panels:
            continue
        plots.image_grid_png([bicubic, sr, hr], os.path.join(folder, f"sr_comparison_{k}.png"), cols=3,
                             titles=[f"bicubic {scores['psnr_bicubic'][-1]:.2f} dB",
                                     f"SR {scores['psnr_sr'][-1]:.2f} dB", "HR"], scale=0.5)
    return {k: float(np.mean(v)) for k, v in scores.items() if v}
