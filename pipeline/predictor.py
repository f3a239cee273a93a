"""ImageNet classification with a named Keras application, as sparkdl's DeepImagePredictor did.

`DeepImagePredictor` runs the full network (with its 1000-way classifier) over an image column
through `predict_batch_udf`, with the featurizer's preprocessing. `decodePredictions=True` turns
the probabilities into the `topK` (class, description, probability) structs that Keras'
`decode_predictions` gives, from the class index that ships with this package
(`pipeline/imagenet_class_index.json`: Keras' own file, md5 c2c37ea517e94d9795004a39431a14cb, the
hash Keras checks; vendored byte for byte from the public GitHub repository
JuneLeGency/Fast-Gradient-Signed-Method-FGSM, commit e6d687c7, because this machine cannot
download it and the package must work offline).
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from pipeline.featurize import (APPLICATIONS, DeepImageFeaturizer, keras_cache_dir, model_batch,
                                set_tf_threads)
from pipeline.params import HasBatchSize, HasErrorCol, HasThreads, HasWeights, one_of, positive
from pipeline.workers import skip_zip_rereads

CLASS_INDEX_FILE = "imagenet_class_index.json"

# The file Keras itself caches under ~/.keras/models/ for include_top=True (keras.applications).
TOP_FILES = {
    "InceptionV3": "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "Xception": "xception_weights_tf_dim_ordering_tf_kernels.h5",
    "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "VGG16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "VGG19": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "MobileNetV2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "EfficientNetB0": "efficientnetb0.h5",
}


@functools.lru_cache(maxsize=1)
def class_index() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet classes in the networks' output order: (wnid, name), e.g. ('n01440764', 'tench')."""
    raw = json.loads(resources.files("pipeline").joinpath(CLASS_INDEX_FILE).read_text())
    return tuple(tuple(raw[str(i)]) for i in range(len(raw)))


def top_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k largest, largest first: the expression Keras' decode_predictions
    uses, so ties come out in the same order."""
    return np.stack([row.argsort()[-k:][::-1] for row in np.atleast_2d(probabilities)])


def decode_predictions(probabilities, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Keras' decode_predictions on the bundled class index, offline: per row, (wnid, name, p) top first."""
    probabilities = np.atleast_2d(np.asarray(probabilities))
    if probabilities.shape[1] != len(class_index()):
        raise ValueError(f"expected {len(class_index())} ImageNet probabilities per row, got shape "
                         f"{probabilities.shape}")
    names = class_index()
    return [[(*names[i], float(row[i])) for i in idx] for row, idx in zip(probabilities, top_indices(probabilities, top))]


def resolve_top_weights(model_name: str, weights_file: str | None, weights: str) -> str | None:
    """The classifier (include_top) weights file for a named model, or None for explicit random weights."""
    if weights == "random":
        return None
    path = weights_file or os.path.join(keras_cache_dir(), TOP_FILES[model_name])
    if not os.path.isfile(path):
        raise ValueError(
            f"DeepImagePredictor {model_name} needs its ImageNet classifier weights and they cannot be downloaded "
            f"here: put {TOP_FILES[model_name]} in {keras_cache_dir()}/ (or pass weightsFile=/path/to/it); "
            "weights='random' runs untrained on purpose")
    return path


def build_classifier(model_name: str, weights_path: str | None):
    """(keras model with its 1000-way softmax, input (h, w, c), preprocess) for a named application."""
    import keras

    app = APPLICATIONS[model_name]
    keras.utils.set_random_seed(0)  # "random" weights are at least the same random weights
    model = getattr(keras.applications, app.cls)(include_top=True, weights=weights_path, input_shape=(*app.size, 3))
    return model, (*app.size, 3), getattr(keras.applications, app.module).preprocess_input


