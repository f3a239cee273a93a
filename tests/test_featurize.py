import json

import numpy as np
import pytest

from pipeline import images as im
from pipeline.featurize import APPLICATIONS, DeepImageFeaturizer
from pipeline.ingest import load_bundled
from pipeline.schemas import FEATURES_SCHEMA, REJECTED_SCHEMA
from tests.conftest import assert_schema, assert_close


@pytest.fixture(scope="module")
def photos(spark):
    """Six real photographs (gray, RGB and RGBA) as an image DataFrame, plus one broken row."""
    rows = []
    for name, arr in zip(("astronaut", "camera", "cat", "coffee", "logo", "moon"), load_bundled("photos")[0][:6]):
        h, w, c, mode, data = im.array_to_row(np.asarray(arr)[:160, :200])
        rows.append((f"bundled:photos/{name}", f"bundled:photos/{name}", None, None, h, w, c, mode, data, "test"))
    rows.append(("broken", "broken", None, None, 10, 10, 3, 16, b"\x00" * 7, "test"))
    return spark.createDataFrame(rows, im.IMAGE_DDL)


def keras_reference(arrays):
    """What a Keras user writes by hand: PIL resize to 224x224, gray to RGB, alpha dropped, Keras'
    own MobileNetV2 (seeded untrained weights, as weights='random' promises) and its own
    preprocess_input. Nothing of pipeline.featurize is used."""
    import keras
    from PIL import Image

    def rgb(a):
        return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]

    x = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(rgb(a))).resize((224, 224), Image.Resampling.BILINEAR),
                             np.float32) for a in arrays])
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3))
    return np.asarray(model.predict(keras.applications.mobilenet_v2.preprocess_input(x), verbose=0))


def test_spark_features_equal_plain_keras_predict(spark, photos):
    f = DeepImageFeaturizer(modelName="MobileNetV2", weights="random", batchSize=4)
    out = f.transform(photos).orderBy("path").collect()
    good = [r for r in out if r.path != "broken"]
    paths = sorted(f"bundled:photos/{n}" for n in ("astronaut", "camera", "cat", "coffee", "logo", "moon"))
    expected = keras_reference([np.asarray(a)[:160, :200] for a in load_bundled("photos")[0][:6]])
    assert [r.path for r in good] == paths
    got = np.stack([r.features.toArray() for r in good])
    assert got.shape == (6, 1280)
    assert_close(got, expected)  # a channel swap moves these by ~13 %
    broken = next(r for r in out if r.path == "broken")
    assert broken.features is None and "undecodable image row" in broken.featurize_error


def test_image_source_struct_column_is_accepted(spark, photos):
    struct_df = im.image_struct(photos.where("path != 'broken'")).select("path", "image")
    f = DeepImageFeaturizer(inputCol="image", outputCol="vec", modelName="MobileNetV2", weights="random")
    assert f.transform(struct_df).where("vec IS NOT NULL").count() == 6


def test_bad_featurizer_input_is_explained(spark, photos, tmp_path, monkeypatch):
    # bad values fail when set, as pyspark.ml's own Params do
    with pytest.raises(TypeError, match="expected one of InceptionV3, Xception, ResNet50"):
        DeepImageFeaturizer(modelName="AlexNet")
    with pytest.raises(TypeError, match="weights 'pretrained' is not supported"):
        DeepImageFeaturizer(modelName="MobileNetV2").setWeights("pretrained")
    with pytest.raises(TypeError, match="batchSize 0: expected a positive number"):
        DeepImageFeaturizer(modelName="MobileNetV2", batchSize=0)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ValueError) as err:
        DeepImageFeaturizer(modelName="ResNet50").transform(photos)
    assert APPLICATIONS["ResNet50"].notop_file in str(err.value) and str(tmp_path / "models") in str(err.value)
    with pytest.raises(ValueError, match="inputCol 'path' has type string; expected an image struct"):
        DeepImageFeaturizer(inputCol="path", modelName="MobileNetV2", weights="random").transform(photos)
    with pytest.raises(ValueError, match="modelFile .*: no such file"):
        DeepImageFeaturizer(modelFile=str(tmp_path / "none.keras")).transform(photos)
    with pytest.raises(ValueError, match="set exactly one of modelName and modelFile"):
        DeepImageFeaturizer().transform(photos)


def test_params_getters_setters_and_error_col(spark, photos):
    f = DeepImageFeaturizer().setModelName("MobileNetV2").setWeights("random").setBatchSize(3)
    f.setParams(outputCol="vec", errorCol="why")
    assert (f.getModelName(), f.getWeights(), f.getBatchSize(), f.getThreads()) == ("MobileNetV2", "random", 3, 1)
    assert (f.getOutputCol(), f.getErrorCol(), f.getModelFile(), f.getFeatureLayer()) == ("vec", "why", None, None)
    out = f.transform(photos)
    assert "why" in out.columns and "featurize_error" not in out.columns
    assert out.where("why IS NOT NULL").select("path").first().path == "broken"


def test_docstring_example_saves_and_loads(spark, photos, tmp_path):
    """The class docstring's example (a save/load round trip) runs as written."""
    import doctest

    from pipeline import featurize

    globs = {"DeepImageFeaturizer": DeepImageFeaturizer, "path": str(tmp_path / "featurizer"),
             "images": photos.where("path != 'broken'")}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(featurize.DeepImageFeaturizer, "DeepImageFeaturizer", globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.slow
def test_featurize_job_pipeline_round_trip_and_transfer_beats_pixels(spark, cli, mnist, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression

    images = mnist  # the session's ingest of the bundled digits, only read here
    code, out, err = cli("transfer_demo", "--input", images, "--output", tmp_path / "demo")
    assert code == 0, err
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    acc = report["test_accuracy"]
    print(report)
    assert report["base_test_accuracy"] > 0.95
    assert acc["transferred CNN features"] > acc["raw pixels"] + 0.01
    for slug in ("transferred", "raw", "untrained"):
        assert (tmp_path / "demo" / slug / "confusion_matrix.png").stat().st_size > 0

    # The featurize job: features table + rejected table, a features vector per image.
    model_file = tmp_path / "demo" / "cnn_pretrained.keras"
    code, out, err = cli("featurize", "--input", images, "--output", tmp_path / "feat",
                         "--model-file", model_file, "--feature-layer", "features")
    assert code == 0, err
    feats = spark.read.parquet(str(tmp_path / "feat" / "features"))
    assert feats.count() == 5000 and spark.read.parquet(str(tmp_path / "feat" / "rejected")).count() == 0
    assert_schema(tmp_path / "feat" / "features", FEATURES_SCHEMA)
    assert_schema(tmp_path / "feat" / "rejected", REJECTED_SCHEMA)
    assert len(feats.first().features) == 128 and feats.first().model_name == "cnn_pretrained.keras"

    # Featurizer + LogisticRegression in one Pipeline: save, load, same predictions.
    df = spark.read.parquet(images).where("label_index >= 5").limit(300)
    pipe = Pipeline(stages=[DeepImageFeaturizer(modelFile=str(model_file), featureLayer="features"),
                            LogisticRegression(labelCol="label_index", maxIter=50)])
    fitted = pipe.fit(df)
    fitted.write().overwrite().save(str(tmp_path / "pipe"))
    loaded = PipelineModel.load(str(tmp_path / "pipe"))
    a = [r.prediction for r in fitted.transform(df).orderBy("path").collect()]
    b = [r.prediction for r in loaded.transform(df).orderBy("path").collect()]
    assert a == b and len(a) == 300
    assert loaded.stages[0].getOrDefault("featureLayer") == "features"
