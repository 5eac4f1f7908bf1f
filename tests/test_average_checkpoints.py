"""tools/average_checkpoints.py: the mean of several runs' weights, as one slim checkpoint that
`restore train --resume --export-only` can export."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(path: Path, weight: float, averaged: bool, shape=(2, 3)) -> Path:
    model = {"conv.weight": torch.full(shape, weight), "bn.num_batches_tracked": torch.tensor(7)}
    state = {"model": model, "optimizer": {"state": {}}, "step": 100, "elapsed": 60.0, "args": {"lr": 1e-4},
             "ema": None}
    if averaged:  # the run's export is its average, not its last model
        state["model"] = {"conv.weight": torch.full(shape, -99.0), "bn.num_batches_tracked": torch.tensor(7)}
        state["ema"] = {"model": model, "decay": 0.999}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "average_checkpoints.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_mean_of_the_weight_averages(tmp_path):
    a = checkpoint(tmp_path / "a" / "last.pt", 1.0, averaged=True)
    b = checkpoint(tmp_path / "b" / "last.pt", 2.0, averaged=False)
    c = checkpoint(tmp_path / "c" / "last.pt", 6.0, averaged=True)
    out = tmp_path / "soup" / "last.pt"
    done = run_tool(a, b, c, "--out", out)
    assert done.returncode == 0, done.stderr
    soup = torch.load(out, weights_only=False)
    assert torch.allclose(soup["model"]["conv.weight"], torch.full((2, 3), 3.0))
    assert soup["model"]["bn.num_batches_tracked"].item() == 7
    assert soup["ema"] is None and soup["optimizer"] is None
    assert soup["step"] == 100 and soup["args"] == {"lr": 1e-4}


def test_refuses_mismatched_models_and_existing_output(tmp_path):
    a = checkpoint(tmp_path / "a" / "last.pt", 1.0, averaged=True)
    b = checkpoint(tmp_path / "b" / "last.pt", 2.0, averaged=True, shape=(3, 3))
    out = tmp_path / "soup" / "last.pt"
    done = run_tool(a, b, "--out", out)
    assert done.returncode == 1 and "different model" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    out.parent.mkdir()
    out.write_bytes(b"user file")
    done = run_tool(a, a, "--out", out)
    assert done.returncode != 0 and "exists" in done.stderr
    assert out.read_bytes() == b"user file"
