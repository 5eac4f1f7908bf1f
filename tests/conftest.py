"""Shared fixtures: small images on disk and restorers that are cheap to build.

The ONNX export of a LIPT model takes ~30 s on two cores, so tests share one engine cache
folder for the whole session.
"""
from __future__ import annotations

import numpy as np
import pytest

from restore.io.images import write_image

from helpers import smooth_image


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session", autouse=True)
def _engine_cache_env(engines_dir):
    """Keep every ONNX export of the test session out of the repository's engines/ folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTORE_ENGINES", str(engines_dir))
    yield
    mp.undo()


@pytest.fixture
def image_folder(tmp_path):
    """A folder with two good images (one 16-bit RGBA, one gray) in a nested layout."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    write_image(root / "a.png", smooth_image(20, 28, 1))
    img16 = smooth_image(16, 24, 2)
    alpha = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)
    write_image(root / "sub" / "b16.png", img16, alpha=alpha, bit_depth=16)
    gray = smooth_image(18, 18, 3).mean(-1, keepdims=True).repeat(3, -1)
    write_image(root / "gray.png", gray, gray=True)
    return root
