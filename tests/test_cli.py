"""The `restore` command as a user meets it: outputs, bad input, no overwrites, summaries."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restore.cli import main
from restore.io.images import read_image, write_image

from helpers import smooth_image

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_run_folder_keeps_layout_bit_depth_alpha_and_gray(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", image_folder, "-o", out)
    assert code == 0, err
    a = read_image(out / "a.png")
    assert a.rgb.shape == (40, 56, 3) and a.bit_depth == 8
    b = read_image(out / "sub" / "b16.png")
    assert b.rgb.shape == (32, 48, 3) and b.bit_depth == 16
    assert b.alpha is not None and b.alpha.shape == (32, 48)
    # alpha was resized on its own: the horizontal ramp is still a ramp
    assert b.alpha[:, -1].mean() > b.alpha[:, 0].mean()
    g = read_image(out / "gray.png")
    assert g.gray and g.rgb.shape == (36, 36, 3)


def test_bad_inputs_are_reported_and_the_batch_goes_on(capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "good.png", smooth_image(16, 16))
    (src / "text.png").write_text("not an image")
    (src / "empty.jpg").write_bytes(b"")
    whole = (src / "good.png").read_bytes()
    (src / "cut.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", src, tmp_path / "missing.png", "-o", out)
    assert code == 1
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    for name in ("text.png", "empty.jpg", "cut.png", "missing.png"):
        assert sum(name in l for l in lines) == 1, (name, err)
    assert "1 written, 0 skipped, 4 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # no partial outputs, no temp files


def test_existing_outputs_are_never_overwritten(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"precious")
    code, _, err = run_cli(capsys, "run", image_folder / "a.png", "-o", out)
    assert code == 1 and "refusing to overwrite" in err
    assert (out / "a.png").read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "run", image_folder / "a.png", "-o", out, "--skip-existing", "--json")
    assert code == 0
    assert (out / "a.png").read_bytes() == b"precious"


def test_usage_errors_are_one_line_with_exit_2(capsys, image_folder, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for argv, needle in [
        (("run", image_folder, "-o", a_file), "not a folder"),
        (("run", image_folder, "-o", tmp_path / "o", "--scale", "5"), "does not support scale x5"),
        (("run", image_folder, "-o", tmp_path / "o", "--model", "nope"), "unknown restorer 'nope'"),
        (("run", image_folder, "-o", tmp_path / "o", "--variant", "huge"), "no variant 'huge'"),
    ]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_json_summary_and_dry_run(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", image_folder, "-o", out, "--dry-run")
    assert code == 0 and not out.exists()
    assert len(stdout.strip().splitlines()) == 3
    code, stdout, _ = run_cli(capsys, "run", image_folder / "a.png", "-o", out, "--json", "--backend", "torch")
    summary = json.loads(stdout)
    assert code == 0 and summary["written"] == 1 and summary["backend"] == "torch"
    assert summary["files"][0]["size"] == [56, 40]


def test_onnxruntime_and_torch_agree_on_the_shipped_model():
    from restore.api import load_restorer

    img = smooth_image(24, 40)
    ort = load_restorer("lipt", "tiny", 2, backend="onnxruntime")
    torch_ = load_restorer("lipt", "tiny", 2, backend="torch")
    assert ort.backend == "onnxruntime" and torch_.backend == "torch"
    for crop in (img, img[:17, :29]):  # dynamic H/W, also not a multiple of the window
        a, b = ort.restore_rgb(crop, tile=0), torch_.restore_rgb(crop, tile=0)
        assert a.shape == (crop.shape[0] * 2, crop.shape[1] * 2, 3)
        assert np.abs(a - b).max() < 1e-4


def test_eval_beats_bicubic_and_records_nothing_without_flag(capsys, tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    # real photo content (smooth synthetic images are too easy for bicubic)
    write_image(hr / "0.png", read_image(ROOT / "samples" / "astronaut.png").rgb[40:120, 60:156])
    write_image(hr / "1.png", read_image(ROOT / "samples" / "rocket.jpg").rgb[60:140, 100:200])
    code, stdout, err = run_cli(capsys, "eval", hr, "--scale", "2", "--json", "--backend", "torch")
    assert code == 0, err
    report = json.loads(stdout)["sets"]["hr"]
    assert report["images"] == 2 and len(report["per_image"]) == 2
    assert report["psnr"] > report["bicubic_psnr"] + 0.3


def test_models_lists_lipt_and_its_weights(capsys):
    code, stdout, _ = run_cli(capsys, "models", "--json")
    listing = {m["name"]: m for m in json.loads(stdout)}
    assert code == 0 and {"tiny", "small"} <= set(listing["lipt"]["variants"])
    assert any(w["file"] == "lipt-tiny-x2-sr.safetensors" for w in listing["lipt"]["weights"])


def test_export_writes_a_dynamic_onnx_file(capsys, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capsys, "export", "--scale", "2", "-o", out)
    assert code == 0, err
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    code, _, err = run_cli(capsys, "export", "--scale", "2", "-o", out)
    assert code == 2 and "refusing to overwrite" in err


def test_entry_point_help_and_error_exit(tmp_path):
    exe = Path(sys.executable).with_name("restore")
    res = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--skip-existing" in res.stdout and "examples:" in res.stdout
    res = subprocess.run([str(exe), "run", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == f"error: {tmp_path / 'nope.png'}: no such file or folder"
