"""Transfer learning: features (or raw pixels) → a Spark ML LogisticRegression in a Pipeline.

Also `pretrain`, which trains the small Keras CNN the offline demo uses as its "pretrained"
network (on digits 0-4), and `transfer_demo`, which runs the whole comparison in one session.
"""


import argparse
import json
import logging
import os

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import absolute, atomic_output, check_writable, is_local, local_path

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
    p.add_argument("--output", required=True, help="folder for model/, predictions/, metrics/, confusion_matrix.png")
    p.add_argument("--classes", type=parse_classes, help="classes to learn, e.g. 5-9 (default: all)")
    p.add_argument("--labels-per-class", type=int, help="labelled training rows per class (0 = all)")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"classes": None, "labels_per_class": 0, "mode": "error"}


def validate(opts):
    opts.input, opts.output = absolute(opts.input), absolute(opts.output)
    if is_local(opts.input) and not os.path.isdir(local_path(opts.input)):
        raise PipelineError(f"--input {opts.input}: no such table")
    check_writable(opts.output, opts.mode)


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


def run(spark, opts, run, _=None) -> dict:
    features, kind = load_features(spark, opts.input)
    classes = opts.classes or tuple(sorted(r[0] for r in features.select("label_index").distinct().collect()
                                           if r[0] is not None))
    with atomic_output(spark, opts.output, run.run_id, opts.mode) as tmp:
        model, preds, acc, n_train = fit_and_evaluate(spark, features, classes, opts.labels_per_class)
        write_classifier(spark, tmp, model, preds, acc, classes, run.run_id, f"LogisticRegression on {kind}")
        run.rows_in = run.rows_out = spark.read.parquet(f"{tmp}/predictions").count()
        run.rows_rejected = 0
    run.metrics = {"test_accuracy": acc, "train_rows": n_train}
    run.outputs = {k: f"{opts.output}/{k}" for k in ("model", "predictions", "metrics")}
    return {"features": kind, "classes": list(classes), "train_rows": n_train, "test_accuracy": round(acc, 4),
            **run.outputs}


# ---------------------------------------------------------------- the stand-in "pretrained" CNN

def small_cnn(classes: int):
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", name="features")(x)
    return keras.Model(inputs, layers.Dense(classes, activation="softmax")(x))


def pretrain_cnn(spark, images_path: str, classes, out_file: str, epochs: int = 3, random_weights: bool = False):
    """Train (or, for the baseline, only build) the small CNN on `classes`; save it as .keras.

    The 2,000-odd 28x28 training images fit in the driver's memory, so Keras trains there.
    Returns its test accuracy on those classes (None for random weights).
    """
    import keras
    from pyspark.sql import functions as F

    from pipeline.featurize import set_tf_threads, to_model_input

    set_tf_threads(os.cpu_count() or 1)
    keras.utils.set_random_seed(0)
    model = small_cnn(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    df = spark.read.parquet(images_path).where(F.col("label_index").isin(list(classes)))

    def arrays(split):
        pdf = df.where(F.col("split") == split).select("height", "width", "nChannels", "data", "label_index").toPandas()
        x = np.stack([to_model_input(*r[:4], (28, 28, 1)) for r in pdf.itertuples(index=False)]) / 255.0
        return x, np.array([index[v] for v in pdf.label_index])

    acc = None
    if not random_weights:
        (x, y), (xt, yt) = arrays("train"), arrays("test")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        acc = float(model.evaluate(xt, yt, verbose=0)[1])
        log.info("pretrained CNN on classes %s: test accuracy %.4f", list(classes), acc)
    tmp = f"{out_file}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, out_file)
    return acc


def demo_add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="images table of MNIST digits")
    p.add_argument("--output", required=True, help="folder for the CNNs, features, classifiers and report")
    p.add_argument("--base-classes", type=parse_classes, help="classes the stand-in pretrained CNN learns")
    p.add_argument("--target-classes", type=parse_classes, help="classes the transferred classifier learns")
    p.add_argument("--labels-per-class", type=int, help="labelled training rows per target class")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"base_classes": parse_classes("0-4"), "target_classes": parse_classes("5-9"), "labels_per_class": 20,
            "mode": "error"}


def demo_run(spark, opts, run, _=None) -> dict:
    """Transferred CNN features vs raw pixels vs the same CNN untrained, same classifier, same labels."""
    from pipeline.featurize import DeepImageFeaturizer

    images = spark.read.parquet(opts.input)
    results = {}
    with atomic_output(spark, opts.output, run.run_id, opts.mode) as tmp:
        local = local_path(tmp)
        os.makedirs(local, exist_ok=True)
        base_acc = pretrain_cnn(spark, opts.input, opts.base_classes, f"{local}/cnn_pretrained.keras")
        pretrain_cnn(spark, opts.input, opts.base_classes, f"{local}/cnn_random.keras", random_weights=True)
        sets = {"transferred CNN features": None, "raw pixels": pixel_features(images),
                "untrained CNN features": None}
        for name, file in (("transferred CNN features", "cnn_pretrained"), ("untrained CNN features", "cnn_random")):
            f = DeepImageFeaturizer(modelFile=f"{local}/{file}.keras", featureLayer="features", batchSize=256)
            sets[name] = f.transform(images).where("featurize_error IS NULL").cache()
        for name, features in sets.items():
            slug = name.split()[0]
            model, preds, acc, n_train = fit_and_evaluate(spark, features, opts.target_classes, opts.labels_per_class)
            write_classifier(spark, f"{tmp}/{slug}", model, preds, acc, opts.target_classes, run.run_id, name)
            results[name] = acc
            log.info("%-26s test accuracy %.4f (%d labelled rows)", name, acc, n_train)
        report = {"base_classes": list(opts.base_classes), "base_test_accuracy": base_acc,
                  "target_classes": list(opts.target_classes), "labels_per_class": opts.labels_per_class,
                  "test_accuracy": results}
        with open(f"{local}/report.json", "w") as fh:
            json.dump(report, fh, indent=2)
        run.rows_in = run.rows_out = images.count()
        run.rows_rejected = 0
    run.metrics = {f"accuracy_{k.split()[0]}": v for k, v in results.items()}
    run.outputs = {"report": f"{opts.output}/report.json", "classifiers": f"{opts.output}/{{transferred,raw,untrained}}"}
    return {"pretrained_cnn_accuracy_0_4": round(base_acc, 4),
            **{f"accuracy [{k}]": round(v, 4) for k, v in results.items()}, **run.outputs}
