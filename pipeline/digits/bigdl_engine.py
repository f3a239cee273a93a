"""The BigDL engine: LeNet-5 trained with BigDL's distributed optimizer on the executors.

Synchronous mini-batch Adam/SGD across the executors (BigDL's DistriOptimizer: every iteration,
each partition computes gradients on its slice of the batch and BigDL all-reduces them through the
block manager), validation every epoch, a checkpoint (model + optimizer state) every epoch.
Spark 3.5 only: BigDL's jars are Scala 2.12 builds.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from pipeline.digits import data
from pipeline.errors import PipelineError
from pipeline.training_run import Checkpoint, MetricLog

log = logging.getLogger(__name__)

MODEL_FILE = "lenet5.bigdl"  # data.MODEL_FILES
needs_bigdl = True


def lenet5(classes: int = 10):
    """LeNet-5 (LeCun et al., 1998): two 5x5 conv/max-pool stages, then 120-84-classes, ReLU."""
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


def sample_rdd(df, copies: int = 0):
    """Image rows → RDD[Sample] with 1-based labels (ClassNLLCriterion's convention)."""
    from bigdl.dllib.utils.common import Sample

    def convert(rows):
        for r in rows:
            label = np.array([r.label_index + 1], dtype=np.float32)
            for x in data.with_copies(r.path, data.to_input(r.height, r.width, r.nChannels, r.data), copies):
                yield Sample.from_ndarray(x, label)
    return df.select("path", *data.PIXEL_COLUMNS, "label_index").rdd.mapPartitions(convert)


def check(opts) -> None:
    from pipeline.cores import job_cores
    from pipeline.session import bigdl_missing

    if reason := bigdl_missing():
        raise PipelineError(f"--engine bigdl: {reason}; use --engine torch")
    if cores := job_cores(opts, "train_digits"):  # the cores the profile plans, before Spark starts
        check_batch_cores(opts.batch_size, cores)


def trusted(checkpoint: Checkpoint) -> None:
    """BigDL's loaders have no safe mode: only a checkpoint no one else can write is loaded."""
    from pipeline.safety import check_private

    check_private(checkpoint.folder, "--resume: the checkpoint")


def check_model_file(path: str) -> None:
    from pipeline.io import is_local
    from pipeline.safety import check_private

    if is_local(path):
        check_private(os.path.dirname(path), "--model")


def check_batch(spark, batch_size: int) -> None:
    check_batch_cores(batch_size, spark.sparkContext.defaultParallelism)


def check_batch_cores(batch_size: int, cores: int) -> None:
    """The job's validate runs this with the cores the configuration plans (pipeline/cores.py),
    before Spark starts; train runs it again with the cores Spark really has."""
    if batch_size % cores:
        lo = max(cores, batch_size // cores * cores)
        raise PipelineError(f"--batch-size {batch_size} is not a multiple of the {cores} cores Spark runs on "
                            f"(BigDL splits each batch evenly over them); use e.g. {lo} or {lo + cores}")


def train(spark, plan, splits) -> None:
    """From scratch or from plan.resume; each epoch ends in a sealed checkpoint and its metric rows."""
    from bigdl.dllib.nn.criterion import ClassNLLCriterion
    from bigdl.dllib.nn.layer import Model
    from bigdl.dllib.optim.optimizer import (SGD, Adam, EveryEpoch, Loss, MaxEpoch, OptimMethod, Optimizer,
                                             Top1Accuracy, TrainSummary, ValidationSummary)

    check_batch(spark, plan.batch_size)
    cores = spark.sparkContext.defaultParallelism
    train_rdd = sample_rdd(splits.train, plan.augment).repartition(cores).cache()
    test_rdd = sample_rdd(splits.test).repartition(cores).cache()

    if plan.resume:
        folder, start = plan.resume.folder, plan.resume.done
        model, optim = Model.loadModel(os.path.join(folder, "model")), OptimMethod.load(os.path.join(folder, "optim"))
    else:
        model, start = lenet5(plan.classes), 0
        decay = data.lr_decay(plan.epochs, plan.n_train, plan.augment, plan.batch_size)
        optim = (SGD(learningrate=plan.learning_rate, learningrate_decay=decay, momentum=0.9, dampening=0.0,
                     nesterov=True) if plan.optimizer == "sgd"
                 else Adam(learningrate=plan.learning_rate, learningrate_decay=decay))
    logdir = os.path.join(plan.folder.path, "summaries")
    optimizer = Optimizer.create(model=model, training_set=train_rdd, criterion=ClassNLLCriterion(),
                                 end_trigger=MaxEpoch(max(start, 1)), batch_size=plan.batch_size, optim_method=optim)
    optimizer.set_validation(batch_size=plan.batch_size, val_rdd=test_rdd, trigger=EveryEpoch(),
                             val_method=[Top1Accuracy(), Loss(ClassNLLCriterion())])
    train_summary, val_summary = TrainSummary(logdir, plan.run_id), ValidationSummary(logdir, plan.run_id)
    optimizer.set_train_summary(train_summary)
    optimizer.set_val_summary(val_summary)

    metrics = MetricLog(plan.folder.path, start)
    samples = plan.n_train * (1 + plan.augment)
    iters = -(-samples // plan.batch_size)
    for epoch in range(start + 1, plan.epochs + 1):
        optimizer.set_end_when(MaxEpoch(epoch))
        t0 = time.perf_counter()
        model = optimizer.optimize()
        seconds = time.perf_counter() - t0
        losses = [v for _, v, _ in train_summary.read_scalar("Loss")]
        values = {"train_loss": float(np.mean(losses[-iters:])) if losses else float("nan"),
                  "val_loss": float(val_summary.read_scalar("Loss")[-1][1]),
                  "val_top1": float(val_summary.read_scalar("Top1Accuracy")[-1][1]),
                  "samples_per_s": samples / seconds}
        data.log_epoch(epoch, plan.epochs, values)
        metrics.add(epoch, **values)
        checkpoint = plan.folder.new(epoch)
        model.saveModel(os.path.join(checkpoint, "model"), over_write=True)
        optim.save(os.path.join(checkpoint, "optim"), True)
        plan.folder.seal(checkpoint)
    train_rdd.unpersist()
    test_rdd.unpersist()


def load_checkpoint(checkpoint: Checkpoint):
    from bigdl.dllib.nn.layer import Model

    return Model.loadModel(os.path.join(checkpoint.folder, "model"))


def load(path: str):
    from bigdl.dllib.nn.layer import Model

    return Model.loadModel(path)


def save(model, folder: str) -> None:
    model.saveModel(os.path.join(folder, MODEL_FILE), over_write=True)


def predict(spark, model, df, batch_size: int = 256):
    """Batch inference on executors: the predictions contract."""
    from bigdl.dllib.utils.common import Sample
    from pyspark.sql import Row

    rdd = df.select(*data.KEY_COLUMNS, *data.PIXEL_COLUMNS).rdd.cache()
    samples = rdd.map(lambda r: Sample.from_ndarray(data.to_input(r.height, r.width, r.nChannels, r.data),
                                                    np.array([1.0], dtype=np.float32)))
    out = model.predict(samples, batch_size=batch_size)  # a map over samples: same order as `rdd`

    def row(pair):
        r, logp = pair
        p = np.exp(np.asarray(logp, dtype=np.float64))
        return Row(path=r.path, label=r.label, label_index=r.label_index, prediction=int(np.argmax(p)),
                   probability=[float(v) for v in p], split=r.split)
    return spark.createDataFrame(rdd.zip(out).map(row), data.PREDICTIONS_DDL)
