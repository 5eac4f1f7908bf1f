"""Inference engines behind one callable interface: (N,3,h,w) float32 -> (N,3,s*h,s*w) float32.

Heavy imports (torch, onnx, onnxruntime) happen inside functions so `import restore` stays fast.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "torch", "onnxruntime")


class Engine(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def make_engine(model, backend: str = "auto", *, name: str, variant: str, scale: int, weights_sha256: str,
                threads: int | None = None, engines_dir=None) -> Engine:
    """Build an engine for an eval-mode, reparameterised model.

    auto = onnxruntime when installed (exporting/caching the graph), else torch; if the export
    fails under auto, torch is used with a one-line warning rather than giving up.
    """
    if backend not in BACKENDS:
        raise RuntimeError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and not _has_onnxruntime():
        raise RuntimeError("backend 'onnxruntime' requested but onnxruntime is not installed")
    if backend == "auto":
        backend = "onnxruntime" if _has_onnxruntime() else "torch"
        if backend == "onnxruntime":
            try:
                return _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir)
            except RuntimeError as e:
                warnings.warn(f"ONNX export failed, using torch instead: {e}", RuntimeWarning, stacklevel=2)
                backend = "torch"
    if backend == "onnxruntime":
        return _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir)
    from .torch_backend import TorchEngine

    return TorchEngine(model, threads=threads)


def _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir):
    from .cache import get_or_export_onnx
    from .onnxruntime_backend import OrtEngine

    path = get_or_export_onnx(model, model_name=name, variant=variant, scale=scale,
                              weights_sha256=weights_sha256, root=engines_dir)
    return OrtEngine(path, threads=threads)
