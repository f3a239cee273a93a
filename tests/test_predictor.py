import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import images as im
from pipeline.ingest import load_bundled
from pipeline.predictor import TOP_FILES, DeepImagePredictor, class_index, decode_predictions
from tests.conftest import assert_close

PHOTOS = ("astronaut", "camera", "cat", "coffee", "logo", "moon")


@pytest.fixture(scope="module")
def photos(spark):
    """Four real photographs (gray, RGB and RGBA) as an images table, plus one broken row."""
    rows = []
    for name, arr in zip(PHOTOS, load_bundled("photos")[0]):
        if name in ("astronaut", "camera", "logo", "moon"):
            h, w, c, mode, data = im.array_to_row(np.asarray(arr)[:120, :150])
            rows.append((f"bundled:photos/{name}", None, None, None, h, w, c, mode, data, "test"))
    rows.append(("broken", None, None, None, 10, 10, 3, 16, b"\x00" * 7, "test"))
    return spark.createDataFrame(rows, im.IMAGE_DDL).coalesce(1)  # one Python worker builds the network once


def test_class_index_is_keras_own_file():
    import pipeline

    path = os.path.join(os.path.dirname(pipeline.__file__), "imagenet_class_index.json")
    with open(path, "rb") as fh:
        assert hashlib.md5(fh.read()).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"  # Keras' file_hash
    assert len(class_index()) == 1000 and class_index()[0] == ("n01440764", "tench")


def test_decoding_equals_keras_decode_predictions_offline(tmp_path):
    """Keras' own decode_predictions, in a fresh process whose KERAS_HOME holds only our file (Keras reads
    KERAS_HOME at import and would download only if the file were missing or its hash differed)."""
    import pipeline

    (tmp_path / "models").mkdir()
    src = os.path.join(os.path.dirname(pipeline.__file__), "imagenet_class_index.json")
    (tmp_path / "models" / "imagenet_class_index.json").write_bytes(open(src, "rb").read())
    probs = np.random.default_rng(7).dirichlet(np.ones(1000) * 0.1, size=4).astype(np.float32)
    np.save(tmp_path / "p.npy", probs)
    code = ("import json, sys, numpy as np\n"
            "from keras.applications.imagenet_utils import decode_predictions\n"
            "out = decode_predictions(np.load(sys.argv[1]), top=5)\n"
            "print(json.dumps([[[c, n, float(p)] for c, n, p in row] for row in out]))\n")
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "KERAS_BACKEND": "tensorflow"}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.npy")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    keras_rows = json.loads(run.stdout.strip().splitlines()[-1])
    ours = decode_predictions(probs, top=5)
    assert [[(c, n) for c, n, _ in row] for row in ours] == [[(c, n) for c, n, _ in row] for row in keras_rows]
    np.testing.assert_allclose([[p for *_, p in row] for row in ours], [[p for *_, p in row] for row in keras_rows])


def keras_top_reference(arrays):
    """A Keras user by hand: PIL resize to 224, gray to RGB, alpha dropped, Keras' own MobileNetV2 with its
    classifier (seeded untrained weights, as weights='random' promises) and its own preprocess_input."""
    import keras
    from PIL import Image

    def rgb(a):
        return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]

    x = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(rgb(a))).resize((224, 224), Image.Resampling.BILINEAR),
                             np.float32) for a in arrays])
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(224, 224, 3))
    return np.asarray(model.predict(keras.applications.mobilenet_v2.preprocess_input(x), verbose=0))


@pytest.mark.slow
def test_predictions_equal_plain_keras_and_decode_in_spark(spark, photos):
    names = ("astronaut", "camera", "logo", "moon")
    arrays = [np.asarray(a)[:120, :150] for n, a in zip(PHOTOS, load_bundled("photos")[0]) if n in names]
    expected = keras_top_reference(arrays)  # in input order: astronaut, camera, logo, moon (sorted too)

    # both outputs in one Spark job: the worker imports TensorFlow once
    vec = DeepImagePredictor(modelName="MobileNetV2", weights="random", batchSize=4).transform(photos)
    both = DeepImagePredictor(modelName="MobileNetV2", weights="random", decodePredictions=True, topK=3,
                              outputCol="top3", errorCol="top3_error").transform(vec)
    rows = both.orderBy("path").collect()
    good = [r for r in rows if r.path != "broken"]
    got = np.stack([r.predicted_labels.toArray() for r in good])
    assert got.shape == (4, 1000)
    assert_close(got, expected)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-4)
    broken = next(r for r in rows if r.path == "broken")
    assert broken.predicted_labels is None and "undecodable image row" in broken.predict_error

    assert broken.top3 is None
    for row, probs in zip(good, got):
        assert [(s["class"], s["description"]) for s in row.top3] == [(c, n) for c, n, _ in
                                                                     decode_predictions(probs, 3)[0]]
        np.testing.assert_allclose([s.probability for s in row.top3], np.sort(probs)[::-1][:3], rtol=1e-5)


def test_predictor_params_errors_and_save_load(spark, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ValueError) as err:
        DeepImagePredictor(modelName="InceptionV3").transform(photos)
    assert TOP_FILES["InceptionV3"] in str(err.value) and str(tmp_path / "models") in str(err.value)
    with pytest.raises(ValueError, match="set modelName"):
        DeepImagePredictor().transform(photos)
    with pytest.raises(TypeError, match="topK 0: expected a positive number"):
        DeepImagePredictor(modelName="MobileNetV2", topK=0)
    with pytest.raises(TypeError, match="modelName 'AlexNet' is not supported"):
        DeepImagePredictor(modelName="AlexNet")

    p = DeepImagePredictor(modelName="MobileNetV2").setWeights("random").setDecodePredictions(True).setTopK(2)
    p.write().overwrite().save(str(tmp_path / "predictor"))
    loaded = DeepImagePredictor.load(str(tmp_path / "predictor"))
    assert (loaded.getModelName(), loaded.getWeights(), loaded.getDecodePredictions(), loaded.getTopK(),
            loaded.getErrorCol()) == ("MobileNetV2", "random", True, 2, "predict_error")
    # a weights file given explicitly is read from where it is: the untrained classifier's, saved by Keras
    import keras
    keras.utils.set_random_seed(0)
    keras.applications.MobileNetV2(include_top=True, weights=None).save_weights(str(tmp_path / "top.weights.h5"))
    from_file = DeepImagePredictor(modelName="MobileNetV2", weightsFile=str(tmp_path / "top.weights.h5"),
                                   decodePredictions=True, topK=2, outputCol="from_file", errorCol="from_file_error")
    rows = from_file.transform(loaded.transform(photos.where("path != 'broken'"))).collect()  # one job
    assert len(rows) == 4
    for r in rows:
        assert [s["class"] for s in r.from_file] == [s["class"] for s in r.predicted_labels]
        np.testing.assert_allclose([s.probability for s in r.from_file], [s.probability for s in r.predicted_labels],
                                   rtol=1e-5)


def test_docstring_examples():
    import doctest

    from pipeline import predictor

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(predictor.DeepImagePredictor, "DeepImagePredictor",
                                             globs={"DeepImagePredictor": DeepImagePredictor}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 2 and result.failed == 0
