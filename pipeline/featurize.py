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
from pipeline import options
from pipeline.errors import PipelineError
from pipeline.params import HasBatchSize, HasErrorCol, HasModelFile, HasThreads, HasWeights, one_of
from pipeline.workers import skip_zip_rereads

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
        raise ValueError(
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
    from pipeline.quiet import import_tensorflow

    tf = import_tensorflow()  # its C++ start-up lines go to a log file, not each worker's stderr

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its setting
        pass


def build_model(model_name: str | None, model_file: str | None, weights_path: str | None, feature_layer: str | None):
    """(keras model, input (h, w, c), preprocess(float32 NHWC RGB 0..255) → model input)."""
    from pipeline.quiet import import_tensorflow

    import_tensorflow()  # before keras does, so its start-up lines are not on the console
    import keras

    if model_file:
        try:  # safe_mode: a Lambda layer's Python code in the file is refused, never run
            model = keras.models.load_model(model_file, compile=False, safe_mode=True)
        except ValueError as exc:
            raise ValueError(f"modelFile {model_file}: refused: {str(exc).splitlines()[0]}") from None
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
    if int(height) * int(width) > im.MAX_PIXELS:  # bounds a worker's memory, as ingest's --max-pixels does
        raise im.DecodeError(f"image too large: {int(height)}x{int(width)} is over {im.MAX_PIXELS:,} pixels")
    arr = im.row_to_array(int(height), int(width), int(n_channels), data)  # BGR(A) → RGB(A)
    arr = im.to_rgb(arr) if c == 3 else im.to_gray(arr)
    if arr.shape[:2] != (h, w):
        arr = im.resize_array(arr, (h, w))
    return (arr if arr.ndim == 3 else arr[:, :, None]).astype(np.float32)


def model_batch(heights, widths, channels, datas, shape) -> tuple[np.ndarray, list[str | None]]:
    """A predict_batch_udf batch of image rows (a 1-row batch arrives as 0-d arrays) → the model's
    input batch, and per row None or the reason it could not be used (its input is then zeros)."""
    batch, errors = [], []
    for h, w, c, d in zip(*map(np.atleast_1d, (heights, widths, channels, datas))):
        try:
            batch.append(to_model_input(h, w, c, d, shape))
            errors.append(None)
        except (im.DecodeError, ValueError, TypeError) as exc:
            batch.append(np.zeros(shape, np.float32))
            errors.append(f"undecodable image row: {exc}")
    return np.stack(batch), errors


class DeepImageFeaturizer(Transformer, HasInputCol, HasOutputCol, HasModelFile, HasWeights, HasBatchSize, HasThreads,
                          HasErrorCol, DefaultParamsReadable, DefaultParamsWritable):
    """Featurize an image column (Spark's image struct) with a pretrained network.

    The output is a Spark ML vector (`VectorUDT`) of the network's pooled penultimate features
    (named models) or of `featureLayer`/the output of a user model. Rows that cannot be decoded get
    a null vector and a reason in `errorCol`. Bad Param values raise TypeError when set (pyspark's
    convention); a configuration that cannot run (no model, a missing weights file, a wrong input
    column) raises ValueError when the featurizer is checked or used.

    >>> featurizer = DeepImageFeaturizer(modelName="MobileNetV2", weights="random", batchSize=8)
    >>> featurizer.getModelName(), featurizer.getBatchSize(), featurizer.getOutputCol()
    ('MobileNetV2', 8, 'features')
    >>> featurizer.write().overwrite().save(path)
    >>> loaded = DeepImageFeaturizer.load(path)
    >>> loaded.getModelName(), loaded.getWeights(), loaded.getBatchSize()
    ('MobileNetV2', 'random', 8)
    >>> loaded.transform(images).first().features.size  # MobileNetV2's pooled features
    1280
    >>> DeepImageFeaturizer(modelName="AlexNet")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: ...modelName 'AlexNet' is not supported; expected one of InceptionV3, ...
    """

    modelName = Param(Params._dummy(), "modelName", f"one of {', '.join(APPLICATIONS)}",
                      typeConverter=one_of("modelName", tuple(APPLICATIONS)))
    featureLayer = Param(Params._dummy(), "featureLayer", "for modelFile: the layer whose output is the feature",
                         typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="image", outputCol="features", modelName=None, modelFile=None, featureLayer=None,
                 weightsFile=None, weights="imagenet", batchSize=64, threads=1, errorCol="featurize_error"):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", weights="imagenet", batchSize=64, threads=1,
                         errorCol="featurize_error")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="image", outputCol="features", modelName=None, modelFile=None,
                  featureLayer=None, weightsFile=None, weights="imagenet", batchSize=64, threads=1,
                  errorCol="featurize_error"):
        """setParams(self, *, inputCol="image", outputCol="features", modelName=None, modelFile=None,
        featureLayer=None, weightsFile=None, weights="imagenet", batchSize=64, threads=1,
        errorCol="featurize_error")"""
        return self._set(**self._input_kwargs)

    def setModelName(self, value):
        return self._set(modelName=value)

    def getModelName(self):
        return self._get("modelName")

    def setFeatureLayer(self, value):
        return self._set(featureLayer=value)

    def getFeatureLayer(self):
        return self._get("featureLayer")

    def _get(self, name):
        """The Param's value, or None where it has neither a value nor a default (modelName, ...)."""
        param = self.getParam(name)
        return self.getOrDefault(param) if self.isDefined(param) else None

    def check(self) -> str | None:
        """ValueError unless the Params can run; returns the weights path (None: random or a model file)."""
        name, file = self.getModelName(), self.getModelFile()
        if bool(name) == bool(file):
            raise ValueError("DeepImageFeaturizer: set exactly one of modelName and modelFile")
        if file:
            if not os.path.isfile(file):
                raise ValueError(f"modelFile {file}: no such file")
            return None
        return resolve_weights(name, self.getWeightsFile(), self.getWeights())

    def model_digest(self) -> str:
        weights = self.check()
        return file_digest(self.getModelFile() or weights)

    def _image_column(self, dataset):
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        col = self.getInputCol()
        if col not in dataset.columns:
            if col == "image" and set(IMAGE_FIELDS) <= set(dataset.columns):
                return F.struct(*IMAGE_FIELDS)  # our flat images table: the same fields
            raise ValueError(f"inputCol {col!r} is not a column (columns: {', '.join(dataset.columns)})")
        dtype = dataset.schema[col].dataType
        if not isinstance(dtype, StructType) or not {"height", "width", "nChannels", "data"} <= set(dtype.names):
            raise ValueError(f"inputCol {col!r} has type {dtype.simpleString()}; expected an image struct "
                                "(origin, height, width, nChannels, mode, data) as spark.read.format('image') gives")
        return F.col(col)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector, predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

        weights = self.check()
        image = self._image_column(dataset)
        name, file, layer, threads = self.getModelName(), self.getModelFile(), self.getFeatureLayer(), self.getThreads()

        def make_predict_fn():
            skip_zip_rereads()
            set_tf_threads(threads)
            model, shape, preprocess = build_model(name, file, weights, layer)
            width = int(np.prod(model.output_shape[1:]))

            def predict(heights, widths, channels, datas):
                batch, errors = model_batch(heights, widths, channels, datas, shape)
                out = model.predict_on_batch(preprocess(batch))
                out = np.asarray(out, dtype=np.float32).reshape(len(batch), width)
                return {"features": out, "error": np.array(errors, dtype=object)}
            return predict

        udf = predict_batch_udf(make_predict_fn, return_type=StructType([
            StructField("features", ArrayType(FloatType())), StructField("error", StringType())]),
            batch_size=self.getBatchSize())
        out = self.getOutputCol()
        tmp = f"__{out}_struct"
        return (dataset.withColumn(tmp, udf(image["height"], image["width"], image["nChannels"], image["data"]))
                .withColumn(out, F.when(F.col(f"{tmp}.error").isNull(), array_to_vector(F.col(f"{tmp}.features"))))
                .withColumn(self.getErrorCol(), F.col(f"{tmp}.error"))
                .drop(tmp))


