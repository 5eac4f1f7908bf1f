"""tools/continue_manifest.py: a continuation run's weights are shipped with a manifest that tells
the whole story (cumulative steps and time, the old history first), never the old scores."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from restore.weights import sha256_of

ROOT = Path(__file__).resolve().parents[1]


def manifest(steps, minutes, history, loss="L1", notes="", scores=None, sha="x", config=None):
    return {"restorer": "lipt", "variant": "tiny", "scale": 4, "task": "sr", "config": config or {"channels": 28},
            "training": {"data": ["a"], "images": 1, "megapixels": 1.0, "steps": steps, "batch": 8, "lr_patch": 48,
                         "loss": loss, "optimizer": f"opt{steps}", "init": "root.pt", "wall_time_min": minutes,
                         "weight_average": 0.999, "history": history, "notes": notes},
            "scores": scores or {}, "file": "lipt-tiny-x4-sr.safetensors", "sha256": sha, "parameters": 5}


def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "continue_manifest.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_continuation_counts_on_from_the_old_run(tmp_path):
    old_dir, new_dir, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    old_dir.mkdir(), new_dir.mkdir()
    (new_dir / "lipt-tiny-x4-sr.safetensors").write_bytes(b"new weights")
    old = manifest(1000, 60.0, [{"step": 1000, "val_psnr_y": 30.0, "elapsed_s": 3600}], notes="Session 1.",
                   scores={"Set5": {"psnr": 30.0}})
    new = manifest(500, 30.5, [{"step": 250, "val_psnr_y": 30.1, "elapsed_s": 900},
                               {"step": 500, "val_psnr_y": 30.2, "elapsed_s": 1830}],
                   sha=sha256_of(new_dir / "lipt-tiny-x4-sr.safetensors"))
    (old_dir / "lipt-tiny-x4-sr.json").write_text(json.dumps(old))
    (new_dir / "lipt-tiny-x4-sr.json").write_text(json.dumps(new))
    done = run_tool(old_dir / "lipt-tiny-x4-sr.json", new_dir / "lipt-tiny-x4-sr.json", "--out", out,
                    "--note", "Session 2: steps {a}-{b}.", "--loss-suffix", "; steps {a}-{b} L2")
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "lipt-tiny-x4-sr.json").read_text())
    t = got["training"]
    assert t["steps"] == 1500 and t["wall_time_min"] == 90.5
    assert [h["step"] for h in t["history"]] == [1000, 1250, 1500]
    assert t["loss"] == "L1; steps 1000-1500 L2"
    assert t["notes"] == "Session 1. Session 2: steps 1000-1500."
    assert t["optimizer"] == "opt1000; then steps 1000-1500: opt500"
    assert t["init"] == "root.pt"  # the lineage's root, not the continuation's --init
    assert got["scores"] == {} and got["sha256"] == new["sha256"]
    assert (out / "lipt-tiny-x4-sr.safetensors").read_bytes() == b"new weights"


def test_mismatched_weights_or_architecture_write_nothing(tmp_path):
    (tmp_path / "lipt-tiny-x4-sr.safetensors").write_bytes(b"tampered")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(manifest(10, 1.0, [])))
    new = tmp_path / "lipt-tiny-x4-sr.json"
    new.write_text(json.dumps(manifest(10, 1.0, [], sha="0" * 64)))
    done = run_tool(old, new, "--out", tmp_path / "out", "--note", "n")
    assert done.returncode != 0 and "sha256" in done.stderr and "Traceback" not in done.stderr
    new.write_text(json.dumps(manifest(10, 1.0, [], sha=sha256_of(tmp_path / "lipt-tiny-x4-sr.safetensors"),
                                       config={"channels": 32})))
    done = run_tool(old, new, "--out", tmp_path / "out", "--note", "n")
    assert done.returncode != 0 and "architecture" in done.stderr
    assert not (tmp_path / "out").exists()
