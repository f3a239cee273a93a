"""`upscale`: batch 4x super-resolution with a trained SRResNet generator, via predict_batch_udf.

Input rows are HR images by default (`--from-hr on`): each is downscaled 4x (bicubic), super-
resolved, and scored against the original with Y-channel PSNR/SSIM (4-pixel border crop), next
to plain bicubic upscaling. With `--from-hr off` the rows are upscaled as they are.
"""

import json
import os

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, check_writable, is_local, local_path

OUT_FIELDS = ("height", "width", "nChannels", "data_latin1", "psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic")


def load_generator(folder: str, device: str = "cpu"):
    import torch

    from pipeline.gan.models import SRResNet

    with open(os.path.join(folder, "generator.json")) as fh:
        meta = json.load(fh)
    if meta["model"] != "srgan":
        raise PipelineError(f"{folder}: a {meta['model']} generator, not an SRResNet")
    model = SRResNet(meta["blocks"], meta["width"], 4, meta["bicubic_skip"])
    model.load_state_dict(torch.load(os.path.join(folder, "generator.pt"), map_location=device, weights_only=True))
    return model.eval().to(device)


def super_resolve(model, lr: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 → 4Hx4Wx3 uint8."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float().div(255).unsqueeze(0)
    with torch.no_grad():
        y = model(x.to(next(model.parameters()).device)).clamp(0, 1).mul(255).round().byte()
    return y[0].permute(1, 2, 0).cpu().numpy()


def restore_from_hr(model, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An HR RGB image → (HR cropped to a multiple of 4, SR of its bicubic 4x downscale, the same
    downscale upscaled bicubically): what SR is judged on, as SR papers do it."""
    from PIL import Image

    h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    hr = np.ascontiguousarray(rgb[:h, :w])
    lr = np.asarray(Image.fromarray(hr).resize((w // 4, h // 4), Image.Resampling.BICUBIC))
    bicubic = np.asarray(Image.fromarray(lr).resize((w, h), Image.Resampling.BICUBIC))
    return hr, super_resolve(model, lr), bicubic


def sr_scores(sr: np.ndarray, bicubic: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """Y-channel PSNR/SSIM (border-cropped) of SR and of bicubic against HR."""
    from pipeline import metrics

    return {"psnr_sr": metrics.psnr_y(sr, hr), "psnr_bicubic": metrics.psnr_y(bicubic, hr),
            "ssim_sr": metrics.ssim_y(sr, hr), "ssim_bicubic": metrics.ssim_y(bicubic, hr)}


def add_arguments(p) -> dict:
    p.add_argument("--generator", required=True, help="output folder of `train_gan --model srgan`")
    p.add_argument("--input", required=True, help="images table")
    p.add_argument("--output", required=True, help="folder for images/ (upscaled, images contract) and scores")
    p.add_argument("--from-hr", choices=("on", "off"), help="on: inputs are HR, downscale, upscale and score")
    p.add_argument("--batch-size", type=int, help="images per predict call")
    p.add_argument("--threads", type=int, help="torch threads per task")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"from_hr": "on", "batch_size": 8, "threads": 1, "mode": "error"}


def validate(opts):
    opts.generator, opts.input, opts.output = (absolute(p) for p in (opts.generator, opts.input, opts.output))
    if not os.path.isfile(os.path.join(local_path(opts.generator), "generator.pt")):
        raise PipelineError(f"--generator {opts.generator}: no generator.pt there (train one with train_gan)")
    if is_local(opts.input) and not os.path.isdir(local_path(opts.input)):
        raise PipelineError(f"--input {opts.input}: no such images table")
    check_writable(opts.output, opts.mode)


def run(spark, opts, run, _=None) -> dict:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

    from pipeline import images as im
    from pipeline.ingest import origin_of

    folder, from_hr, threads = local_path(opts.generator), opts.from_hr == "on", opts.threads

    def make_predict_fn():
        import torch

        torch.set_num_threads(threads)
        # On a GPU worker the task was given its GPU by the resource scheduler (conf/gpu.yaml).
        model = load_generator(folder, "cuda" if torch.cuda.is_available() else "cpu")

        def predict(heights, widths, channels, datas):
            out = {k: [] for k in OUT_FIELDS}
            for h, w, c, d in zip(*map(np.atleast_1d, (heights, widths, channels, datas))):
                img = im.to_rgb(im.row_to_array(int(h), int(w), int(c), d))
                if from_hr:
                    hr, sr, bicubic = restore_from_hr(model, img)
                    scores = sr_scores(sr, bicubic, hr)
                else:
                    sr, scores = super_resolve(model, img), dict.fromkeys(OUT_FIELDS[4:], np.nan)
                rh, rw, rc, _, data = im.array_to_row(sr)
                out["height"].append(rh)
                out["width"].append(rw)
                out["nChannels"].append(rc)
                # predict_batch_udf returns no binary type: bytes travel as a latin-1 string and
                # Spark's encode(..., 'ISO-8859-1') turns them back into the same bytes.
                out["data_latin1"].append(data.decode("latin-1"))
                for k in OUT_FIELDS[4:]:
                    out[k].append(scores[k])
            return {k: np.array(v, dtype=object if k == "data_latin1" else None) for k, v in out.items()}
        return predict

    rtype = StructType([StructField(k, IntegerType() if k in ("height", "width", "nChannels") else
                                    StringType() if k == "data_latin1" else DoubleType()) for k in OUT_FIELDS])
    sr_udf = predict_batch_udf(make_predict_fn, return_type=rtype, batch_size=opts.batch_size)
    images = spark.read.parquet(opts.input)
    keep = [c for c in ("path", "label", "label_index", "split") if c in images.columns]
    out = (images.withColumn("sr", sr_udf("height", "width", "nChannels", "data"))
           .select(*keep, F.udf(origin_of)("path").alias("origin"), "sr.height", "sr.width", "sr.nChannels",
                   F.lit(16).alias("mode"), F.encode("sr.data_latin1", "ISO-8859-1").alias("data"),
                   "sr.psnr_sr", "sr.psnr_bicubic", "sr.ssim_sr", "sr.ssim_bicubic"))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(opts.batch_size * 4))
    with atomic_output(spark, opts.output, run, opts.mode) as tmp:
        writer = out.write.partitionBy("split") if "split" in keep else out.write  # the images layout
        writer.parquet(f"{tmp}/images")
        written = spark.read.parquet(f"{tmp}/images")
        scores = written.select(*[F.avg(c).alias(c) for c in OUT_FIELDS[4:]]).first().asDict()
        run.rows_in, run.rows_out, run.rows_rejected = images.count(), written.count(), 0
        run.check_counts()
    run.metrics = {k: v for k, v in scores.items() if v is not None}
    run.outputs = {"images": f"{opts.output}/images"}
    return {"rows": run.rows_out, **{k: round(v, 4) for k, v in run.metrics.items()}, **run.outputs}
