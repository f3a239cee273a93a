"""`transfer_demo`: the offline transfer-learning demo on MNIST digits.

No pretrained network can be downloaded here, so the demo makes its own stand-in: a small Keras
CNN trained by the pipeline on digits 0-4. Its `features` layer then featurizes digits 5-9 through
`DeepImageFeaturizer`, and a LogisticRegression learns them from a few labels per class, next to
raw pixels and the same CNN untrained (same classifier, same labels).
"""

import json
import logging
import os

import numpy as np

from pipeline import options
from pipeline.io import atomic_output, local_path
from pipeline.transfer import fit_and_evaluate, parse_classes, pixel_features, write_classifier

log = logging.getLogger(__name__)


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
    from pipeline.quiet import import_tensorflow

    import_tensorflow()  # before keras does, so its start-up lines are not on the console
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


def add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="images table of MNIST digits")
    defaults = options.add_output(p, "folder for the CNNs, features, classifiers and report")
    p.add_argument("--base-classes", type=parse_classes, help="classes the stand-in pretrained CNN learns")
    p.add_argument("--target-classes", type=parse_classes, help="classes the transferred classifier learns")
    p.add_argument("--labels-per-class", type=int, help="labelled training rows per target class")
    return {**defaults, "base_classes": parse_classes("0-4"), "target_classes": parse_classes("5-9"),
            "labels_per_class": 20}


def validate(opts):
    opts.input = options.input_table(opts.input)
    options.output(opts)


def run(spark, opts, record, _=None) -> dict:
    """Transferred CNN features vs raw pixels vs the same CNN untrained, same classifier, same labels."""
    from pipeline.featurize import DeepImageFeaturizer

    images = spark.read.parquet(opts.input)
    results = {}
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
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
            write_classifier(spark, f"{tmp}/{slug}", model, preds, acc, opts.target_classes, record.run_id, name)
            results[name] = acc
            log.info("%-26s test accuracy %.4f (%d labelled rows)", name, acc, n_train)
        report = {"base_classes": list(opts.base_classes), "base_test_accuracy": base_acc,
                  "target_classes": list(opts.target_classes), "labels_per_class": opts.labels_per_class,
                  "test_accuracy": results}
        with open(f"{local}/report.json", "w") as fh:
            json.dump(report, fh, indent=2)
        record.rows_in = images.count()  # models and a report, not rows of the input
    record.metrics = {f"accuracy_{k.split()[0]}": v for k, v in results.items()}
    record.outputs = {"report": f"{opts.output}/report.json", "classifiers": f"{opts.output}/{{transferred,raw,untrained}}"}
    return {f"pretrained CNN accuracy [{','.join(map(str, opts.base_classes))}]": round(base_acc, 4),
            **{f"accuracy [{k}]": round(v, 4) for k, v in results.items()}, **record.outputs}
