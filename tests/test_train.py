"""The trainer: it learns, checkpoints, resumes where it stopped and writes weights + manifest."""
from __future__ import annotations

import json

import numpy as np
import torch

from restore.io.images import write_image
from restore.train.data import SRPairs, augment
from restore.train.loop import lr_at, main as train_main
from restore.weights import load_state, sha256_of

from helpers import smooth_image


def make_photos(folder, n=3, size=(72, 88)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / f"p{i}.png", smooth_image(*size, seed=i))
    return folder


def test_pairs_are_aligned_bicubic_downscales(tmp_path):
    pairs = SRPairs.from_folders([make_photos(tmp_path / "photos")], scale=2, lr_patch=16, log=lambda m: None)
    lr, hr = pairs.sample(np.random.default_rng(0), batch=4, lr_patch=16)
    assert lr.shape == (4, 3, 16, 16) and hr.shape == (4, 3, 32, 32)
    # aligned: averaging 2x2 HR blocks gives roughly the LR patch (bicubic is close to a box here)
    pooled = torch.nn.functional.avg_pool2d(hr, 2)
    assert (pooled - lr).abs().mean() < 0.02
    a = np.arange(12).reshape(2, 2, 3)
    outs = augment(np.random.default_rng(3), a, a * 10)
    assert np.array_equal(outs[0] * 10, outs[1])


def test_schedule_warms_up_then_decays():
    assert lr_at(0, 100, 1.0, 10) == 0.1
    assert lr_at(9, 100, 1.0, 10) == 1.0
    assert lr_at(99, 100, 1.0, 10) < 0.05


def test_train_checkpoint_resume_and_export(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos")
    run, weights = tmp_path / "run", tmp_path / "weights"
    common = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--patch", "16", "--batch", "2",
              "--run", str(run), "--weights-dir", str(weights), "--threads", "1", "--val-count", "1",
              "--log-every", "2", "--ckpt-every", "2", "--warmup", "2"]
    assert train_main(common + ["--data", str(photos), "--steps", "2", "--no-export"]) == 0
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 2
    assert train_main(common + ["--resume", "--steps", "4"]) == 0  # data comes from the checkpoint
    second = torch.load(run / "last.pt", weights_only=False)
    assert second["step"] == 4
    changed = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert changed, "resumed training did not update the weights"
    out = weights / "lipt-tiny-x2-sr.safetensors"
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["sha256"] == sha256_of(out)
    assert manifest["training"]["steps"] == 4 and manifest["config"]["channels"] == 28
    state = load_state(out)
    assert "body.0.modules_hrm_a.lcs_a_0.conv0.weight" in state  # folded (inference) keys
    assert not any("dbb_" in k for k in state)
    assert "resumed" in capsys.readouterr().out

    from restore.train.loop import write_slim_checkpoint

    slim = write_slim_checkpoint(run / "last.pt", tmp_path / "slim" / "last.pt")
    assert slim.stat().st_size < 0.6 * (run / "last.pt").stat().st_size
    assert train_main(common + ["--run", str(slim.parent), "--resume", "--steps", "5", "--no-export"]) == 0
    assert torch.load(slim, weights_only=False)["step"] == 5
    assert "optimiser starts afresh" in capsys.readouterr().out

    # A run with a weight average: the slim state keeps the average alone, as its model.
    assert train_main(common + ["--run", str(tmp_path / "avg"), "--data", str(photos), "--steps", "3",
                                "--ema", "0.9", "--no-export"]) == 0
    full = torch.load(tmp_path / "avg" / "last.pt", weights_only=False)
    slim = torch.load(write_slim_checkpoint(tmp_path / "avg" / "last.pt", tmp_path / "avg-slim" / "last.pt"),
                      weights_only=False)
    assert slim["ema"] is None and slim["optimizer"] is None
    assert all(torch.equal(slim["model"][k], v) for k, v in full["ema"]["model"].items())
    assert any(not torch.equal(slim["model"][k], full["model"][k]) for k in full["model"])
    # ... and resumes: the run starts a new average from it.
    assert train_main(common + ["--run", str(tmp_path / "avg-slim"), "--resume", "--steps", "4", "--no-export"]) == 0
    assert torch.load(tmp_path / "avg-slim" / "last.pt", weights_only=False)["ema"] is not None


