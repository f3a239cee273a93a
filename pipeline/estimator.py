"""Fit a user's Keras model on image files as a Spark ML Estimator, as sparkdl's KerasImageFileEstimator did.

`KerasImageFileEstimator.fit` gives a `KerasImageFileModel` (a `KerasImageFileTransformer` with a
`prediction` column), so `ParamGridBuilder` + `CrossValidator` tune it and `Pipeline` holds it.

Where it trains, and why: like sparkdl, the images are decoded on the executors and the arrays
collected once to the driver; unlike sparkdl (one RDD task per param map), the arrays go to one
.npz file under `stagingDir` and `fitMultiple` starts one Spark job with one task per param map
(`spark.range(n, numPartitions=n).mapInPandas`), each task loading the .npz, compiling the model
from the Params and fitting it, then writing the trained model next to the data. Only DataFrame
APIs (no RDD, no broadcast), and the training runs where Spark has cores, not in the driver. The data must fit in one task's memory (it is one Keras `fit`), and `stagingDir` must be a
path every executor reads and writes (local temp is only right for local mode or one machine).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import uuid

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasLabelCol, HasOutputCol, HasPredictionCol, HasSeed
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from pipeline.featurize import set_tf_threads
from pipeline.keras_files import (KerasImageFileTransformer, input_columns,
                                  load_keras_model, model_inputs, read_uri, write_uri)
from pipeline.params import HasBatchSize, HasErrorCol, HasImageLoader, HasModelFile, HasThreads
from pipeline.workers import skip_zip_rereads

FIT_PARAMS = {"epochs", "batch_size", "verbose", "validation_split", "shuffle", "class_weight", "initial_epoch",
              "steps_per_epoch"}


def _fit_params(value):
    if not isinstance(value, dict) or not set(value) <= FIT_PARAMS:
        raise TypeError(f"kerasFitParams {value!r}: expected a dict of Keras fit() arguments, keys among "
                        f"{', '.join(sorted(FIT_PARAMS))}")
    return dict(value)


def _learning_rate(value):
    value = TypeConverters.toFloat(value)
    if not value > 0:
        raise TypeError(f"learningRate {value}: expected a positive number")
    return value


class KerasImageFileModel(KerasImageFileTransformer, Model, HasPredictionCol):
    """The fitted model: the trained Keras file's output vector, and its argmax as `predictionCol`.

    Saving copies the trained model file into the saved folder, so a saved CrossValidatorModel or
    PipelineModel does not depend on `stagingDir`."""

    trainingConfig = Param(Params._dummy(), "trainingConfig", "JSON: how this model was trained (optimizer, "
                           "learning rate, loss, fit arguments, seed)", typeConverter=TypeConverters.toString)
    history = None  # the Keras fit history and the training process, for the model fitted in this session

    @keyword_only
    def __init__(self, *, inputCol="uri", outputCol="predictions", modelFile=None, imageLoader=None, batchSize=64,
                 threads=1, errorCol="predict_error", predictionCol="prediction", trainingConfig=None):
        kwargs = self._input_kwargs  # the parent's keyword_only __init__ replaces it
        super().__init__()
        self._setDefault(predictionCol="prediction")
        self._set(**kwargs)

    def getTrainingConfig(self) -> dict:
        return json.loads(self.getOrDefault(self.trainingConfig)) if self.isDefined(self.trainingConfig) else {}

    def _extra_columns(self, dataset, output):
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F

        tmp = f"__{output}_array"  # SQL, because pyspark 3.5's array_position takes only a literal value
        return (dataset.withColumn(tmp, vector_to_array(F.col(output)))
                .withColumn(self.getPredictionCol(),
                            F.expr(f"CAST(array_position(`{tmp}`, array_max(`{tmp}`)) - 1 AS DOUBLE)"))
                .drop(tmp))

    def _save_extra(self, path):
        ext = os.path.splitext(self.getModelFile())[1]
        write_uri(os.path.join(path, "model" + ext), read_uri(self.getModelFile()))

    def _load_extra(self, path):
        self._set(modelFile=os.path.join(path, "model" + os.path.splitext(self.getModelFile())[1]))


def fit_one(conf: dict, data_uri: str, out_uri: str) -> dict:
    """One param map's training, in a Spark task: compile the user's model from the Params and fit it."""
    import keras

    keras.utils.set_random_seed(conf["seed"])
    with np.load(io.BytesIO(read_uri(data_uri))) as data:
        x, y = data["x"], data["y"]
    model = load_keras_model(conf["modelFile"])
    optimizer = keras.optimizers.get(conf["optimizer"])
    if conf["learningRate"] is not None:
        optimizer = type(optimizer)(learning_rate=conf["learningRate"])
    loss = keras.losses.get(conf["loss"])
    if conf["loss"] in ("categorical_crossentropy", "categorical_focal_crossentropy"):
        y = keras.utils.to_categorical(y, int(np.prod(model.output_shape[1:])))
    model.compile(optimizer=optimizer, loss=loss)
    history = model.fit(x, y, **conf["fitParams"]).history
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        with open(os.path.join(tmp, "model.keras"), "rb") as fh:
            write_uri(out_uri, fh.read())
    return {"loss": [float(v) for v in history.get("loss", [])], "pid": os.getpid()}


class _FitAllOnce:
    """fitMultiple's iterator: CrossValidator's threads call next() concurrently; the first call trains
    every param map in one Spark job, the rest hand out the results."""

    def __init__(self, fit_all, n):
        self._fit_all, self._n, self._next, self._models = fit_all, n, 0, None
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self._next >= self._n:
                raise StopIteration
            if self._models is None:
                self._models = self._fit_all()
            index, self._next = self._next, self._next + 1
            return index, self._models[index]


class KerasImageFileEstimator(Estimator, HasInputCol, HasOutputCol, HasLabelCol, HasPredictionCol, HasSeed,
                              HasModelFile, HasImageLoader, HasBatchSize, HasThreads, HasErrorCol,
                              DefaultParamsReadable, DefaultParamsWritable):
    """Fit a Keras model file (`modelFile`, compiled here from `kerasOptimizer`, `learningRate`, `kerasLoss`
    and `kerasFitParams`) on image URIs (or an image struct column) and integer class labels.

    >>> est = KerasImageFileEstimator(modelFile="m.keras", kerasFitParams={"epochs": 3}, learningRate=0.01)
    >>> est.getKerasOptimizer(), est.getKerasLoss(), est.getKerasFitParams(), est.getLearningRate()
    ('adam', 'sparse_categorical_crossentropy', {'epochs': 3}, 0.01)
    >>> est.setKerasFitParams({"epochs": 3, "lr": 0.1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: ...kerasFitParams {...}: expected a dict of Keras fit() arguments, keys among batch_size, ...
    """

    kerasOptimizer = Param(Params._dummy(), "kerasOptimizer", "a Keras optimizer name (adam, sgd, rmsprop, ...)",
                           typeConverter=TypeConverters.toString)
    learningRate = Param(Params._dummy(), "learningRate", "the optimizer's learning rate (default: Keras' own)",
                         typeConverter=_learning_rate)
    kerasLoss = Param(Params._dummy(), "kerasLoss", "a Keras loss name; labels are class indices "
                      "(one-hot encoded here for categorical_crossentropy)", typeConverter=TypeConverters.toString)
    kerasFitParams = Param(Params._dummy(), "kerasFitParams", "Keras fit() arguments: epochs, batch_size, ...",
                           typeConverter=_fit_params)
    stagingDir = Param(Params._dummy(), "stagingDir", "a folder (path or URI) all executors share, for the "
                       "training data and the trained models (default: a local temp folder)",
                       typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="uri", outputCol="predictions", labelCol="label", predictionCol="prediction",
                 modelFile=None, imageLoader=None, kerasOptimizer="adam", learningRate=None,
                 kerasLoss="sparse_categorical_crossentropy", kerasFitParams=None, stagingDir=None, seed=0,
                 batchSize=64, threads=1, errorCol="predict_error"):
        super().__init__()
        self._setDefault(inputCol="uri", outputCol="predictions", imageLoader=None, kerasOptimizer="adam",
                         kerasLoss="sparse_categorical_crossentropy", kerasFitParams={"epochs": 1, "verbose": 0},
                         seed=0, batchSize=64, threads=1, errorCol="predict_error")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="uri", outputCol="predictions", labelCol="label", predictionCol="prediction",
                  modelFile=None, imageLoader=None, kerasOptimizer="adam", learningRate=None,
                  kerasLoss="sparse_categorical_crossentropy", kerasFitParams=None, stagingDir=None, seed=0,
                  batchSize=64, threads=1, errorCol="predict_error"):
        """setParams(self, *, inputCol="uri", outputCol="predictions", labelCol="label", predictionCol="prediction",
        modelFile=None, imageLoader=None, kerasOptimizer="adam", learningRate=None,
        kerasLoss="sparse_categorical_crossentropy", kerasFitParams=None, stagingDir=None, seed=0, batchSize=64,
        threads=1, errorCol="predict_error")"""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def _get(self, name):
        param = self.getParam(name)
        return self.getOrDefault(param) if self.isDefined(param) else None

    # saved and loaded as the transformer is (a custom imageLoader pickled beside the Params)
    write, read = KerasImageFileTransformer.write, KerasImageFileTransformer.read
    _save_extra, _load_extra = KerasImageFileTransformer._save_extra, KerasImageFileTransformer._load_extra

    def getKerasOptimizer(self):
        return self.getOrDefault(self.kerasOptimizer)

    def setKerasOptimizer(self, value):
        return self._set(kerasOptimizer=value)

    def getLearningRate(self):
        return self._get("learningRate")

    def setLearningRate(self, value):
        return self._set(learningRate=value)

    def getKerasLoss(self):
        return self.getOrDefault(self.kerasLoss)

    def setKerasLoss(self, value):
        return self._set(kerasLoss=value)

    def getKerasFitParams(self):
        return self.getOrDefault(self.kerasFitParams)

    def setKerasFitParams(self, value):
        return self._set(kerasFitParams=value)

    def getStagingDir(self):
        return self._get("stagingDir")

    def setStagingDir(self, value):
        return self._set(stagingDir=value)

    def check(self):
        """ValueError naming the Param unless a fit can run (checked on the driver, before any Spark job)."""
        import keras

        KerasImageFileTransformer.check(self)
        try:
            keras.optimizers.get(self.getKerasOptimizer())
        except ValueError:
            raise ValueError(f"kerasOptimizer {self.getKerasOptimizer()!r} is not a Keras optimizer "
                             "(expected a name such as adam, sgd, rmsprop)") from None
        try:
            keras.losses.get(self.getKerasLoss())
        except ValueError:
            raise ValueError(f"kerasLoss {self.getKerasLoss()!r} is not a Keras loss (expected a name such as "
                             "sparse_categorical_crossentropy)") from None

    def _conf(self) -> dict:
        return {"modelFile": self.getModelFile(), "optimizer": self.getKerasOptimizer(), "loss": self.getKerasLoss(),
                "learningRate": self.getLearningRate(), "fitParams": self.getKerasFitParams(), "seed": self.getSeed()}

    def _stage_data(self, dataset, staging: str) -> str:
        """Decode on the executors, collect the arrays once, and write them as one .npz for the training tasks."""
        import pandas as pd
        from pyspark.sql import functions as F

        if self.getLabelCol() not in dataset.columns:
            raise ValueError(f"labelCol {self.getLabelCol()!r} is not a column (columns: {', '.join(dataset.columns)})")
        model = load_keras_model(self.getModelFile())
        shape = tuple(model.input_shape[1:])
        cols = input_columns(dataset, self.getInputCol())
        names = [f"_in{i}" for i in range(len(cols))]
        loader = self.getImageLoader()

        def decode(batches):
            skip_zip_rereads()
            for pdf in batches:
                x, errors = model_inputs([pdf[n].to_numpy() for n in names], shape, loader)
                yield pd.DataFrame({"x": [a.tobytes() for a in x], "y": pdf["_label"], "error": errors})

        rows = (dataset.select(*[c.alias(n) for c, n in zip(cols, names)], F.col(self.getLabelCol()).cast("int")
                               .alias("_label"))
                .mapInPandas(decode, "x binary, y int, error string").toPandas())
        ok = rows[rows["error"].isna()]
        if ok.empty:
            reason = rows["error"].iloc[0] if len(rows) else "the dataset is empty"
            raise ValueError(f"KerasImageFileEstimator: no usable training rows ({reason})")
        x = np.frombuffer(b"".join(ok["x"]), np.float32).reshape(len(ok), *shape)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=ok["y"].to_numpy(np.int64))
        uri = os.path.join(staging, f"data-{uuid.uuid4().hex}.npz")
        write_uri(uri, buf.getvalue())
        return uri

    def _fit_all(self, dataset, param_maps) -> list[KerasImageFileModel]:
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F

        self.check()
        staging = self.getStagingDir() or tempfile.mkdtemp(prefix="keras-estimator-")
        data_uri = self._stage_data(dataset, staging)
        run = uuid.uuid4().hex
        confs = [json.dumps({**self.copy(pm)._conf(), "out": os.path.join(staging, f"model-{run}-{i}.keras")})
                 for i, pm in enumerate(param_maps)]
        threads = self.getThreads()

        def train(batches):
            import pandas as pd

            skip_zip_rereads()
            set_tf_threads(threads)
            for pdf in batches:
                for index, conf in zip(pdf["index"], pdf["conf"]):
                    conf = json.loads(conf)
                    history = fit_one(conf, data_uri, conf["out"])
                    yield pd.DataFrame({"index": [int(index)], "history": [json.dumps(history)]})

        spark = SparkSession.getActiveSession() or dataset.sparkSession
        n = len(confs)
        done = (spark.range(0, n, 1, numPartitions=n)  # one partition, so one task, per param map
                .select(F.col("id").alias("index"), F.element_at(F.array(*map(F.lit, confs)), F.col("id").cast("int") + 1)
                        .alias("conf"))
                .mapInPandas(train, "index long, history string").collect())
        histories = {r["index"]: json.loads(r["history"]) for r in done}
        models = []
        for i, pm in enumerate(param_maps):
            est = self.copy(pm)
            model = KerasImageFileModel(inputCol=est.getInputCol(), outputCol=est.getOutputCol(),
                                        modelFile=json.loads(confs[i])["out"], batchSize=est.getBatchSize(),
                                        threads=est.getThreads(), errorCol=est.getErrorCol(),
                                        predictionCol=est.getPredictionCol(),
                                        trainingConfig=json.dumps({k: v for k, v in json.loads(confs[i]).items()
                                                                   if k not in ("out", "modelFile")}))
            if est.getImageLoader() is not None:
                model.setImageLoader(est.getImageLoader())
            model.history = histories[i]
            models.append(model)
        return models

    def fitMultiple(self, dataset, paramMaps):
        param_maps = list(paramMaps)
        return _FitAllOnce(lambda: self._fit_all(dataset, param_maps), len(param_maps))

    def _fit(self, dataset):
        return self._fit_all(dataset, [{}])[0]
