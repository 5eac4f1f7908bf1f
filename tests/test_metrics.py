"""Tests for restore.metrics (PSNR, SSIM, Y conversion, cropping)."""

import math

import numpy as np
import pytest

from restore.metrics import crop_to_multiple, psnr, rgb_to_y, ssim


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


# rgb_to_y ------------------------------------------------------------------
def test_rgb_to_y_range_and_gray():
    black, white = np.zeros((2, 2, 3)), np.ones((2, 2, 3))
    np.testing.assert_allclose(rgb_to_y(black), 16.0)
    np.testing.assert_allclose(rgb_to_y(white), 16.0 + 65.481 + 128.553 + 24.966)  # 235
    px = np.array([[[0.2, 0.5, 0.8]]])
    assert rgb_to_y(px)[0, 0] == pytest.approx(16 + 65.481 * 0.2 + 128.553 * 0.5 + 24.966 * 0.8)
    assert rgb_to_y(px).dtype == np.float64
    np.testing.assert_allclose(rgb_to_y(np.full((1, 1, 3), 51, np.uint8)), rgb_to_y(np.full((1, 1, 3), 0.2)))


# psnr ----------------------------------------------------------------------
def test_psnr_exact_mse():
    a = np.full((8, 8, 3), 0.5)
    d = 0.05
    sign = np.where((np.indices((8, 8)).sum(0) % 2) == 0, 1.0, -1.0)[..., None]
    b = a + d * sign  # every pixel off by exactly d -> mse = d^2
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / d**2))
    assert psnr(a, b, data_range=2.0) == pytest.approx(10 * math.log10(4 / d**2))
    # Errors on only a quarter of the pixels: mse = d^2 / 4.
    c = a.copy()
    c[::2, ::2] += d
    assert psnr(a, c) == pytest.approx(10 * math.log10(4 / d**2))


def test_psnr_identical_is_inf_and_symmetric():
    a, b = _rand((6, 7)), _rand((6, 7), 1)
    assert psnr(a, a) == float("inf")
    assert psnr(a, b) == pytest.approx(psnr(b, a))


def test_psnr_y_channel():
    # Gray images (R = G = B = v): Y = 16 + 219 v, so a shift of delta in all
    # channels shifts Y by 219 delta; peak is 255 on the Y scale.
    v = np.full((5, 5, 3), 0.4)
    delta = 0.01
    expected = 10 * math.log10(255.0**2 / (219 * delta) ** 2)
    assert psnr(v, v + delta, y_channel=True) == pytest.approx(expected)
    # data_range is ignored in Y mode (always 255).
    assert psnr(v, v + delta, y_channel=True, data_range=1.0) == pytest.approx(expected)
    # Matches an explicit conversion.
    a, b = _rand((6, 6, 3)), _rand((6, 6, 3), 3)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    assert psnr(a, b, y_channel=True) == pytest.approx(psnr(ya, yb, data_range=255.0))


def test_psnr_border_crop():
    a = np.zeros((10, 10))
    b = a.copy()
    b[0, :] = 0.1  # error confined to the outer ring
    b[:, -1] = 0.1
    assert psnr(a, b, border=1) == float("inf")
    assert math.isfinite(psnr(a, b))
    # Interior error of d on 1 pixel of the 6x6 centre left by border=2.
    c = a.copy()
    c[5, 5] = 0.2
    assert psnr(a, c, border=2) == pytest.approx(10 * math.log10(36 / 0.04))
    assert psnr(a, c) == pytest.approx(10 * math.log10(100 / 0.04))


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


# ssim ----------------------------------------------------------------------
def _ssim_reference(a, b):
    """Loop-based SSIM on 0..255 single-channel arrays, straight from the paper."""
    size, sigma = 11, 1.5
    win = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            win[i, j] = math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for y in range(a.shape[0] - size + 1):
        for x in range(a.shape[1] - size + 1):
            pa, pb = a[y:y + size, x:x + size], b[y:y + size, x:x + size]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * (pa - ma) ** 2).sum()
            vb = (win * (pb - mb) ** 2).sum()
            cov = (win * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identity():
    a = _rand((20, 24, 3))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a, y_channel=True) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise_and_is_symmetric():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    a = 0.5 + 0.3 * np.sin(6 * yy + 4 * xx)
    noise = rng.standard_normal(a.shape)
    scores = [ssim(a, np.clip(a + s * noise, 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    b = np.clip(a + 0.05 * noise, 0, 1)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)


def test_ssim_matches_loop_reference():
    a = _rand((14, 15), 5)
    b = np.clip(a + 0.1 * _rand((14, 15), 6) - 0.05, 0, 1)
    assert ssim(a, b) == pytest.approx(_ssim_reference(a * 255, b * 255), abs=1e-10)


def test_ssim_rgb_is_channel_mean_and_border():
    a, b = _rand((16, 17, 3), 7), _rand((16, 17, 3), 8)
    per_channel = [_ssim_reference(a[..., c] * 255, b[..., c] * 255) for c in range(3)]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-10)
    ref_y = _ssim_reference(rgb_to_y(a)[2:-2, 2:-2], rgb_to_y(b)[2:-2, 2:-2])
    assert ssim(a, b, y_channel=True, border=2) == pytest.approx(ref_y, abs=1e-10)


def test_ssim_too_small_raises():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


# crop_to_multiple --------------------------------------------------------------
def test_crop_to_multiple():
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    out = crop_to_multiple(img, 4)
    assert out.shape == (4, 8, 3)
    np.testing.assert_array_equal(out, img[:4, :8])  # top-left anchored
    assert crop_to_multiple(np.zeros((12, 9)), 3).shape == (12, 9)
    assert crop_to_multiple(np.zeros((5, 5)), 1).shape == (5, 5)
