import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from restore.pipeline.tiling import blend_window, plan_tiles, run_tiled


class ConvNet(nn.Module):
    """Three 3x3 convs (receptive-field radius 3), optional PixelShuffle, optional pad-to-8."""

    def __init__(self, scale: int = 1, pad_to: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.scale, self.pad_to = scale, pad_to
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale) if scale > 1 else nn.Identity(),
        )

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.pad_to
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        return self.body(x)[:, :, : h * self.scale, : w * self.scale]


def as_infer(net):
    calls = []

    def infer(batch):
        calls.append(batch.shape)
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    infer.calls = calls
    return infer


def image(h, w, seed=1):
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("hw,tile", [((70, 53), 32), ((96, 41), 40), ((33, 90), 24)])
def test_tiled_matches_untiled(scale, hw, tile):
    net = ConvNet(scale).eval()
    img = image(*hw)
    full = as_infer(net)(img[None])[0]
    tiled = run_tiled(as_infer(net), img, scale=scale, tile=tile, overlap=16)
    assert tiled.shape == (3, hw[0] * scale, hw[1] * scale) and tiled.dtype == np.float32
    assert np.abs(tiled - full).max() < 1e-5


@pytest.mark.parametrize("scale", [1, 2])
def test_tiled_matches_untiled_with_internal_pad(scale):
    # A pad-to-8 model sees reflected rows at the bottom/right image border only when the size is
    # not a multiple of 8, so the last r rows/cols legitimately differ (tiles are 32 px, whole
    # image is 70x53); every interior seam must still be exact.
    net = ConvNet(scale, pad_to=8).eval()
    img = image(70, 53)
    full = as_infer(net)(img[None])[0]
    tiled = run_tiled(as_infer(net), img, scale=scale, tile=32, overlap=16)
    r = 3 * scale
    assert np.abs(tiled - full)[:, :-r, :-r].max() < 1e-5


@pytest.mark.parametrize("tile", [None, 64, 200])
def test_single_call_when_image_fits(tile):
    net = ConvNet(2).eval()
    img = image(40, 64)
    infer = as_infer(net)
    out = run_tiled(infer, img, scale=2, tile=tile)
    assert infer.calls == [(1, 3, 40, 64)]
    assert np.abs(out - as_infer(net)(img[None])[0]).max() == 0


def test_batching_matches_batch_one():
    net = ConvNet(2).eval()
    img = image(80, 70)
    one, four = as_infer(net), as_infer(net)
    a = run_tiled(one, img, scale=2, tile=24, overlap=8, batch=1)
    b = run_tiled(four, img, scale=2, tile=24, overlap=8, batch=4)
    assert all(s[0] == 1 for s in one.calls)
    assert max(s[0] for s in four.calls) == 4 and len(four.calls) < len(one.calls)
    assert {s[1:] for s in four.calls} == {(3, 24, 24)}
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("h,w,tile,overlap", [(70, 53, 32, 16), (96, 96, 24, 8), (10, 90, 16, 5), (5, 5, 8, 0), (50, 37, 9, 3)])
def test_plan_covers_image_and_stays_inside(h, w, tile, overlap):
    tiles = plan_tiles(h, w, tile, overlap)
    cover = np.zeros((h, w), int)
    for y, x, th, tw in tiles:
        assert (th, tw) == (min(tile, h), min(tile, w))  # never shrunk
        assert 0 <= y and y + th <= h and 0 <= x and x + tw <= w
        cover[y:y + th, x:x + tw] += 1
    assert cover.min() >= 1
    # Neighbours overlap by at least the request.
    for starts, size in ((sorted({t[0] for t in tiles}), tiles[0][2]), (sorted({t[1] for t in tiles}), tiles[0][3])):
        for a, b in zip(starts, starts[1:]):
            assert a + size - b >= overlap


def test_plan_single_tile_when_image_fits():
    assert plan_tiles(20, 30, 32, 8) == [(0, 0, 20, 30)]
    with pytest.raises(ValueError):
        plan_tiles(100, 100, 16, 16)


@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("h,w,tile,overlap", [(70, 53, 32, 16), (50, 37, 9, 3), (61, 64, 20, 2), (40, 40, 16, 0)])
def test_every_output_pixel_has_weight(h, w, tile, overlap, scale):
    wsum = np.zeros((h * scale, w * scale))
    for y, x, th, tw in plan_tiles(h, w, tile, overlap):
        edges = (y == 0, y + th == h, x == 0, x + tw == w)
        win = blend_window(th, tw, overlap, scale, edges)
        assert win.shape == (th * scale, tw * scale) and win.min() >= 0 and win.max() <= 1
        wsum[y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += win
    assert wsum.min() > 0


def test_blend_window_flat_on_borders_and_ramps_inside():
    all_border = blend_window(16, 16, 8, 2, (True, True, True, True))
    assert (all_border == 1).all()
    win = blend_window(16, 16, 8, 1, (True, True, True, False))  # right side is interior
    assert (win[:, :8] == 1).all()
    row = win[0]
    assert row[-1] == 0 and np.all(np.diff(row) <= 0)  # fades out towards the interior edge
    # Mirrored ramps over the same pixels form a partition of unity.
    left = blend_window(16, 16, 8, 1, (True, True, False, True))[0]
    assert np.allclose(row[-8:] + left[:8], 1)


def test_bad_infer_shape_is_reported():
    with pytest.raises(ValueError, match="scale"):
        run_tiled(as_infer(ConvNet(1).eval()), image(40, 40), scale=2, tile=16, overlap=4)
