"""On-disk cache of exported ONNX graphs, keyed by everything that changes the graph."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

# Bump when the cache's own layout changes. Changes to the models or to the exporter need no
# bump: their source code is part of every key (`graph_code_digest`).
CACHE_FORMAT = 1


PROJECT_ENGINES = Path(__file__).resolve().parents[2] / "engines"


def engines_root(root=None) -> Path:
    """Explicit `root` > $RESTORE_ENGINES > the project's engines/ (or ~/.cache/restore/engines
    when that is not writable, e.g. a read-only install), independent of the working folder."""
    if root is not None:
        return Path(root)
    if os.environ.get("RESTORE_ENGINES"):
        return Path(os.environ["RESTORE_ENGINES"])
    if os.access(PROJECT_ENGINES if PROJECT_ENGINES.exists() else PROJECT_ENGINES.parent, os.W_OK):
        return PROJECT_ENGINES
    return Path.home() / ".cache" / "restore" / "engines"


@functools.lru_cache(maxsize=1)
def graph_code_digest() -> str:
    """sha256 of the code that decides what an exported graph holds: every model module and the
    exporter. A model rewritten for speed (same weights, new graph) must not reuse an old file."""
    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "models").rglob("*.py")) + [package / "backends" / "export.py"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def onnx_cache_path(model_name: str, variant: str, scale: int, weights_sha256: str, opset: int = 18,
                    root=None) -> Path:
    import torch  # exporter version is part of the key: a new torch may emit a different graph

    key = json.dumps({"model": model_name, "variant": variant, "scale": int(scale), "weights": weights_sha256,
                      "opset": int(opset), "torch": torch.__version__, "format": CACHE_FORMAT,
                      "code": graph_code_digest()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_name}-{variant}-x{int(scale)}")
    return engines_root(root) / f"{stem}-{digest}.onnx"


def _is_valid(path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: also parses the file, so garbage fails here
        return True
    except Exception:  # noqa: BLE001 - any damage means "export again"
        return False


def get_or_export_onnx(model, *, model_name: str, variant: str, scale: int, weights_sha256: str,
                       opset: int = 18, root=None, example_hw: tuple[int, int] = (64, 64)) -> Path:
    """Path of a valid cached graph for this model, exporting it first if missing or damaged."""
    path = onnx_cache_path(model_name, variant, scale, weights_sha256, opset, root)
    if path.is_file() and _is_valid(path):
        return path
    from .export import export_onnx

    return export_onnx(model, path, opset=opset, example_hw=example_hw)
