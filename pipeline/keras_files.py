"""A user's Keras model over a column of image files, as sparkdl's KerasImageFileTransformer did.

`KerasImageFileTransformer` reads each URI (a local path, a `file:` URI, or anything
`pyarrow.fs.FileSystem.from_uri` opens: hdfs://, s3://, gs://, ...) on the executors, turns the
bytes into the model's input with `imageLoader`, and runs the model through `predict_batch_udf`;
no ingest step first. An unreadable or undecodable file gives a null output and a reason in
`errorCol`. The same column handling (`model_inputs`) feeds `pipeline.estimator`.
"""

from __future__ import annotations

import os

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter

from pipeline import images as im
from pipeline.featurize import IMAGE_FIELDS, set_tf_threads, to_model_input
from pipeline.params import HasBatchSize, HasErrorCol, HasImageLoader, HasModelFile, HasThreads
from pipeline.workers import skip_zip_rereads

LOADER_FILE = "imageLoader.pkl"


def read_uri(uri: str) -> bytes:
    """The bytes at a local path, `file:` URI or any URI pyarrow has a filesystem for."""
    from pyarrow import fs

    if "://" not in uri and not uri.startswith("file:"):
        uri = os.path.abspath(uri)  # from_uri wants an absolute path; Spark's own paths are relative to the cwd too
    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def write_uri(uri: str, content: bytes) -> None:
    from pyarrow import fs

    if "://" not in uri and not uri.startswith("file:"):
        uri = os.path.abspath(uri)
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(content)