class DeepImagePredictor(Transformer, HasInputCol, HasOutputCol, HasWeights, HasBatchSize, HasThreads, HasErrorCol,
                         DefaultParamsReadable, DefaultParamsWritable):
    """Classify an image column (Spark's image struct, or our images table) into the 1000 ImageNet classes.

    `outputCol` is a vector of the 1000 probabilities, or with `decodePredictions=True` an array of
    the `topK` structs (class: wnid, description: name, probability), largest first. Rows that
    cannot be decoded get a null output and a reason in `errorCol`.

    >>> predictor = DeepImagePredictor(modelName="MobileNetV2", weights="random", decodePredictions=True, topK=3)
    >>> predictor.getTopK(), predictor.getDecodePredictions(), predictor.getOutputCol()
    (3, True, 'predicted_labels')
    >>> DeepImagePredictor(modelName="MobileNetV2", topK=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: ...topK 0: expected a positive number
    """

    modelName = Param(Params._dummy(), "modelName", f"one of {', '.join(APPLICATIONS)}",
                      typeConverter=one_of("modelName", tuple(APPLICATIONS)))
    decodePredictions = Param(Params._dummy(), "decodePredictions",
                              "output the topK (class, description, probability) instead of the probability vector",
                              typeConverter=TypeConverters.toBoolean)
    topK = Param(Params._dummy(), "topK", "classes kept per image when decodePredictions", typeConverter=positive("topK"))

    @keyword_only
    def __init__(self, *, inputCol="image", outputCol="predicted_labels", modelName=None, weightsFile=None,
                 weights="imagenet", decodePredictions=False, topK=5, batchSize=64, threads=1, errorCol="predict_error"):
        super().__init__()
        self._setDefault(inputCol="image", outputCol="predicted_labels", weights="imagenet", decodePredictions=False,
                         topK=5, batchSize=64, threads=1, errorCol="predict_error")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="image", outputCol="predicted_labels", modelName=None, weightsFile=None,
                  weights="imagenet", decodePredictions=False, topK=5, batchSize=64, threads=1, errorCol="predict_error"):
        """setParams(self, *, inputCol="image", outputCol="predicted_labels", modelName=None, weightsFile=None,
        weights="imagenet", decodePredictions=False, topK=5, batchSize=64, threads=1, errorCol="predict_error")"""
        return self._set(**self._input_kwargs)

    # modelName is the featurizer's Param (the same named models), with its accessors
    _get = DeepImageFeaturizer._get
    _image_column = DeepImageFeaturizer._image_column
    setModelName, getModelName = DeepImageFeaturizer.setModelName, DeepImageFeaturizer.getModelName

    def setDecodePredictions(self, value):
        return self._set(decodePredictions=value)

    def getDecodePredictions(self):
        return self.getOrDefault(self.decodePredictions)

    def setTopK(self, value):
        return self._set(topK=value)

    def getTopK(self):
        return self.getOrDefault(self.topK)

    def check(self) -> str | None:
        """ValueError unless the Params can run; returns the weights path (None: random)."""
        if not self.getModelName():
            raise ValueError(f"DeepImagePredictor: set modelName (one of {', '.join(APPLICATIONS)})")
        return resolve_top_weights(self.getModelName(), self.getWeightsFile(), self.getWeights())

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector, predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, IntegerType, StringType, StructField, StructType

        weights = self.check()
        image = self._image_column(dataset)
        name, threads, k = self.getModelName(), self.getThreads(), self.getTopK()

        def make_predict_fn():
            skip_zip_rereads()
            set_tf_threads(threads)
            model, shape, preprocess = build_classifier(name, weights)

            def predict(heights, widths, channels, datas):
                batch, errors = model_batch(heights, widths, channels, datas, shape)
                probs = np.asarray(model.predict_on_batch(preprocess(batch)), dtype=np.float32)
                return {"probabilities": probs, "top": top_indices(probs, k).astype(np.int32),
                        "error": np.array(errors, dtype=object)}
            return predict

        udf = predict_batch_udf(make_predict_fn, return_type=StructType([
            StructField("probabilities", ArrayType(FloatType())), StructField("top", ArrayType(IntegerType())),
            StructField("error", StringType())]), batch_size=self.getBatchSize())
        out, tmp = self.getOutputCol(), f"__{self.getOutputCol()}_struct"
        probs, top = F.col(f"{tmp}.probabilities"), F.col(f"{tmp}.top")
        if self.getDecodePredictions():
            # The class names join in the JVM: a literal array indexed by the workers' top-k indices.
            wnids = F.array(*[F.lit(c) for c, _ in class_index()])
            names = F.array(*[F.lit(n) for _, n in class_index()])
            value = F.transform(top, lambda i: F.struct(
                F.element_at(wnids, i + 1).alias("class"), F.element_at(names, i + 1).alias("description"),
                F.element_at(probs, i + 1).alias("probability")))
        else:
            value = array_to_vector(probs)
        return (dataset.withColumn(tmp, udf(image["height"], image["width"], image["nChannels"], image["data"]))
                .withColumn(out, F.when(F.col(f"{tmp}.error").isNull(), value))
                .withColumn(self.getErrorCol(), F.col(f"{tmp}.error"))
                .drop(tmp))
