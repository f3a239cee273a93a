"""`transfer`: features (or raw pixels) → a Spark ML LogisticRegression in a Pipeline.

The pieces the offline demo (`pipeline.demos.transfer`) reuses: raw-pixel features, a few labels
per class, fit-and-evaluate, and the classifier's outputs.
"""


import argparse
import logging
import os

import numpy as np

from pipeline import options
from pipeline.errors import PipelineError
from pipeline.io import atomic_output, local_path

log = logging.getLogger(__name__)


def parse_classes(text: str) -> tuple[int, ...]:
    """'5-9' or '0,1,2' → class indices."""
    try:
        if "-" in text:
            lo, hi = map(int, text.split("-"))
            values = tuple(range(lo, hi + 1))
        else:
            values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"bad classes {text!r}: expected e.g. 5-9 or 0,1,2")
    return values


# ---------------------------------------------------------------- features for the classifier

def pixel_features(images):
    """Raw-pixel baseline: gray 28x28 pixels / 255 as the feature vector."""
    import pandas as pd
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from pipeline.digits.data import MEAN, STD, to_input

    @pandas_udf("array<float>")
    def pixels(h: pd.Series, w: pd.Series, c: pd.Series, d: pd.Series) -> pd.Series:
        return pd.Series([(to_input(*row)[0] * STD + MEAN).ravel() for row in zip(h, w, c, d)])

    return images.withColumn("features", array_to_vector(pixels(F.col("height"), F.col("width"),
                                                                 F.col("nChannels"), F.col("data"))))


def few_labels(df, per_class: int):
    """Keep `per_class` training rows of each class, picked by a hash of the path (deterministic)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if per_class <= 0:
        return df
    rank = F.row_number().over(Window.partitionBy("label_index").orderBy(F.xxhash64("path"), "path"))
    return df.withColumn("_rank", rank).where(F.col("_rank") <= per_class).drop("_rank")


def fit_and_evaluate(spark, features, classes, per_class: int, seed: int = 0):
    """(fitted PipelineModel, test predictions, test accuracy, n_train) for one feature set."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.sql import functions as F

    rows = features.where(F.col("label_index").isin(list(classes)))
    train = few_labels(rows.where(F.col("split") == "train"), per_class).cache()
    test = rows.where(F.col("split") == "test")
    n_train = train.count()
    if n_train == 0 or not test.take(1):
        raise PipelineError(f"no labelled train/test rows for classes {list(classes)}")
    lr = LogisticRegression(featuresCol="features", labelCol="label_index", maxIter=200, regParam=1e-3,
                            elasticNetParam=0.0, standardization=True)
    model = Pipeline(stages=[lr]).fit(train)
    preds = model.transform(test)
    acc = preds.select(F.avg((F.col("prediction") == F.col("label_index")).cast("double"))).first()[0]
    train.unpersist()
    return model, preds, float(acc), n_train


def write_classifier(spark, tmp, model, preds, acc, classes, run_id, title, extra_metrics=()):
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from pipeline import metrics, plots

    model.write().save(f"{tmp}/model")
    keep = [c for c in ("path", "label", "label_index", "split") if c in preds.columns]
    (preds.select(*keep, F.col("prediction").cast("int").alias("prediction"),
                  vector_to_array("probability").alias("probability")).write.parquet(f"{tmp}/predictions"))
    rows = [(0, "test_accuracy", acc), *extra_metrics]
    spark.createDataFrame(metrics.metric_rows(run_id, rows), metrics.METRICS_DDL).coalesce(1) \
        .write.parquet(f"{tmp}/metrics")
    matrix = metrics.confusion(spark.read.parquet(f"{tmp}/predictions"), classes=max(classes) + 1)
    matrix = matrix[np.ix_(classes, classes)]
    os.makedirs(local_path(tmp), exist_ok=True)
    plots.confusion_png(matrix, [str(c) for c in classes], os.path.join(local_path(tmp), "confusion_matrix.png"),
                        f"{title}: accuracy {acc:.3f}")


# ---------------------------------------------------------------- the transfer job

def add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="features table (from featurize), or an images table "
                                                   "for the raw-pixel baseline")
    defaults = options.add_output(p, "folder for model/, predictions/, metrics/, confusion_matrix.png")
    p.add_argument("--classes", type=parse_classes, help="classes to learn, e.g. 5-9 (default: all)")
    p.add_argument("--labels-per-class", type=int, help="labelled training rows per class (0 = all)")
    return {**defaults, "classes": None, "labels_per_class": 0}


def validate(opts):
    opts.input = options.input_table(opts.input, what="table")
    options.output(opts)


def load_features(spark, path):
    from pyspark.ml.linalg import VectorUDT
    df = spark.read.parquet(path)
    if "features" in df.columns:
        if not isinstance(df.schema["features"].dataType, VectorUDT):
            raise PipelineError(f"--input {path}: column features is {df.schema['features'].dataType.simpleString()},"
                                " expected a Spark ML vector")
        return df, "features"
    if "data" in df.columns:
        return pixel_features(df), "raw pixels"
    raise PipelineError(f"--input {path}: neither a features table nor an images table")


def run(spark, opts, record, _=None) -> dict:
    features, kind = load_features(spark, opts.input)
    classes = opts.classes or tuple(sorted(r[0] for r in features.select("label_index").distinct().collect()
                                           if r[0] is not None))
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        model, preds, acc, n_train = fit_and_evaluate(spark, features, classes, opts.labels_per_class)
        write_classifier(spark, tmp, model, preds, acc, classes, record.run_id, f"LogisticRegression on {kind}")
        record.rows_in = features.count()  # a classifier, not rows of the input: nothing to balance
    record.metrics = {"test_accuracy": acc, "train_rows": n_train}
    record.outputs = {k: f"{opts.output}/{k}" for k in ("model", "predictions", "metrics")}
    return {"features": kind, "classes": list(classes), "train_rows": n_train, "test_accuracy": round(acc, 4),
            **record.outputs}
