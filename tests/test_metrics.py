"""PSNR/SSIM as SR papers measure them (Y channel, border crop), against hand-computed values and
scikit-image's own functions on the same images; accuracy and the metrics table's rows. No Spark
needed: `make mutation` runs these against each mutant of metrics.py (setup.cfg [mutmut])."""

import warnings

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.ingest import load_bundled
from pipeline.metrics import accuracy, metric_rows, psnr_y, rgb_to_y, ssim_y


def test_psnr_of_a_uniform_offset_is_the_hand_computed_value():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = a + 10  # every channel +10 → Y (BT.601, 16..235) moves by 219 * 10 / 255
    expected = 10 * np.log10(255.0 ** 2 / (219 * 10 / 255) ** 2)
    assert psnr_y(a, b) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(29.4527, abs=1e-4)
    assert psnr_y(a, a) == float("inf")


def test_border_crop_ignores_exactly_the_scale_factor_border():
    a = np.full((40, 40, 3), 50, np.uint8)
    b = a.copy()
    b[:4] = 250  # a difference only inside the 4-pixel border
    assert psnr_y(a, b) == float("inf") and ssim_y(a, b) == pytest.approx(1.0)
    assert psnr_y(a, b, border=3) < 20 and psnr_y(a, b, border=0) < 20
    b[4, 4] = 60  # one pixel just inside the crop counts
    assert np.isfinite(psnr_y(a, b))


def test_y_channel_and_scores_match_scikit_image_on_real_photos():
    photos = [p for p in load_bundled("photos")[0] if p.ndim == 3 and p.shape[2] == 3]
    hr = photos[0][:128, :128]
    rng = np.random.default_rng(0)
    noisy = np.clip(hr.astype(int) + rng.integers(-12, 13, hr.shape), 0, 255).astype(np.uint8)
    y_ref, y_noisy = rgb2ycbcr(hr)[..., 0], rgb2ycbcr(noisy)[..., 0]
    np.testing.assert_allclose(rgb_to_y(hr), y_ref, atol=1e-9)
    crop = (slice(4, -4), slice(4, -4))
    assert psnr_y(noisy, hr) == pytest.approx(peak_signal_noise_ratio(y_ref[crop], y_noisy[crop], data_range=255),
                                              abs=1e-9)
    assert ssim_y(noisy, hr) == pytest.approx(structural_similarity(
        y_ref[crop], y_noisy[crop], data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
        abs=1e-9)
    assert 30 < psnr_y(noisy, hr) < 40 and 0.5 < ssim_y(noisy, hr) < 0.99


# ---------------------------------------------------------------- values worked out by hand


def test_psnr_of_gray_images_one_level_apart():
    a = np.full((24, 24), 100, np.uint8)
    # MSE 1 on the gray values themselves: 10 log10(255^2) = 48.1308...
    assert psnr_y(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-9)
    assert psnr_y(a[:, :, None], a[:, :, None] + 1) == pytest.approx(48.1308036, abs=1e-6)
    assert ssim_y(a, a) == pytest.approx(1.0)


def test_identical_images_give_infinite_psnr_without_a_warning():
    a = np.full((12, 12, 3), 9, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr_y(a, a) == float("inf")


def test_accuracy_and_metric_rows():
    assert accuracy(np.array([[3, 1], [0, 4]])) == 0.875
    assert accuracy(np.zeros((3, 3), np.int64)) == 0.0 and accuracy(np.array([[1, 0], [0, 0]])) == 1.0
    rows = metric_rows("run-1", [(np.int64(3), "loss", np.float32(0.5)), (4, "psnr", 30)])
    assert rows == [("run-1", 3, "loss", 0.5), ("run-1", 4, "psnr", 30.0)]
    assert [(type(r[1]), type(r[3])) for r in rows] == [(int, float), (int, float)]
