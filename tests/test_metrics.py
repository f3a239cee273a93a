"""PSNR/SSIM as SR papers measure them (Y channel, border crop), against hand-computed values and
scikit-image's own functions on the same images; no Spark needed."""

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.ingest import load_bundled
from pipeline.metrics import psnr_y, rgb_to_y, ssim_y


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
