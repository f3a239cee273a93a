"""Handwritten-digit recognition: LeNet-5 trained with BigDL's distributed optimizer on executors.

Reads an images table (train/test splits), trains with synchronous mini-batch SGD/Adam across
the executors (BigDL's DistriOptimizer: every iteration, each partition computes gradients on
its slice of the batch and BigDL all-reduces them through the block manager), validates every
epoch, checkpoints every epoch, and writes the model, predictions, metrics and PNGs.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import time
import zlib

import numpy as np

from pipeline import images as im
from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, check_writable, is_local, local_path

log = logging.getLogger(__name__)

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (of x/255), the usual LeNet normalisation
OPTIMIZERS = ("sgd", "adam")
PREDICTIONS_DDL = "path string, label string, label_index int, prediction int, probability array<float>, split string"


# ---------------------------------------------------------------- model and data

def lenet5(classes: int = 10):
    """LeNet-5 (LeCun et al., 1998): two 5x5 conv/pool stages, then 120-84-classes, tanh."""
    from bigdl.dllib.nn.layer import (Linear, LogSoftMax, ReLU, Reshape, Sequential, SpatialConvolution,
                                      SpatialMaxPooling)

    model = Sequential()
    model.add(Reshape([1, 28, 28]))
    model.add(SpatialConvolution(1, 6, 5, 5, 1, 1, 2, 2)).add(ReLU()).add(SpatialMaxPooling(2, 2, 2, 2))
    model.add(SpatialConvolution(6, 16, 5, 5)).add(ReLU()).add(SpatialMaxPooling(2, 2, 2, 2))
    model.add(Reshape([16 * 5 * 5]))
    model.add(Linear(16 * 5 * 5, 120)).add(ReLU())
    model.add(Linear(120, 84)).add(ReLU())
    model.add(Linear(84, classes)).add(LogSoftMax())
    return model


def to_input(height: int, width: int, n_channels: int, data: bytes) -> np.ndarray:
    """An image row → the 1x28x28 float32 LeNet input (gray, 28x28, normalised)."""
    arr = im.row_to_array(height, width, n_channels, data)
    if n_channels == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] == 3:
        arr = (arr @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)[:, :, None]
    arr = im.resize_array(arr[:, :, 0], (28, 28))
    return ((arr.astype(np.float32) / 255.0 - MEAN) / STD)[None, :, :]


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a CxHxW input by (dy, dx) pixels, filling with the background value."""
    out = np.full_like(x, x.min())
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def sample_rdd(df, augment: int = 0):
    """DataFrame of image rows → RDD[Sample] with 1-based labels (ClassNLLCriterion's convention).

    `augment` adds that many copies of each image shifted by up to 2 pixels, seeded by its path
    so a rerun (or a resumed run) sees the same training set.
    """
    from bigdl.dllib.utils.common import Sample

    def convert(rows):
        for r in rows:
            x = to_input(r.height, r.width, r.nChannels, r.data)
            label = np.array([r.label_index + 1], dtype=np.float32)
            yield Sample.from_ndarray(x, label)
            rng = np.random.default_rng(zlib.crc32(r.path.encode()))
            for dy, dx in rng.integers(-2, 3, size=(augment, 2)):
                yield Sample.from_ndarray(shifted(x, int(dy), int(dx)), label)
    return df.select("path", "height", "width", "nChannels", "data", "label_index").rdd.mapPartitions(convert)


# ---------------------------------------------------------------- options

def add_arguments(p: argparse.ArgumentParser) -> dict:
    p.add_argument("--input", required=True, help="images table (train and test splits), e.g. out/mnist/images")
    p.add_argument("--output", required=True, help="folder for model/, predictions/, metrics/ and PNGs")
    p.add_argument("--epochs", type=int, help="epochs to train in total (a resumed run counts the earlier ones)")
    p.add_argument("--batch-size", type=int, help="global batch size; a multiple of the total executor cores")
    p.add_argument("--learning-rate", type=float, help="initial learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (Nesterov momentum 0.9) or adam")
    p.add_argument("--augment", type=int, help="extra copies of each training image, shifted by up to 2 px")
    p.add_argument("--checkpoint-dir", help="where epoch checkpoints go (default: OUTPUT.checkpoints)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"epochs": 6, "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam", "augment": 2,
            "checkpoint_dir": None,
            "resume": False, "mode": "error"}


def validate(opts) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(opts, name) < 1:
            raise PipelineError(f"--{name.replace('_', '-')} {getattr(opts, name)}: expected a positive number")
    if opts.learning_rate <= 0:
        raise PipelineError(f"--learning-rate {opts.learning_rate}: expected a positive number")
    opts.input, opts.output = absolute(opts.input), absolute(opts.output)
    opts.checkpoint_dir = absolute(opts.checkpoint_dir or f"{opts.output}.checkpoints")
    if is_local(opts.input) and not os.path.isdir(local_path(opts.input)):
        raise PipelineError(f"--input {opts.input}: no such images table (run `sparkgan ingest` first)")
    if opts.resume and not latest_checkpoint(opts.checkpoint_dir):
        raise PipelineError(f"--resume: no checkpoint in {opts.checkpoint_dir}")
    check_writable(opts.output, opts.mode)


