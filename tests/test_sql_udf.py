import numpy as np
import pytest

from pipeline import images as im
from pipeline.featurize import DeepImageFeaturizer, register_udf, registerKerasImageUDF
from pipeline.ingest import load_bundled
from tests.conftest import assert_close

PHOTOS = ("astronaut", "camera", "cat", "coffee", "logo", "moon")


@pytest.fixture(scope="module")
def images(spark):
    """Five real photographs as an images table view (flat fields) and a view with Spark's image struct."""
    rows, arrays = [], []
    for name, arr in zip(PHOTOS[:5], load_bundled("photos")[0]):
        arr = np.asarray(arr)[:90, :120]
        arrays.append(arr)
        rows.append((f"bundled:photos/{name}", None, None, None, *im.array_to_row(arr), "test"))
    rows.append(("broken", None, None, None, 10, 10, 3, 16, b"\x00" * 7, "test"))
    flat = spark.createDataFrame(rows, im.IMAGE_DDL).coalesce(1)
    flat.createOrReplaceTempView("flat_images")
    im.image_struct(flat).select("path", "image").createOrReplaceTempView("images")
    return flat, arrays


@pytest.fixture(scope="module")
def small_model():
    import keras

    keras.utils.set_random_seed(4)
    return keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(3, 3), keras.layers.GlobalMaxPooling2D(),
                             keras.layers.Dense(5)])


def test_sql_function_equals_keras_by_hand(spark, images, small_model):
    from PIL import Image

    flat, arrays = images
    registerKerasImageUDF("small_model", small_model)  # sparkdl's name and signature
    rows = spark.sql("SELECT path, small_model(image) AS out FROM images ORDER BY path").collect()
    by_name = {r.path: r.out for r in rows}
    x = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a if a.ndim == 3 else np.repeat(a[:, :, None], 3, 2))
                                             [:, :, :3]).resize((24, 24), Image.Resampling.BILINEAR), np.float32) / 255
                  for a in arrays])
    expected = np.asarray(small_model.predict(x, verbose=0))
    got = np.array([by_name[f"bundled:photos/{n}"] for n in PHOTOS[:5]])
    assert_close(got, expected)
    assert by_name["broken"] is None

    # the flat columns of an images table, and a preprocessor of one's own
    register_udf(spark, "small_model_flat", small_model,
                 preprocessor=lambda rgb: np.zeros((24, 24, 3), np.float32) + rgb[:, :, :3].mean() / 255)
    flat_rows = {r.path: r.out for r in spark.sql(
        "SELECT path, small_model_flat(height, width, nChannels, data) AS out FROM flat_images").collect()}
    means = np.stack([np.zeros((24, 24, 3), np.float32) + (a if a.ndim == 3 else a[:, :, None])[:, :, :3].mean() / 255
                      for a in arrays])
    np.testing.assert_allclose(np.array([flat_rows[f"bundled:photos/{n}"] for n in PHOTOS[:5]]),
                               small_model.predict(means, verbose=0), rtol=1e-4, atol=1e-5)


def test_named_model_udf_equals_the_featurizer(spark, images):
    flat, _ = images
    register_udf(spark, "mobilenet_features", modelName="MobileNetV2", weights="random", batchSize=2)
    sql = {r.path: r.f for r in spark.sql("SELECT path, mobilenet_features(image) AS f FROM images").collect()}
    feats = DeepImageFeaturizer(modelName="MobileNetV2", weights="random").transform(flat).collect()
    for r in feats:
        if r.path == "broken":
            assert sql["broken"] is None
        else:
            assert_close(sql[r.path], r.features.toArray(), rtol=1e-5)


def test_bad_udf_input_is_explained(spark, tmp_path):
    with pytest.raises(ValueError, match="exactly one of model .* and modelName"):
        register_udf(spark, "x")
    with pytest.raises(ValueError, match="model .*none.keras: no such file"):
        register_udf(spark, "x", str(tmp_path / "none.keras"))
    with pytest.raises(ValueError, match="modelName 'AlexNet' is not supported"):
        register_udf(spark, "x", modelName="AlexNet")
    with pytest.raises(ValueError, match="model int: expected a keras.Model"):
        register_udf(spark, "x", 3)