# ---------------------------------------------------------------- SQL functions (pipeline/sql_udf.py)

def register_udf(spark, name: str, model=None, **kwargs):
    """Make a model callable from Spark SQL: `SELECT path, name(image) FROM images`, or
    `name(height, width, nChannels, data)` on an images table; array<float> out, null where a row
    does not decode. `model`: a keras.Model or a .keras/.h5 file, or `modelName=` (+ `weights`,
    `weightsFile`) for a named application's pooled features; `featureLayer`, `preprocessor`
    (RGB uint8 array → model input), `batchSize`, `threads` as for the featurizer."""
    from pipeline.sql_udf import register_udf as register

    return register(spark, name, model, **kwargs)


def registerKerasImageUDF(udf_name, keras_model_or_file_path, preprocessor=None):  # noqa: N802 (sparkdl's name)
    """sparkdl's name for `register_udf`, on the active SparkSession."""
    from pyspark.sql import SparkSession

    return register_udf(SparkSession.getActiveSession(), udf_name, keras_model_or_file_path, preprocessor=preprocessor)


# ---------------------------------------------------------------- the featurize job

KEY_COLUMNS = ("path", "label", "label_index", "split")


def add_arguments(p) -> dict:
    p.add_argument("--input", required=True, help="images table")
    defaults = options.add_output(p, "folder for features/ and rejected/")
    p.add_argument("--model-name", choices=sorted(APPLICATIONS), help="a named Keras application")
    p.add_argument("--model-file", help="a Keras .keras/.h5 model instead of a named one")
    p.add_argument("--feature-layer", help="with --model-file: the layer whose output is the feature")
    p.add_argument("--weights-file", help="ImageNet no-top weights for --model-name (default: Keras' cache folder)")
    p.add_argument("--weights", choices=("imagenet", "random"), help="'random' = untrained, on purpose")
    p.add_argument("--batch-size", type=int, help="images per model call")
    p.add_argument("--threads", type=int, help="TensorFlow threads per Spark task")
    return {**defaults, "model_name": None, "model_file": None, "feature_layer": None, "weights_file": None,
            "weights": "imagenet", "batch_size": 64, "threads": 1}