def test_plain_training_reduces_the_loss(tmp_path):
    """A few dozen steps of the folded graph on one photo must beat the starting loss."""
    from restore.models import lipt

    torch.manual_seed(0)
    pairs = SRPairs.from_folders([make_photos(tmp_path / "photos", n=1)], 2, 16, log=lambda m: None)
    model = lipt.build("tiny", 2, deploy=True).init_plain().train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(0)
    lr, hr = pairs.sample(rng, 4, 16)
    start = torch.nn.functional.l1_loss(model(lr), hr).item()
    for _ in range(30):
        loss = torch.nn.functional.l1_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * start


def test_corrupted_weights_are_refused(tmp_path):
    from restore.models import lipt
    from restore.weights import WeightsError, save_weights

    path = save_weights(lipt.build("tiny", 2, deploy=True), "t", {"restorer": "lipt"}, tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        load_state(path)
    except WeightsError as e:
        assert "sha256" in str(e)
    else:
        raise AssertionError("a damaged weights file loaded silently")


def test_spectral_loss_is_a_distance_that_pulls_towards_the_target():
    from restore import degrade
    from restore.train.losses import FFT_WEIGHT, get_loss, l1, spectral_l1

    img = torch.from_numpy(smooth_image(64, 64, seed=1)).permute(2, 0, 1)[None].float()
    img = img + 0.2 * torch.from_numpy(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    k = degrade.eval_kernels()[0]
    blurred = torch.from_numpy(degrade.blur(img[0].permute(1, 2, 0).numpy(), k)).permute(2, 0, 1)[None]
    assert spectral_l1(img, img).item() == 0.0 and spectral_l1(blurred, img).item() > 0.005
    fn, label = get_loss("l1+fft")
    x = blurred.clone().requires_grad_(True)
    loss = fn(x, img)
    assert abs(loss.item() - (l1(blurred, img) + FFT_WEIGHT * spectral_l1(blurred, img)).item()) < 1e-6
    loss.backward()
    # a small step down the spectral gradient alone brings the spectra closer
    y = blurred.clone().requires_grad_(True)
    spectral_l1(y, img).backward()
    assert spectral_l1(blurred - 0.05 * y.grad / y.grad.abs().max(), img) < spectral_l1(blurred, img)
    assert x.grad.abs().sum() > 0 and "rfft2" in label
    try:
        get_loss("l3")
    except ValueError as e:
        assert "unknown loss" in str(e)
    else:
        raise AssertionError("an unknown loss name must be refused")


def test_loss_init_and_warmup_are_recorded_and_kept_on_resume(tmp_path):
    photos = make_photos(tmp_path / "photos")
    first, run, weights = tmp_path / "first", tmp_path / "run", tmp_path / "weights"
    common = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--patch", "16", "--batch", "2",
              "--weights-dir", str(weights), "--threads", "1", "--val-count", "0", "--warmup", "1",
              "--ckpt-every", "1", "--data", str(photos)]
    assert train_main(common + ["--run", str(first), "--steps", "1", "--no-export"]) == 0
    init = str(first / "last.pt")
    assert train_main(common + ["--run", str(run), "--steps", "1", "--no-export", "--loss", "l1+fft",
                                "--init", init]) == 0
    at = common.index("--warmup")
    resume = common[:at] + common[at + 2:-2]  # no --warmup or --data: both come from the run
    assert train_main(resume + ["--run", str(run), "--resume", "--steps", "2"]) == 0
    manifest = json.loads((weights / "lipt-tiny-x2-sr.json").read_text())
    assert "rfft2" in manifest["training"]["loss"]
    assert manifest["training"]["init"] == init
    assert ", 1 warm-up steps," in manifest["training"]["optimizer"]


def test_a_plain_run_from_before_the_projection_batchnorm_resumes_converted(tmp_path, capsys):
    """Plain LIPT runs used to fold project_inp's BatchNorm (attention logits saturated); resuming
    one converts it to the current plain graph instead of failing on the state-dict keys."""
    from restore.models import lipt

    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    common = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--patch", "16", "--batch", "2", "--plain",
              "--run", str(run), "--threads", "1", "--val-count", "0", "--warmup", "1", "--no-export"]
    assert train_main(common + ["--data", str(photos), "--steps", "1"]) == 0
    state = torch.load(run / "last.pt", weights_only=False)
    assert "body.0.modules_nvsm_sa.smmsa_0.project_inp.1.running_var" in state["model"]
    old = lipt.build("tiny", 2, deploy=True).init_plain()
    state["model"], state["optimizer"] = old.state_dict(), None
    torch.save(state, run / "last.pt")
    assert train_main(common + ["--resume", "--steps", "2"]) == 0
    assert "converted a plain run" in capsys.readouterr().out
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2


