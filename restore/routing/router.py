"""Patch-adaptive routing: cut → score → decide → run each subnet on its patches (batched) → blend.

    image ─ patches (overlapping) ─ score each ─ table lookup ─ decide ─┬─ bicubic patches
                                                                       ├─ subnet 1 patches ─ one batch
                                                                       └─ subnet k patches ─ one batch
                                                      blend (feathered overlaps) ─ image + RouteMap

The bicubic tier is the whole-image bicubic upscale cropped per patch (one cv2 call, no patch
borders). Network tiers are engines of the supernet cut to one width (`Subnet`), each exported
and cached like any restorer; all patches of one subnet go through in large batches, which is
what turns fewer FLOPs into less wall time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from restore.pipeline.tiling import blend_window, plan_tiles

from .decide import assign
from .scores import score_patches, to_uint8
from .table import RouteTable

# Colours of the routing map, cheapest subnet first (bicubic = green, as in ARM's figures).
MAP_COLOURS = np.array([(46, 204, 64), (255, 220, 0), (255, 133, 27), (255, 65, 54), (177, 13, 201)], np.uint8)


@dataclass
class RouteMap:
    """Which subnet each patch used."""

    boxes: list[tuple[int, int, int, int]]  # (y, x, h, w), input pixels
    choice: np.ndarray  # subnet index per box
    scores: np.ndarray  # difficulty score per box
    subnets: list[str]
    scale: int
    input_shape: tuple[int, int]
    predicted_ms: float = 0.0  # sum of the table's per-patch costs for this choice
    timings: dict = field(default_factory=dict)  # seconds spent per stage

    def shares(self) -> dict[str, float]:
        n = max(1, len(self.choice))
        return {name: float(np.sum(self.choice == k)) / n for k, name in enumerate(self.subnets)}

    def index_map(self) -> np.ndarray:
        """Input-size uint8 map of the subnet index each pixel's patch used (later patches on top)."""
        out = np.zeros(self.input_shape, np.uint8)
        for (y, x, bh, bw), k in zip(self.boxes, self.choice):
            out[y:y + bh, x:x + bw] = k
        return out

    def render(self, base: np.ndarray | None = None, opacity: float = 0.45) -> np.ndarray:
        """Output-size uint8 RGB picture: each patch's core filled with its subnet's colour,
        blended over `base` (the restored image, float [0,1] or uint8) when given."""
        h, w = self.input_shape
        s = self.scale
        canvas = np.zeros((h * s, w * s, 3), np.uint8)
        # Paint in order so later (lower-right) patches own their overlaps, like a grid.
        for (y, x, bh, bw), k in zip(self.boxes, self.choice):
            canvas[y * s:(y + bh) * s, x * s:(x + bw) * s] = MAP_COLOURS[int(k) % len(MAP_COLOURS)]
        for y, x, bh, bw in self.boxes:  # thin grid lines show the patches
            canvas[y * s, x * s:(x + bw) * s] = 0
            canvas[y * s:(y + bh) * s, x * s] = 0
        if base is None:
            return canvas
        if base.dtype != np.uint8:
            base = to_uint8(base)
        return cv2.addWeighted(base, 1.0 - opacity, canvas, opacity, 0.0)

    def legend(self) -> str:
        names = ("green", "yellow", "orange", "red", "purple")
        return ", ".join(f"{names[k % len(names)]} = {n} ({100 * v:.0f}%)"
                         for k, (n, v) in enumerate(self.shares().items()))


def _edges(box, h: int, w: int) -> tuple[bool, bool, bool, bool]:
    y, x, bh, bw = box
    return (y == 0, y + bh == h, x == 0, x + bw == w)


@lru_cache(maxsize=64)
def _window(bh: int, bw: int, overlap: int, scale: int, edges: tuple, blend: str) -> np.ndarray:
    if blend == "feather":
        return blend_window(bh, bw, overlap, scale, edges)
    if blend == "average":
        return np.ones((bh * scale, bw * scale), np.float32)
    raise ValueError(f"unknown blend {blend!r} (feather or average)")


