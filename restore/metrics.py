"""Standard image restoration metrics (PSNR, SSIM), as used by SR papers.

Conventions follow the common MATLAB evaluation code: Y channel from
MATLAB ``rgb2ycbcr`` (studio range 16..235), border crop of ``scale`` pixels,
and SSIM from Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
'valid' filtering and pixel values in 0..255.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["crop_to_multiple", "psnr", "rgb_to_y", "ssim"]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """HxWx3 RGB in [0, 1] -> BT.601 luma in [16, 235] (float64), like MATLAB rgb2ycbcr.

    uint8 input is accepted and treated as value / 255.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB image, got shape {img.shape}")
    x = img.astype(np.float64)
    if img.dtype == np.uint8:
        x /= 255.0
    return 16.0 + x @ np.array([65.481, 128.553, 24.966])


def crop_to_multiple(img: np.ndarray, m: int) -> np.ndarray:
    """Crop H and W down to multiples of m, keeping the top-left corner."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    h, w = img.shape[:2]
    return img[: h - h % m, : w - w % m]


def _prepare(a, b, border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shared preprocessing: shape check, optional Y conversion, border crop."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    else:
        # uint8 is taken as value / 255 so that it matches the [0, 1] convention.
        a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
        b = b / 255.0 if b.dtype == np.uint8 else b.astype(np.float64)
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border:
        a = a[border:-border, border:-border]
        b = b[border:-border, border:-border]
        if a.size == 0:
            raise ValueError("border crop leaves an empty image")
    return a, b


def psnr(a, b, *, data_range: float = 1.0, border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images.

    With ``y_channel`` both images (RGB in [0, 1]) are converted to Y in
    [16, 235] and the peak becomes 255, whatever ``data_range`` says.
    """
    a, b = _prepare(a, b, border, y_channel)
    peak = 255.0 if y_channel else float(data_range)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D normalised Gaussian; its outer product is MATLAB fspecial('gaussian')."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with g along both axes."""
    k = len(g)
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ g  # (H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g  # (H-k+1, W-k+1)


def _ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two single-channel images with values in 0..255."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = _gaussian_window()
    if min(a.shape) < len(g):
        raise ValueError(f"image {a.shape} smaller than the {len(g)}x{len(g)} SSIM window")
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(a, b, *, border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (Wang et al. 2004), inputs HxW or HxWxC in [0, 1].

    Images are scaled to 0..255 (``y_channel`` already yields that range);
    for multi-channel input the per-channel SSIMs are averaged.
    """
    a, b = _prepare(a, b, border, y_channel)
    if not y_channel:
        a, b = a * 255.0, b * 255.0
    if a.ndim == 2:
        return _ssim_2d(a, b)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c]) for c in range(a.shape[2])]))
