"""Inference engines behind one callable interface: (N,C,h,w) float32 -> (N,3,s*h,s*w) float32.

C is the model's `in_channels`: 3 (RGB), or 4 for restorers that take a noise-level hint plane.

Heavy imports (torch, onnx, onnxruntime) happen inside functions so `import restore` stays fast.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


class Engine(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def make_engine(model, backend: str = "auto", *, name: str, variant: str, scale: int, weights_sha256: str,
                threads: int | None = None, engines_dir=None, device: str | None = None,
                precision: str | None = None, wait: bool = False) -> Engine:
    """Build an engine for an eval-mode, reparameterised model.

    auto = TensorRT when TensorRT and a CUDA GPU are both present (serving on PyTorch CUDA while
    the plan builds), else PyTorch on CUDA when there is a GPU, else onnxruntime on CPU when
    installed (exporting/caching the graph), else torch on CPU. If the export or the TensorRT
    setup fails under auto, the next choice is used with a one-line warning rather than giving up.
    `device` (torch: "cpu"/"cuda", default: CUDA when available), `precision` (fp32/fp16/bf16 for
    torch on CUDA, fp32/fp16 for TensorRT) and `wait` (block until a TensorRT build is done
    instead of serving on a fallback meanwhile) refine the choice.
    """
    if backend not in BACKENDS:
        raise RuntimeError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and not _has_onnxruntime():
        raise RuntimeError("backend 'onnxruntime' requested but onnxruntime is not installed")
    key = dict(name=name, variant=variant, scale=scale, weights_sha256=weights_sha256, engines_dir=engines_dir)
    if backend == "tensorrt":
        from .tensorrt_backend import require_tensorrt

        require_tensorrt()  # one-line TensorRTUnavailable (a RuntimeError) before any export work
        fallback = None if wait else _make_torch(model, "cuda", threads, None)
        return _make_trt(model, key, precision, fallback, wait)
    if backend == "auto":
        if _cuda_available():
            from .tensorrt_backend import tensorrt_status

            fallback = _make_torch(model, device or "cuda", threads, None)
            if tensorrt_status(need_builder=True)[0] is not None:
                try:
                    return _make_trt(model, key, precision, None if wait else fallback, wait)
                except RuntimeError as e:
                    warnings.warn(f"TensorRT unavailable, using torch on CUDA instead: {e}", RuntimeWarning,
                                  stacklevel=2)
            return fallback
        backend = "onnxruntime" if _has_onnxruntime() else "torch"
        if backend == "onnxruntime":
            try:
                return _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir)
            except RuntimeError as e:
                warnings.warn(f"ONNX export failed, using torch instead: {e}", RuntimeWarning, stacklevel=2)
                backend = "torch"
    if backend == "onnxruntime":
        return _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir)
    return _make_torch(model, device, threads, precision)


def _cuda_available() -> bool:
    from .tensorrt_backend import _cuda_available as available

    return available()


def _make_torch(model, device, threads, precision):
    from .torch_backend import TorchEngine

    device = device or ("cuda" if _cuda_available() else "cpu")
    return TorchEngine(model, device=device, threads=threads, precision=precision)


def _spec_hints(name: str, model) -> dict:
    """Tile geometry for TensorRT profiles: the registered restorer's, else guesses from the model."""
    try:
        from restore import registry

        spec = registry.get(name)
        hints = dict(tile=spec.tile, size_multiple=spec.size_multiple, min_size=spec.min_size, overlap=spec.overlap)
    except Exception:  # noqa: BLE001 - an unregistered model (tests, experiments)
        m = int(getattr(model, "size_multiple", getattr(model, "multiple", 1)) or 1)
        hints = dict(tile=256, size_multiple=m, min_size=m, overlap=16)
    return {**hints, "channels": int(getattr(model, "in_channels", 3))}


def _make_trt(model, key: dict, precision, fallback, wait):
    from .cache import get_or_export_onnx
    from .tensorrt_backend import make_trt_engine

    path = get_or_export_onnx(model, model_name=key["name"], variant=key["variant"], scale=key["scale"],
                              weights_sha256=key["weights_sha256"], root=key["engines_dir"])
    stem = f"{key['name']}-{key['variant']}-x{int(key['scale'])}"
    return make_trt_engine(path, stem=stem, scale=int(key["scale"]), precision=precision,
                           engines_dir=key["engines_dir"], fallback=fallback, wait=wait,
                           **_spec_hints(key["name"], model))


def _make_ort(model, name, variant, scale, weights_sha256, threads, engines_dir):
    from .cache import get_or_export_onnx
    from .onnxruntime_backend import OrtEngine

    path = get_or_export_onnx(model, model_name=name, variant=variant, scale=scale,
                              weights_sha256=weights_sha256, root=engines_dir)
    return OrtEngine(path, threads=threads)
