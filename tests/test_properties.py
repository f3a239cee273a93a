"""Properties and pinned values of the pure-Python core (no Spark): image rows, splits, resizing,
exact resume of the torch digits engine."""

import argparse

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline import images as im
from pipeline.ingest import SPLIT_NAMES, parse_size, parse_split, split_of

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
        from PIL import Image
        pil = np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, :3])).convert("L")).astype(int)
        assert np.abs(gray.astype(int) - pil).max() <= 1


# A change of the split hash moves images between splits on the next run: a breaking change the
# README must announce. These assignments are pinned.
PINNED = {"daisy/a.png": "train", "rose/c.png": "train", "tulip/d.jpg": "test", "mnist/00042": "test",
          "photos/astronaut": "train", "a/b/c/d.png": "train", "x": "train", "": "test"}


def test_known_paths_keep_their_split():
    split = parse_split("train=0.8,test=0.2")
    assert {k: split_of(k, split) for k in PINNED} == PINNED
    three = parse_split("train=0.7,val=0.1,test=0.2")
    assert [split_of(f"bundled:digits/{i:05d}", three) for i in range(8, 14)] == \
        ["val", "test", "val", "train", "test", "test"]


fractions = st.lists(st.integers(1, 20), min_size=1, max_size=3)


@given(fractions, st.lists(st.text(max_size=30), min_size=1, max_size=40))
def test_split_of_always_names_a_split_and_is_deterministic(weights, keys):
    names = SPLIT_NAMES[:len(weights)]
    total = sum(weights)
    # fractions that sum to 1 exactly once printed, as a user would type them
    parts = [round(w / total, 6) for w in weights[:-1]]
    parts.append(round(1 - sum(parts), 6))
    if parts[-1] <= 0:
        return
    split = parse_split(",".join(f"{n}={p}" for n, p in zip(names, parts)))
    assert [n for n, _ in split] == list(names)
    for key in keys:
        assert split_of(key, split) in names and split_of(key, split) == split_of(key, split)


def test_split_fractions_hold_over_many_keys():
    split = parse_split("train=0.7,val=0.1,test=0.2")
    counts = {n: 0 for n in ("train", "val", "test")}
    for i in range(20000):
        counts[split_of(f"class{i % 7}/{i}.png", split)] += 1
    assert abs(counts["train"] / 20000 - 0.7) < 0.015 and abs(counts["val"] / 20000 - 0.1) < 0.01


@pytest.mark.parametrize("text", ["train=0.7,test=0.2", "train=1,train=0", "tran=1", "train=0.5,test",
                                  "train=0,test=1", "train=1.5,test=-0.5", ""])
def test_bad_splits_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="bad split"):
        parse_split(text)


@given(st.integers(1, 4000), st.one_of(st.none(), st.integers(1, 4000)))
def test_parse_size(h, w):
    assert parse_size(f"{h}" if w is None else f"{h}x{w}") == (h, h if w is None else w)


@settings(max_examples=30)
@given(images(), st.integers(1, 40), st.integers(1, 40))
def test_resize_gives_the_asked_shape(arr, h, w):
    out = im.resize_array(arr, (h, w))
    assert out.shape[:2] == (h, w) and out.shape[2:] == arr.shape[2:] and out.dtype == np.uint8


def test_torch_digits_resume_equals_an_uninterrupted_run(tmp_path):
    """Three epochs straight, or killed after the second and resumed: the same weights, bit for bit
    (the optimizer's moments and the schedule come back from the checkpoint, not from zero)."""
    import shutil

    import torch

    from pipeline.digits.torch_engine import STATE_FILE, TrainConfig, train_worker
    from tests.conftest import digits_table

    table = digits_table(tmp_path / "digits", n_train=400, n_test=100)

    def cfg(folder, resume_from=None):
        return TrainConfig(input=table, checkpoint_dir=str(folder), epochs=3, batch_size=32, learning_rate=1e-3,
                           optimizer="adam", augment=0, classes=10, n_train=400, resume_from=resume_from, threads=1)

    train_worker(cfg(tmp_path / "straight"))
    # the killed try: what it left is its epoch-2 checkpoint
    shutil.copytree(tmp_path / "straight" / "epoch-0002", tmp_path / "killed" / "epoch-0002")
    history = train_worker(cfg(tmp_path / "killed", resume_from=str(tmp_path / "killed" / "epoch-0002")))
    assert [e for e, name, _ in history if name == "val_top1"] == [3]
    a, b = (torch.load(tmp_path / d / "epoch-0003" / STATE_FILE, weights_only=False) for d in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 3 * (400 // 32)
    moments = [(a["optimizer"]["state"][i], b["optimizer"]["state"][i]) for i in a["optimizer"]["state"]]
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) and x["step"] == y["step"] for x, y in moments)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 700), st.integers(0, 200), st.integers(0, 40))
def test_tiles_partition_each_axis_with_context_on_every_inner_side(n, tile, overlap):
    """SR tiling: the cores cover the axis exactly once, in order; every window has the same
    length and lies inside the image; an inner core side keeps `overlap` pixels of context."""
    from pipeline.gan.sr import _spans

    win, spans = _spans(n, tile, overlap)
    assert [c0 for _, c0, _ in spans] == [0, *[c1 for _, _, c1 in spans[:-1]]] and spans[-1][2] == n
    assert all(c0 < c1 for _, c0, c1 in spans)
    for start, c0, c1 in spans:
        assert 0 <= start and start + win <= n and start <= c0 and c1 <= start + win
        assert c0 == 0 or c0 - start >= overlap
        assert c1 == n or start + win - c1 >= overlap
    if tile > 0 and n > tile + 2 * overlap:
        assert win == tile + 2 * overlap and all(b[0] - a[0] <= tile for a, b in zip(spans, spans[1:]))
    else:
        assert (win, spans) == (n, [(0, 0, n)])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.integers(0, 40), st.integers(0, 12))
def test_windows_cover_every_pixel_once(h, w, tile, overlap):
    from pipeline.gan.sr import _windows

    seen = np.zeros((h, w), np.int32)
    for (lh, lw), (wy, wx), (y0, y1, x0, x1) in _windows((h, w), tile, overlap):
        assert wy + lh <= h and wx + lw <= w
        seen[y0:y1, x0:x1] += 1
    assert (seen == 1).all()
