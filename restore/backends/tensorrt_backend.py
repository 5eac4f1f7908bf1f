"""TensorRT inference engine: cached plans, a background build, torch CUDA buffers, an fp16 guard.

How an engine comes about (`make_trt_engine`):
  1. The exported ONNX graph is hashed; precision is fp16 unless fp32 was asked for or the graph
     is marked fp32-only (see the fp16 guard); the optimisation profile comes from the
     restorer's tile size (trt_cache.choose_profile).
  2. The cache key (trt_cache.BuildSpec) names a plan under engines/. A plan whose checksum
     matches is loaded; a missing, damaged or undeserialisable one is (re)built.
  3. The build runs in a subprocess (`python -m restore.backends.trt_build`), reporting
     progress from TensorRT's IProgressMonitor to a progress bar; its log is kept on failure.
     With a fallback engine (ONNX Runtime or PyTorch) the caller gets a `SwitchingEngine` that
     serves on the fallback and moves to TensorRT between calls once the plan is ready.

Execution: torch CUDA tensors are the I/O buffers (`data_ptr()` → `set_tensor_address`), on a
torch CUDA stream, via `execute_async_v3`; no pycuda. Inputs larger than the profile are tiled
to fit (the pipeline tiler, tile = profile max), smaller ones are edge-padded up to its minimum.

fp16 guard: a tile whose fp16 output holds NaN/Inf, or is all black while its input is not, is
redone in fp32, and the graph is marked fp32-only in the cache notes so later engines build fp32.

Packages: the full `tensorrt` package builds and runs; the lean runtime (`tensorrt-lean-cu13`,
module `tensorrt_lean`, the `[tensorrt]` extra) only loads plans that were already built.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from . import trt_cache

INSTALL_HINT = ("pip install -e '.[tensorrt]' gives the TensorRT runtime; building engines needs the full "
                "`tensorrt` package")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or CUDA is missing here (one-line message)."""


class EngineLoadError(RuntimeError):
    """A plan could not be deserialised (damaged, or built for another TensorRT/GPU)."""


# ------------------------------------------------------------------------------ availability

def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA setup counts as no CUDA
        return False