def featurizer_from(opts) -> DeepImageFeaturizer:
    """The job's options as a checked featurizer; the library's errors become one-line CLI errors."""
    kwargs = dict(modelName=opts.model_name, modelFile=opts.model_file, featureLayer=opts.feature_layer or None,
                  weightsFile=opts.weights_file, weights=opts.weights, batchSize=opts.batch_size, threads=opts.threads)
    try:
        featurizer = DeepImageFeaturizer(**{k: v for k, v in kwargs.items() if v is not None})
        featurizer.check()
    except (TypeError, ValueError) as exc:
        raise PipelineError(str(exc)) from None
    return featurizer


def validate(opts):
    opts.input = options.input_table(opts.input)
    featurizer = featurizer_from(opts)
    options.output(opts)
    return featurizer


def run(spark, opts, record, featurizer: DeepImageFeaturizer) -> dict:
    from pyspark.sql import functions as F

    from pipeline.io import atomic_output

    images = spark.read.parquet(opts.input)
    keys = [c for c in KEY_COLUMNS if c in images.columns]
    name = opts.model_name or os.path.basename(opts.model_file)
    error = featurizer.getErrorCol()
    out = (featurizer.transform(images)
           .select(*keys, "features", F.col(error).alias("featurize_error"),
                   F.lit(name).alias("model_name"), F.lit(featurizer.model_digest()).alias("model_digest")))
    from pipeline.session import set_conf

    set_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", max(opts.batch_size, 64))  # until the job ends
    with atomic_output(spark, opts.output, record, opts.mode) as tmp:
        # Written once with the error column, then split: the model runs over each image once.
        staged = f"{tmp}/_staged"
        out.write.parquet(staged)
        staged_df = spark.read.parquet(staged)
        ok = staged_df.where(F.col("featurize_error").isNull()).drop("featurize_error")
        ok.write.partitionBy(*(["split"] if "split" in keys else [])).parquet(f"{tmp}/features")
        (staged_df.where(F.col("featurize_error").isNotNull())
         .select("path", F.col("featurize_error").alias("reason"), F.lit("featurize").alias("stage"),
                 F.lit(record.run_id).alias("run_id")).coalesce(1).write.parquet(f"{tmp}/rejected"))
        record.rows_in = images.count()
        record.rows_out = spark.read.parquet(f"{tmp}/features").count()
        record.rows_rejected = spark.read.parquet(f"{tmp}/rejected").count()
        from pipeline.io import Files
        Files().delete(staged)
        first = spark.read.parquet(f"{tmp}/features").first() if record.rows_out else None
        dim = len(first["features"]) if first else 0
    record.outputs = {"features": f"{opts.output}/features", "rejected": f"{opts.output}/rejected"}
    record.metrics = {"feature_dim": dim}
    return {"model": name, "feature_dim": dim, "rows_in": record.rows_in, "rows_out": record.rows_out,
            "rows_rejected": record.rows_rejected, **record.outputs}
