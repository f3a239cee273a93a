"""`train_gan`: DCGAN (digits) or SRGAN/SRResNet (4x super-resolution) handed to workers.

The driver launches `pipeline.gan.train.train_worker` through Spark's TorchDistributor (barrier
tasks on the executors, or processes on the driver with --local-mode), then writes the outputs:
generator weights, metrics Parquet, sample grids / SR comparisons as PNG, and a runs row.
The ranks read the images table themselves (a local/shared path, file:, hdfs:// or s3://);
checkpoints live in OUTPUT.checkpoints, which must be on storage every worker sees.
"""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np

from pipeline import options
from pipeline.errors import PipelineError
from pipeline.gan import checkpoints, data
from pipeline.gan.config import TrainConfig
from pipeline.images import MAX_PIXELS
from pipeline.io import absolute, atomic_output, is_local, local_path
from pipeline.training_run import CheckpointFolder, Resume, data_version

log = logging.getLogger(__name__)

DEFAULTS = {
    "dcgan": {"steps": 600, "batch_size": 64, "lr": 2e-4, "width": 32, "log_every": 50},
    "srgan": {"steps": 300, "batch_size": 16, "lr": 1e-4, "width": 64, "log_every": 10},
}

def add_arguments(p) -> dict:
    p.add_argument("--model", choices=("dcgan", "srgan"), help="dcgan (digits) or srgan (4x super-resolution)")
    p.add_argument("--input", required=True, help="images table (train split for training, test for previews)")
    defaults = options.add_output(p, "folder for generator.pt, metrics/, PNGs")
    for flag, kind, text in (
            ("--steps", int, "total optimisation steps (a resumed run counts the earlier ones)"),
            ("--batch-size", int, "global batch, split evenly over the processes"),
            ("--lr", float, "Adam learning rate"),
            ("--width", int, "base channel count (DCGAN ngf/ndf, SRResNet channels)"),
            ("--blocks", int, "SRResNet residual blocks"),
            ("--crop", int, "SRGAN HR crop size (LR is crop/4)"),
            ("--pretrain-steps", int, "SRGAN: steps of SRResNet (content-only) training first"),
            ("--prefetch", int, "batches each process prepares ahead on a thread (0: inline)"),
            ("--checkpoint-every", int, "steps between checkpoints"),
            ("--log-every", int, "steps between metric rows / log lines"),
            ("--seed", int, "random seed"),
            ("--max-pixels", int, "larger images are rejected rows (bounds a rank's memory)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--bicubic-skip", choices=("on", "off"), help="SRResNet predicts the residual over bicubic")
    p.add_argument("--vgg19-weights", help="local VGG19 state dict (torchvision layout) to add the VGG loss")
    defaults.update(options.add_resume(p, "the checkpoint in OUTPUT.checkpoints"))
    defaults.update(options.add_distributor(p))
    # None: the model's default (DEFAULTS)
    return {**defaults, "model": "dcgan", "steps": None, "batch_size": None, "lr": None, "width": None,
            "blocks": 16, "crop": 96, "pretrain_steps": None, "bicubic_skip": "on", "vgg19_weights": None,
            "prefetch": 4, "checkpoint_every": 100, "log_every": None, "seed": 0,
            "max_pixels": MAX_PIXELS}


def validate(opts):
    for key, value in DEFAULTS[opts.model].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.pretrain_steps is None:
        opts.pretrain_steps = opts.steps * 2 // 3 if opts.model == "srgan" else 0
    options.positive(opts, "steps", "batch_size", "checkpoint_every", "log_every", "width", "blocks", "max_pixels")
    options.check_distributor(opts)
    if opts.prefetch < 0:
        raise PipelineError(f"--prefetch {opts.prefetch}: expected 0 (inline) or more")
    if opts.crop % 4 or opts.crop < 16:
        raise PipelineError(f"--crop {opts.crop}: expected a multiple of 4, at least 16")
    if opts.vgg19_weights:
        if not os.path.isfile(opts.vgg19_weights):
            raise PipelineError(f"--vgg19-weights {opts.vgg19_weights}: no such file")
        from pipeline.gan.models import VGG19Features
        from pipeline.safety import load_tensors

        load_tensors(opts.vgg19_weights, "--vgg19-weights")

        try:  # fail here, in one line, rather than in every worker
            VGG19Features(opts.vgg19_weights)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
    opts.input = absolute(opts.input)
    # a table on HDFS/S3 is checked when Spark reads it (run: the train split must not be empty)
    if is_local(opts.input) and not os.path.isdir(os.path.join(local_path(opts.input), "split=train")):
        raise PipelineError(f"--input {opts.input}: expected an images table with a split=train folder")
    opts.checkpoint_dir = local_path(f"{absolute(opts.output)}.checkpoints")
    if opts.resume == "on" and not CheckpointFolder(opts.checkpoint_dir, "step").latest():
        raise PipelineError(f"--resume: no checkpoint in {opts.checkpoint_dir}")
    options.output(opts)


def worker_config(opts, steps_per_epoch: int, threads: int) -> TrainConfig:
    return TrainConfig(
        model=opts.model, input=opts.input, checkpoint_dir=opts.checkpoint_dir, steps=opts.steps,
        batch_size=opts.batch_size, lr=opts.lr, width=opts.width, blocks=opts.blocks, crop=opts.crop,
        pretrain_steps=opts.pretrain_steps, bicubic_skip=opts.bicubic_skip == "on", vgg19_weights=opts.vgg19_weights,
        use_gpu=opts.use_gpu == "on", threads=threads, seed=opts.seed,
        checkpoint_every=opts.checkpoint_every, log_every=opts.log_every, sample_every=steps_per_epoch,
        prefetch=opts.prefetch, max_pixels=opts.max_pixels)


# What a checkpoint must share with this run to be continued: the model, the data (its path here,
# its row count in resume_point) and the shapes.
# The step counts (and how often to log, sample or checkpoint) may change: more steps extend a run.
FINGERPRINT = ("model", "input", "batch_size", "lr", "width", "nz", "blocks", "crop", "bicubic_skip",
               "vgg19_weights", "seed")


def resume_point(opts, cfg: TrainConfig, n_train: int, record) -> Resume:
    """--resume on|auto|off: continue the newest checkpoint of this configuration, or start a fresh folder."""
    from pipeline.safety import load_tensors

    folder = CheckpointFolder(opts.checkpoint_dir, "step")
    current = cfg.to_dict()
    # the data's version and rows too: a table at the same path that has changed is other data
    fingerprint = {**{k: current[k] for k in FINGERPRINT}, "data": data_version(opts.input), "n_train": n_train}
    resume = folder.decide(opts.resume, fingerprint)
    if resume.checkpoint:  # refused here, on the driver, before any rank loads it; mmap: no weights read
        load_tensors(os.path.join(resume.checkpoint.folder, checkpoints.CHECKPOINT), "--resume: the checkpoint",
                     mmap=True)
    else:
        folder.start_fresh(fingerprint, "train_gan", record.run_id)
    return resume


def run(spark, opts, record, _=None) -> dict:
    from pyspark.sql import functions as F

    from pipeline import ddp
    from pipeline.gan.train import train_worker

    images = spark.read.parquet(opts.input)
    train = images.where(F.col("split") == "train")
    rejected = unusable(train, data.min_side(opts.crop) if opts.model == "srgan" else 1, opts.max_pixels).cache()
    n_rows, n_bad = train.count(), rejected.count()
    n_train = n_rows - n_bad
    if n_train == 0:
        raise PipelineError(f"--input {opts.input}: the train split has no image to train on "
                            f"({n_rows} rows, {n_bad} rejected)")
    if n_bad:
        log.warning("%d of %d training rows cannot be trained on; they go to %s/rejected", n_bad, n_rows,
                    opts.output)
    cfg = worker_config(opts, max(1, n_train // opts.batch_size), options.threads_per_process(spark, opts))
    resume = resume_point(opts, cfg, n_train, record)
    log.info("%s", resume.why)
    record.metrics["resumed_from_step"] = resume.done
    cfg = dataclasses.replace(cfg, resume=resume.checkpoint is not None)
    result = ddp.launch(spark, train_worker, cfg, opts.num_processes, options.local_mode(spark, opts),
                        opts.use_gpu == "on") or {}
    log.info("training finished: %s", result)
    return write_outputs(spark, opts, record, images, (n_rows, rejected), cfg)


def unusable(train, min_side: int, max_pixels: int):
    """The training rows the ranks skip (pipeline.gan.data.row_problem, applied to each row's sizes
    only: no pixel leaves the executors), as rows of the rejected contract."""
    import pyarrow as pa

    from pipeline.gan.data import row_problem
    from pipeline.schemas import REJECTED_SCHEMA, ddl

    def reasons(batches):
        for b in batches:
            cols = [b.column(k).to_pylist() for k in ("path", "height", "width", "nChannels", "nbytes")]
            rows = [(p, r) for p, h, w, c, n in zip(*cols) if (r := row_problem(h, w, c, n or 0, min_side, max_pixels))]
            yield pa.RecordBatch.from_arrays([pa.array([p for p, _ in rows], pa.string()),
                                              pa.array([r for _, r in rows], pa.string()),
                                              pa.array(["train"] * len(rows), pa.string()),
                                              pa.array([None] * len(rows), pa.string())], schema=REJECTED_SCHEMA)
    return (train.selectExpr("path", "height", "width", "nChannels", "length(data) AS nbytes")
            .mapInArrow(reasons, ddl(REJECTED_SCHEMA)))


def write_outputs(spark, opts, record, images, counted, cfg: TrainConfig) -> dict:
    from pipeline import metrics, plots

    rows = CheckpointFolder(opts.checkpoint_dir, "step").metrics()
    summary = {}
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        local = local_path(tmp)
        os.makedirs(local, exist_ok=True)
        shutil.copy(os.path.join(opts.checkpoint_dir, checkpoints.GENERATOR), os.path.join(local, "generator.pt"))
        with open(os.path.join(local, "generator.json"), "w") as fh:
            json.dump(cfg.generator_meta(), fh)
        spark.createDataFrame(metrics.metric_rows(record.run_id, rows), metrics.METRICS_DDL).coalesce(1).write.parquet(f"{tmp}/metrics")
        series = {}
        for step, name, value in rows:
            if name.startswith("loss"):
                series.setdefault(name, []).append((step, value))
        plots.curves_png(series, os.path.join(local, "loss_curves.png"), f"{opts.model} losses", xlabel="step")
        if opts.model == "dcgan":
            write_samples(spark, opts.checkpoint_dir, tmp, record.run_id)
        else:
            summary = sr_previews(images, local)
        n_rows, rejected = counted
        from pyspark.sql import functions as F

        rejected.withColumn("run_id", F.lit(record.run_id)).coalesce(1).write.parquet(f"{tmp}/rejected")
        # the rows trained on, and the rows skipped: every training row is one or the other
        record.rows_in, record.rows_rejected = n_rows, spark.read.parquet(f"{tmp}/rejected").count()
        record.rows_out = n_rows - record.rows_rejected
    last = {name: value for _, name, value in rows}
    record.metrics.update({**last, **summary})
    record.outputs = {"generator": f"{opts.output}/generator.pt", "metrics": f"{opts.output}/metrics",
                   "figures": f"{opts.output}/" + ("samples/*.png" if opts.model == "dcgan" else "sr_*.png")}
    if opts.model == "dcgan":
        record.outputs["generated"] = f"{opts.output}/generated"
    return {"model": opts.model, "steps": opts.steps, **{k: round(v, 4) for k, v in summary.items()},
            **record.outputs, "checkpoints": opts.checkpoint_dir}


def write_samples(spark, checkpoint_dir: str, tmp: str, run_id: str) -> None:
    """DCGAN's sample grids: one PNG per grid in samples/, and every sample as a row of an images
    table (generated/, split "generated", with its step) for whatever reads images next."""
    from pipeline import images as im
    from pipeline import plots
    from pipeline.schemas import GENERATED_SCHEMA, ddl

    os.makedirs(os.path.join(local_path(tmp), "samples"))
    generated = []
    for k, (step, path) in enumerate(checkpoints.samples(checkpoint_dir), 1):
        grid = np.load(path)[:, 0]
        plots.image_grid_png(list(grid), os.path.join(local_path(tmp), "samples", f"epoch_{k:03d}_step_{step:06d}.png"))
        # the images contract's row (path, origin, label, label_index, pixels), then step and split
        generated += [(f"generated:{run_id}/step_{step:06d}/{i:02d}", None, None, None, *im.array_to_row(g), step,
                       "generated") for i, g in enumerate(grid)]
    (spark.createDataFrame(generated, ddl(GENERATED_SCHEMA))
     .coalesce(1).write.partitionBy("split").parquet(f"{tmp}/generated"))


def sr_previews(images, folder: str, limit: int = 16, panels: int = 4) -> dict:
    """Y-channel PSNR/SSIM of SR and of bicubic on (up to `limit`) held-out images, and
    bicubic | SR | HR panels for the first `panels` of them."""
    from pipeline import images as im
    from pipeline import plots
    from pipeline.gan import sr

    model = sr.load_generator(folder)
    held = images.where("split = 'test'").limit(limit).collect() or images.limit(limit).collect()
    restored = sr.restore_from_hr(model, [im.to_rgb(im.row_to_array(r.height, r.width, r.nChannels, r.data))
                                          for r in held])
    scores = [sr.sr_scores(out, bicubic, hr) for hr, out, bicubic in restored]
    for k, ((hr, out, bicubic), s) in enumerate(zip(restored[:panels], scores)):
        plots.image_grid_png([bicubic, out, hr], os.path.join(folder, f"sr_comparison_{k}.png"), cols=3,
                             titles=[f"bicubic {s['psnr_bicubic']:.2f} dB", f"SR {s['psnr_sr']:.2f} dB", "HR"],
                             scale=0.5)
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]} if scores else {}