def test_schedule_can_follow_a_time_budget():
    from restore.train.loop import lr_at

    assert lr_at(500, 10 ** 12, 1.0, 10, progress=0.0) == 1.0  # past warm-up: the peak at t = 0
    assert abs(lr_at(500, 10 ** 12, 1.0, 10, progress=0.5) - 0.505) < 1e-9
    assert abs(lr_at(500, 10 ** 12, 1.0, 10, progress=1.0) - 0.01) < 1e-9
    assert lr_at(0, 10 ** 12, 1.0, 10, progress=0.9) == 0.1  # warm-up still counts in steps


def test_weight_average_follows_the_weights_and_keeps_buffers():
    from restore.train.loop import WeightAverage

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(3.0)
    avg.update(net)  # ramp: d = min(0.5, 2/11) = 2/11
    assert abs(avg.model[0].weight.item() - 9 / 11) < 1e-6
    assert avg.model[1].running_mean.item() == 3.0
    for _ in range(40):
        avg.update(net)
    assert abs(avg.model[0].weight.item() - 1.0) < 1e-6
    assert net[0].weight.requires_grad and not avg.model[0].weight.requires_grad


def test_prefetched_batches_are_those_of_a_serial_loop(tmp_path):
    from restore.train.loop import Prefetcher

    pairs = SRPairs.from_folders([make_photos(tmp_path / "photos")], 2, 16, log=lambda m: None)
    serial_rng = np.random.default_rng(5)
    expected = [pairs.sample(serial_rng, 3, 16) for _ in range(4)]
    batches = Prefetcher(pairs.sample, np.random.default_rng(5), 3, 16, depth=2)
    got = [batches.next() for _ in range(4)]
    batches.close()
    for (lr_a, hr_a), (lr_b, hr_b) in zip(expected, got):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)


