"""Self-ensemble: the eight flips/rotations, undone and averaged, through every entry point."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from restore.pipeline.ensemble import VIEWS, SelfEnsemble, from_view, to_view

from helpers import smooth_image

ROOT = Path(__file__).resolve().parent.parent


def test_each_view_is_undone_exactly():
    x = np.random.default_rng(0).random((2, 4, 5, 7), dtype=np.float32)  # not square
    assert len({(k, f) for k, f in VIEWS}) == 8
    shapes = set()
    for k, flip in VIEWS:
        v = to_view(x, k, flip)
        shapes.add(v.shape)
        assert np.array_equal(from_view(v, k, flip), x)
    assert shapes == {(2, 4, 5, 7), (2, 4, 7, 5)}
    assert len({to_view(x, k, f).tobytes() for k, f in VIEWS}) == 8  # eight different views


class ColumnRamp:
    """Adds each pixel's column index in the frame it is given: not flip/rotation-equivariant."""
    name = "ramp"

    def __call__(self, batch):
        return batch + np.arange(batch.shape[-1], dtype=np.float32)


def test_ensemble_averages_over_all_eight_views():
    # Over the eight views a pixel (i, j) of an H×W picture sits in columns j, W-1-j, i and H-1-i,
    # twice each, so the averaged ramp is the constant (H + W - 2) / 4.
    x = np.random.default_rng(1).random((1, 3, 6, 10), dtype=np.float32)
    out = SelfEnsemble(ColumnRamp())(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x + (6 + 10 - 2) / 4, atol=1e-5)
    assert not np.allclose(ColumnRamp()(x), x + 3.5)  # the bare engine is not that


def test_restorer_with_ensemble_restores_and_refuses_routing():
    from restore.api import load_restorer

    rgb = smooth_image(24, 40, seed=3).astype(np.float32) / 255
    plain = load_restorer("rtsr", scale=2, backend="torch")
    ens = load_restorer("rtsr", scale=2, backend="torch", ensemble=True)
    a, b = plain.restore_rgb(rgb), ens.restore_rgb(rgb)
    assert b.shape == a.shape == (48, 80, 3)
    diff = np.abs(a - b)
    assert 0 < diff.mean() < 0.01  # a different, nearby answer: the network is not equivariant
    with pytest.raises(ValueError, match="do not combine"):
        load_restorer("rtsr", scale=2, backend="torch", ensemble=True, routing="fast")
    with pytest.raises(ValueError, match="do not combine"):
        ens.restore_rgb(rgb, routing="fast")


def test_cli_ensemble_runs_and_evals(capsys, tmp_path):
    import json

    from restore.cli import main
    from restore.io.images import read_image, write_image

    src = tmp_path / "in"
    src.mkdir()  # real photo content: smooth synthetic pictures are too easy for bicubic
    write_image(src / "a.png", read_image(ROOT / "samples" / "astronaut.png").rgb[40:120, 60:156])
    assert main(["run", str(src), "-o", str(tmp_path / "out"), "--model", "rtsr", "--ensemble"]) == 0
    assert (tmp_path / "out" / "a.png").exists()
    assert main(["eval", str(src), "--model", "rtsr", "--scale", "2", "--ensemble", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ensemble"] is True and report["sets"]["in"]["psnr"] > report["sets"]["in"]["bicubic_psnr"]
    assert main(["run", str(src), "-o", str(tmp_path / "o2"), "--model", "rtsr", "--ensemble", "--route", "fast"]) == 2
    err = capsys.readouterr().err
    assert "do not combine" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(src), "--model", "rtsr", "--ensemble", "--record"]) == 2