@lru_cache(maxsize=16)
def _weight_sum(h: int, w: int, patch: int, overlap: int, scale: int, blend: str) -> np.ndarray:
    """Σ of every patch's window over the output: a function of the geometry alone."""
    total = np.zeros((h * scale, w * scale), np.float32)
    for box in plan_tiles(h, w, patch, overlap):
        y, x, bh, bw = box
        total[y * scale:(y + bh) * scale, x * scale:(x + bw) * scale] += _window(bh, bw, overlap, scale,
                                                                               _edges(box, h, w), blend)
    total = np.maximum(total, 1e-12)
    total.flags.writeable = False  # shared between calls
    return total


def bicubic_upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """HxWx3 float32 → bicubic (a = -0.75, like torch/ARM's subnet 0), not clipped."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)


def run_routed(rgb: np.ndarray, *, engines: list, table: RouteTable, scale: int, patch: int, overlap: int,
               score: str = "edge", mode: str = "balanced", budget_ms: float | None = None,
               choice: np.ndarray | None = None, batch: int = 64, blend: str = "feather",
               loss_db: float | None = None) -> tuple[np.ndarray, RouteMap]:
    """Restore HxWx3 float32 [0,1] `rgb` patch by patch. `engines[k]` runs subnet k on an NCHW
    batch (None for bicubic). `choice` forces the subnet of every patch (tests, ARM protocol);
    `blend` = "feather" (raised-cosine overlaps) or "average" (ARM: plain mean of overlaps).
    Returns the clipped HxWx3 output and the RouteMap."""
    t0 = time.perf_counter()
    h, w = rgb.shape[:2]
    boxes = plan_tiles(h, w, patch, overlap)
    ph, pw = boxes[0][2], boxes[0][3]
    scores = score_patches(to_uint8(rgb), boxes, score)
    cost = np.asarray(table.cost_ms if any(table.cost_ms[1:]) else table.macs, np.float64)
    if choice is None:
        psnr, mse = table.predict(scores)
        budget = None
        if budget_ms is not None and any(table.cost_ms[1:]):
            budget = budget_ms - table.overhead_ms * len(boxes)  # what is left for the networks
        choice = assign(psnr, mse, cost, mode=mode, budget=budget, loss_db=loss_db)
    choice = np.asarray(choice, np.int64)
    t1 = time.perf_counter()

    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    # Blending, rearranged so that only network patches cost anything: with W_i the window of
    # patch i and Σ W_i the (geometry-only, cached) weight sum, the blend Σ W_i·P_i / Σ W_i equals
    # base + Σ_net W_i·(P_i − base) / Σ W_i when every other patch is the bicubic `base` itself.
    wsum = _weight_sum(h, w, patch, overlap, scale, blend)
    base = (bicubic_upscale(rgb, scale) if engines[0] is None
            else np.zeros((h * scale, w * scale, 3), np.float32))
    delta = np.zeros_like(base)
    net_s = 0.0
    for k, engine in enumerate(engines):
        idx = np.flatnonzero(choice == k)
        if engine is None or idx.size == 0:
            continue
        for start in range(0, idx.size, batch):
            part = idx[start:start + batch]
            crops = np.stack([chw[:, y:y + ph, x:x + pw] for y, x, _, _ in (boxes[i] for i in part)])
            ts = time.perf_counter()
            out = engine(crops)
            net_s += time.perf_counter() - ts
            for i, o in zip(part, out):
                y, x, bh, bw = boxes[i]
                ys, xs = slice(y * scale, (y + bh) * scale), slice(x * scale, (x + bw) * scale)
                win = _window(bh, bw, overlap, scale, _edges(boxes[i], h, w), blend)
                delta[ys, xs] += (o.transpose(1, 2, 0) - base[ys, xs]) * win[..., None]
    delta /= wsum[..., None]
    result = np.clip(base + delta, 0.0, 1.0, out=delta)
    t2 = time.perf_counter()
    route = RouteMap(boxes=boxes, choice=choice, scores=scores, subnets=list(table.subnets), scale=scale,
                     input_shape=(h, w),
                     predicted_ms=float(np.asarray(table.cost_ms)[choice].sum() + table.overhead_ms * len(boxes)),
                     timings={"decide_s": t1 - t0, "networks_s": net_s, "total_s": t2 - t0})
    return result, route
