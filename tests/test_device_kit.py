"""tools/device/train.sh, the one prepared GPU run: every job's arguments, checkpoint and data
must fit before a lent device's minutes are spent on it (DRY_RUN: one patch per job, on the CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
