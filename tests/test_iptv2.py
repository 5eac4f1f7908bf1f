"""IPT-V2: attention layouts, re-parameterisation, padding, the hint plane, ONNX, degradations,
training for same-size tasks and the denoise / deblur CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from restore import degrade, registry
from restore.io.images import write_image
from restore.metrics import psnr
from restore.models import iptv2
from restore.train.data import SameSizePairs

from helpers import smooth_image

SMALL = dict(dim=8, enc_blocks=(1, 1, 1), mid_blocks=2, dec_blocks=(1, 1, 1))  # 2 blocks: a shifted one too


def small_model(scale: int = 1, seed: int = 0) -> iptv2.IPTV2:
    torch.manual_seed(seed)
    return iptv2.build("tiny", scale, **SMALL)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights everywhere (the output conv starts at zero, the branches near it)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_window_and_grid_layouts_round_trip_and_group_the_right_pixels():
    x = torch.arange(2 * 3 * 16 * 32, dtype=torch.float32).reshape(2, 3, 16, 32)
    w, g = 4, 2
    assert torch.equal(iptv2.from_windows(iptv2.to_windows(x, w), 2, 16, 32, w), x)
    groups = iptv2.to_grid_groups(x, w, g)
    assert groups.shape == (2 * (16 // 8) * (32 // 8) * w * w, g * g, 3)
    assert torch.equal(iptv2.from_grid_groups(groups, 2, 16, 32, w, g), x)
    # The first group holds pixel (0,0) of each of the first g×g windows: a grid of stride w.
    expected = torch.stack([x[0, :, 0, 0], x[0, :, 0, w], x[0, :, w, 0], x[0, :, w, w]], 0)
    assert torch.equal(groups[0], expected)


@pytest.mark.parametrize("heads", [1, 2])
def test_grid_attention_equals_a_per_group_reference(heads):
    """GGSA against plain per-head attention over each grid group's tokens (one head skips the
    head transposes: both paths must give the same answer)."""
    torch.manual_seed(1)
    dim, w, g = 8 * heads, 4, 2
    sa = iptv2.GGSA(dim, heads, w, g).eval()
    sa.pos_bias.data.normal_()
    x = torch.rand(1, dim, 16, 8)
    with torch.no_grad():
        qkv = sa.qkv(x)
        out = torch.zeros(1, dim, 16, 8)
        d = dim // heads
        for ry in range(16 // (g * w)):
            for oy in range(w):
                for ox in range(w):
                    ys = [ry * g * w + gy * w + oy for gy in range(g) for gx in range(g)]
                    xs = [gx * w + ox for gy in range(g) for gx in range(g)]
                    tok = qkv[0, :, ys, xs].T  # (n, 3·dim): one group's tokens, row-major in the grid
                    for h in range(heads):
                        q, k, v = (tok[:, (s * heads + h) * d:(s * heads + h + 1) * d] for s in range(3))
                        a = torch.softmax(q @ k.T * d ** -0.5 + sa.pos_bias[h], -1)
                        out[0, h * d:(h + 1) * d, ys, xs] = (a @ v).T
        assert torch.allclose(sa(x), sa.proj(out), atol=1e-5)


def test_reparameterised_ffn_matches_the_training_graph():
    model = randomise(small_model()).eval()
    x = torch.rand(2, 4, 40, 56)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups > 1
                   for m in model.modules()), "depthwise 1x1 branches should be folded away"
    assert (before - x[:, :3]).abs().max() > 0.3  # the blocks change the output, not just the skip
    assert (before - after).abs().max().item() < 1e-4


@pytest.mark.parametrize("scale", [1, 2])
def test_any_size_in_same_size_or_scaled_out(scale):
    model = randomise(small_model(scale)).eval()
    x = torch.rand(1, 4, 37, 45)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 37 * scale, 45 * scale)
    assert torch.isfinite(y).all()


def test_a_fresh_network_is_the_identity_and_rgb_input_means_unknown_noise():
    model = small_model().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), x)  # zero-initialised output conv over the input skip
        randomise(model)
        blind = model(torch.cat([x, torch.full_like(x[:, :1], -1.0)], 1))
        hinted = model(torch.cat([x, torch.full_like(x[:, :1], 0.5)], 1))
        assert torch.allclose(model(x), blind)
    assert (blind - hinted).abs().max() > 1e-3  # the hint plane reaches the output


def test_onnx_export_agrees_with_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from restore.backends.export import export_onnx

    model = randomise(small_model()).eval().reparameterize()
    path = export_onnx(model, tmp_path / "iptv2.onnx", example_hw=(64, 64))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 4, 48, 80)  # another size and batch than the export example
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4


def test_pipeline_adds_the_hint_plane_and_tiles_to_rgb():
    from types import SimpleNamespace

    from restore.backends.torch_backend import TorchEngine
    from restore.pipeline.run import restore_array

    model = randomise(small_model()).eval().reparameterize()
    spec = registry.get("iptv2")
    restorer = SimpleNamespace(spec=spec, scale=1, model=model, engine=TorchEngine(model, device="cpu"),
                               noise_level=None)
    rgb = smooth_image(70, 90)
    x = torch.from_numpy(rgb.transpose(2, 0, 1))[None]
    with torch.no_grad():
        want = model(torch.cat([x, torch.full_like(x[:, :1], 0.5)], 1)).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    whole = restore_array(restorer, rgb, tile=0, noise_level=25.0)
    assert whole.shape == (70, 90, 3)
    assert np.abs(whole - want).max() < 1e-4
    tiled = restore_array(restorer, rgb, tile=64, overlap=32, noise_level=25.0)
    assert tiled.shape == (70, 90, 3)
    assert np.abs(tiled - whole).mean() < 0.05  # blended, not exact: the U-Net sees far


def test_motion_kernels_and_protocol_images():
    rng = np.random.default_rng(0)
    for size in (7, 31):
        k = degrade.random_motion_kernel(rng, size)
        assert k.shape == (size, size) and abs(k.sum() - 1) < 1e-5 and (k >= 0).all()
        assert (k > 0).sum() >= 3  # a trajectory, not a dot
    kernels = degrade.eval_kernels()
    assert [k.shape[0] for k in kernels] == [7, 11, 15, 19, 23, 27, 31, 17]
    clean = smooth_image(64, 64)
    noisy = degrade.noisy_image(clean, 25, seed=3)
    assert np.array_equal(noisy, degrade.noisy_image(clean, 25, seed=3))
    assert abs(np.std(noisy - clean) * 255 - 25) < 1.0
    blurred = degrade.blurred_image(clean, kernels[6], seed=0)
    assert np.array_equal(blurred * 255, np.round(blurred * 255))  # 8-bit
    assert psnr(blurred, clean, border=0) < psnr(degrade.blurred_image(clean, kernels[0], seed=0), clean, border=0)


def test_richardson_lucy_sharpens_a_blurred_image():
    rng = np.random.default_rng(0)
    clean = np.clip(degrade.blur(rng.random((64, 64, 3)).astype(np.float32), np.ones((2, 2)) / 4), 0, 1)
    k = degrade.eval_kernels()[3]
    blurred = degrade.blurred_image(clean, k, seed=0, sigma=0.5)
    restored = degrade.richardson_lucy(blurred, k)
    assert psnr(restored, clean, border=8) > psnr(blurred, clean, border=8) + 1.0


@pytest.mark.parametrize("task", ["denoise", "deblur"])
def test_training_pairs_for_same_size_tasks(task):
    images = [np.round(smooth_image(96, 112, seed=i) * 255).astype(np.uint8) for i in range(2)]
    pairs = SameSizePairs(images, task, hint=iptv2.hint_value, hint_prob=0.5, kernel_bank=16)
    inp, target = pairs.sample(np.random.default_rng(0), batch=6, patch=32)
    assert inp.shape == (6, 4, 32, 32) and target.shape == (6, 3, 32, 32)
    hint = inp[:, 3, 0, 0]
    assert torch.all(inp[:, 3] == hint[:, None, None])  # constant planes
    assert ((hint == -1) | ((hint >= 0) & (hint <= 55 / 50))).all() and (hint == -1).any()
    err = (inp[:, :3] - target).abs().mean().item()
    assert 0.001 < err < 0.3
    fixed = pairs.fixed_set(size=48)
    assert len(fixed) == 2 and fixed[0][0].shape == (1, 4, 48, 48) and fixed[0][1].shape == (48, 48, 3)


def test_a_short_training_run_denoises():
    """120 steps on smooth photos must lift σ=25 PSNR well above the noisy input."""
    images = [np.round(smooth_image(96, 96, seed=i) * 255).astype(np.uint8) for i in range(3)]
    pairs = SameSizePairs(images, "denoise", hint=iptv2.hint_value)
    model = small_model().train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(0)
    for _ in range(120):
        inp, target = pairs.sample(rng, 4, 32)
        loss = torch.nn.functional.l1_loss(model(inp), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    inp, clean = pairs.fixed_set(size=64)[0]
    with torch.no_grad():
        out = model(inp).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    noisy = inp[0, :3].permute(1, 2, 0).numpy()
    assert psnr(out, clean, border=0) > psnr(noisy, clean, border=0) + 2.5


def test_task_choice_is_checked():
    spec = registry.get("iptv2")
    assert spec.check_task(None, 1) == "denoise" and spec.check_task(None, 2) == "sr"
    assert spec.check_task("deblur", 1) == "deblur"
    with pytest.raises(ValueError, match="same-size"):
        spec.check_task("deblur", 2)
    with pytest.raises(ValueError, match="no task"):
        registry.get("lipt").check_task("denoise", 2)


def test_train_then_run_and_eval_from_the_cli(tmp_path, capsys):
    from restore.cli import main
    from restore.train.loop import main as train_main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        write_image(photos / f"p{i}.png", smooth_image(72, 88, seed=i))
    weights = tmp_path / "weights"
    for task in ("deblur", "denoise"):
        assert train_main(["--model", "iptv2", "--task", task, "--data", str(photos), "--steps", "2",
                           "--batch", "2", "--patch", "32", "--run", str(tmp_path / f"run-{task}"), "--weights-dir",
                           str(weights), "--threads", "1", "--val-count", "1", "--log-every", "1",
                           "--warmup", "1"]) == 0
    w = weights / "iptv2-tiny-x1-deblur.safetensors"
    manifest = json.loads(w.with_suffix(".json").read_text())
    assert manifest["task"] == "deblur" and "motion blur" in manifest["training"]["degradation"]
    capsys.readouterr()

    code = main(["run", str(photos / "p0.png"), "-o", str(tmp_path / "out"), "--model", "iptv2", "--task",
                 "deblur", "--weights", str(w), "--backend", "torch"])
    assert code == 0
    from restore.io.images import read_image

    assert read_image(tmp_path / "out" / "p0.png").rgb.shape == (72, 88, 3)

    evals = tmp_path / "evalset"
    evals.mkdir()
    write_image(evals / "a.png", smooth_image(40, 56, seed=5))
    capsys.readouterr()
    code = main(["eval", str(evals), "--model", "iptv2", "--task", "deblur", "--weights", str(w), "--backend",
                 "torch", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)["sets"]["evalset/motion"]
    assert {"psnr", "ssim", "blurred_psnr", "rl_psnr"} <= set(report)

    code = main(["eval", str(evals), "--model", "iptv2", "--weights", str(weights / "iptv2-tiny-x1-denoise.safetensors"),
                 "--backend",
                 "torch", "--sigma", "25", "--json", "--record"])
    out, err = capsys.readouterr()
    assert code == 0, err
    sets = json.loads(out)["sets"]
    assert abs(sets["evalset/sigma25"]["noisy_psnr"] - 20.2) < 0.5  # σ=25 noise is 20.2 dB
    recorded = json.loads((weights / "iptv2-tiny-x1-denoise.json").read_text())["scores"]["evalset/sigma25"]
    assert recorded["psnr"] == sets["evalset/sigma25"]["psnr"] and "per_image" not in recorded
    assert "blind" in recorded["protocol"]

    from restore.api import load_restorer
    from restore.weights import WeightsError

    assert load_restorer("iptv2", weights=w, backend="torch").task == "deblur"  # the manifest says so
    with pytest.raises(WeightsError, match="trained for deblur"):
        load_restorer("iptv2", task="denoise", weights=w, backend="torch")

    code = main(["run", str(photos / "p0.png"), "-o", str(tmp_path / "out2"), "--model", "iptv2",
                 "--noise-level", "-3"])
    out, err = capsys.readouterr()
    assert code == 2 and "noise level" in err and "Traceback" not in err
