"""Seam-free tiled inference.

Large images are cut into equal-size overlapping tiles (so they batch and so an ONNX/TensorRT
engine sees few distinct shapes), each tile is restored, and the outputs are blended back with
weight maps that fade across the overlaps.

Why the weight maps have a zero margin: a network's output is wrong within its receptive-field
radius r of a tile edge that lies *inside* the image (it sees padding instead of the real
neighbours). Any non-zero weight on those pixels leaks the error into the result, so on
interior edges the outer ``overlap // 4`` pixels get weight 0 and a raised-cosine ramp spans the
middle half of the overlap. Consequence: tiled == untiled (to float rounding) whenever
r <= overlap // 4; for networks with a larger reach the ramp still hides the seam.

Out of memory (any backend: see `is_out_of_memory`) does not fail an image: the batch of tiles
is halved first, then the tile side (each tile that does not fit is restored from tiles half
its size, recursively), and the rest of the image goes on at the size that fits.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Edges = tuple[bool, bool, bool, bool]  # (top, bottom, left, right) touches the image border


class OutOfMemory(MemoryError):
    """An engine ran out of (device) memory for one call; the tiler retries with smaller work."""


_OOM_WORDS = ("out of memory", "outofmemory", "failed to allocate", "bad_alloc", "cudaerrormemoryallocation",
              "cuda_error_out_of_memory", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of any backend (MemoryError, torch.cuda.OutOfMemoryError,
    ONNX Runtime's allocation failures, TensorRT/CUDA allocation errors)."""
    if isinstance(exc, MemoryError) or "outofmemory" in type(exc).__name__.lower():
        return True
    text = str(exc).lower()
    return any(w in text for w in _OOM_WORDS)


class _Backoff:
    """Shared across one image (and its recursive sub-tilings): what is known not to fit."""

    def __init__(self, batch: int):
        self.batch = max(1, batch)
        self.too_big: int | None = None  # smallest tile side (max of h, w) that ran out of memory
        self.events = 0

    def failed(self, infer, side: int) -> None:
        self.events += 1
        self.too_big = side if self.too_big is None else min(self.too_big, side)
        release = getattr(infer, "release_memory", None)  # e.g. torch.cuda.empty_cache()
        if callable(release):
            release()


