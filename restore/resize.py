"""MATLAB-compatible bicubic ``imresize``.

The super-resolution literature makes its low-resolution inputs (and its
"bicubic" baselines) with MATLAB's ``imresize(img, scale, 'bicubic')``.  That
differs from OpenCV / PIL / torch bicubic in several ways, all reproduced here:

* Keys cubic kernel with a = -0.5 (OpenCV uses -0.75);
* antialiasing when downscaling: the kernel is stretched by 1/scale (and its
  height reduced by scale), so it averages over every input pixel it covers;
* output length ceil(in * scale), and the input coordinate of output pixel x
  (1-based) is u = x / scale + 0.5 * (1 - 1 / scale);
* symmetric boundary handling: taps falling outside the image are mirrored
  back in, edge pixel included (a b c | c b a), then weights are normalised.

Because the operation is linear and separable, each axis is one dense
(out_len x in_len) matrix, and a resize is ``Wh @ img @ Ww.T`` per channel.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["bicubic_weights", "imresize", "imresize_torch", "output_size"]


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys cubic convolution kernel, support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (a + 2) * ax3 - (a + 3) * ax2 + 1
    outer = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return np.where(ax <= 1, inner, np.where(ax <= 2, outer, 0.0))


@lru_cache(maxsize=64)
def _weights_cached(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    if in_len < 1 or out_len < 1:
        raise ValueError(f"lengths must be positive, got in={in_len}, out={out_len}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")

    x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # matching 1-based input coordinates

    if scale < 1 and antialias:
        # Stretched kernel h(t) = scale * cubic(scale * t): a low-pass filter
        # matched to the new sampling rate.
        kernel_width = 4.0 / scale

        def kernel(t):
            return scale * _cubic(scale * t)
    else:
        kernel_width = 4.0
        kernel = _cubic

    # Every input pixel that can touch output x, as MATLAB enumerates them.
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based, may be out of range
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)

    # Symmetric padding: index sequence 1..n, n..1 repeated; fold taps into it.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]

    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], src.shape)
    np.add.at(mat, (rows, src), w)  # folded taps can land on the same pixel
    mat.setflags(write=False)  # shared through the cache
    return mat


def bicubic_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_len x in_len) float64 resampling matrix; each row sums to 1.

    ``scale`` is the factor used in the coordinate mapping (normally
    out_len / in_len, or the user's scale when ``out_len = ceil(in_len * scale)``).
    The returned array is cached and read-only; copy it before modifying.
    """
    return _weights_cached(int(in_len), int(out_len), float(scale), bool(antialias))


def output_size(
    in_hw: tuple[int, int], scale: float | None = None, size: tuple[int, int] | None = None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Resolve ((out_h, out_w), (scale_h, scale_w)) the way MATLAB does."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    h, w = in_hw
    if scale is not None:
        scale = float(scale)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return (math.ceil(h * scale), math.ceil(w * scale)), (scale, scale)
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return (out_h, out_w), (out_h / h, out_w / w)


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize an HxW or HxWxC image like MATLAB ``imresize(..., 'bicubic')``.

    Float input (any range) returns float32 (no clipping, values may overshoot
    slightly as bicubic does).  uint8 input is computed in float and returned
    as uint8, rounded half up and clipped, like MATLAB.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC image, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    # float32 input stays float32 for speed; everything else is done in float64.
    work = np.float32 if img.dtype == np.float32 else np.float64
    x = img.astype(work, copy=False)

    (out_h, out_w), (sh, sw) = output_size(img.shape[:2], scale, size)
    wh = bicubic_weights(img.shape[0], out_h, sh, antialias).astype(work)
    ww = bicubic_weights(img.shape[1], out_w, sw, antialias).astype(work)

    # Wh @ img @ Ww.T, with tensordot so channels ride along as a batch dim.
    out = np.tensordot(wh, x, axes=(1, 0))  # (out_h, W[, C])
    out = np.tensordot(out, ww, axes=(1, 1))  # (out_h[, C], out_w)
    if out.ndim == 3:
        out = np.moveaxis(out, 2, 1)  # -> (out_h, out_w, C)
    out = np.ascontiguousarray(out)

    if is_uint8:
        # MATLAB rounds half away from zero; values are >= 0 after clipping.
        return np.floor(np.clip(out, 0, 255) + 0.5).astype(np.uint8)
    return out.astype(np.float32, copy=False)


def imresize_torch(
    x: torch.Tensor,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """MATLAB bicubic resize of an (N, C, H, W) float tensor (same maths as ``imresize``).

    Runs on the tensor's device and dtype; no clipping or quantisation.
    """
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point tensor, got {x.dtype}")
    (out_h, out_w), (sh, sw) = output_size(tuple(x.shape[-2:]), scale, size)
    wh = torch.from_numpy(bicubic_weights(x.shape[-2], out_h, sh, antialias).copy())
    ww = torch.from_numpy(bicubic_weights(x.shape[-1], out_w, sw, antialias).copy())
    wh = wh.to(device=x.device, dtype=x.dtype)
    ww = ww.to(device=x.device, dtype=x.dtype)
    # (o,h) @ (n,c,h,w) @ (w,p) broadcasts to (n,c,o,p): rows first, then columns.
    return wh @ x @ ww.T