def test_timed_run_with_weight_average_exports_the_average(tmp_path):
    """--minutes ends the run by the clock; --ema exports the averaged weights, records the
    average in the manifest and the photos' original sources from a packed SOURCES.txt."""
    photos = make_photos(tmp_path / "photos")
    (photos / "SOURCES.txt").write_text("# packed\np0.png\t/somewhere/original0.png\n")
    run, weights = tmp_path / "run", tmp_path / "weights"
    args = ["--model", "rtsr", "--scale", "2", "--patch", "16", "--batch", "2", "--threads", "1",
            "--val-count", "1", "--warmup", "1", "--log-every", "1000", "--ema", "0.9", "--lr", "1e-2",
            "--minutes", "0.02", "--data", str(photos), "--run", str(run), "--weights-dir", str(weights)]
    assert train_main(args) == 0
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] > 5 and state["ema"]["updates"] == state["step"]
    manifest = json.loads((weights / "rtsr-c16-x2-sr.json").read_text())
    assert manifest["training"]["steps"] == state["step"] and manifest["training"]["weight_average"] == 0.9
    assert manifest["training"]["data_sources"] == ["/somewhere/original0.png"]
    assert manifest["training"]["history"][-1]["step"] == state["step"]  # a final validation
    exported = load_state(weights / "rtsr-c16-x2-sr.safetensors")
    key = next(k for k in exported if k.endswith("weight"))
    assert torch.equal(exported[key], state["ema"]["model"][key])
    assert not torch.equal(exported[key], state["model"][key])
    # --init from a run with an average starts from the average (what it exported).
    from restore.models import rtsr
    from restore.train.loop import load_matching

    fresh = rtsr.build("c16", 2)
    assert load_matching(fresh, str(run / "last.pt")) == len(state["ema"]["model"])
    assert torch.equal(fresh.state_dict()[key], state["ema"]["model"][key])
    # Resumed, a timed run keeps its budget: a longer --minutes trains on for the difference only.
    assert 1.0 <= state["timed_s"] < 3.0
    assert train_main(["--model", "rtsr", "--scale", "2", "--run", str(run), "--resume", "--minutes", "0.04",
                       "--no-export", "--threads", "1"]) == 0
    again = torch.load(run / "last.pt", weights_only=False)
    assert again["step"] > state["step"] and 2.4 <= again["timed_s"] < 4.5
    assert again["args"]["ema"] == 0.9 and again["ema"]["updates"] == again["step"]
    # ... and --steps turns it into a step-counted run again (the old --minutes is not inherited).
    assert train_main(["--model", "rtsr", "--scale", "2", "--run", str(run), "--resume", "--steps",
                       str(again["step"] + 3), "--no-export", "--threads", "1"]) == 0
    assert torch.load(run / "last.pt", weights_only=False)["step"] == again["step"] + 3


def test_l2_loss_is_the_mean_squared_error():
    from restore.train.losses import get_loss

    fn, label = get_loss("l2")
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert abs(fn(a, b).item() - 0.25) < 1e-7 and "MSE" in label


