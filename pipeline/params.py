"""The Params the sparkdl classes share, declared once, as pyspark.ml.param.shared declares HasInputCol.

Each mixin holds one Param and its accessors; DeepImageFeaturizer, DeepImagePredictor,
KerasImageFileTransformer and KerasImageFileEstimator take the ones they have. Bad values raise
TypeError when set, pyspark's convention.
"""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters


def one_of(name: str, allowed):
    """A Param type converter that checks the value when it is set, as sparkdl's did for modelName."""
    def convert(value):
        value = TypeConverters.toString(value)
        if value not in allowed:
            raise TypeError(f"{name} {value!r} is not supported; expected one of {', '.join(allowed)}")
        return value
    return convert


def is_callable(value):
    if value is not None and not callable(value):
        raise TypeError(f"imageLoader {value!r}: expected a Python callable (file bytes → numpy array)")
    return value


def positive(name: str):
    def convert(value):
        value = TypeConverters.toInt(value)
        if value < 1:
            raise TypeError(f"{name} {value}: expected a positive number")
        return value
    return convert


def optional(params: Params, name: str):
    """The Param's value, or None where it has neither a value nor a default (modelFile, ...)."""
    param = params.getParam(name)
    return params.getOrDefault(param) if params.isDefined(param) else None


class HasBatchSize(Params):
    batchSize = Param(Params._dummy(), "batchSize", "images per model call", typeConverter=positive("batchSize"))

    def setBatchSize(self, value):
        return self._set(batchSize=value)

    def getBatchSize(self):
        return self.getOrDefault(self.batchSize)


class HasThreads(Params):
    threads = Param(Params._dummy(), "threads", "TensorFlow threads per Python worker",
                    typeConverter=positive("threads"))

    def setThreads(self, value):
        return self._set(threads=value)

    def getThreads(self):
        return self.getOrDefault(self.threads)


class HasErrorCol(Params):
    errorCol = Param(Params._dummy(), "errorCol", "column for the reason a row could not be used (null: it was)",
                     typeConverter=TypeConverters.toString)

    def setErrorCol(self, value):
        return self._set(errorCol=value)

    def getErrorCol(self):
        return self.getOrDefault(self.errorCol)


class HasModelFile(Params):
    modelFile = Param(Params._dummy(), "modelFile", "a Keras .keras/.h5 model file (a path or URI)",
                      typeConverter=TypeConverters.toString)

    def setModelFile(self, value):
        return self._set(modelFile=value)

    def getModelFile(self):
        return optional(self, "modelFile")


class HasImageLoader(Params):
    imageLoader = Param(Params._dummy(), "imageLoader", "Python callable: file bytes → model input array "
                        "(default: decode, resize to the model input, scale to 0..1)", typeConverter=is_callable)

    def setImageLoader(self, value):
        return self._set(imageLoader=value)

    def getImageLoader(self):
        return self.getOrDefault(self.imageLoader)


class HasWeights(Params):
    weights = Param(Params._dummy(), "weights", "'imagenet' (from a local file) or 'random' (untrained, explicit)",
                    typeConverter=one_of("weights", ("imagenet", "random")))
    weightsFile = Param(Params._dummy(), "weightsFile", "ImageNet weights file for modelName",
                        typeConverter=TypeConverters.toString)

    def setWeights(self, value):
        return self._set(weights=value)

    def getWeights(self):
        return self.getOrDefault(self.weights)

    def setWeightsFile(self, value):
        return self._set(weightsFile=value)

    def getWeightsFile(self):
        return optional(self, "weightsFile")
