"""`train_digits`: LeNet-5 digit recognition on an images table, with the BigDL or the torch engine.

Both engines read the same table, train the same network with the same optimizer and schedule
(each with the batch size and learning rate that suit it),
checkpoint every epoch to OUTPUT.checkpoints/epoch-NNNN (complete once it holds DONE), and end in
the same outputs: the model, predictions for every labelled row, metrics, confusion matrix and
training-curve PNGs, and a runs row.
"""

from __future__ import annotations

import logging
import os

from pipeline import options
from pipeline.digits import data, engines
from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, local_path
from pipeline.training_run import CheckpointFolder, data_version

log = logging.getLogger(__name__)

ENGINES = tuple(engines.ENGINES)
OPTIMIZERS = ("sgd", "adam")


def add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="images table (train and test splits), e.g. out/mnist/images")
    defaults = options.add_output(p, "folder for model/, predictions/, metrics/ and PNGs")
    p.add_argument("--engine", choices=ENGINES,
                   help="bigdl (BigDL's DistriOptimizer, Spark 3.5) or torch (DDP through TorchDistributor, "
                        "any stack); default: bigdl where BigDL is installed, else torch")
    p.add_argument("--epochs", type=int, help="epochs to train in total (a resumed run counts the earlier ones)")
    p.add_argument("--batch-size", type=int, help="global batch size (bigdl: a multiple of the total executor "
                                                  "cores; torch: of --num-processes)")
    p.add_argument("--learning-rate", type=float, help="initial learning rate")
    # --batch-size and --learning-rate default to the engine's own (ENGINE_DEFAULTS)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (Nesterov momentum 0.9) or adam")
    p.add_argument("--augment", type=int, help="extra copies of each training image, shifted by up to 2 px")
    p.add_argument("--checkpoint-dir", help="where epoch checkpoints go (default: OUTPUT.checkpoints)")
    defaults.update(options.add_resume(p, "the newest complete epoch checkpoint"))
    defaults.update(options.add_distributor(p))
    return {**defaults, "engine": None, "epochs": 6, "batch_size": None, "learning_rate": None, "optimizer": "adam",
            "augment": 2, "checkpoint_dir": None}


# What reaches 97 % held-out top-1 in the least time on each engine (bench/bigdl_sweep.py,
# bench/digits.py): BigDL pays a Spark job per iteration, so it wants few, large batches (at 32
# it takes 3-4x as long); the torch engine's iterations are cheap and small batches learn faster.
ENGINE_DEFAULTS = {"bigdl": {"batch_size": 128, "learning_rate": 0.004},
                   "torch": {"batch_size": 32, "learning_rate": 0.001}}


def default_engine() -> str:
    from pipeline.session import bigdl_missing

    return "bigdl" if bigdl_missing() is None else "torch"


def validate(opts) -> None:
    opts.engine = opts.engine or default_engine()
    for name, value in ENGINE_DEFAULTS[opts.engine].items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    options.positive(opts, "epochs", "batch_size")
    if opts.learning_rate <= 0:
        raise PipelineError(f"--learning-rate {opts.learning_rate}: expected a positive number")
    engines.engine(opts.engine).check(opts)
    opts.input = options.input_table(opts.input, hint=" (run `sparkgan ingest` first)")
    opts.checkpoint_dir = local_path(absolute(opts.checkpoint_dir or f"{absolute(opts.output)}.checkpoints"))
    if opts.resume == "on" and not CheckpointFolder(opts.checkpoint_dir, "epoch").latest():
        raise PipelineError(f"--resume: no checkpoint in {opts.checkpoint_dir}")
    options.output(opts)


def uses_bigdl(opts) -> bool:
    return engines.engine(opts.engine).needs_bigdl


def fingerprint(opts, n_train: int, classes: int) -> dict:
    """What a checkpoint must share with this run to be continued (the epoch count may grow)."""
    return {"engine": opts.engine, "input": opts.input, "data": data_version(opts.input), "n_train": n_train,
            "classes": classes,
            "batch_size": opts.batch_size, "learning_rate": opts.learning_rate, "optimizer": opts.optimizer,
            "augment": opts.augment}


