"""`upscale`: batch 4x super-resolution of an images table with a trained SRResNet generator.

Input rows are HR images by default (`--from-hr on`): each is downscaled 4x (bicubic), super-
resolved, and scored against the original with Y-channel PSNR/SSIM (4-pixel border crop), next
to plain bicubic upscaling. With `--from-hr off` the rows are upscaled as they are. The work
runs in Spark tasks through predict_batch_udf, each on the GPU Spark assigned to it (see
`pipeline.ddp.task_device`; conf/gpu.yaml shares a GPU between several tasks), with batched,
tiled inference from `pipeline.gan.sr`.
"""

import json
import os

import numpy as np

from pipeline import options
from pipeline.errors import PipelineError
from pipeline.gan.config import DEFAULT_TILE, SCALE
from pipeline.images import MAX_PIXELS
from pipeline.io import Files, absolute, atomic_output, local_path
from pipeline.schemas import SR_SCORES
from pipeline.workers import skip_zip_rereads

SCORES = SR_SCORES  # the output table is UPSCALED_SCHEMA
OUT_FIELDS = ("height", "width", "nChannels", "data_latin1", *SCORES, "reason")  # what the inference UDF returns
# --from-hr on scores SR against HR on the Y channel after a 4-pixel border crop, with an 11x11 SSIM
# window: an HR image needs 4 + 11 + 4 pixels a side, so 20 once cut to a multiple of 4.
MIN_HR_SIDE = 20


def add_arguments(p) -> dict:
    p.add_argument("--generator", required=True, help="output folder of `train_gan --model srgan`")
    p.add_argument("--input", required=True, help="images table")
    defaults = options.add_output(p, "folder for images/ (upscaled, images contract) and scores")
    p.add_argument("--from-hr", choices=("on", "off"), help="on: inputs are HR, downscale, upscale and score")
    p.add_argument("--batch-size", type=int, help="images per predict call, and LR tiles per forward pass")
    p.add_argument("--tile", type=int, help="LR tile side in pixels (0: whole images); bounds GPU memory")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="bf16 autocast on GPUs, or fp32 (CPUs: fp32)")
    p.add_argument("--threads", type=int, help="torch threads per task")
    p.add_argument("--split", help="only the rows of this split, e.g. test (default: every row)")
    p.add_argument("--max-pixels", type=int, help="larger outputs are rejected rows (bounds a task's memory)")
    return {**defaults, "split": None, "max_pixels": MAX_PIXELS, "from_hr": "on", "batch_size": 8, "tile": DEFAULT_TILE, "precision": "bf16",
            "threads": 1}


def validate(opts):
    opts.generator = absolute(opts.generator)
    folder = local_path(opts.generator)
    if not all(os.path.isfile(os.path.join(folder, f)) for f in ("generator.pt", "generator.json")):
        raise PipelineError(f"--generator {opts.generator}: no generator.pt/.json there (train one with train_gan)")
    with open(os.path.join(folder, "generator.json")) as fh:
        kind = json.load(fh)["model"]
    if kind != "srgan":
        raise PipelineError(f"--generator {opts.generator}: a {kind} generator, not an SRResNet")
    from pipeline.safety import load_tensors

    load_tensors(os.path.join(folder, "generator.pt"), "--generator")  # refused here, not in every task
    options.positive(opts, "batch_size", "threads", "max_pixels")
    if opts.tile < 0:
        raise PipelineError(f"--tile {opts.tile}: expected 0 (whole images) or a tile side in LR pixels")
    opts.input = options.input_table(opts.input)
    options.output(opts)


def problem(h: int, w: int, from_hr: bool, max_pixels: int) -> str | None:
    """Why an input of h x w pixels cannot be upscaled (a rejected row's reason), or None."""
    if from_hr and min(h, w) < MIN_HR_SIDE:
        return f"image {h}x{w} is too small: --from-hr on needs at least {MIN_HR_SIDE}x{MIN_HR_SIDE} to score"
    out = h * w if from_hr else h * w * SCALE * SCALE
    if out > max_pixels:
        return f"image too large: its {out:,}-pixel output is over --max-pixels {max_pixels:,}"
    return None


