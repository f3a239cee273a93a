"""What both LeNet-5 engines share: the input tensor, the shifted copies, the splits, the progress line.

Nothing here imports BigDL or torch, so either engine (and the executors that convert rows) can
use it; the Spark helpers import pyspark inside the function.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np

from pipeline import images as im
from pipeline import tracking
from pipeline.errors import PipelineError
from pipeline.schemas import PREDICTIONS_SCHEMA, ddl

log = logging.getLogger("pipeline.digits")

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (of x/255), the usual LeNet normalisation
SIZE = 28
PREDICTIONS_DDL = ddl(PREDICTIONS_SCHEMA)
KEY_COLUMNS = ("path", "label", "label_index", "split")
PIXEL_COLUMNS = ("height", "width", "nChannels", "data")
# what each engine saves in OUTPUT/model/, and so how predict_digits tells them apart
MODEL_FILES = {"lenet5.bigdl": "bigdl", "lenet5.pt": "torch"}


def to_input(height: int, width: int, n_channels: int, data: bytes) -> np.ndarray:
    """An image row → the 1x28x28 float32 LeNet input (gray, 28x28, normalised)."""
    gray = im.to_gray(im.row_to_array(height, width, n_channels, data))
    return ((im.resize_array(gray, (SIZE, SIZE)).astype(np.float32) / 255.0 - MEAN) / STD)[None, :, :]


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a CxHxW input by (dy, dx) pixels, filling with the background value."""
    out = np.full_like(x, x.min())
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def with_copies(path: str, x: np.ndarray, copies: int) -> list[np.ndarray]:
    """x and `copies` versions of it shifted by up to 2 pixels, seeded by the image's path, so a
    rerun (or a resumed run, or the other engine) sees the same training set."""
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    return [x, *(shifted(x, int(dy), int(dx)) for dy, dx in rng.integers(-2, 3, size=(copies, 2)))]


def lr_decay(epochs: int, n_train: int, copies: int, batch_size: int) -> float:
    """k of lr_t = lr / (1 + k·t) (BigDL's learningrate_decay) that brings lr to a tenth by the
    last step: it settles the last epochs."""
    return 9.0 / (epochs * n_train * (1 + copies) / batch_size)


def load_splits(spark, path: str):
    """The labelled train and test rows of an images table, counted."""
    from pyspark.sql import functions as F

    from pipeline.digits.engines import Splits

    df = spark.read.parquet(path)
    missing = {"data", "height", "width", "nChannels", "label_index", "split"} - set(df.columns)
    if missing:
        raise PipelineError(f"--input {path}: not an images table (missing {', '.join(sorted(missing))})")
    labelled = df.where(F.col("label_index").isNotNull())
    stats = labelled.groupBy("split").agg(F.count("*").alias("n"), F.max("label_index").alias("top")).collect()
    by_split = {r.split: r for r in stats}
    if "train" not in by_split or "test" not in by_split:
        raise PipelineError(f"--input {path}: needs labelled rows in both train and test splits "
                            f"(found {', '.join(sorted(by_split)) or 'none'})")
    classes = 1 + max(r.top for r in stats)
    return Splits(labelled.where(F.col("split") == "train"), labelled.where(F.col("split") == "test"),
                  by_split["train"].n, by_split["test"].n, classes)


def log_epoch(epoch: int, epochs: int, values: dict) -> list[tuple[int, str, float]]:
    """The epoch's progress line (both engines print the same one) and its metric rows."""
    log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val top-1 %.4f  %.0f samples/s", epoch, epochs,
             values["train_loss"], values["val_loss"], values["val_top1"], values["samples_per_s"])
    tracking.log_metrics(values, epoch)  # into the job's MLflow run, when tracked
    return [(epoch, name, float(value)) for name, value in values.items()]
