"""pipeline.images, no Spark: the image-schema rows, gray/RGB conversions, resizing and the
decoder's 8-bit conversions and reasons. Values known independently of the code (worked out by
hand, or a format's own definition) and properties over random images; `make mutation` runs these
against each mutant of images.py (setup.cfg [mutmut])."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from pipeline import images as im

def _encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_array_to_row_refuses_what_the_image_schema_cannot_hold():
    with pytest.raises(im.DecodeError, match=r"^expected uint8 pixels, got float64$"):
        im.array_to_row(np.zeros((2, 2, 3)))
    with pytest.raises(im.DecodeError, match=r"^unsupported channel count 2$"):
        im.array_to_row(np.zeros((2, 2, 2), np.uint8))


def test_row_to_array_names_the_byte_count_it_got_and_wanted():
    with pytest.raises(im.DecodeError, match=r"^data has 5 bytes, expected 12 for 2x2x3$"):
        im.row_to_array(2, 2, 3, bytes(5))
    with pytest.raises(im.DecodeError, match=r"^data has 0 bytes, expected 4 for 1x4x1$"):
        im.row_to_array(1, 4, 1, None)
    assert im.row_to_array(1, 2, 3, bytes([3, 2, 1, 6, 5, 4])).tolist() == [[[1, 2, 3], [4, 5, 6]]]  # BGR → RGB


def test_to_gray_keeps_black_black_and_white_white():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255, ]]], np.uint8)
    # BT.601: red 0.299 * 255 = 76.2, blue 0.114 * 255 = 29.1
    assert im.to_gray(rgb).tolist() == [[0, 255, 76, 29]]
    rgba = np.concatenate([rgb, np.full((1, 4, 1), 7, np.uint8)], axis=2)
    assert im.to_gray(rgba).tolist() == [[0, 255, 76, 29]]  # alpha dropped


def test_to_rgb_repeats_gray_and_drops_alpha():
    gray = np.array([[[5], [9]]], np.uint8)
    assert im.to_rgb(gray).tolist() == [[[5, 5, 5], [9, 9, 9]]]
    rgba = np.array([[[1, 2, 3, 4]]], np.uint8)
    out = im.to_rgb(rgba)
    assert out.tolist() == [[[1, 2, 3]]] and out.flags["C_CONTIGUOUS"]


def test_resize_array_is_bilinear_and_leaves_a_right_sized_array_alone():
    row = np.array([[0, 255]], np.uint8)
    # 2 → 4 pixels: output centres fall at -0.25, 0.25, 0.75, 1.25 source pixels; linear
    # interpolation (edges clamped) gives 0, 63.75, 191.25, 255 (bicubic would give 0, 53, 202, 255)
    assert im.resize_array(row, (1, 4)).tolist() == [[0, 64, 191, 255]]
    assert im.resize_array(row, (2, 2)).tolist() == [[0, 255], [0, 255]]
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert im.resize_array(rgb, (2, 3)) is rgb and im.resize_array(rgb, None) is rgb
    assert im.resize_array(rgb, (4, 6)).shape == (4, 6, 3)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_8bit_modes_pass_through(mode):
    img = Image.new(mode, (2, 1))
    assert im._to_8bit(img) is img


def test_bilevel_becomes_gray_0_and_255():
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 255]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_gray_is_scaled_by_1_over_257(mode):
    # 65535 / 255 = 257: v → round(v / 257); 25828 / 257 = 100.498, 32768 / 257 = 127.502,
    # 65407 / 257 = 254.502
    values = [0, 257, 25828, 32768, 65407, 65535]
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 1, 100, 128, 255, 255]]
    dark = Image.new(mode, (2, 1))  # a 16-bit image is on the 16-bit scale whatever its content
    dark.putpixel((1, 0), 255)
    assert np.asarray(im._to_8bit(dark)).tolist() == [[0, 1]]


def test_32bit_gray_is_kept_up_to_255_and_scaled_as_16bit_beyond():
    small = Image.new("I", (4, 1))
    for x, v in enumerate([0, 3, 200, 255]):
        small.putpixel((x, 0), v)
    assert np.asarray(im._to_8bit(small)).tolist() == [[0, 3, 200, 255]]
    big = Image.new("I", (4, 1))
    for x, v in enumerate([256, 25828, 65535, 70000]):  # max > 255: v / 257, clipped to 255
        big.putpixel((x, 0), v)
    assert np.asarray(im._to_8bit(big)).tolist() == [[1, 100, 255, 255]]
    just_over = Image.new("I", (2, 1))
    just_over.putpixel((1, 0), 256)  # 256 / 257 = 0.996
    assert np.asarray(im._to_8bit(just_over)).tolist() == [[0, 1]]


def test_float_gray_is_rounded_and_clipped():
    img = Image.fromarray(np.array([[-5.0, 0.4, 100.6, 255.0]], np.float32))
    assert img.mode == "F"
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 0, 101, 255]]


def test_alpha_and_transparent_palettes_become_rgba_others_rgb():
    la = Image.new("LA", (1, 1), (9, 200))
    assert np.asarray(im._to_8bit(la)).tolist() == [[[9, 9, 9, 200]]]
    pa = Image.new("PA", (1, 1), (1, 100))
    pa.putpalette([10, 20, 30, 40, 50, 60])
    assert np.asarray(im._to_8bit(pa)).tolist() == [[[40, 50, 60, 100]]]
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255])
    p.putpixel((1, 0), 1)
    assert np.asarray(im._to_8bit(p)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    p.info["transparency"] = 0  # palette entry 0 is see-through
    assert np.asarray(im._to_8bit(p)).tolist() == [[[255, 0, 0, 0], [0, 0, 255, 255]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no black, full magenta and yellow: red
    out = im._to_8bit(cmyk)
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[255, 0, 0]]]


def test_decode_image_reads_what_was_written():
    rgb = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.uint8)
    assert im.decode_image(_encoded(Image.fromarray(rgb))).tolist() == rgb.tolist()
    sixteen = Image.new("I;16", (2, 1))
    sixteen.putpixel((1, 0), 65535)
    assert im.decode_image(_encoded(sixteen)).tolist() == [[0, 255]]


def test_decode_image_resizes_to_height_by_width_bilinear():
    row = Image.fromarray(np.array([[0, 255]], np.uint8))
    assert im.decode_image(_encoded(row), resize=(1, 4)).tolist() == [[0, 64, 191, 255]]
    tall = Image.fromarray(np.zeros((6, 2), np.uint8))
    assert im.decode_image(_encoded(tall), resize=(3, 5)).shape == (3, 5)
    assert im.decode_image(_encoded(tall), resize=(6, 2)).shape == (6, 2)
    square = Image.fromarray(np.zeros((4, 4), np.uint8))
    assert im.decode_image(_encoded(square), resize=(2, 4)).shape == (2, 4)


def test_decode_errors_read_as_reasons(monkeypatch):
    png = _encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    cases = {b"": "empty file (0 bytes)", b"hello": "not an image PIL can decode (unrecognised format)",
             png[:300]: "truncated image: image file is truncated",
             png[:60] + bytes(40) + png[100:]: "corrupt image: broken data stream when reading image file"}
    for content, reason in cases.items():
        with pytest.raises(im.DecodeError) as exc:
            im.decode_image(content)
        assert str(exc.value) == reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 100 pixels > twice the limit: a "bomb"
    with pytest.raises(im.DecodeError, match=r"^image too large: Image size \(100 pixels\) exceeds limit of 20"):
        im.decode_image(_encoded(Image.new("L", (10, 10))))


def test_a_decoder_error_without_a_message_is_named_by_its_type(monkeypatch):
    def fails(_):
        raise EOFError()
    monkeypatch.setattr(Image, "open", fails)
    with pytest.raises(im.DecodeError, match=r"^corrupt image: EOFError$"):
        im.decode_image(b"x")


# ---------------------------------------------------------------- properties over random images

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([None, 3, 4]))


@st.composite
def images(draw):
    h, w, c = draw(shapes)
    return draw(arrays(np.uint8, (h, w) if c is None else (h, w, c)))


@given(images())
def test_array_to_row_round_trips_every_mode_and_size(arr):
    h, w, c, mode, data = im.array_to_row(arr)
    assert (h, w, c, mode) == (arr.shape[0], arr.shape[1], 1 if arr.ndim == 2 else arr.shape[2],
                               {1: 0, 3: 16, 4: 24}[1 if arr.ndim == 2 else arr.shape[2]])
    assert len(data) == h * w * c
    back = im.row_to_array(h, w, c, data)
    assert np.array_equal(back.reshape(arr.shape), arr)


def test_channel_order_is_spark_image_schema_bgr_and_bgra():
    rgba = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], np.uint8)
    assert im.array_to_row(rgba)[4] == bytes([3, 2, 1, 4, 7, 6, 5, 8])  # B, G, R, A, as OpenCV's CV_8UC4
    assert im.array_to_row(rgba[:, :, :3])[4] == bytes([3, 2, 1, 7, 6, 5])
    assert im.row_to_array(1, 2, 4, bytes([3, 2, 1, 4, 7, 6, 5, 8]), rgb=False).tolist() == [[[3, 2, 1, 4],
                                                                                             [7, 6, 5, 8]]]


@given(images())
def test_gray_and_rgb_conversions(arr):
    arr = arr if arr.ndim == 3 else arr[:, :, None]
    gray, rgb = im.to_gray(arr), im.to_rgb(arr)
    assert gray.shape == arr.shape[:2] and gray.dtype == np.uint8
    assert rgb.shape == (*arr.shape[:2], 3)
    if arr.shape[2] == 1:
        assert np.array_equal(gray, arr[:, :, 0]) and np.array_equal(rgb[:, :, 1], arr[:, :, 0])
    else:  # BT.601 luma, within rounding of PIL's own conversion
        pil = np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, :3])).convert("L")).astype(int)
        assert np.abs(gray.astype(int) - pil).max() <= 1


@settings(max_examples=30)
@given(images(), st.integers(1, 40), st.integers(1, 40))
def test_resize_gives_the_asked_shape(arr, h, w):
    out = im.resize_array(arr, (h, w))
    assert out.shape[:2] == (h, w) and out.shape[2:] == arr.shape[2:] and out.dtype == np.uint8