def _halve(side: int, align: int, min_tile: int) -> int | None:
    """Half of `side` rounded down to `align`, or None when that is below `min_tile`."""
    half = (side // 2) // align * align
    return half if half >= max(min_tile, align) and half < side else None


def _sub_overlap(overlap: int, tile: int, align: int) -> int:
    """`overlap` if it still fits in `tile`, else half the tile; a multiple of `align`, < tile."""
    ov = overlap if overlap < tile else tile // 2
    return max(0, min(ov // align * align, tile - align))


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: stride tile-overlap, the last one pushed back inside."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    pos = list(range(0, length - tile, stride))
    pos.append(length - tile)  # shifted back rather than shrunk: every tile keeps the same size
    return pos


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, h, w) input-space tiles covering the image, row-major, all of the same size."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap} tile={tile}")
    h, w = min(tile, height), min(tile, width)
    return [(y, x, h, w)
            for y in _positions(height, tile, overlap)
            for x in _positions(width, tile, overlap)]


def _ramp(n: int, margin: int, length: int) -> np.ndarray:
    """Rising edge profile of `length`: `margin` zeros, an n-long raised cosine, then ones.

    Samples sit at pixel centres, so the ramp is strictly inside (0, 1) and a rising and a
    mirrored falling ramp over the same pixels add up to exactly 1.
    """
    prof = np.ones(length, np.float64)
    prof[:min(margin, length)] = 0.0
    if n > 0:
        t = (np.arange(n) + 0.5) / n
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        end = min(margin + n, length)
        prof[margin:end] = ramp[:end - margin]
    return prof


def _axis_profile(length: int, overlap: int, scale: int, start_border: bool, end_border: bool) -> np.ndarray:
    margin = (overlap // 4) * scale
    n = overlap * scale - 2 * margin
    prof = np.ones(length, np.float64)
    if not start_border:
        prof *= _ramp(n, margin, length)
    if not end_border:
        prof *= _ramp(n, margin, length)[::-1]
    return prof


def blend_window(h: int, w: int, overlap: int, scale: int, edges: Edges) -> np.ndarray:
    """Output-space (h*scale, w*scale) float32 weights for an (h, w) input tile.

    `edges` = (top, bottom, left, right): True where that side lies on the image border, which
    stays flat 1 (nothing to blend with there); interior sides fade across the overlap.
    """
    top, bottom, left, right = edges
    py = _axis_profile(h * scale, overlap, scale, top, bottom)
    px = _axis_profile(w * scale, overlap, scale, left, right)
    return np.outer(py, px).astype(np.float32)


def run_tiled(infer: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, scale: int,
              tile: int | None, overlap: int = 16, batch: int = 4, align: int = 1, min_tile: int = 16,
              out_channels: int | None = None, _backoff: _Backoff | None = None) -> np.ndarray:
    """Restore a (C, H, W) float32 image with `infer` ((N,C,h,w) -> (N,C',h*s,w*s)), tile by tile.

    C' is `out_channels` (default C): networks with extra input planes (a noise-level hint) still
    return RGB.

    Out of memory (see `is_out_of_memory`) never fails the image while there is room to shrink:
    a batch of tiles that does not fit is retried in halves, and a single tile that does not fit
    is restored from tiles half its size (multiples of `align`, at least `min_tile`); sizes known
    to fail are not tried again for the rest of the image.
    """
    c_in, height, width = image.shape
    c = out_channels or c_in
    state = _backoff or _Backoff(batch)
    if tile is None or (height <= tile and width <= tile):
        side = max(height, width)
        if state.too_big is None or side < state.too_big:
            try:
                out = infer(np.ascontiguousarray(image[None], dtype=np.float32))
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(e) or _halve(side, align, min_tile) is None:
                    raise
                state.failed(infer, side)
            else:
                _check(out, 1, c, height * scale, width * scale)
                return out[0]
        half = _halve(min(side, state.too_big), align, min_tile)
        if half is None:
            raise OutOfMemory(f"out of memory even for {side}x{side} tiles")
        return run_tiled(infer, image, scale=scale, tile=half, overlap=_sub_overlap(overlap, half, align),
                         batch=state.batch, align=align, min_tile=min_tile, out_channels=c, _backoff=state)

    tiles = plan_tiles(height, width, tile, overlap)
    th, tw = tiles[0][2], tiles[0][3]
    acc = np.zeros((c, height * scale, width * scale), np.float32)
    wsum = np.zeros((height * scale, width * scale), np.float32)
    windows: dict[Edges, np.ndarray] = {}  # at most 16 edge combinations: build each once
    i = 0
    while i < len(tiles):
        group = tiles[i:i + state.batch]
        crops = [image[:, y:y + th, x:x + tw] for y, x, _, _ in group]
        out = None
        if state.too_big is None or max(th, tw) < state.too_big:
            try:
                out = infer(np.stack(crops).astype(np.float32, copy=False))
            except Exception as e:  # noqa: BLE001
                if not is_out_of_memory(e):
                    raise
                if state.batch > 1:  # fewer tiles per call first; redo this group
                    state.batch //= 2
                    state.events += 1
                    release = getattr(infer, "release_memory", None)
                    if callable(release):
                        release()
                    continue
                if _halve(max(th, tw), align, min_tile) is None:
                    raise
                state.failed(infer, max(th, tw))
        if out is None:  # this tile size does not fit: restore each tile from smaller tiles
            out = np.stack([run_tiled(infer, np.ascontiguousarray(crop), scale=scale, tile=max(th, tw),
                                      overlap=overlap, batch=state.batch, align=align, min_tile=min_tile,
                                      out_channels=c, _backoff=state) for crop in crops])
        _check(out, len(group), c, th * scale, tw * scale)
        for (y, x, _, _), o in zip(group, out):
            edges = (y == 0, y + th == height, x == 0, x + tw == width)
            win = windows.get(edges)
            if win is None:
                win = windows[edges] = blend_window(th, tw, overlap, scale, edges)
            ys, xs = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            acc[:, ys, xs] += o * win
            wsum[ys, xs] += win
        i += len(group)
    # The zero-margin ramps never leave a pixel uncovered (see module docstring); guard anyway
    # so a bug shows up as black rather than NaN.
    return acc / np.maximum(wsum, 1e-12)


def _check(out: np.ndarray, n: int, c: int, h: int, w: int) -> None:
    if out.shape != (n, c, h, w):
        raise ValueError(f"infer returned shape {tuple(out.shape)}, expected {(n, c, h, w)} "
                         f"(is `scale` right?)")
