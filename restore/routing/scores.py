"""Cheap per-patch difficulty scores, computed on the *input* patch before any network runs.

A restorer names its score in `RouteSpec.score`; the calibration table maps score bins to the
quality each subnet reaches, so a score only has to rank patches by how much a bigger network
helps, not predict PSNR itself.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """float [0,1] HxWx3 → uint8 the way an 8-bit file would hold it (round half up)."""
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def edge_score(patch_u8: np.ndarray) -> float:
    """ARM's edge score: mean |3x3 Laplacian| of the grey uint8 patch (saturated to 0..255).

    Same arithmetic as ARM: BT.601 grey, `cv2.Laplacian(ksize=3, CV_16S)`, `convertScaleAbs`
    (saturating |x| to uint8), mean over the patch, with OpenCV's default reflect-101 border of
    the patch itself.
    """
    grey = cv2.cvtColor(patch_u8, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_16S, ksize=3)
    return float(cv2.convertScaleAbs(lap).mean())


SCORES: dict[str, Callable[[np.ndarray], float]] = {"edge": edge_score}


def score_patches(image_u8: np.ndarray, boxes: list[tuple[int, int, int, int]], score: str = "edge") -> np.ndarray:
    """Score each (y, x, h, w) box of an HxWx3 uint8 image; float64 array, one per box."""
    try:
        fn = SCORES[score]
    except KeyError:
        raise ValueError(f"unknown patch score {score!r} (known: {', '.join(SCORES)})") from None
    return np.array([fn(image_u8[y:y + h, x:x + w]) for y, x, h, w in boxes], dtype=np.float64)