def test_resume_takes_the_restorer_from_the_run_and_refuses_a_conflict(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    assert train_main(["--model", "rtsr", "--scale", "4", "--patch", "16", "--batch", "2", "--steps", "1",
                       "--threads", "1", "--val-count", "0", "--warmup", "1", "--data", str(photos),
                       "--run", str(run), "--no-export"]) == 0
    capsys.readouterr()
    assert train_main(["--resume", "--run", str(run), "--steps", "2", "--no-export", "--threads", "1"]) == 0
    assert "rtsr-c16-x4-sr" in capsys.readouterr().out
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2
    assert train_main(["--resume", "--run", str(run), "--scale", "2", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scale 4, not 2" in err
    assert train_main(["--model", "nope", "--data", str(photos)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown restorer 'nope'")


def test_an_error_while_drawing_a_batch_reaches_the_training_loop():
    """A crash in the batch thread must surface in the loop, not leave it waiting for ever."""
    import pytest

    from restore.train.loop import Prefetcher

    calls = []

    def sample(rng, batch, patch):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("photo vanished")
        return torch.zeros(batch, 3, patch, patch), torch.zeros(batch, 3, patch, patch)

    batches = Prefetcher(sample, np.random.default_rng(0), 2, 4, depth=1)
    assert batches.next()[0].shape == (2, 3, 4, 4) and batches.next()[0].shape == (2, 3, 4, 4)
    with pytest.raises(OSError, match="photo vanished"):
        batches.next()
    batches.close()


def test_photo_scales_add_shrunk_copies_drawn_as_often_as_the_full_size_photos(tmp_path):
    from restore.train.data import photo_pyramid

    big, small = np.full((80, 120, 3), 7, np.uint8), np.full((40, 60, 3), 9, np.uint8)
    pool, weights = photo_pyramid([big, small], (1.0, 0.5), min_side=24)
    # the 40 px photo halved (20 px) is under min_side and left out; the rest keep their aspect
    assert [x.shape for x in pool] == [(80, 120, 3), (40, 60, 3), (40, 60, 3)]
    assert pool[2].dtype == np.uint8 and int(pool[2][5, 5, 0]) == 7
    # each scale's share equals the full-size share of the photos it holds
    assert weights[2] == weights[0] and weights[1] == 40 * 60
    try:
        photo_pyramid([big], (1.0, 1.5))
    except ValueError as e:
        assert "(0, 1]" in str(e)
    else:
        raise AssertionError("a scale above 1 was accepted")

    pairs = SRPairs.from_folders([make_photos(tmp_path / "photos", size=(72, 88))], scale=2, lr_patch=16,
                                 log=lambda m: None, photo_scales=(1.0, 0.5))
    assert pairs.photos == 3 and len(pairs.hr) == 6
    assert [x.shape[:2] for x in pairs.hr[3:]] == [(36, 44)] * 3
    counts = np.bincount(np.random.default_rng(0).choice(6, 6000, p=pairs.weights / pairs.weights.sum()), minlength=6)
    assert abs(counts[:3].sum() - counts[3:].sum()) < 400  # half the patches from each scale
    lr, hr = pairs.sample(np.random.default_rng(1), batch=8, lr_patch=16)
    assert lr.shape == (8, 3, 16, 16) and hr.shape == (8, 3, 32, 32)


def test_photo_scales_are_recorded_and_kept_on_resume(tmp_path):
    photos = make_photos(tmp_path / "photos", size=(112, 120))
    run, weights = tmp_path / "run", tmp_path / "weights"
    common = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--patch", "16", "--batch", "2",
              "--weights-dir", str(weights), "--threads", "1", "--val-count", "0", "--warmup", "1",
              "--ckpt-every", "1", "--run", str(run)]
    assert train_main(common + ["--data", str(photos), "--steps", "1", "--no-export",
                                "--photo-scales", "1", "0.5"]) == 0
    assert train_main(common + ["--resume", "--steps", "2"]) == 0
    training = json.loads((weights / "lipt-tiny-x2-sr.json").read_text())["training"]
    assert training["photo_scales"] == [1.0, 0.5] and training["images"] == 3
    assert training["megapixels"] == round(3 * (112 * 120 + 56 * 60) / 1e6, 1)
    assert train_main(common + ["--data", str(photos), "--steps", "1", "--photo-scales", "2",
                                "--run", str(tmp_path / "bad")]) == 2


def test_export_only_from_a_checkpoint_needs_no_photos(tmp_path, capsys):
    """`--resume --export-only` takes the data's summary from the checkpoint: it exports even when
    the photos are gone, and the manifest says what the run was trained on."""
    photos = make_photos(tmp_path / "photos", size=(112, 120))
    run, weights = tmp_path / "run", tmp_path / "weights"
    common = ["--model", "lipt", "--variant", "tiny", "--scale", "2", "--patch", "16", "--batch", "2",
              "--weights-dir", str(weights), "--threads", "1", "--val-count", "0", "--warmup", "1",
              "--run", str(run)]
    assert train_main(common + ["--data", str(photos), "--steps", "2", "--photo-scales", "1", "0.5"]) == 0
    trained = json.loads((weights / "lipt-tiny-x2-sr.json").read_text())
    for p in photos.iterdir():
        p.unlink()
    (weights / "lipt-tiny-x2-sr.json").unlink()
    (weights / "lipt-tiny-x2-sr.safetensors").unlink()
    capsys.readouterr()
    assert train_main(common + ["--resume", "--export-only"]) == 0
    assert "no photos loaded" in capsys.readouterr().out
    exported = json.loads((weights / "lipt-tiny-x2-sr.json").read_text())
    for key in ("images", "megapixels", "photo_scales", "steps"):
        assert exported["training"][key] == trained["training"][key], key
    assert exported["sha256"] == trained["sha256"]  # the same weights as the run's own export


def test_resume_without_a_checkpoint_is_refused_before_any_photo_is_loaded(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert train_main(["--model", "lipt", "--scale", "2", "--run", str(tmp_path / "run"), "--resume",
                       "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "--resume given but" in err and "does not exist" in err
