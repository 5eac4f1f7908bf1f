"""tools/device: the one prepared GPU run. Every job's arguments, checkpoint and data must fit
before a lent device's minutes are spent on it (DRY_RUN: two patches forward and backward per job, on the CPU), and
the kit packs photos the trainer can read."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from restore.io.images import write_image

from helpers import smooth_image

ROOT = Path(__file__).resolve().parents[1]


def test_every_device_job_loads_its_checkpoint_and_fits_a_patch(tmp_path):
    kit = tmp_path / "kit"
    (kit / "photos").mkdir(parents=True)
    for i in range(4):  # 200 px: the largest job crop is IPT-V2's 128 px + 2 x 16 margin
        write_image(kit / "photos" / f"p{i}.png", smooth_image(200, 208, seed=i))
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "DRY_RUN": "1", "KIT": str(kit),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "tools" / "device" / "train.sh"), "1"], env=env, capture_output=True,
                          text=True, timeout=600)
    logs = {p.stem: p.read_text() for p in out.glob("*.log")}
    assert done.returncode == 0, done.stderr + "\n".join(f"{k}: {v[-800:]}" for k, v in logs.items())
    assert set(logs) == {"lipt-x2", "lipt-x4", "iptv2-denoise", "iptv2-deblur", "carn-x4"}
    for job, text in logs.items():
        assert "initialised" in text and "dry run" in text and text.rstrip().endswith("exit 0"), job
    assert not (out / "runs").exists() and not (out / "weights").exists()  # a dry run writes nothing


def test_device_script_refuses_an_unknown_job(tmp_path):
    (tmp_path / "kit" / "photos").mkdir(parents=True)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "KIT": str(tmp_path / "kit"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "tools" / "device" / "train.sh"), "1", "lipt-x2", "lipt-x9"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown job lipt-x9" in done.stderr
    assert not (tmp_path / "out" / "lipt-x2.log").exists()  # nothing started


def test_pack_writes_jpeg_copies_with_their_sources_and_pytest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        write_image(src / f"photo{i}.png", smooth_image(40, 60, seed=i))
    (src / "notes.txt").write_text("not a photo")
    out = tmp_path / "kit"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "device" / "pack.py"), "--out", str(out),
                           "--sources", str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    jpegs = sorted((out / "photos").glob("*.jpg"))
    assert [p.name for p in jpegs] == ["000-photo0.jpg", "001-photo1.jpg"]
    import cv2

    back = cv2.imread(str(jpegs[0]))[:, :, ::-1].astype(np.float32) / 255
    assert back.shape == (40, 60, 3) and np.abs(back - smooth_image(40, 60, seed=0)).mean() < 0.01  # q97
    lines = (out / "photos" / "SOURCES.txt").read_text().splitlines()
    assert lines[1] == f"000-photo0.jpg\t{src / 'photo0.png'}"
    assert (out / "pylib" / "pytest").exists()
    missing = subprocess.run([sys.executable, str(ROOT / "tools" / "device" / "pack.py"), "--out", str(out),
                              "--sources", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "missing photo sources" in missing.stderr
