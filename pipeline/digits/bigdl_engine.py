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

log = logging.getLogger(__name__)

MODEL_FILE = "lenet5.bigdl"  # data.MODEL_FILES


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


def check_batch(spark, batch_size: int) -> None:
    check_batch_cores(batch_size, spark.sparkContext.defaultParallelism)


def check_batch_cores(batch_size: int, cores: int) -> None:
    """The job's validate runs this with the cores the configuration plans (pipeline/cores.py),
    before Spark starts; train runs it again with the cores Spark really has."""
    if batch_size % cores:
        lo = max(cores, batch_size // cores * cores)
        raise PipelineError(f"--batch-size {batch_size} is not a multiple of the {cores} cores Spark runs on "
                            f"(BigDL splits each batch evenly over them); use e.g. {lo} or {lo + cores}")


def train(spark, opts, run_id: str, train_df, test_df, n_train: int, classes: int, resumed=None):
    """Train from scratch or from `resumed` (folder, epoch); returns (model, [(epoch, name, value)])."""
    from bigdl.dllib.nn.criterion import ClassNLLCriterion
    from bigdl.dllib.nn.layer import Model
    from bigdl.dllib.optim.optimizer import (SGD, Adam, EveryEpoch, Loss, MaxEpoch, OptimMethod, Optimizer,
                                             Top1Accuracy, TrainSummary, ValidationSummary)

    check_batch(spark, opts.batch_size)
    cores = spark.sparkContext.defaultParallelism
    train_rdd = sample_rdd(train_df, opts.augment).repartition(cores).cache()
    test_rdd = sample_rdd(test_df).repartition(cores).cache()

    if resumed:
        folder, start = resumed
        model, optim = Model.loadModel(os.path.join(folder, "model")), OptimMethod.load(os.path.join(folder, "optim"))
    else:
        model, start = lenet5(classes), 0
        decay = data.lr_decay(opts.epochs, n_train, opts.augment, opts.batch_size)
        optim = (SGD(learningrate=opts.learning_rate, learningrate_decay=decay, momentum=0.9, dampening=0.0,
                     nesterov=True) if opts.optimizer == "sgd"
                 else Adam(learningrate=opts.learning_rate, learningrate_decay=decay))
    logdir = os.path.join(opts.checkpoint_dir, "summaries")
    optimizer = Optimizer.create(model=model, training_set=train_rdd, criterion=ClassNLLCriterion(),
                                 end_trigger=MaxEpoch(max(start, 1)), batch_size=opts.batch_size, optim_method=optim)
    optimizer.set_validation(batch_size=opts.batch_size, val_rdd=test_rdd, trigger=EveryEpoch(),
                             val_method=[Top1Accuracy(), Loss(ClassNLLCriterion())])
    train_summary, val_summary = TrainSummary(logdir, run_id), ValidationSummary(logdir, run_id)
    optimizer.set_train_summary(train_summary)
    optimizer.set_val_summary(val_summary)

    history = []
    samples = n_train * (1 + opts.augment)
    iters = -(-samples // opts.batch_size)
    for epoch in range(start + 1, opts.epochs + 1):
        optimizer.set_end_when(MaxEpoch(epoch))
        t0 = time.perf_counter()
        model = optimizer.optimize()
        seconds = time.perf_counter() - t0
        losses = [v for _, v, _ in train_summary.read_scalar("Loss")]
        values = {"train_loss": float(np.mean(losses[-iters:])) if losses else float("nan"),
                  "val_loss": float(val_summary.read_scalar("Loss")[-1][1]),
                  "val_top1": float(val_summary.read_scalar("Top1Accuracy")[-1][1]),
                  "samples_per_s": samples / seconds}
        history += data.log_epoch(epoch, opts.epochs, values)
        folder = data.new_checkpoint(opts.checkpoint_dir, epoch)
        model.saveModel(os.path.join(folder, "model"), over_write=True)
        optim.save(os.path.join(folder, "optim"), True)
        data.seal(folder)
    train_rdd.unpersist()
    test_rdd.unpersist()
    return model, history


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
