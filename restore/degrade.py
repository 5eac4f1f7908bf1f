"""Synthetic degradations for training and for the evaluation protocols of same-size tasks.

- Gaussian noise: clean + σ/255 · N(0, 1), not clipped or quantised (the standard denoising
  benchmark protocol: CBSD68 at σ = 15/25/50).
- Motion blur: kernels from random camera-shake trajectories (a particle with inertia and random
  turns, rasterised with bilinear splats, centred on their centre of mass), sizes 7–31,
  convolved with reflected borders, plus
  mild noise and 8-bit quantisation (what a blurred photo on disk looks like).

The deblurring benchmark uses a fixed set of kernels drawn once with a fixed seed and committed
(`restore/data/motion_kernels.npz`), so the protocol cannot drift if the generator changes.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

KERNEL_SIZES = (7, 31)  # smallest and largest motion-kernel side (odd)
DEBLUR_NOISE_MAX = 3.0  # training: blurred images get σ ∈ [0, 3] on the 0–255 scale
DEBLUR_EVAL_NOISE = 1.0  # benchmark: σ = 1, then 8-bit quantisation
EVAL_KERNELS = Path(__file__).parent / "data" / "motion_kernels.npz"


def random_motion_kernel(rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """A size×size float32 motion-blur kernel (sums to 1) from a random shake trajectory."""
    if size is None:
        size = int(rng.integers(KERNEL_SIZES[0] // 2, KERNEL_SIZES[1] // 2 + 1)) * 2 + 1
    n = 96
    inertia = rng.uniform(0.6, 0.97)  # high: smooth sweeps; low: jittery shake
    heading = rng.uniform(0, 2 * np.pi)
    vel = np.array([np.cos(heading), np.sin(heading)])
    pos, pts = np.zeros(2), []
    for _ in range(n):
        turn = rng.normal(0.0, 1.0, 2)
        if rng.random() < 0.05:  # an occasional jerk
            turn *= 4
        vel = inertia * vel + (1 - inertia) * turn
        vel /= max(np.linalg.norm(vel), 1e-8)
        pos = pos + vel
        pts.append(pos.copy())
    pts = np.array(pts)
    # Dense samples along the polyline, evenly spaced in arc length (the exposure is spread evenly
    # along the path). Centre them on their mean, so the kernel's centre of mass is the kernel's
    # centre: the blur then does not shift the image, and the sharp target is well defined (with
    # a shifted kernel, a network cannot know where the sharp image lies and learns to blur).
    dense = []
    for a, b in zip(pts[:-1], pts[1:]):
        steps = max(2, int(np.ceil(np.abs(b - a).max() * 8)))
        t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None]
        dense.append(a + (b - a) * t)
    dense = np.concatenate(dense)
    dense -= dense.mean(0)
    reach = max(np.abs(dense).max(), 1e-6)  # fit the path in the kernel; its extent is random
    dense *= rng.uniform(0.5, 1.0) * ((size - 1) / 2 - 1) / reach
    dense += (size - 1) / 2
    k = np.zeros((size, size), np.float64)
    x0, y0 = np.floor(dense[:, 0]).astype(int), np.floor(dense[:, 1]).astype(int)  # x = column, y = row
    fx, fy = dense[:, 0] - x0, dense[:, 1] - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):  # bilinear splats
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(k, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), wy * wx)
    return (k / k.sum()).astype(np.float32)


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve HxWxC float32 with the kernel (true convolution, reflected borders)."""
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])  # filter2D correlates
    return cv2.filter2D(image.astype(np.float32), -1, flipped, borderType=cv2.BORDER_REFLECT)


def to8bit(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0


def eval_kernels() -> list[np.ndarray]:
    """The committed deblurring benchmark kernels."""
    with np.load(EVAL_KERNELS) as f:
        return [f[k] for k in sorted(f.files)]


def make_eval_kernels(path: Path = EVAL_KERNELS, seed: int = 2026) -> Path:
    """Draw the 8 benchmark kernels (sizes spread over 7–31) and write them; run once, commit."""
    rng = np.random.default_rng(seed)
    sizes = (7, 11, 15, 19, 23, 27, 31, 17)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"k{i}": random_motion_kernel(rng, s) for i, s in enumerate(sizes)})
    return path


def noisy_image(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Denoising protocol: clean (HxWx3 float in [0,1]) + σ/255 Gaussian noise, float, unclipped."""
    rng = np.random.default_rng(seed)
    return (clean + rng.standard_normal(clean.shape) * sigma / 255.0).astype(np.float32)


def blurred_image(clean: np.ndarray, kernel: np.ndarray, seed: int, sigma: float = DEBLUR_EVAL_NOISE) -> np.ndarray:
    """Deblurring protocol: blur with the kernel, add σ/255 noise, quantise to 8 bits."""
    rng = np.random.default_rng(seed)
    out = blur(clean, kernel) + rng.standard_normal(clean.shape) * sigma / 255.0
    return to8bit(out).astype(np.float32)


def richardson_lucy(blurred: np.ndarray, kernel: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Non-blind Richardson–Lucy deconvolution with the true kernel (the classical reference)."""
    x = np.clip(blurred, 1e-3, 1.0).astype(np.float32)
    observed = x.copy()
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    for _ in range(iterations):
        ratio = observed / np.maximum(blur(x, kernel), 1e-4)
        x = x * blur(ratio, flipped)
    return np.clip(x, 0.0, 1.0)
