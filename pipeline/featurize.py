"""Image featurization with a pretrained Keras model, as sparkdl's DeepImageFeaturizer did.

`DeepImageFeaturizer` is a Spark ML Transformer (save/load, usable inside a Pipeline) that runs
a named Keras application (ImageNet weights from a local file) or any user `.keras`/`.h5` model
over an image column through `pyspark.ml.functions.predict_batch_udf`: the model is built once
per Python worker, batches arrive as Arrow, and nothing is collected to the driver.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from pipeline import images as im
from pipeline.errors import PipelineError

IMAGE_FIELDS = ("origin", "height", "width", "nChannels", "mode", "data")


@dataclass(frozen=True)
class Application:
    module: str  # keras.applications.<module>
    cls: str
    size: tuple[int, int]  # (height, width) the network was trained at
    notop_file: str  # the file Keras itself caches under ~/.keras/models/


APPLICATIONS = {
    "InceptionV3": Application("inception_v3", "InceptionV3", (299, 299),
                               "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "Xception": Application("xception", "Xception", (299, 299), "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "ResNet50": Application("resnet50", "ResNet50", (224, 224), "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "VGG16": Application("vgg16", "VGG16", (224, 224), "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "VGG19": Application("vgg19", "VGG19", (224, 224), "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "MobileNetV2": Application("mobilenet_v2", "MobileNetV2", (224, 224),
                               "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "EfficientNetB0": Application("efficientnet", "EfficientNetB0", (224, 224), "efficientnetb0_notop.h5"),
}


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def resolve_weights(model_name: str, weights_file: str | None, weights: str) -> str | None:
    """The weights file for a named model, or None for explicitly random weights."""
    if weights == "random":
        return None
    app = APPLICATIONS[model_name]
    path = weights_file or os.path.join(keras_cache_dir(), app.notop_file)
    if not os.path.isfile(path):
        raise PipelineError(
            f"{model_name} needs its ImageNet weights and they cannot be downloaded here: put "
            f"{app.notop_file} in {keras_cache_dir()}/ (or pass weightsFile=/path/to/it); "
            "weights='random' runs untrained on purpose")
    return path


def file_digest(path: str | None) -> str:
    if path is None:
        return "random"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def set_tf_threads(threads: int) -> None:
    """One Spark task = one core: a worker's TF must not spawn a thread per core of the machine."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its setting
        pass


def build_model(model_name: str | None, model_file: str | None, weights_path: str | None, feature_layer: str | None):
    """(keras model, input (h, w, c), preprocess(float32 NHWC RGB 0..255) → model input)."""
    import keras

    if model_file:
        model = keras.models.load_model(model_file, compile=False)
        if feature_layer:
            model = keras.Model(model.inputs, model.get_layer(feature_layer).output)
        _, h, w, c = model.input_shape
        return model, (h, w, c), lambda x: x / 255.0
    app = APPLICATIONS[model_name]
    module = getattr(keras.applications, app.module)
    keras.utils.set_random_seed(0)  # "random" weights are at least the same random weights
    model = getattr(keras.applications, app.cls)(include_top=False, weights=weights_path, pooling="avg",
                                                 input_shape=(*app.size, 3))
    return model, (*app.size, 3), module.preprocess_input


def to_model_input(height, width, n_channels, data, shape) -> np.ndarray:
    """One image row → HxWxC float32 in the model's size and channel count, RGB order, 0..255."""
    h, w, c = shape
    arr = im.row_to_array(int(height), int(width), int(n_channels), data)  # BGR(A) → RGB(A)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if c == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 1 and arr.shape[2] == 3:
        arr = (arr @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255).astype(np.uint8)[:, :, None]
    if arr.shape[:2] != (h, w):
        squeeze = arr.shape[2] == 1
        arr = im.resize_array(arr[:, :, 0] if squeeze else arr, (h, w))
        arr = arr[:, :, None] if squeeze else arr
    return arr.astype(np.float32)


