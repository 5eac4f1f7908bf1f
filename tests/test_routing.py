"""Patch-adaptive routing: slimmable supernets, ARM parity, decisions, seamless blending, CLI."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from restore import registry
from restore.api import Restorer
from restore.backends.torch_backend import TorchEngine
from restore.models.blocks.slimmable import Subnet, count_macs
from restore.routing import Router, RouteTable
from restore.routing.decide import assign
from restore.routing.router import run_routed
from restore.routing.scores import edge_score
from restore.routing.table import from_arm_state, mse_to_psnr, psnr_to_mse

from helpers import smooth_image

ARM = Path(__file__).resolve().parents[2] / "shared" / "reference" / "arm"
EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_arm = pytest.mark.skipif(not (ARM / "arm-fsrcnn.pth").exists(), reason="ARM reference checkpoints absent")


def _restorer(name: str, scale: int = 4, state: dict | None = None) -> Restorer:
    spec = registry.get(name)
    model = spec.build("arm", scale).eval()
    if state is not None:
        model.load_official(state)
    return Restorer(spec, "arm", scale, model, TorchEngine(model, device="cpu"), None)


def _table(subnets, cost_ms=None, psnr=None) -> RouteTable:
    psnr = np.array(psnr if psnr is not None else [[30.0 + k] * 2 for k in range(len(subnets))], np.float64)
    return RouteTable(subnets=list(subnets), bin_centres=[5.0, 50.0], psnr=psnr.tolist(),
                      mse=psnr_to_mse(psnr).tolist(), cost_ms=cost_ms or list(range(len(subnets))),
                      macs=[0.0] * len(subnets))


# ---------------------------------------------------------------------------------- supernets

@pytest.mark.parametrize("name,scale", [("fsrcnn", 2), ("fsrcnn", 3), ("fsrcnn", 4), ("carn", 2), ("carn", 4),
                                        ("rtsr", 2), ("rtsr", 4)])
def test_subnets_give_the_right_shapes_and_differ_by_width(name, scale):
    spec = registry.get(name)
    model = spec.build(spec.default_variant, scale).eval()
    if name == "rtsr":  # starts as exact nearest-neighbour upscaling: give the tail some weights
        torch.nn.init.normal_(model.tail.weight, std=0.1)
    x = torch.rand(2, 3, 12, 20)
    outs = []
    with torch.no_grad():
        for w in model.subnet_widths:
            y = Subnet(model, w)(x)
            assert y.shape == (2, 3, 12 * scale, 20 * scale)
            outs.append(y)
        full = model(x)
    assert torch.equal(outs[-1], full)  # the widest subnet is the whole network
    assert not torch.allclose(outs[0], full)
    assert all(m.active_width is None for m in model.modules() if hasattr(m, "active_width"))


def test_narrow_fsrcnn_equals_a_small_fsrcnn_with_the_leading_weights():
    """Slicing semantics: width 16 of d=56 is exactly an FSRCNN with d=16 and the first filters."""
    from restore.models.fsrcnn import FSRCNN, FSRCNNConfig

    big = FSRCNN(FSRCNNConfig(), 4).eval()
    small = FSRCNN(FSRCNNConfig(d=16, widths=(16,)), 4).eval()
    sliced = {}
    for k, v in small.state_dict().items():
        src = big.state_dict()[k]
        sliced[k] = src[tuple(slice(0, n) for n in v.shape)]
    small.load_state_dict(sliced)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(Subnet(big, 16)(x), small(x), atol=1e-6)


def test_cost_of_a_width_counts_the_sliced_layers():
    model = registry.get("fsrcnn").build("arm", 4)
    d, s, m, px = 56, 12, 4, 32 * 32
    expected = px * (25 * 3 * d + d * s + m * 9 * s * s + s * d + 81 * d * 3)
    assert count_macs(model, None) == expected
    macs = [count_macs(model, w) for w in model.subnet_widths]
    assert macs == sorted(macs) and macs[-1] == expected


def test_subnet_exports_to_onnx_and_agrees_with_torch(tmp_path):
    from restore.backends.export import export_onnx
    from restore.backends.onnxruntime_backend import OrtEngine

    model = registry.get("rtsr").build("c16", 2).eval()
    torch.nn.init.normal_(model.tail.weight, std=0.1)
    x = np.random.default_rng(0).random((3, 3, 20, 28), dtype=np.float32)
    for w in model.subnet_widths:
        sub = Subnet(model, w).eval()
        engine = OrtEngine(export_onnx(sub, tmp_path / f"w{w}.onnx"), threads=1)
        with torch.no_grad():
            expected = sub(torch.from_numpy(x)).numpy()
        assert np.abs(engine(x) - expected).max() < 1e-5


def test_rtsr_starts_as_nearest_neighbour_upscaling():
    model = registry.get("rtsr").build("c16", 3).eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.equal(model(x), x.repeat_interleave(3, 2).repeat_interleave(3, 3))


def test_supernet_training_draws_widths_by_cost_squared():
    from restore.train.loop import subnet_sampler

    model = registry.get("carn").build("arm", 4)
    draw = subnet_sampler(model, log=lambda m: None)
    rng = np.random.default_rng(0)
    counts = {w: 0 for w in model.subnet_widths}
    for _ in range(4000):
        counts[draw(rng)] += 1
    macs = np.array([count_macs(model, w) for w in model.subnet_widths], float)
    p = macs ** 2 / (macs ** 2).sum()
    assert np.allclose(np.array(list(counts.values())) / 4000, p, atol=0.03)
    assert subnet_sampler(torch.nn.Conv2d(3, 3, 1), log=print) is None


# -------------------------------------------------------------------------------- ARM parity

# What ARM-Net's own test code gives with its released checkpoints at full width (32 px LR
# patches, stride 28, overlaps averaged, image cropped to the covered area, Y-PSNR, border 4),
# measured by running their model code and test procedure on these Set5/Set14 files.
ARM_REFERENCE = {("fsrcnn", "Set5"): 30.0837, ("fsrcnn", "Set14"): 27.4925, ("carn", "Set5"): 31.3764}


@needs_arm
@pytest.mark.parametrize("name,dataset", list(ARM_REFERENCE))
def test_official_arm_checkpoints_reproduce_their_psnr(name, dataset):
    from restore.io.images import read_image
    from restore.metrics import crop_to_multiple, psnr
    from restore.resize import imresize

    if not (EVAL / dataset).is_dir():
        pytest.skip("evaluation images absent")
    state = torch.load(ARM / f"arm-{name}.pth", map_location="cpu", weights_only=True)
    r = _restorer(name, 4, state)
    router = Router(r, from_arm_state(ARM / f"arm-{name}.state", list(r.spec.subnets)))
    covered = lambda n: (n - 32) // 28 * 28 + 32  # noqa: E731 - ARM drops what its grid does not cover
    scores = []
    for f in sorted(glob.glob(str(EVAL / dataset / "*.png"))):
        hr8 = crop_to_multiple(np.round(read_image(f).rgb * 255).astype(np.uint8), 4)
        lr = imresize(hr8, 0.25).astype(np.float32) / 255
        h, w = covered(lr.shape[0]), covered(lr.shape[1])
        lr, hr = np.ascontiguousarray(lr[:h, :w]), hr8[:4 * h, :4 * w] / 255.0
        n = ((h - 32) // 28 + 1) * ((w - 32) // 28 + 1)
        out, route = router.run(lr, choice=np.full(n, 3), blend="average", patch=32, overlap=4)
        assert len(route.boxes) == n
        scores.append(psnr(out.astype(np.float64), hr, border=4, y_channel=True))
    assert abs(np.mean(scores) - ARM_REFERENCE[(name, dataset)]) < 0.05


@needs_arm
def test_arm_lookup_table_is_read_from_the_state_file():
    table = from_arm_state(ARM / "arm-carn.state", ["bicubic", "w36", "w52", "w64"])
    assert np.shape(table.psnr) == (4, 30) and len(table.bin_centres) == 30
    assert table.bin_centres[0] == pytest.approx(3.66, abs=0.01)
    assert np.array(table.psnr)[:, 0] == pytest.approx([49.67, 49.30, 49.39, 49.41], abs=0.01)
    assert np.array(table.psnr)[:, 9] == pytest.approx([27.22, 29.76, 30.03, 30.26], abs=0.01)
    assert table.macs == sorted(table.macs) and table.macs[0] == 0


def test_arm_state_loader_refuses_foreign_objects(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.state"
    torch.save({"hmap": Evil()}, path)
    with pytest.raises(Exception, match="refusing"):
        from_arm_state(path, ["bicubic", "w1"])


# --------------------------------------------------------------------------------- decisions

def test_edge_score_is_the_mean_absolute_laplacian_of_the_grey_patch():
    rng = np.random.default_rng(1)
    patch = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.int32)
    padded = np.pad(grey, 1, mode="reflect")  # OpenCV's default border: reflect-101
    # OpenCV's ksize=3 Laplacian is the kernel [[2, 0, 2], [0, -8, 0], [2, 0, 2]]
    lap = 2 * (padded[:-2, :-2] + padded[:-2, 2:] + padded[2:, :-2] + padded[2:, 2:]) - 8 * grey
    expected = np.clip(np.abs(lap), 0, 255).mean()  # convertScaleAbs saturates to uint8
    assert edge_score(patch) == pytest.approx(expected, abs=1e-9)
    assert edge_score(np.full((32, 32, 3), 128, np.uint8)) == 0.0


def _random_predictions(n=400, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(24, 40, n)
    gains = np.array([0.0, 1.2, 1.6, 1.8])
    psnr = base[:, None] + gains[None, :] * rng.uniform(0.2, 1.5, n)[:, None]
    psnr[:40, 0] += 3  # flat patches: bicubic is best
    return psnr, psnr_to_mse(psnr), np.array([0.01, 1.0, 2.0, 3.0])


def test_quality_picks_the_best_predicted_subnet():
    psnr, mse, cost = _random_predictions()
    choice = assign(psnr, mse, cost, mode="quality")
    assert np.array_equal(choice, psnr.argmax(axis=1))
    assert np.all(choice[:40] == 0)


def test_loss_budgets_trade_quality_for_cost_monotonically():
    psnr, mse, cost = _random_predictions()
    n = np.arange(len(psnr))
    q = assign(psnr, mse, cost, mode="quality")
    image_psnr = lambda c: float(mse_to_psnr(mse[n, c].mean()))  # noqa: E731
    previous_cost = cost[q].sum()
    for loss in (0.05, 0.3, 1.0):
        c = assign(psnr, mse, cost, loss_db=loss)
        assert image_psnr(q) - image_psnr(c) <= loss + 1e-9
        assert cost[c].sum() <= previous_cost
        previous_cost = cost[c].sum()
    assert previous_cost < cost[q].sum()  # 1 dB buys a real saving


def test_time_budget_is_respected_and_spent():
    psnr, mse, cost = _random_predictions()
    n = np.arange(len(psnr))
    previous = np.inf
    for budget in (50.0, 300.0, 900.0):
        c = assign(psnr, mse, cost, budget=budget)
        assert budget * 0.9 <= cost[c].sum() <= budget  # fits, and does not leave much unspent
        assert mse[n, c].mean() < previous  # more time, better predicted quality
        previous = mse[n, c].mean()
    assert np.all(assign(psnr, mse, cost, budget=0.0) == 0)  # nothing fits: cheapest everywhere


def test_off_uses_the_largest_subnet_everywhere():
    psnr, mse, cost = _random_predictions(10)
    assert np.all(assign(psnr, mse, cost, mode="off") == 3)
    with pytest.raises(ValueError, match="unknown routing mode"):
        assign(psnr, mse, cost, mode="turbo")


# ----------------------------------------------------------------------------------- blending

def _pointwise_engine(scale: int, gain: float):
    """Nearest-neighbour upscale times a gain: no receptive field, so tiling is exact."""
    def run(batch: np.ndarray) -> np.ndarray:
        return gain * batch.repeat(scale, axis=2).repeat(scale, axis=3)
    return run


@pytest.mark.parametrize("blend", ["feather", "average"])
def test_routed_tiles_blend_without_seams(blend):
    rgb = smooth_image(70, 90, seed=3)
    s = 2
    engines = [None, _pointwise_engine(s, 0.9), _pointwise_engine(s, 0.9)]
    table = _table(["bicubic", "a", "b"])
    whole = np.clip(0.9 * rgb.repeat(s, 0).repeat(s, 1), 0, 1)
    n = len(run_routed(rgb, engines=engines, table=table, scale=s, patch=16, overlap=4, mode="off")[1].boxes)
    # Two different engines with the same output, mixed at random: exactly the whole-image result.
    choice = np.random.default_rng(0).integers(1, 3, n)
    out, route = run_routed(rgb, engines=engines, table=table, scale=s, patch=16, overlap=4, choice=choice,
                            blend=blend)
    assert out.shape == (140, 180, 3)
    assert np.abs(out - whole).max() < 1e-6
    assert set(route.shares()) == {"bicubic", "a", "b"} and route.shares()["bicubic"] == 0
    # All-bicubic patches are the whole-image bicubic upscale.
    out, _ = run_routed(rgb, engines=engines, table=table, scale=s, patch=16, overlap=4, choice=np.zeros(n, int))
    bic = np.clip(cv2.resize(rgb, (180, 140), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert np.abs(out - bic).max() < 1e-6


def test_mixed_tiers_change_smoothly_across_the_overlap():
    """Bicubic next to a brighter network tier: the feathered overlap ramps between them instead of
    jumping at the patch edge."""
    rgb = np.full((32, 64, 3), 0.5, np.float32)
    engines = [None, _pointwise_engine(1, 1.2)]
    table = _table(["bicubic", "net"])
    out, route = run_routed(rgb, engines=engines, table=table, scale=1, patch=32, overlap=8, choice=np.array([0, 1, 1]))
    row = out[16, :, 0]
    steps = np.abs(np.diff(row))
    assert row[0] == pytest.approx(0.5, abs=1e-6) and row[-1] == pytest.approx(0.6, abs=1e-6)
    assert steps.max() < 0.1 * 0.5  # no single jump: the 0.1 change is spread over several pixels


def test_route_map_images_show_each_patch_subnet():
    rgb = smooth_image(40, 40)
    table = _table(["bicubic", "net"])
    out, route = run_routed(rgb, engines=[None, _pointwise_engine(2, 1.0)], table=table, scale=2, patch=20,
                            overlap=4, choice=np.array([0, 1, 1, 0]))
    index = route.index_map()
    assert index.shape == (40, 40) and index[0, 0] == 0 and index[0, 39] == 1
    picture = route.render(out)
    assert picture.shape == (80, 80, 3) and picture.dtype == np.uint8
    assert "bicubic" in route.legend()


# ------------------------------------------------------------------------- calibrate and CLI

@pytest.fixture(scope="module")
def calibrated_fsrcnn(tmp_path_factory):
    """An (untrained, tiny-data) FSRCNN x2 with weights on disk and its calibration table."""
    from restore.routing.calibrate import calibrate
    from restore.weights import save_weights

    root = tmp_path_factory.mktemp("routed")
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        img = (smooth_image(160, 192, seed=i) * 255).astype(np.uint8)
        img[40:90, 50:120] = np.random.default_rng(i).integers(0, 255, (50, 70, 3))  # a textured area
        cv2.imwrite(str(photos / f"p{i}.png"), img)
    model = registry.get("fsrcnn").build("arm", 2).eval()
    torch.manual_seed(0)
    path = save_weights(model, "fsrcnn-arm-x2-sr", {"restorer": "fsrcnn", "variant": "arm", "scale": 2, "task": "sr"},
                        root / "weights")
    from restore.api import load_restorer

    r = load_restorer("fsrcnn", "arm", 2, backend="torch", weights=path)
    table = calibrate(r, sorted(photos.iterdir()), bins=8, max_patches_per_image=30)
    table.save(path.with_name("fsrcnn-arm-x2-sr.route.json"))
    return path, table, photos


def test_calibration_table_has_every_subnet_bin_and_cost(calibrated_fsrcnn):
    path, table, _ = calibrated_fsrcnn
    assert table.subnets == ["bicubic", "w16", "w36", "w56"]
    # 12 patches: the 8 bins asked for shrink to 4 (about 20 patches per bin at least)
    assert np.shape(table.psnr) == (4, 4) and np.all(np.isfinite(table.psnr))
    per_photo = (160 // 2 // 32) * (192 // 2 // 32)  # whole 32 px LR patches of a 160x192 photo at x2
    assert sum(table.counts) == 2 * per_photo == table.info["patches"]
    assert table.cost_ms[0] < table.cost_ms[1] and all(c > 0 for c in table.cost_ms)
    # Flat patches (the lowest score bin) are nearly perfect for bicubic.
    assert table.psnr[0][0] > 35
    loaded = RouteTable.load(path.with_name("fsrcnn-arm-x2-sr.route.json"))
    assert loaded.psnr == table.psnr and loaded.cost_ms == table.cost_ms


def test_routed_restorer_and_cli_route_map(calibrated_fsrcnn, tmp_path, capsys):
    from restore.api import load_restorer
    from restore.cli import main

    path, _, photos = calibrated_fsrcnn
    r = load_restorer("fsrcnn", "arm", 2, backend="torch", weights=path, routing="quality")
    rgb = smooth_image(50, 70)
    out = r.restore_rgb(rgb)
    assert out.shape == (100, 140, 3) and r.last_route is not None
    assert r.restore_rgb(rgb, routing="off").shape == (100, 140, 3)

    outdir = tmp_path / "out"
    code = main(["run", str(photos / "p0.png"), "-o", str(outdir), "--model", "fsrcnn", "--scale", "2",
                 "--weights", str(path), "--backend", "torch", "--route", "balanced", "--save-route-map", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["files"][0]["route"]) == {"bicubic", "w16", "w36", "w56"}
    assert (outdir / "p0.png").exists() and (outdir / "p0.route.png").exists()
    assert cv2.imread(str(outdir / "p0.route.png")).shape == (320, 384, 3)


def test_routing_errors_are_one_line(calibrated_fsrcnn, tmp_path, capsys):
    from restore.cli import main

    import dataclasses

    path, _, photos = calibrated_fsrcnn
    plain = _restorer("fsrcnn", 2)
    plain.spec = dataclasses.replace(plain.spec, subnets=())
    with pytest.raises(ValueError, match="no subnets"):
        plain.restore_rgb(smooth_image(16, 16), routing="fast")
    # weights without a table beside them
    bare = tmp_path / "w"
    bare.mkdir()
    for f in path.parent.iterdir():
        if not f.name.endswith(".route.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    assert main(["run", str(photos / "p0.png"), "-o", str(tmp_path / "b"), "--model", "fsrcnn", "--scale", "2",
                 "--weights", str(bare / path.name), "--route", "balanced"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "restore calibrate" in err
    assert main(["run", str(photos / "p0.png"), "-o", str(tmp_path / "c"), "--save-route-map"]) == 2
    assert not (tmp_path / "c").exists()
