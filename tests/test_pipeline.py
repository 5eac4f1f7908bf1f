"""The read → engine → blend path with the shipped LIPT weights: tiling, alpha, gray, tiny inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from restore.api import load_restorer
from restore.io.images import Picture, read_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lipt_x2():
    return load_restorer("lipt", "tiny", 2, backend="torch")


def test_tiled_equals_untiled_away_from_the_image_border(lipt_x2):
    """Seams are invisible: with several tiles the result matches whole-image inference.

    LIPT's rolled windows and circularly padded sparse windows wrap around the *image*, so
    whole-image output near a border depends on the opposite border, which no tile can see;
    the comparison therefore excludes a 32-px band along the image border (measured there:
    about 1e-2 max, 3e-4 mean over the whole image).
    """
    img = read_image(ROOT / "samples" / "astronaut.png").rgb[:200, :200]
    whole = lipt_x2.restore_rgb(img, tile=0)
    tiled = lipt_x2.restore_rgb(img, tile=128, overlap=48)  # 2x2 tiles, seams through the middle
    diff = np.abs(whole - tiled).max(-1)
    band = 2 * 32
    assert diff[band:-band, band:-band].max() < 1e-3
    assert diff.mean() < 1e-3
    # the check has teeth: without overlap the seams show
    seamy = np.abs(whole - lipt_x2.restore_rgb(img, tile=128, overlap=0)).max(-1)
    assert seamy[band:-band, band:-band].max() > 1e-3


def test_alpha_is_resized_separately_and_gray_stays_gray(lipt_x2):
    rgb = np.full((12, 10, 3), 0.5, np.float32)
    alpha = np.zeros((12, 10), np.float32)
    alpha[:, 5:] = 1.0
    out = lipt_x2.restore_picture(Picture(rgb=rgb, alpha=alpha, bit_depth=16, gray=True))
    assert out.rgb.shape == (24, 20, 3) and out.alpha.shape == (24, 20)
    assert out.alpha[:, :8].max() < 0.05 and out.alpha[:, 12:].min() > 0.95
    assert out.bit_depth == 16 and out.gray
    assert 0.0 <= out.alpha.min() and out.alpha.max() <= 1.0


@pytest.mark.parametrize("h,w", [(1, 1), (3, 7), (9, 5)])
def test_inputs_smaller_than_the_window_work(lipt_x2, h, w):
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    out = lipt_x2.restore_rgb(img)
    assert out.shape == (2 * h, 2 * w, 3) and np.isfinite(out).all()
