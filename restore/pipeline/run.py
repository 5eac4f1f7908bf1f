"""read → engine (tiled, blended) → write, for one picture at a time.

Colour goes through the network; alpha is resized on its own (bicubic, clipped), never fed to
the network; grayscale sources go through as RGB and come back as gray.
"""
from __future__ import annotations

import numpy as np

from restore.io.images import Picture
from restore.pipeline.tiling import run_tiled
from restore.resize import imresize


def restore_array(restorer, rgb: np.ndarray, *, tile: int | None = None, overlap: int | None = None,
                  noise_level: float | None = None) -> np.ndarray:
    """HxWx3 float32 in [0,1] → restored HxWx3 (times the scale), clipped to [0,1].

    Networks with a noise-level hint plane (in_channels 4) get it here: `noise_level` (σ on the
    0–255 scale), else the restorer's default, else "unknown" (blind)."""
    spec, s = restorer.spec, restorer.scale
    h, w = rgb.shape[:2]
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    if getattr(restorer.model, "in_channels", 3) == 4:
        level = noise_level if noise_level is not None else getattr(restorer, "noise_level", None)
        plane = np.full((1, h, w), restorer.model.hint_value(level), np.float32)
        chw = np.concatenate([chw, plane])
    # Networks have a smallest input (reflect padding to the window); edge-pad tiny images.
    ph, pw = max(0, spec.min_size - h), max(0, spec.min_size - w)
    if ph or pw:
        chw = np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode="edge")
    tile = spec.tile if tile is None else (tile or None)  # tile=0 means "never tile"
    overlap = spec.overlap if overlap is None else overlap
    m = spec.size_multiple
    if tile is not None and m > 1:
        # Window-attention networks partition the image into m×m windows from its top-left
        # corner. Tiles must start on that grid or every window in a tile would differ from the
        # untiled result, so: pad like the network does (reflect, bottom/right), use tile and
        # overlap sizes that are multiples of m, and the tile origins all fall on the grid.
        chw = np.pad(chw, ((0, 0), (0, -chw.shape[1] % m), (0, -chw.shape[2] % m)), mode="reflect")
        tile = max(m, tile - tile % m)
        overlap = min(-(-overlap // m) * m, tile - m)
    if tile is not None:
        tile = max(tile, spec.min_size)
    out = run_tiled(restorer.engine, chw, scale=s, tile=tile, overlap=overlap, align=m,
                    min_tile=max(16, spec.min_size), out_channels=3)  # out-of-memory back-off stays on the grid
    out = out[:, : h * s, : w * s]
    return np.clip(out, 0.0, 1.0).transpose(1, 2, 0)


def restore_picture(restorer, picture: Picture, *, tile: int | None = None, overlap: int | None = None,
                    restored_rgb: np.ndarray | None = None, route=None, noise_level: float | None = None) -> Picture:
    """`restored_rgb` (already restored colour, e.g. by the router) skips the network;
    `route` (a RouteMap) is attached as `route` and as a per-pixel `routing_map`."""
    rgb = (restore_array(restorer, picture.rgb, tile=tile, overlap=overlap, noise_level=noise_level)
           if restored_rgb is None else restored_rgb)
    alpha = picture.alpha
    if alpha is not None and restorer.scale != 1:
        alpha = np.clip(imresize(alpha.astype(np.float32), size=rgb.shape[:2]), 0.0, 1.0)
    out = Picture(rgb=rgb, alpha=alpha, bit_depth=picture.bit_depth, gray=picture.gray,
                  icc_profile=picture.icc_profile, exif=picture.exif, source=picture.source)
    if route is not None:
        out.route = route
        out.routing_map = route.index_map()
    return out
