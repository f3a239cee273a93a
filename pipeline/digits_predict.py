"""Batch digit recognition with a saved LeNet-5 (BigDL format) over any images table."""

from __future__ import annotations

import argparse
import os

from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, check_writable, is_local, local_path


def add_arguments(p: argparse.ArgumentParser) -> dict:
    p.add_argument("--model", required=True, help="model folder written by train_digits (or its .bigdl file)")
    p.add_argument("--input", required=True, help="images table")
    p.add_argument("--output", required=True, help="predictions table to create")
    p.add_argument("--batch-size", type=int, help="inference batch size")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"batch_size": 256, "mode": "error"}


def validate(opts) -> None:
    opts.model, opts.input, opts.output = absolute(opts.model), absolute(opts.input), absolute(opts.output)
    if is_local(opts.model):
        path = local_path(opts.model)
        if os.path.isdir(path):
            path = os.path.join(path, "lenet5.bigdl")
        if not os.path.isfile(path):
            raise PipelineError(f"--model {opts.model}: no saved model there (expected lenet5.bigdl)")
        opts.model = path
    if is_local(opts.input) and not os.path.isdir(local_path(opts.input)):
        raise PipelineError(f"--input {opts.input}: no such images table")
    check_writable(opts.output, opts.mode)


def run(spark, opts, run, _=None) -> dict:
    from bigdl.dllib.nn.layer import Model

    from pipeline.digits import predict

    images = spark.read.parquet(opts.input)
    if "split" not in images.columns:
        from pyspark.sql import functions as F
        images = images.withColumn("split", F.lit(None).cast("string"))
    model = Model.loadModel(opts.model)
    with atomic_output(spark, opts.output, run.run_id, opts.mode) as tmp:
        predict(spark, model, images, opts.batch_size).write.parquet(tmp)
        run.rows_out = spark.read.parquet(tmp).count()
    run.rows_in, run.rows_rejected = images.count(), 0
    run.check_counts()
    run.outputs = {"predictions": opts.output}
    return {"rows_in": run.rows_in, "rows_out": run.rows_out, "predictions": opts.output}