def _find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tensorrt_status(need_builder: bool = False) -> tuple[str | None, str | None]:
    """(module name, None) when TensorRT can run here, else (None, one-line reason).

    `need_builder`: only the full `tensorrt` package will do (building plans). Without it the
    lean runtime (`tensorrt_lean`) is accepted too.
    """
    problems = []
    if not _cuda_available():
        problems.append("no CUDA GPU (torch.cuda.is_available() is False)")
    names = ["tensorrt"] if need_builder else ["tensorrt", "tensorrt_lean"]
    found = [n for n in names if _find_module(n)]
    if not found:
        if need_builder and _find_module("tensorrt_lean"):
            problems.append("building engines needs the full `tensorrt` package (only the lean runtime, "
                            "which loads prebuilt plans, is installed)")
        else:
            problems.append(f"TensorRT is not installed ({INSTALL_HINT})")
    if problems:
        return None, " and ".join(problems)
    for name in found:
        try:
            importlib.import_module(name)
            return name, None
        except Exception as e:  # noqa: BLE001 - e.g. missing libnvinfer: try the next module
            problems.append(f"`import {name}` failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    return None, " and ".join(problems)


def require_tensorrt(need_builder: bool = False):
    """The TensorRT module, or TensorRTUnavailable with a one-line reason."""
    name, reason = tensorrt_status(need_builder)
    if name is None:
        raise TensorRTUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
    return importlib.import_module(name)


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of the current CUDA device."""
    import torch

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


# ------------------------------------------------------------------------------ fp16 guard

def fp16_bad_tiles(inp: np.ndarray, out: np.ndarray, black: float = 0.5 / 255) -> np.ndarray:
    """Per batch item: True where `out` holds NaN/Inf, or is all black while `inp` is not.

    "Black" means every value at most `black` (what rounds to 0 in 8 bits after clipping):
    an fp16 overflow often shows up as a saturated-negative, i.e. black, tile.
    """
    n = out.shape[0]
    o = out.reshape(n, -1)
    i = inp[:, :3].reshape(inp.shape[0], -1)  # colour only: extra planes (a noise hint) may be negative
    nonfinite = ~np.isfinite(o).all(axis=1)
    with np.errstate(invalid="ignore"):
        out_black = (o <= black).all(axis=1)
    in_black = (i <= black).all(axis=1)
    return nonfinite | (out_black & ~in_black)


# ------------------------------------------------------------------------------ build process

class BuildProgress:
    """Folds the builder's JSON progress events into a fraction done and a label."""

    def __init__(self):
        self.phases: dict[str, dict] = {}
        self.active: list[str] = []  # started, not finished, in start order
        self.top: str | None = None

    def feed(self, ev: dict) -> None:
        kind, name = ev.get("event"), ev.get("phase")
        if kind == "phase_start":
            self.phases[name] = {"parent": ev.get("parent"), "steps": max(0, int(ev.get("steps") or 0)), "done": 0}
            self.active.append(name)
            if ev.get("parent") is None:
                self.top = name
        elif kind == "step" and name in self.phases:
            self.phases[name]["done"] = int(ev.get("step", 0)) + 1  # step indices count from 0
        elif kind == "phase_finish" and name in self.phases:
            self.phases[name]["done"] = self.phases[name]["steps"]
            if name in self.active:
                self.active.remove(name)

    def _fraction(self, name: str, depth: int = 0) -> float:
        p = self.phases[name]
        if p["steps"] <= 0:
            return 0.0 if name in self.active else 1.0
        child = next((c for c in reversed(self.active) if self.phases[c]["parent"] == name), None)
        part = self._fraction(child, depth + 1) if child is not None and depth < 16 else 0.0
        return min(1.0, (min(p["done"], p["steps"]) + part) / p["steps"])

    @property
    def fraction(self) -> float:
        return self._fraction(self.top) if self.top is not None else 0.0

    @property
    def label(self) -> str:
        return self.active[-1] if self.active else (self.top or "")


class BuildProcess:
    """A running `python -m restore.backends.trt_build`; poll() / wait() like Popen."""

    def __init__(self, cmd: list[str], log: Path, progress: bool = True, env: dict | None = None):
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in _finish
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env)
        self.progress = BuildProgress()
        self.error: str | None = None
        self.returncode: int | None = None
        self._bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=1000, desc="TensorRT build", unit="", leave=False, dynamic_ncols=True,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            self.progress.feed(ev)
            if ev.get("event") == "error":
                self.error = str(ev.get("message"))
            if self._bar is not None:
                self._bar.n = int(self.progress.fraction * 1000)
                self._bar.set_postfix_str(self.progress.label[:40], refresh=True)

    def _finish(self, rc: int) -> int:
        if self.returncode is None:
            self.returncode = rc
            self._reader.join(timeout=5)
            self._log_file.close()
            if self._bar is not None:
                self._bar.close()
            if rc == 0:
                self.log.unlink(missing_ok=True)  # the log is kept only when the build failed
            elif not self.error:
                self.error = f"builder exited with status {rc}"
        return self.returncode

    def poll(self) -> int | None:
        rc = self.proc.poll()
        return None if rc is None else self._finish(rc)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self._finish(rc)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()


def start_build(onnx_path: Path, plan: Path, spec: trt_cache.BuildSpec, timing_cache: Path | None,
                progress: bool = True) -> BuildProcess:
    """Start the builder subprocess for `spec`; the spec travels as a JSON file beside the plan."""
    import restore

    spec_file = plan.with_suffix(".spec.json")
    trt_cache.atomic_write(spec_file, json.dumps(spec.to_dict(), indent=2).encode())
    cmd = [sys.executable, "-m", "restore.backends.trt_build", "--onnx", str(onnx_path), "--plan", str(plan),
           "--spec", str(spec_file)]
    if timing_cache is not None:
        cmd += ["--timing-cache", str(timing_cache)]
    env = dict(os.environ)
    src = str(Path(restore.__file__).resolve().parents[1])  # works from a source checkout too
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return BuildProcess(cmd, trt_cache.log_path(plan), progress=progress, env=env)


# ------------------------------------------------------------------------------ engines

def _torch_dtype(trt, dt):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "UINT8": torch.uint8}
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise EngineLoadError(f"unsupported TensorRT I/O type {dt}")


