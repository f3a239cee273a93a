"""`predict_digits`: batch digit recognition with a saved LeNet-5 (either engine's) over any images table."""

from __future__ import annotations

import os

from pipeline import options
from pipeline.digits import data, engines
from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, is_local, local_path

def add_arguments(p) -> dict:
    p.add_argument("--model", required=True, help="model folder written by train_digits (or its lenet5.* file)")
    p.add_argument("--input", required=True, help="images table")
    defaults = options.add_output(p, "predictions table to create")
    p.add_argument("--batch-size", type=int, help="inference batch size")
    return {**defaults, "batch_size": 256}


def validate(opts) -> None:
    opts.model = absolute(opts.model)
    if is_local(opts.model):
        path = local_path(opts.model)
        if os.path.isdir(path):
            path = next((os.path.join(path, f) for f in data.MODEL_FILES if os.path.isfile(os.path.join(path, f))), path)
        if os.path.basename(path) not in data.MODEL_FILES or not os.path.isfile(path):
            raise PipelineError(f"--model {opts.model}: no saved model there (expected {' or '.join(data.MODEL_FILES)})")
        opts.model = path
    opts.engine = data.MODEL_FILES.get(os.path.basename(opts.model), "bigdl")
    if engines.engine(opts.engine).needs_bigdl:
        from pipeline.session import bigdl_missing

        if reason := bigdl_missing():
            raise PipelineError(f"--model {opts.model}: a BigDL model, and {reason}")
    engines.engine(opts.engine).check_model_file(opts.model)  # a file that could run code is refused here
    opts.input = options.input_table(opts.input)
    options.output(opts)


def uses_bigdl(opts) -> bool:
    return engines.engine(opts.engine).needs_bigdl


def run(spark, opts, record, _=None) -> dict:
    from pyspark.sql import functions as F

    engine = engines.engine(opts.engine)
    images = spark.read.parquet(opts.input)
    for column in ("label", "split"):
        if column not in images.columns:
            images = images.withColumn(column, F.lit(None).cast("string"))
    model = engine.load(opts.model)
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        engine.predict(spark, model, images, opts.batch_size).write.mode("append").parquet(tmp)  # tmp holds the marker
        record.rows_in, record.rows_out, record.rows_rejected = images.count(), spark.read.parquet(tmp).count(), 0
    record.outputs = {"predictions": opts.output}
    return {"engine": opts.engine, "rows_in": record.rows_in, "rows_out": record.rows_out, "predictions": opts.output}
