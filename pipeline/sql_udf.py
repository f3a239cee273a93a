"""A Keras model as a Spark SQL function over images, as sparkdl's registerKerasImageUDF made one.

`register_udf(spark, "my_model", model=...)` registers a pandas UDF (with `spark.udf.register`)
that takes Spark's `image` struct, `my_model(image)`, or an images table's four fields,
`my_model(height, width, nChannels, data)`, and returns the model's output as `array<float>`
(null for a row that does not decode). The model (a `keras.Model` or a .keras/.h5 file) travels
inside the UDF as the file's bytes, so executors need no shared path to it; each Python worker
loads it once (pyspark's ModelCache, as predict_batch_udf does). `pipeline.featurize.register_udf`
and `registerKerasImageUDF` are the public names.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Iterator, Union

import numpy as np
import pandas as pd  # at module level: pandas_udf resolves run's type hints in this module's globals

from pipeline import images as im
from pipeline.featurize import APPLICATIONS, build_model, resolve_weights, set_tf_threads, to_model_input
from pipeline.workers import skip_zip_rereads


def _model_bytes(model) -> tuple[bytes, str]:
    """(file bytes, suffix) of a keras.Model or a model file path."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ValueError(f"model {path}: no such file (expected a Keras .keras/.h5 file or a keras.Model)")
        with open(path, "rb") as fh:
            return fh.read(), os.path.splitext(path)[1] or ".keras"
    if not hasattr(model, "save") or not hasattr(model, "predict"):
        raise ValueError(f"model {type(model).__name__}: expected a keras.Model or a .keras/.h5 file path")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "model.keras"))
        with open(os.path.join(tmp, "model.keras"), "rb") as fh:
            return fh.read(), ".keras"


def _columns(batch):
    """A batch of the UDF's argument(s) → (heights, widths, channels, datas)."""
    if isinstance(batch, tuple):  # four flat columns
        if len(batch) != 4:
            raise ValueError(f"expected image(height, width, nChannels, data) or an image struct; got {len(batch)} "
                             "arguments")
        return [s.to_numpy() for s in batch]
    return [batch[f].to_numpy() for f in ("height", "width", "nChannels", "data")]


def image_udf(*, model=None, modelName=None, weights="imagenet", weightsFile=None, featureLayer=None,
              preprocessor=None, batchSize=64, threads=1):
    """The pandas UDF (not registered): a model file/object's output, or a named application's pooled features."""
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    if (model is None) == (modelName is None):
        raise ValueError("register_udf: pass exactly one of model (a keras.Model or a model file) and modelName")
    if modelName is not None and modelName not in APPLICATIONS:
        raise ValueError(f"modelName {modelName!r} is not supported; expected one of {', '.join(APPLICATIONS)}")
    if preprocessor is not None and not callable(preprocessor):
        raise ValueError(f"preprocessor {preprocessor!r}: expected a Python callable (RGB uint8 array → model input)")
    content, suffix = _model_bytes(model) if model is not None else (None, None)
    weights_path = resolve_weights(modelName, weightsFile, weights) if modelName else None
    key = uuid.uuid4()  # a new key per registration, so a worker never reuses another registration's model

    def load():
        from pyspark.ml.model_cache import ModelCache

        cached = ModelCache.get(key)
        if cached is None:
            skip_zip_rereads()
            set_tf_threads(threads)
            if content is None:
                cached = build_model(modelName, None, weights_path, None)
            else:
                with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
                    tmp.write(content)
                    tmp.flush()
                    cached = build_model(None, tmp.name, None, featureLayer)
            ModelCache.add(key, cached)
        return cached

    def run(batches: Iterator[Union[pd.Series, pd.DataFrame]]) -> Iterator[pd.Series]:
        model_, shape, preprocess = load()
        for batch in batches:
            out = []
            for start in range(0, len(batch[0] if isinstance(batch, tuple) else batch), batchSize):
                part = tuple(s.iloc[start:start + batchSize] for s in batch) if isinstance(batch, tuple) \
                    else batch.iloc[start:start + batchSize]
                out.extend(_predict(model_, shape, preprocess, preprocessor, _columns(part)))
            yield pd.Series(out, dtype=object)

    return pandas_udf(run, ArrayType(FloatType()))


def _predict(model, shape, preprocess, preprocessor, columns) -> list:
    inputs, ok = [], []
    for h, w, c, d in zip(*columns):
        try:
            if preprocessor is None:
                inputs.append(to_model_input(h, w, c, d, shape))
            else:
                inputs.append(np.asarray(preprocessor(im.row_to_array(int(h), int(w), int(c), d)), np.float32))
            ok.append(True)
        except (im.DecodeError, ValueError, TypeError):
            ok.append(False)
    if not inputs:
        return [None] * len(ok)
    x = np.stack(inputs)
    out = np.asarray(model.predict_on_batch(x if preprocessor else preprocess(x)), np.float32).reshape(len(x), -1)
    rows = iter(out)
    return [next(rows).tolist() if good else None for good in ok]


def register_udf(spark, name: str, model=None, **kwargs):
    """Register `name` in Spark SQL; returns the UDF (usable in DataFrame code too). See `image_udf`."""
    return spark.udf.register(name, image_udf(model=model, **kwargs))