def run(spark, opts, record, _=None) -> dict:
    splits = data.load_splits(spark, opts.input)
    folder = CheckpointFolder(opts.checkpoint_dir, "epoch")
    config = fingerprint(opts, splits.n_train, splits.classes)
    resume = folder.decide(opts.resume, config)
    log.info("%s", resume.why)
    record.metrics["resumed_from_epoch"] = resume.done
    engine = engines.engine(opts.engine)
    if resume.checkpoint:
        engine.trusted(resume.checkpoint)  # on the driver, before any rank or executor loads it
    else:
        folder.start_fresh(config, "train_digits", record.run_id)
    plan = engines.Plan(
        input=opts.input, folder=folder, epochs=opts.epochs, batch_size=opts.batch_size,
        learning_rate=opts.learning_rate, optimizer=opts.optimizer, augment=opts.augment, classes=splits.classes,
        n_train=splits.n_train, run_id=record.run_id, resume=resume.checkpoint, num_processes=opts.num_processes,
        local_mode=options.local_mode(spark, opts), use_gpu=opts.use_gpu == "on",
        threads=options.threads_per_process(spark, opts))
    if resume.done < opts.epochs:
        engine.train(spark, plan, splits)
    else:
        log.info("checkpoint already has %d epochs; evaluating only", resume.done)
    model = engine.load_checkpoint(folder.latest())
    return write_outputs(spark, opts, record, engine, model, splits.train.unionByName(splits.test), splits.classes,
                         folder.metrics(), splits.n_train + splits.n_test)


def write_outputs(spark, opts, record, engine, model, rows, classes, history, rows_in) -> dict:
    from pyspark.sql import functions as F

    from pipeline import metrics, plots

    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        engine.predict(spark, model, rows, max(opts.batch_size, 256)).write.partitionBy("split") \
            .parquet(f"{tmp}/predictions")
        preds = spark.read.parquet(f"{tmp}/predictions")
        matrix = metrics.confusion(preds.where(F.col("split") == "test"), classes=classes)
        top1 = metrics.accuracy(matrix)
        train_top1 = metrics.accuracy(metrics.confusion(preds.where(F.col("split") == "train"), classes=classes))
        final = [(opts.epochs, "test_top1", top1), (opts.epochs, "train_top1", train_top1)]
        spark.createDataFrame(metrics.metric_rows(record.run_id, history + final), metrics.METRICS_DDL) \
            .coalesce(1).write.parquet(f"{tmp}/metrics")
        local = local_path(tmp)
        os.makedirs(os.path.join(local, "model"), exist_ok=True)
        engine.save(model, os.path.join(local, "model"))
        title = f"LeNet-5 ({opts.engine})"
        plots.confusion_png(matrix, [str(i) for i in range(classes)], os.path.join(local, "confusion_matrix.png"),
                            f"{title}, test top-1 {top1:.4f}")
        names = {"train_loss": "train loss", "val_loss": "val loss", "val_top1": "val top-1"}
        series = {label: [(e, v) for e, n, v in history if n == name] for name, label in names.items()}
        plots.curves_png(series, os.path.join(local, "training_curves.png"), title)
        record.rows_in = rows_in
        record.rows_out = preds.count()
        record.rows_rejected = 0
    record.metrics.update({"test_top1": top1, "train_top1": train_top1, "epochs": opts.epochs,
                           **{f"{n}_last": v for _, n, v in history[-4:]}})
    record.outputs = {k: f"{opts.output}/{k}" for k in ("model", "predictions", "metrics")}
    record.outputs["figures"] = f"{opts.output}/confusion_matrix.png, training_curves.png"
    return {"engine": opts.engine, "resumed_from_epoch": record.metrics["resumed_from_epoch"],
            "test_top1": round(top1, 4), "train_top1": round(train_top1, 4),
            "epochs": opts.epochs, "checkpoints": opts.checkpoint_dir, **record.outputs}