def default_loader(content: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """File bytes → the model's HxWxC float32 input in 0..1: decoded as ingest decodes (formats, size limit),
    then converted and resized exactly as the featurizer converts an image row."""
    h, w, c, _, data = im.array_to_row(im.decode_image(content))
    return to_model_input(h, w, c, data, shape) / np.float32(255.0)


def load_keras_model(model_file: str):
    """A Keras model file as the workers see it: local paths directly, other URIs through a local copy."""
    import tempfile

    import keras

    if "://" in model_file and not model_file.startswith("file:"):
        suffix = os.path.splitext(model_file)[1]
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(read_uri(model_file))
            tmp.flush()
            return keras.models.load_model(tmp.name, compile=False)
    return keras.models.load_model(model_file.removeprefix("file:") if model_file.startswith("file:/") else model_file,
                                   compile=False)


def input_kind(dataset, col: str) -> str:
    """'uri' for a string column, 'image' for Spark's image struct or our images table's flat fields."""
    from pyspark.sql.types import StringType, StructType

    if col not in dataset.columns:
        if col == "image" and set(IMAGE_FIELDS) <= set(dataset.columns):
            return "image"
        raise ValueError(f"inputCol {col!r} is not a column (columns: {', '.join(dataset.columns)})")
    dtype = dataset.schema[col].dataType
    if isinstance(dtype, StringType):
        return "uri"
    if isinstance(dtype, StructType) and {"height", "width", "nChannels", "data"} <= set(dtype.names):
        return "image"
    raise ValueError(f"inputCol {col!r} has type {dtype.simpleString()}; expected image URIs (string) or an "
                     "image struct (origin, height, width, nChannels, mode, data)")


def input_columns(dataset, col: str) -> list:
    """The columns `model_inputs` takes, in its argument order."""
    from pyspark.sql import functions as F

    if input_kind(dataset, col) == "uri":
        return [F.col(col)]
    image = F.struct(*IMAGE_FIELDS) if col not in dataset.columns else F.col(col)
    return [image["height"], image["width"], image["nChannels"], image["data"]]


def model_inputs(columns, shape, loader) -> tuple[np.ndarray, list]:
    """One batch of `input_columns` → (N x shape float32 inputs, per-row error or None).

    A URI is read and passed to `loader` (bytes → array); an image row is converted like the
    featurizer's and scaled to 0..1. A failing row gets zeros (so the batch keeps its shape) and a reason."""
    columns = [np.atleast_1d(c) for c in columns]  # predict_batch_udf hands a 1-row batch as 0-d arrays
    batch, errors = [], []
    for values in zip(*columns):
        try:
            if len(values) == 1:
                try:
                    content = read_uri(str(values[0]))
                except OSError as exc:
                    raise im.DecodeError(f"unreadable file {values[0]}: {exc}") from None
                arr = np.asarray(loader(content) if loader else default_loader(content, shape), dtype=np.float32)
            else:
                arr = to_model_input(*values, shape) / np.float32(255.0)
            if arr.shape != tuple(shape):
                raise im.DecodeError(f"imageLoader gave shape {arr.shape}; the model takes {tuple(shape)}")
            batch.append(arr)
            errors.append(None)
        except (im.DecodeError, ValueError, TypeError) as exc:
            batch.append(np.zeros(shape, np.float32))
            errors.append(str(exc) if len(values) == 1 else f"undecodable image row: {exc}")
    return np.stack(batch), errors


class _Writer(DefaultParamsWriter):
    """Params as JSON, as DefaultParamsWriter writes them, except the loader: a Python function is
    pickled beside them with cloudpickle, which Spark itself uses to ship functions to workers."""

    def saveImpl(self, path):
        from pyspark import cloudpickle

        instance = self.instance.copy()
        loader = instance.getImageLoader()
        if instance.isSet(instance.imageLoader):
            instance.clear(instance.imageLoader)
        DefaultParamsWriter(instance).saveImpl(path)
        if loader is not None:
            write_uri(os.path.join(path, LOADER_FILE), cloudpickle.dumps(loader))
        self.instance._save_extra(path)


class _Reader(DefaultParamsReader):
    """Unpickles a saved custom loader (only a folder this project's writer made, and that you trust,
    should be loaded: pickle runs code); a stage saved with the default loader has no pickle."""

    def load(self, path):
        import pickle

        instance = super().load(path)
        try:
            loader = pickle.loads(read_uri(os.path.join(path, LOADER_FILE)))
        except FileNotFoundError:
            loader = None
        if loader is not None:
            instance._set(imageLoader=loader)
        instance._load_extra(path)
        return instance


class KerasImageFileTransformer(Transformer, HasInputCol, HasOutputCol, HasModelFile, HasImageLoader, HasBatchSize,
                                HasThreads, HasErrorCol, DefaultParamsReadable, DefaultParamsWritable):
    """Apply a Keras model file to image URIs (or an image struct column).

    `imageLoader(bytes) -> numpy array` gives the model input for one file (sparkdl's loader took the
    URI; here the file is read for it, so every pyarrow filesystem works); the default decodes as
    ingest does and resizes to the model's input, scaled to 0..1. The output is a vector of the
    model's (flattened) output. Saving pickles a custom loader beside the Params.

    >>> t = KerasImageFileTransformer(inputCol="uri", modelFile="model.keras", batchSize=16)
    >>> t.getInputCol(), t.getOutputCol(), t.getBatchSize(), t.getImageLoader() is None
    ('uri', 'predictions', 16, True)
    >>> t.setImageLoader("resize")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: imageLoader 'resize': expected a Python callable ...
    """

    @keyword_only
    def __init__(self, *, inputCol="uri", outputCol="predictions", modelFile=None, imageLoader=None, batchSize=64,
                 threads=1, errorCol="predict_error"):
        super().__init__()
        self._setDefault(inputCol="uri", outputCol="predictions", imageLoader=None, batchSize=64, threads=1,
                         errorCol="predict_error")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="uri", outputCol="predictions", modelFile=None, imageLoader=None, batchSize=64,
                  threads=1, errorCol="predict_error"):
        """setParams(self, *, inputCol="uri", outputCol="predictions", modelFile=None, imageLoader=None,
        batchSize=64, threads=1, errorCol="predict_error")"""
        return self._set(**self._input_kwargs)

    def write(self):
        return _Writer(self)

    @classmethod
    def read(cls):
        return _Reader(cls)

    def _save_extra(self, path):
        """Subclasses save what the Params do not hold (a trained model file)."""

    def _load_extra(self, path):
        pass

    def check(self) -> str:
        file = self.getModelFile()
        if not file:
            raise ValueError(f"{type(self).__name__}: set modelFile (a Keras .keras/.h5 model)")
        if "://" not in file and not os.path.isfile(file.removeprefix("file:")):
            raise ValueError(f"modelFile {file}: no such file")
        return file

    def _extra_columns(self, dataset, output):
        """Subclasses add columns derived from the output vector (a prediction)."""
        return dataset

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector, predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

        file = self.check()
        columns = input_columns(dataset, self.getInputCol())
        loader, threads, uris = self.getImageLoader(), self.getThreads(), len(columns) == 1

        def make_predict_fn():
            skip_zip_rereads()
            set_tf_threads(threads)
            model = load_keras_model(file)
            shape = tuple(model.input_shape[1:])
            width = int(np.prod(model.output_shape[1:]))

            def run(*cols):
                x, errors = model_inputs(cols, shape, loader)
                out = np.asarray(model.predict_on_batch(x), dtype=np.float32).reshape(len(x), width)
                return {"output": out, "error": np.array(errors, dtype=object)}
            # predict_batch_udf counts the function's parameters: one URI column, or the four image fields
            if uris:
                return lambda uri: run(uri)
            return lambda heights, widths, channels, datas: run(heights, widths, channels, datas)

        udf = predict_batch_udf(make_predict_fn, return_type=StructType([
            StructField("output", ArrayType(FloatType())), StructField("error", StringType())]),
            batch_size=self.getBatchSize())
        out, tmp = self.getOutputCol(), f"__{self.getOutputCol()}_struct"
        result = (dataset.withColumn(tmp, udf(*columns))
                  .withColumn(out, F.when(F.col(f"{tmp}.error").isNull(), array_to_vector(F.col(f"{tmp}.output"))))
                  .withColumn(self.getErrorCol(), F.col(f"{tmp}.error"))
                  .drop(tmp))
        return self._extra_columns(result, out)