def make_predict_fn(folder: str, from_hr: bool, threads: int, tile: int, batch: int, precision: str,
                    max_pixels: int = MAX_PIXELS):
    """predict_batch_udf's factory: runs once per Python worker, which may serve many tasks."""
    import torch

    from pipeline import ddp
    from pipeline import images as im
    from pipeline.gan import sr

    skip_zip_rereads()

    torch.set_num_threads(threads)
    generators = {}  # device → model: a reused worker may next run a task Spark gave another GPU
    options = {"tile": tile, "batch": batch, "precision": precision}

    def predict(heights, widths, channels, datas):
        device = ddp.task_device()  # this task's GPU, asked per batch (see above)
        if device not in generators:
            generators[device] = sr.load_generator(folder, device)
        model = generators[device]
        images, reasons = [], []
        for h, w, c, d in zip(*map(np.atleast_1d, (heights, widths, channels, datas))):  # 1 row: 0-d arrays
            try:
                reason = problem(int(h), int(w), from_hr, max_pixels)
                arr = None if reason else im.to_rgb(im.row_to_array(int(h), int(w), int(c), d))
            except (im.DecodeError, TypeError, ValueError) as exc:
                reason, arr = f"undecodable image row: {exc}", None
            reasons.append(reason)
            if arr is not None:
                images.append(arr)
        if from_hr:
            results = iter([(out, sr.sr_scores(out, bicubic, hr))
                            for hr, out, bicubic in sr.restore_from_hr(model, images, **options)])
        else:
            results = iter([(out, dict.fromkeys(SCORES, np.nan)) for out in sr.super_resolve(model, images, **options)])
        columns = {k: [] for k in OUT_FIELDS}
        for reason in reasons:
            if reason:
                values = (0, 0, 0, "", *(np.nan for _ in SCORES), reason)
            else:
                out, scores = next(results)
                rh, rw, rc, _, data = im.array_to_row(out)
                # predict_batch_udf returns no binary type: bytes travel as a latin-1 string and
                # Spark's encode(..., 'ISO-8859-1') turns them back into the same bytes.
                values = (rh, rw, rc, data.decode("latin-1"), *(scores[k] for k in SCORES), None)
            for key, value in zip(OUT_FIELDS, values):
                columns[key].append(value)
        return {k: np.array(v, dtype=object if k in ("data_latin1", "reason") else None) for k, v in columns.items()}
    return predict


def run(spark, opts, record, _=None) -> dict:
    from functools import partial

    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

    factory = partial(make_predict_fn, local_path(opts.generator), opts.from_hr == "on", opts.threads, opts.tile,
                      opts.batch_size, opts.precision, opts.max_pixels)
    rtype = StructType([StructField(k, IntegerType() if k in ("height", "width", "nChannels") else
                                    StringType() if k in ("data_latin1", "reason") else DoubleType())
                        for k in OUT_FIELDS])
    sr_udf = predict_batch_udf(factory, return_type=rtype, batch_size=opts.batch_size)
    images = spark.read.parquet(opts.input)
    if opts.split:
        if "split" not in images.columns:
            raise PipelineError(f"--split {opts.split}: {opts.input} has no split column")
        images = images.where(F.col("split") == opts.split)
    keep = [c for c in ("path", "label", "label_index", "split") if c in images.columns]
    # the input's origin (what Spark's image source gave); tables without one (generated samples) use the path
    origin = F.coalesce(F.col("origin"), F.col("path")) if "origin" in images.columns else F.col("path")
    out = (images.withColumn("sr", sr_udf("height", "width", "nChannels", "data"))
           .select(*keep, origin.alias("origin"), "sr.height", "sr.width", "sr.nChannels",
                   F.lit(16).alias("mode"), F.encode("sr.data_latin1", "ISO-8859-1").alias("data"),
                   *(f"sr.{k}" for k in SCORES), "sr.reason"))
    from pipeline.session import set_conf

    set_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", opts.batch_size * 4)  # until the job ends
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        # Written once with the reason column, then split: the network runs over each image once.
        out.write.parquet(f"{tmp}/_staged")
        staged = spark.read.parquet(f"{tmp}/_staged")
        ok = staged.where(F.col("reason").isNull()).drop("reason")
        (ok.write.partitionBy("split") if "split" in keep else ok.write).parquet(f"{tmp}/images")  # the images layout
        (staged.where(F.col("reason").isNotNull())
         .select("path", "reason", F.lit("upscale").alias("stage"), F.lit(record.run_id).alias("run_id"))
         .coalesce(1).write.parquet(f"{tmp}/rejected"))
        written = spark.read.parquet(f"{tmp}/images")
        scores = written.select(*[F.avg(c).alias(c) for c in SCORES]).first().asDict()
        record.rows_in, record.rows_out = images.count(), written.count()
        record.rows_rejected = spark.read.parquet(f"{tmp}/rejected").count()
        Files().delete(f"{tmp}/_staged")
    record.metrics = {k: v for k, v in scores.items() if v is not None}
    record.outputs = {"images": f"{opts.output}/images", "rejected": f"{opts.output}/rejected"}
    return {"rows": record.rows_out, **{k: round(v, 4) for k, v in record.metrics.items()}, **record.outputs}
