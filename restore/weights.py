"""Shipped checkpoints: `weights/<name>-<variant>-x<scale>-<task>.safetensors` + a JSON manifest.

The safetensors file holds the *reparameterised* (inference) state dict. The manifest records
the architecture and hyper-parameters, how the weights were trained, their scores on the eval
sets and the sha256 of the safetensors file, which is checked on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsError(Exception):
    pass


def weights_dir() -> Path:
    return Path(os.environ.get("RESTORE_WEIGHTS", WEIGHTS_DIR))


def weights_stem(name: str, variant: str, scale: int, task: str) -> str:
    return f"{name}-{variant}-x{scale}-{task}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _readable(path) -> None:
    """mkstemp makes 0600 files; give shipped files the usual permissions (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: torch.nn.Module, stem: str, manifest: dict, directory: Path | None = None) -> Path:
    """Write the model's state dict and its manifest (sha256 filled in). Returns the .safetensors path."""
    directory = Path(directory or weights_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp, metadata={"stem": stem})
        _readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest = {**manifest, "file": path.name, "sha256": sha256_of(path),
                "parameters": sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))}
    write_manifest(path, manifest)
    return path


def manifest_path(weights_path: Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def read_manifest(weights_path: Path) -> dict:
    mp = manifest_path(weights_path)
    if not mp.exists():
        return {}
    return json.loads(mp.read_text())


def write_manifest(weights_path: Path, manifest: dict) -> None:
    atomic_write_bytes(manifest_path(weights_path), (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


def load_state(weights_path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    weights_path = Path(weights_path)
    if not weights_path.exists():
        raise WeightsError(f"{weights_path}: no such weights file")
    manifest = read_manifest(weights_path)
    if verify and manifest.get("sha256") and manifest["sha256"] != sha256_of(weights_path):
        raise WeightsError(f"{weights_path}: sha256 does not match its manifest (damaged or replaced file)")
    return load_file(str(weights_path))


def find_weights(name: str, variant: str, scale: int, task: str) -> Path | None:
    path = weights_dir() / f"{weights_stem(name, variant, scale, task)}.safetensors"
    return path if path.exists() else None


def list_weights() -> list[tuple[Path, dict]]:
    return [(p, read_manifest(p)) for p in sorted(weights_dir().glob("*.safetensors"))]