def latest_checkpoint(folder: str) -> tuple[str, str, int] | None:
    """(model file, optim-method file, epoch) of the newest complete checkpoint, or None."""
    done = sorted(glob.glob(os.path.join(local_path(folder), "epoch-*", "DONE")))
    if not done:
        return None
    d = os.path.dirname(done[-1])
    return os.path.join(d, "model"), os.path.join(d, "optim"), int(os.path.basename(d).split("-")[1])


def _save_checkpoint(folder: str, epoch: int, model, optim) -> None:
    """Write model + optimizer state, then a DONE marker: a checkpoint without it is ignored."""
    d = os.path.join(local_path(folder), f"epoch-{epoch:04d}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model.saveModel(os.path.join(d, "model"), over_write=True)
    optim.save(os.path.join(d, "optim"), True)
    open(os.path.join(d, "DONE"), "w").close()
    for old in sorted(glob.glob(os.path.join(local_path(folder), "epoch-*")))[:-2]:
        shutil.rmtree(old, ignore_errors=True)  # keep the last two


# ---------------------------------------------------------------- the job

def load_splits(spark, path: str):
    from pyspark.sql import functions as F

    df = spark.read.parquet(path)
    missing = {"data", "height", "width", "nChannels", "label_index", "split"} - set(df.columns)
    if missing:
        raise PipelineError(f"--input {path}: not an images table (missing {', '.join(sorted(missing))})")
    train, test = df.where(F.col("split") == "train"), df.where(F.col("split") == "test")
    labelled = df.where(F.col("label_index").isNotNull())
    stats = labelled.groupBy("split").agg(F.count("*").alias("n"), F.max("label_index").alias("top")).collect()
    by_split = {r.split: r for r in stats}
    if "train" not in by_split or "test" not in by_split:
        raise PipelineError(f"--input {path}: needs labelled rows in both train and test splits "
                            f"(found {', '.join(sorted(by_split)) or 'none'})")
    classes = 1 + max(r.top for r in stats)
    return train.where(F.col("label_index").isNotNull()), test.where(F.col("label_index").isNotNull()), \
        by_split["train"].n, by_split["test"].n, classes


def run(spark, opts, run, _=None) -> dict:
    from bigdl.dllib.nn.criterion import ClassNLLCriterion
    from bigdl.dllib.nn.layer import Model
    from bigdl.dllib.optim.optimizer import (SGD, Adam, EveryEpoch, Loss, MaxEpoch, OptimMethod, Optimizer,
                                             Top1Accuracy, TrainSummary, ValidationSummary)

    cores = spark.sparkContext.defaultParallelism
    if opts.batch_size % cores:
        lo = max(cores, opts.batch_size // cores * cores)
        raise PipelineError(f"--batch-size {opts.batch_size} is not a multiple of the {cores} cores Spark runs on "
                            f"(BigDL splits each batch evenly over them); use e.g. {lo} or {lo + cores}")
    train, test, n_train, n_test, classes = load_splits(spark, opts.input)
    train_rdd = sample_rdd(train, opts.augment).repartition(cores).cache()
    test_rdd = sample_rdd(test).repartition(cores).cache()

    resumed = latest_checkpoint(opts.checkpoint_dir) if opts.resume else None
    if resumed:
        model, optim, start = Model.loadModel(resumed[0]), OptimMethod.load(resumed[1]), resumed[2]
        log.info("resuming from %s (epoch %d done)", os.path.dirname(resumed[0]), start)
    else:
        model, start = lenet5(classes), 0
        decay = 9.0 / (opts.epochs * n_train * (1 + opts.augment) / opts.batch_size)  # lr falls to 1/10 by the end
        optim = (SGD(learningrate=opts.learning_rate, learningrate_decay=decay, momentum=0.9, dampening=0.0,
                     nesterov=True) if opts.optimizer == "sgd"
                 else Adam(learningrate=opts.learning_rate, learningrate_decay=decay))
        shutil.rmtree(local_path(opts.checkpoint_dir), ignore_errors=True)
    if start >= opts.epochs:
        log.info("checkpoint already has %d epochs; evaluating only", start)

    logdir = os.path.join(local_path(opts.checkpoint_dir), "summaries")
    optimizer = Optimizer.create(model=model, training_set=train_rdd, criterion=ClassNLLCriterion(),
                                 end_trigger=MaxEpoch(max(start, 1)), batch_size=opts.batch_size, optim_method=optim)
    optimizer.set_validation(batch_size=opts.batch_size, val_rdd=test_rdd, trigger=EveryEpoch(),
                             val_method=[Top1Accuracy(), Loss(ClassNLLCriterion())])
    train_summary, val_summary = TrainSummary(logdir, run.run_id), ValidationSummary(logdir, run.run_id)
    optimizer.set_train_summary(train_summary)
    optimizer.set_val_summary(val_summary)

    history = []  # (epoch, name, value)
    for epoch in range(start + 1, opts.epochs + 1):
        optimizer.set_end_when(MaxEpoch(epoch))
        t0 = time.perf_counter()
        model = optimizer.optimize()
        seconds = time.perf_counter() - t0
        losses = [v for _, v, _ in train_summary.read_scalar("Loss")]
        iters = -(-n_train * (1 + opts.augment) // opts.batch_size)
        train_loss = float(np.mean(losses[-iters:])) if losses else float("nan")
        val_acc = float(val_summary.read_scalar("Top1Accuracy")[-1][1])
        val_loss = float(val_summary.read_scalar("Loss")[-1][1])
        rate = n_train * (1 + opts.augment) / seconds
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val top-1 %.4f  %.0f samples/s",
                 epoch, opts.epochs, train_loss, val_loss, val_acc, rate)
        history += [(epoch, "train_loss", train_loss), (epoch, "val_loss", val_loss),
                    (epoch, "val_top1", val_acc), (epoch, "samples_per_s", rate)]
        _save_checkpoint(opts.checkpoint_dir, epoch, model, optim)

    return write_outputs(spark, opts, run, model, train, test, classes, history, n_train + n_test)


def predict(spark, model, df, batch_size: int = 256):
    """Batch inference on executors: (path, label, label_index, prediction, probability, split)."""
    from pyspark.sql import Row

    keyed = df.select("path", "label", "label_index", "split", "height", "width", "nChannels", "data")
    rdd = keyed.rdd.cache()
    from bigdl.dllib.utils.common import Sample

    samples = rdd.map(lambda r: Sample.from_ndarray(to_input(r.height, r.width, r.nChannels, r.data),
                                                    np.array([1.0], dtype=np.float32)))
    out = model.predict(samples, batch_size=batch_size)  # a map over samples: same order as `rdd`

    def row(pair):
        r, logp = pair
        p = np.exp(np.asarray(logp, dtype=np.float64))
        return Row(path=r.path, label=r.label, label_index=r.label_index, prediction=int(np.argmax(p)),
                   probability=[float(v) for v in p], split=r.split)
    return spark.createDataFrame(rdd.zip(out).map(row), PREDICTIONS_DDL)


def write_outputs(spark, opts, run, model, train, test, classes, history, rows_in) -> dict:
    from pyspark.sql import functions as F

    from pipeline import metrics, plots

    labels = [str(i) for i in range(classes)]
    with atomic_output(spark, opts.output, run.run_id, opts.mode) as tmp:
        preds = predict(spark, model, test.unionByName(train), opts.batch_size)
        preds.write.partitionBy("split").parquet(f"{tmp}/predictions")
        preds = spark.read.parquet(f"{tmp}/predictions")
        matrix = metrics.confusion(preds.where(F.col("split") == "test"), classes=classes)
        top1 = metrics.accuracy(matrix)
        train_top1 = metrics.accuracy(metrics.confusion(preds.where(F.col("split") == "train"), classes=classes))
        final = [(opts.epochs, "test_top1", top1), (opts.epochs, "train_top1", train_top1)]
        spark.createDataFrame(metrics.metric_rows(run.run_id, history + final), metrics.METRICS_DDL) \
            .coalesce(1).write.parquet(f"{tmp}/metrics")
        local = local_path(tmp)
        os.makedirs(local, exist_ok=True)
        model.saveModel(os.path.join(local, "model", "lenet5.bigdl"), over_write=True)
        plots.confusion_png(matrix, labels, os.path.join(local, "confusion_matrix.png"),
                            f"LeNet-5 (BigDL), test top-1 {top1:.4f}")
        series = {"train loss": [], "val loss": [], "val top-1": []}
        for epoch, name, value in history:
            key = {"train_loss": "train loss", "val_loss": "val loss", "val_top1": "val top-1"}.get(name)
            if key:
                series[key].append((epoch, value))
        plots.curves_png(series, os.path.join(local, "training_curves.png"), "LeNet-5 on BigDL")
        run.rows_in = rows_in
        run.rows_out = preds.count()
        run.rows_rejected = 0
        run.check_counts()
    run.metrics = {"test_top1": top1, "train_top1": train_top1, "epochs": opts.epochs,
                   **{f"{n}_last": v for _, n, v in history[-4:]}}
    run.outputs = {k: f"{opts.output}/{k}" for k in ("model", "predictions", "metrics")}
    run.outputs["figures"] = f"{opts.output}/confusion_matrix.png, training_curves.png"
    return {"test_top1": round(top1, 4), "train_top1": round(train_top1, 4), "epochs": opts.epochs,
            "checkpoints": opts.checkpoint_dir, **run.outputs}

