import io

import numpy as np
import pytest
from PIL import Image

from pipeline import images as im
from pipeline.ingest import load_bundled
from pipeline.keras_files import KerasImageFileTransformer
from tests.conftest import assert_close

PHOTOS = ("astronaut", "camera", "cat", "coffee", "logo", "moon")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small convolutional Keras model (seeded), saved as .keras: input 32x32x3, 4 outputs."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    path = tmp_path_factory.mktemp("model") / "small.keras"
    model.save(path)
    return str(path), model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real photographs as PNG and JPEG files (gray, RGB, RGBA), one truncated file and one missing path."""
    root = tmp_path_factory.mktemp("files")
    paths = []
    for name, arr in zip(PHOTOS, load_bundled("photos")[0]):
        ext = "jpg" if name in ("coffee", "astronaut") else "png"
        path = root / f"{name}.{ext}"
        Image.fromarray(np.asarray(arr)[:100, :140]).save(path)
        paths.append(str(path))
    (root / "broken.png").write_bytes(open(paths[1], "rb").read()[:200])
    return root, paths


def uri_frame(spark, uris):
    return spark.createDataFrame([(u,) for u in uris], "uri string").coalesce(1)


def by_hand(model, paths, prep):
    return np.asarray(model.predict(np.stack([prep(open(p, "rb").read()) for p in paths]), verbose=0))


def test_default_loader_equals_keras_by_hand_and_bad_files_are_rows(spark, small_model, files):
    path, model = small_model
    root, paths = files
    # what a Keras user writes: PIL, RGB, bilinear resize to the input, scaled to 0..1
    expected = by_hand(model, paths, lambda b: np.asarray(
        Image.open(io.BytesIO(b)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255)
    uris = [paths[0], "file:" + paths[1], "file://" + paths[2], *paths[3:], str(root / "broken.png"),
            str(root / "missing.png")]
    out = KerasImageFileTransformer(modelFile=path, batchSize=3).transform(uri_frame(spark, uris)).collect()
    got = {r.uri: r for r in out}
    assert_close(np.stack([got[u].predictions.toArray() for u in uris[:6]]), expected)
    broken, missing = got[str(root / "broken.png")], got[str(root / "missing.png")]
    assert broken.predictions is None and "truncated" in broken.predict_error
    assert missing.predictions is None and "unreadable file" in missing.predict_error


def test_custom_loader_struct_input_and_save_load(spark, small_model, files, tmp_path):
    def keras_style_loader(content):
        """sparkdl's README loader, on bytes: Keras' own load_img and img_to_array, scaled to -1..1 (defined
        here, not at module level: Spark pickles a function of an importable module by reference)."""
        from keras.utils import img_to_array, load_img

        return img_to_array(load_img(io.BytesIO(content), target_size=(32, 32))) / 127.5 - 1

    path, model = small_model
    _, paths = files
    t = KerasImageFileTransformer(inputCol="uri", outputCol="out", modelFile=path, imageLoader=keras_style_loader)
    df = uri_frame(spark, paths)
    got = np.stack([r.out.toArray() for r in t.transform(df).collect()])
    assert_close(got, by_hand(model, paths, keras_style_loader))

    t.write().overwrite().save(str(tmp_path / "t"))
    loaded = KerasImageFileTransformer.load(str(tmp_path / "t"))
    assert loaded.getImageLoader()(open(paths[0], "rb").read()).shape == (32, 32, 3)  # the pickled function
    again = np.stack([r.out.toArray() for r in loaded.transform(df).collect()])
    np.testing.assert_array_equal(again, got)

    # an images table (or Spark's image struct) instead of URIs: decoded pixels, the default conversion
    rows = []
    for p in paths[:3]:
        h, w, c, mode, data = im.array_to_row(im.decode_image(open(p, "rb").read()))
        rows.append((p, None, None, None, h, w, c, mode, data, "test"))
    table = spark.createDataFrame(rows, im.IMAGE_DDL).coalesce(1)
    flat = KerasImageFileTransformer(inputCol="image", modelFile=path).transform(table).orderBy("path").collect()
    struct = KerasImageFileTransformer(inputCol="image", modelFile=path).transform(
        im.image_struct(table)).orderBy("path").collect()
    by_uri = {r.uri: r.predictions for r in KerasImageFileTransformer(modelFile=path).transform(df).collect()}
    for a, b in zip(flat, struct):
        assert_close(a.predictions.toArray(), by_uri[a.path].toArray(), rtol=1e-5)
        np.testing.assert_array_equal(a.predictions.toArray(), b.predictions.toArray())


def test_bad_transformer_input_is_explained(spark, small_model, files, tmp_path):
    path, _ = small_model
    df = uri_frame(spark, files[1][:1])
    with pytest.raises(TypeError, match="imageLoader 'pil': expected a Python callable"):
        KerasImageFileTransformer(imageLoader="pil")
    with pytest.raises(ValueError, match="set modelFile"):
        KerasImageFileTransformer().transform(df)
    with pytest.raises(ValueError, match="modelFile .*none.keras: no such file"):
        KerasImageFileTransformer(modelFile=str(tmp_path / "none.keras")).transform(df)
    with pytest.raises(ValueError, match="inputCol 'path' is not a column"):
        KerasImageFileTransformer(inputCol="path", modelFile=path).transform(df)
    with pytest.raises(ValueError, match="inputCol 'n' has type bigint; expected image URIs"):
        KerasImageFileTransformer(inputCol="n", modelFile=path).transform(spark.range(1).withColumnRenamed("id", "n"))
    # a loader whose arrays do not fit the model is a row error, not a failed job
    out = KerasImageFileTransformer(modelFile=path, imageLoader=lambda b: np.zeros((8, 8, 3))).transform(df).first()
    assert out.predictions is None and "imageLoader gave shape (8, 8, 3); the model takes (32, 32, 3)" in out.predict_error
