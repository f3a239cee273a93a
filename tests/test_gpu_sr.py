"""Batched, tiled SR inference (pipeline.gan.sr): the tiles stitch into the whole-image result."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import metrics
from pipeline.gan import sr
from pipeline.gan.models import SRResNet


@pytest.fixture(scope="module")
def generator():
    """An SRResNet whose output is not plain bicubic (the residual branch is live), like a trained one."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    g = SRResNet(blocks=4, ch=32)
    torch.nn.init.normal_(g.tail.weight, 0, 0.01)
    return g.eval()


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return skimage.data.astronaut()  # 512x512 RGB: a 128x128 LR image


def test_windows_cover_every_pixel_once():
    for n, tile, overlap in ((100, 32, 8), (128, 128, 16), (7, 32, 8), (161, 128, 16), (96, 32, 0), (1000, 128, 16)):
        length, spans = sr._spans(n, tile, overlap)
        covered = np.zeros(n, int)
        for start, c0, c1 in spans:
            assert 0 <= start <= c0 < c1 <= start + length <= n  # the core lies inside its window
            assert c0 == 0 or c0 - start >= overlap               # real context on every inner side
            assert c1 == n or start + length - c1 >= overlap
            covered[c0:c1] += 1
        assert (covered == 1).all()
        assert all(b[0] - a[0] <= tile for a, b in zip(spans, spans[1:]))


def test_tiled_output_matches_whole_image_output(generator, photo):
    hr, lr, _ = sr.downscale(photo)
    assert len(sr._spans(lr.shape[0], 40, sr.DEFAULT_OVERLAP)[1]) == 3  # 3x3 tiles
    whole = sr.super_resolve(generator, [lr], tile=0, precision="fp32")[0]
    tiled = sr.super_resolve(generator, [lr], tile=40, overlap=sr.DEFAULT_OVERLAP, batch=3, precision="fp32")[0]
    assert tiled.shape == whole.shape == hr.shape
    print(f"PSNR (Y) whole {metrics.psnr_y(whole, hr):.3f} dB, tiled {metrics.psnr_y(tiled, hr):.3f} dB, "
          f"tiled vs whole {metrics.psnr_y(tiled, whole):.1f} dB")
    assert abs(metrics.psnr_y(tiled, hr) - metrics.psnr_y(whole, hr)) < 0.1
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # rounding only: no seams


def test_a_batch_of_mixed_sizes_gives_what_one_image_at_a_time_gives(generator, photo):
    images = [photo[:64, :48], photo[100:164, 200:248], photo[:30, :70], photo[300:390, 10:60]]
    together = sr.super_resolve(generator, images, tile=24, overlap=8, batch=5, precision="fp32")
    for img, out in zip(images, together):
        alone = sr.super_resolve(generator, [img], tile=24, overlap=8, batch=1, precision="fp32")[0]
        assert out.shape == (img.shape[0] * 4, img.shape[1] * 4, 3)
        assert np.abs(out.astype(int) - alone).max() <= 1


def test_restore_from_hr_scores_sr_against_bicubic(generator, photo):
    (hr, out, bicubic), = sr.restore_from_hr(generator, [photo[:250, :198]], precision="fp32")
    assert hr.shape == out.shape == bicubic.shape == (248, 196, 3)
    assert set(sr.sr_scores(out, bicubic, hr)) == {"psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic"}


# ---------------------------------------------------------------- tiling properties


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
def test_windows_of_any_image_cover_every_pixel_once(h, w, tile, overlap):
    from pipeline.gan.sr import _windows

    seen = np.zeros((h, w), np.int32)
    for (lh, lw), (wy, wx), (y0, y1, x0, x1) in _windows((h, w), tile, overlap):
        assert wy + lh <= h and wx + lw <= w
        seen[y0:y1, x0:x1] += 1
    assert (seen == 1).all()
