import json
import os

import numpy as np
import pytest

from pipeline import images as im
from pipeline.digits import shifted, to_input


@pytest.fixture(scope="module")
def mnist(spark, tmp_path_factory):
    """The bundled 5,000 real MNIST digits, ingested once for this module."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("mnist") / "ds"
    assert main(["ingest", "--source", "mnist", "--output", str(out), "--runs-table", str(out) + ".runs"]) == 0
    return f"{out}/images"


def test_to_input_normalises_gray_and_colour():
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = to_input(*im.array_to_row(gray)[:3], im.array_to_row(gray)[4])
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.isclose(x[0, 0, 1], (1 / 255 - 0.1307) / 0.3081)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    h, w, c, _, data = im.array_to_row(rgb)
    assert np.allclose(to_input(h, w, c, data), x, atol=1e-6)
    assert to_input(*im.array_to_row(np.zeros((56, 40), np.uint8))[:3], bytes(56 * 40)).shape == (1, 28, 28)
    s = shifted(x, 2, -1)
    assert np.array_equal(s[0, 2:, :-1], x[0, :-2, 1:]) and np.all(s[0, :2] == x.min())


@pytest.mark.slow
def test_lenet5_trains_to_97_percent_and_resumes(spark, cli, mnist, tmp_path, caplog):
    caplog.set_level("INFO", logger="pipeline")
    out = tmp_path / "digits"
    code, stdout, err = cli("train_digits", "--input", mnist, "--output", out)  # the defaults: 6 epochs
    assert code == 0, err
    for name in ("model/lenet5.bigdl", "confusion_matrix.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    preds = spark.read.parquet(str(out / "predictions"))
    assert set(preds.columns) == {"path", "label", "label_index", "prediction", "probability", "split"}
    test = preds.where("split = 'test'").toPandas()
    acc6 = float((test.prediction == test.label_index).mean())
    assert acc6 >= 0.97, acc6  # the bar on the held-out split
    assert np.allclose([sum(p) for p in test.probability[:20]], 1, atol=1e-4)
    metrics = spark.read.parquet(str(out / "metrics")).toPandas()
    assert set(metrics.name) >= {"train_loss", "val_loss", "val_top1", "samples_per_s", "test_top1"}
    assert sorted(metrics[metrics.name == "val_top1"].step) == [1, 2, 3, 4, 5, 6]
    assert float(metrics[metrics.name == "test_top1"].value.iloc[0]) == pytest.approx(acc6, abs=1e-9)

    # One more epoch from the epoch-6 checkpoint: it continues, it does not start over.
    caplog.clear()
    code, stdout, err = cli("train_digits", "--input", mnist, "--output", out, "--epochs", 7, "--resume",
                            "--mode", "overwrite")
    assert code == 0, err
    log = caplog.text
    assert "resuming from" in log and "epoch-0006" in log and "epoch 7/7" in log and "epoch 1/7" not in log
    metrics = spark.read.parquet(str(out / "metrics")).toPandas()
    assert sorted(metrics[metrics.name == "val_top1"].step) == [7]  # this run's metric rows
    top1 = float(metrics[metrics.name == "test_top1"].value.iloc[0])
    assert top1 >= 0.96, top1  # the same band
    runs = spark.read.parquet(str(tmp_path / "runs")).where("job = 'train_digits'").orderBy("started_at").collect()
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert json.loads(runs[-1].config)["resume"] is True

    code, _, err = cli("predict_digits", "--model", out / "model", "--input", mnist, "--output", tmp_path / "p")
    assert code == 0, err
    again = spark.read.parquet(str(tmp_path / "p")).where("split = 'test'").toPandas()
    assert float((again.prediction == again.label_index).mean()) == pytest.approx(top1, abs=1e-9)


def test_bad_digit_options(cli, mnist, tmp_path):
    code, _, err = cli("train_digits", "--input", mnist, "--output", tmp_path / "o", "--batch-size", 33)
    assert code == 2 and "--batch-size 33 is not a multiple of the 2 cores" in err and "use e.g. 32 or 34" in err
    code, _, err = cli("train_digits", "--input", tmp_path / "none", "--output", tmp_path / "o")
    assert code == 2 and "no such images table" in err
    code, _, err = cli("train_digits", "--input", mnist, "--output", tmp_path / "o", "--resume")
    assert code == 2 and "--resume: no checkpoint in" in err
    code, _, err = cli("predict_digits", "--model", tmp_path, "--input", mnist, "--output", tmp_path / "p")
    assert code == 2 and "no saved model there" in err
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "p")