class DeepImageFeaturizer(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Featurize an image column (Spark's image struct) with a pretrained network.

    The output is a Spark ML vector (`VectorUDT`) of the network's pooled penultimate features
    (named models) or of `featureLayer`/the output of a user model. Rows that cannot be decoded get
    a null vector and a reason in `errorCol`.
    """

    modelName = Param(Params._dummy(), "modelName", f"one of {', '.join(APPLICATIONS)}",
                      typeConverter=TypeConverters.toString)
    modelFile = Param(Params._dummy(), "modelFile", "a Keras .keras/.h5 model to use instead of a named one",
                      typeConverter=TypeConverters.toString)
    featureLayer = Param(Params._dummy(), "featureLayer", "for modelFile: the layer whose output is the feature",
                         typeConverter=TypeConverters.toString)
    weightsFile = Param(Params._dummy(), "weightsFile", "ImageNet (no-top) weights file for modelName",
                        typeConverter=TypeConverters.toString)
    weights = Param(Params._dummy(), "weights", "'imagenet' (from a local file) or 'random' (untrained, explicit)",
                    typeConverter=TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "images per model call", typeConverter=TypeConverters.toInt)
    threads = Param(Params._dummy(), "threads", "TensorFlow threads per Python worker", typeConverter=TypeConverters.toInt)
    errorCol = Param(Params._dummy(), "errorCol", "column for the reason a row could not be featurized",
                     typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="image", outputCol="features", modelName=None, modelFile=None, featureLayer=None,
                 weightsFile=None, weights="imagenet", batchSize=64, threads=1, errorCol="featurize_error"):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", weights="imagenet", batchSize=64, threads=1,
                         errorCol="featurize_error")
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**kwargs)

    def _get(self, name):
        param = self.getParam(name)
        return self.getOrDefault(param) if self.isDefined(param) else None

    def check(self) -> str | None:
        """Validate the Params; returns the weights path (None for random or a model file)."""
        name, file = self._get("modelName"), self._get("modelFile")
        if bool(name) == bool(file):
            raise PipelineError("DeepImageFeaturizer: set exactly one of modelName and modelFile")
        if file:
            if not os.path.isfile(file):
                raise PipelineError(f"modelFile {file}: no such file")
            return None
        if name not in APPLICATIONS:
            raise PipelineError(f"modelName {name!r} is not supported; expected one of {', '.join(APPLICATIONS)}")
        if self._get("weights") not in ("imagenet", "random"):
            raise PipelineError(f"weights {self._get('weights')!r}: expected 'imagenet' or 'random'")
        return resolve_weights(name, self._get("weightsFile"), self._get("weights"))

    def model_digest(self) -> str:
        weights = self.check()
        return file_digest(self._get("modelFile") or weights)

    def _image_column(self, dataset):
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        col = self.getInputCol()
        if col not in dataset.columns:
            if col == "image" and set(IMAGE_FIELDS) <= set(dataset.columns):
                return F.struct(*IMAGE_FIELDS)  # our flat images table: the same fields
            raise PipelineError(f"inputCol {col!r} is not a column (columns: {', '.join(dataset.columns)})")
        dtype = dataset.schema[col].dataType
        if not isinstance(dtype, StructType) or not {"height", "width", "nChannels", "data"} <= set(dtype.names):
            raise PipelineError(f"inputCol {col!r} has type {dtype.simpleString()}; expected an image struct "
                                "(origin, height, width, nChannels, mode, data) as spark.read.format('image') gives")
        return F.col(col)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector, predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

        weights = self.check()
        image = self._image_column(dataset)
        name, file, layer = self._get("modelName"), self._get("modelFile"), self._get("featureLayer")
        threads = self._get("threads")

        def make_predict_fn():
            set_tf_threads(threads)
            model, shape, preprocess = build_model(name, file, weights, layer)
            width = int(np.prod(model.output_shape[1:]))

            def predict(heights, widths, channels, datas):
                heights, widths, channels, datas = map(np.atleast_1d, (heights, widths, channels, datas))
                batch, errors = [], []
                for h, w, c, d in zip(heights, widths, channels, datas):
                    try:
                        batch.append(to_model_input(h, w, c, d, shape))
                        errors.append(None)
                    except (im.DecodeError, ValueError, TypeError) as exc:
                        batch.append(np.zeros(shape, np.float32))
                        errors.append(f"undecodable image row: {exc}")
                out = model.predict_on_batch(preprocess(np.stack(batch)))
                out = np.asarray(out, dtype=np.float32).reshape(len(batch), width)
                return {"features": out, "error": np.array(errors, dtype=object)}
            return predict

        udf = predict_batch_udf(make_predict_fn, return_type=StructType([
            StructField("features", ArrayType(FloatType())), StructField("error", StringType())]),
            batch_size=self._get("batchSize"))
        out = self.getOutputCol()
        tmp = f"__{out}_struct"
        return (dataset.withColumn(tmp, udf(image["height"], image["width"], image["nChannels"], image["data"]))
                .withColumn(out, F.when(F.col(f"{tmp}.error").isNull(), array_to_vector(F.col(f"{tmp}.features"))))
                .withColumn(self._get("errorCol"), F.col(f"{tmp}.error"))
                .drop(tmp))


# ---------------------------------------------------------------- the featurize job

KEY_COLUMNS = ("path", "label", "label_index", "split")


def add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="images table")
    p.add_argument("--output", required=True, help="features table to create (and OUTPUT.rejected)")
    p.add_argument("--model-name", choices=sorted(APPLICATIONS), help="a named Keras application")
    p.add_argument("--model-file", help="a Keras .keras/.h5 model instead of a named one")
    p.add_argument("--feature-layer", help="with --model-file: the layer whose output is the feature")
    p.add_argument("--weights-file", help="ImageNet no-top weights for --model-name (default: Keras' cache folder)")
    p.add_argument("--weights", choices=("imagenet", "random"), help="'random' = untrained, on purpose")
    p.add_argument("--batch-size", type=int, help="images per model call")
    p.add_argument("--threads", type=int, help="TensorFlow threads per Spark task")
    p.add_argument("--mode", choices=("error", "overwrite"), help="what to do when --output exists")
    return {"model_name": None, "model_file": None, "feature_layer": None, "weights_file": None,
            "weights": "imagenet", "batch_size": 64, "threads": 1, "mode": "error"}


def featurizer_from(opts) -> DeepImageFeaturizer:
    kwargs = dict(modelName=opts.model_name, modelFile=opts.model_file, featureLayer=opts.feature_layer or None,
                  weightsFile=opts.weights_file, weights=opts.weights, batchSize=opts.batch_size, threads=opts.threads)
    return DeepImageFeaturizer(**{k: v for k, v in kwargs.items() if v is not None})


def validate(opts):
    from pipeline.io import absolute, check_writable, is_local, local_path

    opts.input, opts.output = absolute(opts.input), absolute(opts.output)
    if is_local(opts.input) and not os.path.isdir(local_path(opts.input)):
        raise PipelineError(f"--input {opts.input}: no such images table")
    featurizer = featurizer_from(opts)
    featurizer.check()
    check_writable(opts.output, opts.mode)
    return featurizer


def run(spark, opts, run, featurizer: DeepImageFeaturizer) -> dict:
    from pyspark.sql import functions as F

    from pipeline.io import atomic_output

    images = spark.read.parquet(opts.input)
    keys = [c for c in KEY_COLUMNS if c in images.columns]
    name = opts.model_name or os.path.basename(opts.model_file)
    out = (featurizer.transform(images)
           .select(*keys, "features", "featurize_error",
                   F.lit(name).alias("model_name"), F.lit(featurizer.model_digest()).alias("model_digest")))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max(opts.batch_size, 64)))
    with atomic_output(spark, opts.output, run.run_id, opts.mode) as tmp:
        # Written once with the error column, then split: the model runs over each image once.
        staged = f"{tmp}/_staged"
        out.write.parquet(staged)
        staged_df = spark.read.parquet(staged)
        ok = staged_df.where(F.col("featurize_error").isNull()).drop("featurize_error")
        ok.write.partitionBy(*(["split"] if "split" in keys else [])).parquet(f"{tmp}/features")
        (staged_df.where(F.col("featurize_error").isNotNull())
         .select("path", F.col("featurize_error").alias("reason"), F.lit("featurize").alias("stage"),
                 F.lit(run.run_id).alias("run_id")).coalesce(1).write.parquet(f"{tmp}/rejected"))
        run.rows_in = images.count()
        run.rows_out = spark.read.parquet(f"{tmp}/features").count()
        run.rows_rejected = spark.read.parquet(f"{tmp}/rejected").count()
        run.check_counts()
        from pipeline.io import HadoopFS
        HadoopFS(spark).delete(staged)
        first = spark.read.parquet(f"{tmp}/features").first() if run.rows_out else None
        dim = len(first["features"]) if first else 0
    run.outputs = {"features": f"{opts.output}/features", "rejected": f"{opts.output}/rejected"}
    run.metrics = {"feature_dim": dim}
    return {"model": name, "feature_dim": dim, "rows_in": run.rows_in, "rows_out": run.rows_out,
            "rows_rejected": run.rows_rejected, **run.outputs}
