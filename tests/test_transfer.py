"""The `transfer` job on a features table: a Spark ML LogisticRegression on `features` vectors."""

import os

import numpy as np
import pytest


@pytest.fixture
def features_table(spark, tmp_path):
    """scikit-learn's 1,797 real 8x8 digits as a features table (64-d vectors), split by index."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType
    from sklearn.datasets import load_digits

    d = load_digits()
    rows = [(f"digits/{i:04d}", str(int(t)), int(t), Vectors.dense(x.tolist()), "test" if i % 5 == 0 else "train",
             "sklearn-digits", "none")
            for i, (x, t) in enumerate(zip(d.data, d.target))]
    path = str(tmp_path / "features")
    schema = StructType([StructField("path", StringType()), StructField("label", StringType()),
                         StructField("label_index", IntegerType()), StructField("features", VectorUDT()),
                         *(StructField(c, StringType()) for c in ("split", "model_name", "model_digest"))])
    spark.createDataFrame(rows, schema).write.parquet(path)
    return path, d


def test_transfer_job_learns_from_a_features_table(spark, cli, features_table, tmp_path):
    path, digits = features_table
    out = tmp_path / "lr"
    code, stdout, err = cli("transfer", "--input", path, "--output", out, "--classes", "0-9")
    assert code == 0, err
    assert ["features", "features"] in [line.split() for line in stdout.splitlines()]  # not raw pixels
    preds = spark.read.parquet(str(out / "predictions")).toPandas()
    assert len(preds) == len(range(0, len(digits.target), 5))  # every test row, nothing else
    acc = float((preds.prediction == preds.label_index).mean())
    assert acc > 0.93, acc  # LogisticRegression on 8x8 digits: about 0.96
    metrics = spark.read.parquet(str(out / "metrics")).toPandas()
    assert float(metrics[metrics.name == "test_accuracy"].value.iloc[0]) == pytest.approx(acc, abs=1e-9)
    assert np.allclose(preds.probability.map(sum), 1, atol=1e-6)
    assert (out / "confusion_matrix.png").stat().st_size > 0 and os.path.isdir(out / "model")

    # few labels: 5 per class still learns, and the job says how many rows it trained on
    code, stdout, err = cli("transfer", "--input", path, "--output", tmp_path / "few", "--labels-per-class", 5)
    assert code == 0, err
    assert ["train_rows", "50"] in [line.split() for line in stdout.splitlines()]


def test_transfer_rejects_a_table_without_vectors(spark, cli, tmp_path):
    spark.createDataFrame([("a", 1, [1.0, 2.0])], "path string, label_index int, features array<double>") \
        .write.parquet(str(tmp_path / "bad"))
    code, _, err = cli("transfer", "--input", tmp_path / "bad", "--output", tmp_path / "o")
    assert code == 2 and "column features is array<double>, expected a Spark ML vector" in err
    assert not (tmp_path / "o").exists()