class TrtEngine:
    """A deserialised plan: (N,C,h,w) float32 numpy → (N,3,s*h,s*w) float32 numpy, any h, w, N
    (C = 3, or 4 with a noise-level hint plane)."""

    name = "tensorrt"

    def __init__(self, plan: bytes, *, profile: trt_cache.Profile, scale: int, precision: str,
                 size_multiple: int = 1, overlap: int = 16, fp32_redo: Callable | None = None,
                 on_fp16_failure: Callable[[str], object] | None = None, trt=None):
        import torch

        self._torch = torch
        trt = trt or require_tensorrt()
        self._trt = trt
        self.profile, self.scale, self.precision = profile, int(scale), precision
        self.size_multiple = max(1, int(size_multiple))
        m = self.size_multiple
        tile = min(profile.max_hw)
        self.overlap = max(0, min(-(-int(overlap) // m) * m, tile - m))
        self.fp32_redo, self.on_fp16_failure = fp32_redo, on_fp16_failure
        self.fp16_redone = 0  # tiles redone in fp32 so far
        self._reported = False
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineLoadError("TensorRT could not deserialise the plan (damaged, or built by another "
                                  "TensorRT version or for another GPU)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineLoadError(f"expected one input and one output, plan has {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)

    # -- GPU-resident API: CUDA tensor in, CUDA tensor out (shape must fit the profile)
    def run_torch(self, x):
        torch = self._torch
        if not self.profile.fits(tuple(x.shape)):
            raise ValueError(f"input {tuple(x.shape)} is outside the engine profile "
                             f"{self.profile.min}..{self.profile.max}")
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # x may still be being written on the caller's stream
        with torch.cuda.stream(self.stream):
            xin = x.to(self.device, self._in_dtype, non_blocking=True).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(int(v) for v in xin.shape)):
                raise ValueError(f"TensorRT rejected input shape {tuple(xin.shape)}")
            shape = tuple(int(v) for v in self.context.get_tensor_shape(self.output_name))
            y = torch.empty(shape, dtype=self._out_dtype, device=self.device)
            self.context.set_tensor_address(self.input_name, int(xin.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(y.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        caller.wait_stream(self.stream)
        y.record_stream(caller)
        return y if y.dtype == torch.float32 else y.float()

    def _execute(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        t = torch.from_numpy(x)
        if torch.cuda.is_available():
            t = t.pin_memory()
        y = self.run_torch(t.to(self.device, non_blocking=True))
        return y.cpu().numpy()

    def _fitting(self, x: np.ndarray) -> np.ndarray:
        """Inputs no larger than the profile: pad small ones, split big batches, guard fp16."""
        n, _, h, w = x.shape
        (hmin, wmin), s = self.profile.min_hw, self.scale
        ph, pw = max(0, hmin - h), max(0, wmin - w)
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        outs = []
        for i in range(0, n, self.profile.max_batch):
            chunk = np.ascontiguousarray(x[i:i + self.profile.max_batch])
            y = self._execute(chunk)
            if self.precision == "fp16":
                y = self._guard(chunk, y)
            outs.append(y)
        y = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return y[:, :, : h * s, : w * s] if (ph or pw) else y

    def _guard(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        bad = fp16_bad_tiles(x, y)
        if not bad.any():
            return y
        if self.fp32_redo is None:
            raise RuntimeError("fp16 engine produced NaN/Inf or black tiles and no fp32 engine is available")
        y = np.array(y, copy=True)
        y[bad] = self.fp32_redo(np.ascontiguousarray(x[bad]))
        self.fp16_redone += int(bad.sum())
        if self.on_fp16_failure is not None and not self._reported:
            self._reported = True
            self.on_fp16_failure(f"{int(bad.sum())} tile(s) of shape {tuple(x.shape[1:])} came out NaN/Inf or "
                                 "black in fp16")
        return y

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        hmax, wmax = self.profile.max_hw
        if x.shape[2] <= hmax and x.shape[3] <= wmax:
            return self._fitting(x)
        from restore.pipeline.tiling import run_tiled

        tile = min(hmax, wmax)
        return np.stack([run_tiled(self._fitting, img, scale=self.scale, tile=tile, overlap=self.overlap,
                                   batch=self.profile.max_batch, align=self.size_multiple, out_channels=3)
                         for img in x])

    def release_memory(self) -> None:
        self._torch.cuda.empty_cache()


class SwitchingEngine:
    """Serves on `fallback` while a TensorRT plan builds, then on TensorRT (switching between calls).

    If the build fails the fallback stays, with one warning naming the kept log.
    """

    def __init__(self, fallback, build: BuildProcess, load: Callable[[], object]):
        self.fallback, self.build, self._load = fallback, build, load
        self.engine = None
        self.state = "building"  # -> "ready" | "failed"
        self.error: str | None = None

    @property
    def name(self) -> str:
        return self.engine.name if self.engine is not None else self.fallback.name

    def poll(self) -> str:
        if self.state != "building":
            return self.state
        rc = self.build.poll()
        if rc is None:
            return self.state
        self._settle(rc)
        return self.state

    def wait(self, timeout: float | None = None) -> str:
        if self.state == "building":
            rc = self.build.wait(timeout)
            if rc is not None:
                self._settle(rc)
        return self.state

    def _settle(self, rc: int) -> None:
        if rc == 0:
            try:
                self.engine = self._load()
                self.state = "ready"
                return
            except Exception as e:  # noqa: BLE001 - keep serving on the fallback
                self.error = f"{type(e).__name__}: {e}"
        else:
            self.error = f"{self.build.error} (log: {self.build.log})"
        self.state = "failed"
        warnings.warn(f"TensorRT engine build failed, staying on {self.fallback.name}: {self.error}",
                      RuntimeWarning, stacklevel=3)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.poll()
        return (self.engine or self.fallback)(batch)

    def release_memory(self) -> None:
        fn = getattr(self.engine or self.fallback, "release_memory", None)
        if callable(fn):
            fn()


# ------------------------------------------------------------------------------ factory

def resolve_plan(plan: Path) -> str:
    """'load' when a checksummed plan is there; 'build' otherwise (a damaged one is removed)."""
    status = trt_cache.plan_status(plan)
    if status == "damaged":
        trt_cache.discard(plan)
    return "load" if status == "ok" else "build"


def make_trt_engine(onnx_path, *, stem: str, scale: int, tile: int, size_multiple: int = 1, min_size: int = 1,
                    overlap: int = 16, precision: str | None = None, engines_dir=None, fallback=None,
                    wait: bool = False, max_batch: int = 4, workspace_mb: int = 0, opt_level: int = 3,
                    progress: bool = True, channels: int = 3):
    """A TensorRT engine for an exported graph, loading a cached plan or building one.

    With `fallback` (and not `wait`) a missing plan gives a SwitchingEngine at once; otherwise
    this blocks until the build is done. Raises TensorRTUnavailable (one line) when TensorRT or
    CUDA is missing, RuntimeError when a blocking build fails.
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    onnx_sha = trt_cache.sha256_file(onnx_path)
    prec = trt_cache.choose_precision(precision, stem, onnx_sha, engines_dir)
    profile = trt_cache.choose_profile(tile, size_multiple, min_size, max_batch, channels)
    gpu, cc = gpu_identity()
    spec = trt_cache.BuildSpec(onnx_sha, prec, profile, trt.__version__, gpu, cc, workspace_mb, opt_level)
    plan = trt_cache.plan_path(stem, spec, engines_dir)

    fp32_redo = fallback
    if prec == "fp16" and fallback is None:
        fp32_redo = _LazyEngine(lambda: make_trt_engine(
            onnx_path, stem=stem, scale=scale, tile=tile, size_multiple=size_multiple, min_size=min_size,
            overlap=overlap, precision="fp32", engines_dir=engines_dir, wait=True, max_batch=max_batch,
            workspace_mb=workspace_mb, opt_level=opt_level, progress=progress, channels=channels))

    def on_fp16_failure(reason: str) -> None:
        trt_cache.mark_fp32_only(stem, onnx_sha, reason, engines_dir)
        warnings.warn(f"{stem}: fp16 TensorRT output was unusable ({reason}); redone in fp32, and this "
                      "restorer now builds fp32 engines", RuntimeWarning, stacklevel=2)

    def load():
        data = trt_cache.read_checked(plan)
        if data is None:
            raise EngineLoadError(f"{plan.name}: missing or damaged after the build")
        return TrtEngine(data, profile=profile, scale=scale, precision=prec, size_multiple=size_multiple,
                         overlap=overlap, fp32_redo=fp32_redo, on_fp16_failure=on_fp16_failure, trt=trt)

    if resolve_plan(plan) == "load":
        try:
            return load()
        except EngineLoadError:
            trt_cache.discard(plan)  # checksum fine but TensorRT refused it: build a fresh one
    if trt.__name__ != "tensorrt":
        raise TensorRTUnavailable(f"no cached TensorRT engine for {stem} ({prec}) and building one needs the "
                                  "full `tensorrt` package (the lean runtime only loads prebuilt plans)")
    timing = trt_cache.timing_cache_path(spec.trt_version, spec.gpu_name + "-" + cc, engines_dir)
    build = start_build(onnx_path, plan, spec, timing, progress=progress)
    if fallback is not None and not wait:
        return SwitchingEngine(fallback, build, load)
    if build.wait() != 0:
        raise RuntimeError(f"TensorRT engine build failed: {build.error} (log: {build.log})")
    return load()


class _LazyEngine:
    """Makes its engine on first call (the fp32 engine the fp16 guard falls back to)."""

    def __init__(self, factory: Callable[[], object]):
        self._factory, self._engine = factory, None
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._engine is None:
                self._engine = self._factory()
        return self._engine(batch)
