"""How each job's model goes into its MLflow run (pipeline/tracking.py calls `log` once the output is
committed), with a signature and an input example taken from the job's own input table.

* train_digits, torch engine: a pyfunc model (pipeline/mlflow_pyfunc.py) whose `model` artifact is the
  job's model/ folder; BigDL: the same folder, as a pyfunc model whose loader is predict_digits
  (`--model models:/NAME/VERSION`): BigDL needs its own Spark session to load.
* train_gan: the generator (generator.pt + generator.json) as a pyfunc model.
* transfer: the Spark ML PipelineModel in MLflow's spark flavor (signature only: an example of a vector
  column cannot be written).
"""

from __future__ import annotations

import os

CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlflow_pyfunc.py")
NAME = "model"  # the model's name inside its run


def example_rows(table: str, n: int = 2, split: str = "test"):
    """The first n rows of an images table's split, as a pandas frame of the pixel columns."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.io import local_path

    source = ds.dataset(local_path(table), format="parquet", partitioning="hive")
    columns = ["height", "width", "nChannels", "data"]
    frame = source.head(n, columns=columns, filter=pc.field("split") == split).to_pandas()
    return frame if len(frame) else source.head(n, columns=columns).to_pandas()


def _pyfunc(folder: str, example, uri: str, run_id: str) -> str:
    import mlflow
    from mlflow.models import infer_signature

    from pipeline import mlflow_pyfunc

    class Context:  # what load_context gets from MLflow, for computing the signature's output here
        artifacts = {"model": folder}

    model = mlflow_pyfunc.SparkganModel()
    model.load_context(Context())
    signature = infer_signature(example, model.predict(None, example))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name=NAME, python_model=CODE, artifacts={"model": folder},
                                       signature=signature, input_example=example,
                                       pip_requirements=[f"sparkgan=={_version()}", f"mlflow=={mlflow.__version__}"])
    return info.model_uri


def _version() -> str:
    from pipeline import __version__

    return __version__


def log(job: str, opts, uri: str, run_id: str) -> str | None:
    """Log the job's model into the run; its model URI (what `mlflow.register_model` takes)."""
    from pipeline.io import local_path

    out = local_path(opts.output)
    if job == "train_digits":
        folder = os.path.join(out, "model")
        if opts.engine == "bigdl":
            import mlflow

            mlflow.set_tracking_uri(uri)
            # BigDL loads only in a BigDL-enabled Spark session: the folder is the model, predict_digits its loader
            with mlflow.start_run(run_id=run_id):
                mlflow.log_artifacts(folder, "bigdl_model")
            return None
        return _pyfunc(folder, example_rows(opts.input), uri, run_id)
    if job == "train_gan":
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # the generator's two files, not the whole output
            folder = os.path.join(tmp, "model")
            os.makedirs(folder)
            for name in ("generator.pt", "generator.json"):
                shutil.copy(os.path.join(out, name), folder)
            return _pyfunc(folder, _gan_example(opts), uri, run_id)
    if job == "transfer":
        return _spark_model(out, opts, uri, run_id)
    return None


def _gan_example(opts):
    import pandas as pd

    if opts.model == "dcgan":
        return pd.DataFrame({"seed": [0, 1]})
    from pipeline import images as im
    from pipeline.gan import sr

    # an LR input: the bicubic 4x downscale of a held-out HR photo's corner
    hr = example_rows(opts.input, 1).iloc[0]
    rgb = im.to_rgb(im.row_to_array(int(hr.height), int(hr.width), int(hr.nChannels), hr.data))[:128, :128]
    lr = sr.downscale(rgb)[1]
    h, w, c, _, data = im.array_to_row(lr)
    return pd.DataFrame({"height": [h], "width": [w], "nChannels": [c], "data": [data]})


def _spark_model(out: str, opts, uri: str, run_id: str) -> str | None:
    import mlflow
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    from mlflow.models import infer_signature

    from pipeline.transfer import load_features

    spark = SparkSession.getActiveSession()
    model = PipelineModel.load(f"file:{os.path.join(out, 'model')}")
    features = load_features(spark, opts.input)[0].select("features").limit(2)
    signature = infer_signature(features, model.transform(features).select("prediction"))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        # a signature but no input example: MLflow cannot write a Spark ML vector into one as JSON
        info = mlflow.spark.log_model(model, artifact_path=NAME, signature=signature)
    return info.model_uri
