"""`restore bench`: how fast a restorer runs on each backend, against what the machine can do.

Per backend: median and min/max milliseconds per frame over `runs` timed calls after `warmup`
untimed ones, frames per second, GFLOP per frame (counted from the exported ONNX graph at the
benchmark size: Conv, ConvTranspose, MatMul, Gemm; see backends/onnx_flops.py), the achieved
GFLOP/s (from the median) and that as a share of the machine's conv ceiling.

The ceiling is measured in the same run: a 3x3 convolution 64→64 channels, fp32, on an input of
the benchmark size, in ONNX Runtime and in PyTorch (channels_last), best of a few runs each;
the higher of the two is the ceiling. Bicubic upscaling (OpenCV INTER_CUBIC, and the MATLAB-style
`restore.resize.imresize` the SR literature uses) is timed as the floor.

Each call gets the whole frame (no tiling; TensorRT tiles inside the engine when the frame is
larger than its optimisation profile). Timed calls go round-robin over the backends, so a
change in machine load during the run hits every backend alike.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from restore.backends.onnxruntime_backend import usable_cores

BACKEND_CHOICES = ("all", "onnxruntime", "torch", "torch-cuda", "tensorrt")
CEILING_CHANNELS = 64
BARS = {"onnxruntime_vs_torch": 1.5, "onnxruntime_ceiling_share": 0.60}  # issue 3, LIPT-Tiny x2 640x360
BARS_APPLY_TO = {"model": "lipt", "variant": "tiny", "scale": 2, "input": [640, 360]}


def bars_apply(report: dict) -> bool:
    """The issue's speed bars are set for one configuration; other runs get no verdict."""
    return all(report.get(k) == v for k, v in BARS_APPLY_TO.items())


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' → (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if w < 1 or h < 1:
        raise ValueError(f"--size {text!r}: width and height must be positive")
    return w, h


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@dataclass
class Row:
    backend: str
    label: str
    precision: str = "fp32"
    device: str = "cpu"
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    times: list = field(default_factory=list)  # seconds per timed call
    gflop: float | None = None
    engine_name: str = ""

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times) * 1e3 if self.times else None

    @property
    def min_ms(self) -> float | None:
        return min(self.times) * 1e3 if self.times else None

    @property
    def max_ms(self) -> float | None:
        return max(self.times) * 1e3 if self.times else None

    @property
    def fps(self) -> float | None:
        return 1e3 / self.median_ms if self.times else None

    @property
    def gflops_per_s(self) -> float | None:
        return self.gflop / (self.median_ms / 1e3) if self.times and self.gflop else None

    def to_dict(self, ceiling: float | None) -> dict:
        rnd = lambda v, n=2: None if v is None else round(float(v), n)  # noqa: E731
        share = self.gflops_per_s / ceiling if self.gflops_per_s and ceiling else None
        # best run against the best-of-N ceiling: like for like when the machine is noisy
        best = self.gflop / (self.min_ms / 1e3) / ceiling if self.times and self.gflop and ceiling else None
        return {"backend": self.backend, "label": self.label, "precision": self.precision, "device": self.device,
                "status": self.status, "reason": self.reason or None, "runs": len(self.times),
                "median_ms": rnd(self.median_ms, 3), "min_ms": rnd(self.min_ms, 3), "max_ms": rnd(self.max_ms, 3),
                "fps": rnd(self.fps, 3), "gflop_per_frame": rnd(self.gflop, 6),
                "gflops_per_s": rnd(self.gflops_per_s), "ceiling_share": rnd(share, 4),
                "ceiling_share_best": rnd(best, 4)}


def time_calls(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# ----------------------------------------------------------------------------- conv ceiling

def conv_gflop(h: int, w: int, c: int = CEILING_CHANNELS) -> float:
    return 2.0 * c * c * 9 * h * w / 1e9


def _conv_onnx(path, c: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wt = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(c, np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph([node], "conv3x3", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, c, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, "h", "w"])], [wt, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def ceiling_callables(h: int, w: int, threads: int, tmpdir) -> dict:
    """name → zero-argument callable running one 3x3 conv 64→64 on a (1, 64, h, w) input."""
    from pathlib import Path

    import torch

    c = CEILING_CHANNELS
    x = np.random.default_rng(1).random((1, c, h, w), dtype=np.float32)
    out = {}
    try:
        from restore.backends.onnxruntime_backend import OrtEngine

        path = Path(tmpdir) / "conv3x3.onnx"
        _conv_onnx(path, c)
        eng = OrtEngine(path, threads=threads)  # the same session options as the real engine
        out["onnxruntime"] = lambda: eng(x)
    except ImportError:
        pass
    conv = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

    def run_torch():
        with torch.inference_mode():
            conv(xt)

    out["torch"] = run_torch
    return out


# ----------------------------------------------------------------------------- the benchmark

def _synthetic_frame(h: int, w: int) -> np.ndarray:
    """A smooth, textured (1, 3, h, w) float32 frame (content does not change CPU speed)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    chans = [0.5 + 0.3 * np.sin(x * f1 + p) * np.cos(y * f2) for f1, f2, p in rng.uniform(0.01, 0.2, (3, 3))]
    img = np.stack(chans) + 0.05 * rng.standard_normal((3, h, w)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)[None]


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_bench(model: str = "lipt", variant: str | None = None, scale: int | None = None, size=(640, 360),
              backend: str = "all", runs: int = 10, warmup: int = 2, threads: int | None = None,
              engines_dir=None, quiet: bool = True, ceiling_runs: int = 5) -> dict:
    """Measure and return the report (the dict `--json` prints)."""
    import tempfile

    import torch

    from restore.api import load_restorer
    from restore.backends import make_engine
    from restore.backends.cache import get_or_export_onnx
    from restore.backends.onnx_flops import count_flops
    from restore.backends.torch_backend import TorchEngine

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if runs < 1 or warmup < 0:
        raise ValueError("--runs must be >= 1 and --warmup >= 0")
    w, h = size
    threads = int(threads or usable_cores())
    load_before = load_average()
    restorer = load_restorer(model, variant, scale, backend="torch", threads=threads, allow_untrained=True,
                             engines_dir=engines_dir)
    spec, s = restorer.spec, restorer.scale
    net = restorer.model.to("cpu")
    sha = restorer.manifest.get("sha256") or "untrained"
    frame = _synthetic_frame(h, w)
    rgb_frame = frame
    in_channels = int(getattr(net, "in_channels", 3))
    if in_channels == 4:  # a noise-level hint plane, "unknown" (blind), as the pipeline adds it
        frame = np.concatenate([frame, np.full_like(frame[:, :1], net.hint_value(None))], axis=1)
    cuda = torch.cuda.is_available()

    _say("exporting / loading the ONNX graph ...", quiet)
    onnx_path = get_or_export_onnx(net, model_name=spec.name, variant=restorer.variant, scale=s,
                                   weights_sha256=sha, root=engines_dir)
    flops = count_flops(onnx_path, (1, in_channels, h, w))
    gflop = flops.gflop if not flops.unresolved else None

    wanted = ["onnxruntime", "torch"] + (["torch-cuda"] if cuda else []) + ["tensorrt"]
    if backend != "all":
        wanted = [backend]
    rows, engines = [], {}
    key = dict(name=spec.name, variant=restorer.variant, scale=s, weights_sha256=sha, threads=threads,
               engines_dir=engines_dir)
    for b in wanted:
        row = Row(b, b, gflop=gflop)
        if b in ("tensorrt", "torch-cuda"):
            row.precision, row.device = "fp16", "cuda"
        try:
            if b == "onnxruntime":
                row.label, eng = "onnxruntime (CPU)", make_engine(net, "onnxruntime", **key)
            elif b == "torch":
                row.label, eng = "torch eager (CPU)", TorchEngine(net, device="cpu", threads=threads)
            elif b == "torch-cuda":
                if not cuda:
                    raise RuntimeError("no CUDA GPU (torch.cuda.is_available() is False)")
                eng = TorchEngine(net, device="cuda", precision="fp16")
                row.label, row.precision, row.device = "torch eager (CUDA)", "fp16", "cuda"
            else:
                _say("TensorRT: loading or building the engine (minutes the first time) ...", quiet)
                eng = make_engine(net, "tensorrt", wait=True, **key)
                row.label, row.precision, row.device = "tensorrt", getattr(eng, "precision", "fp16"), "cuda"
            row.engine_name = eng.name
            engines[b] = eng
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            row.status = "skipped"
            row.reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        rows.append(row)

    # bicubic floors (HxWx3 in, like the pipeline's images)
    import cv2

    from restore.resize import imresize

    hwc = np.ascontiguousarray(rgb_frame[0].transpose(1, 2, 0))
    floors = [Row("bicubic-cv2", "bicubic (OpenCV INTER_CUBIC)"), Row("bicubic-matlab", "bicubic (MATLAB imresize)")]
    floor_fns = {"bicubic-cv2": lambda: cv2.resize(hwc, (w * s, h * s), interpolation=cv2.INTER_CUBIC),
                 "bicubic-matlab": lambda: imresize(hwc, float(s))}

    with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
        ceil_fns = ceiling_callables(h, w, threads, tmp)
        # warm-up everything once (and check the output shapes), then time round-robin
        for row in rows:
            if row.status != "ok":
                continue
            _say(f"warming up {row.label} ...", quiet)
            try:
                for _ in range(max(1, warmup)):
                    out = engines[row.backend](frame)
                if tuple(out.shape) != (1, 3, h * s, w * s):
                    raise RuntimeError(f"output shape {tuple(out.shape)}, expected {(1, 3, h * s, w * s)}")
            except Exception as e:  # noqa: BLE001
                row.status, row.reason = "failed", str(e).splitlines()[0][:200]
        for fn in list(ceil_fns.values()) + list(floor_fns.values()):
            fn()
        ceil_times = {k: [] for k in ceil_fns}
        n_ceiling = max(1, min(ceiling_runs, runs))
        for i in range(runs):
            _say(f"run {i + 1}/{runs} ...", quiet)
            for row in rows:
                if row.status == "ok":
                    row.times += time_calls(lambda: engines[row.backend](frame), 1, 0)
            for row in floors:
                row.times += time_calls(floor_fns[row.backend], 1, 0)
            if i < n_ceiling:
                for k, fn in ceil_fns.items():
                    ceil_times[k] += time_calls(fn, 1, 0)

    cg = conv_gflop(h, w)
    ceilings = {k: cg / min(v) for k, v in ceil_times.items() if v}
    ceiling = max(ceilings.values()) if ceilings else None
    by = {r.backend: r for r in rows}
    ratio = None
    if by.get("onnxruntime") and by.get("torch") and by["onnxruntime"].times and by["torch"].times:
        ratio = by["torch"].median_ms / by["onnxruntime"].median_ms
    ort_share = ort_best = None
    if by.get("onnxruntime") and by["onnxruntime"].gflops_per_s and ceiling:
        ort_share = by["onnxruntime"].gflops_per_s / ceiling
        ort_best = by["onnxruntime"].gflop / (by["onnxruntime"].min_ms / 1e3) / ceiling
    gpu = torch.cuda.get_device_name() if cuda else None
    return {
        "restorer": restorer.stem, "model": spec.name, "variant": restorer.variant, "scale": s,
        "input": [w, h], "output": [w * s, h * s],
        "weights": str(restorer.weights_path) if restorer.weights_path else None,
        "untrained": restorer.weights_path is None,
        "threads": threads, "runs": runs, "warmup": warmup,
        "per_call": "whole frame, batch 1, numpy in/out (no tiling)",
        "machine": {"cpu": cpu_name(), "cores": usable_cores(), "gpu": gpu, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": _version("onnxruntime"),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "ceiling": {"gflops_per_s": None if ceiling is None else round(ceiling, 2),
                    "by_backend": {k: round(v, 2) for k, v in ceilings.items()},
                    "op": f"3x3 conv {CEILING_CHANNELS}->{CEILING_CHANNELS}, fp32, input {w}x{h}, "
                          f"{cg:.2f} GFLOP, best of {n_ceiling}"},
        "gflop_per_frame": None if gflop is None else round(gflop, 6),
        "gflop_by_op": {k: round(v / 1e9, 6) for k, v in flops.by_op.items()},
        "gflop_unresolved_nodes": len(flops.unresolved),
        # the ceiling is a CPU figure: GPU rows get no share of it
        "backends": [r.to_dict(ceiling if r.device == "cpu" else None) for r in rows],
        "bicubic": [r.to_dict(None) for r in floors],
        "onnxruntime_vs_torch": None if ratio is None else round(ratio, 3),
        "onnxruntime_ceiling_share": None if ort_share is None else round(ort_share, 4),
        "onnxruntime_ceiling_share_best": None if ort_best is None else round(ort_best, 4),
        "bars": BARS if bars_apply({"model": spec.name, "variant": restorer.variant, "scale": s,
                                    "input": [w, h]}) else None,
    }


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------- the table

def _fmt(v, spec: str, dash: str = "–") -> str:
    return dash if v is None else format(v, spec)


def format_report(r: dict) -> str:
    w, h = r["input"]
    m = r["machine"]
    weights = ("UNTRAINED (random weights: speed only, no weights file)" if r["untrained"]
               else f"weights {os.path.basename(r['weights'])}")
    lines = [f"restore bench: {r['restorer']}  {w}x{h} -> {r['output'][0]}x{r['output'][1]}  {weights}",
             f"machine: {m['cpu']}, {m['cores']} usable cores, {r['threads']} threads"
             + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
             + f"; load average {m['load_average_before']} before, {m['load_average_after']} after"]
    if (m["load_average_before"] or 0) > 0.5 * m["cores"] or (m["load_average_after"] or 0) > m["cores"]:
        lines.append("  note: other processes were using the CPU during this run; figures are lower than on an "
                     "idle machine")
    c = r["ceiling"]
    by = ", ".join(f"{k} {v:.1f}" for k, v in c["by_backend"].items())
    lines.append(f"conv ceiling: {_fmt(c['gflops_per_s'], '.1f')} GFLOP/s  ({c['op']}; {by})")
    gbo = ", ".join(f"{k} {v:.2f}" for k, v in r["gflop_by_op"].items())
    lines.append(f"work: {_fmt(r['gflop_per_frame'], '.2f')} GFLOP per frame ({gbo}; counted from the ONNX graph"
                 + (f"; {r['gflop_unresolved_nodes']} nodes with unknown shapes" if r["gflop_unresolved_nodes"] else "")
                 + ")")
    lines.append(f"timing: {r['runs']} runs after {r['warmup']} warm-up, {r['per_call']}, round-robin")
    lines.append("")
    head = ["backend", "prec", "median ms", "min ms", "max ms", "frames/s", "GFLOP/frame", "GFLOP/s", "% ceiling"]
    table = []
    for b in r["backends"] + r["bicubic"]:
        if b["status"] != "ok":
            table.append([b["label"], b["precision"], f"{b['status']}: {b['reason']}"])
            continue
        table.append([b["label"], b["precision"], _fmt(b["median_ms"], ".1f"), _fmt(b["min_ms"], ".1f"),
                      _fmt(b["max_ms"], ".1f"), _fmt(b["fps"], ".2f"), _fmt(b["gflop_per_frame"], ".2f"),
                      _fmt(b["gflops_per_s"], ".1f"),
                      _fmt(None if b["ceiling_share"] is None else 100 * b["ceiling_share"], ".0f")])
    full = [row for row in table if len(row) == len(head)]
    widths = [max([len(head[i])] + [len(row[i]) for row in full]) for i in range(len(head))]
    widths[:2] = [max([len(head[i])] + [len(row[i]) for row in table]) for i in range(2)]

    def fmt_row(cells):
        if len(cells) == 3 and len(head) > 3:  # a skipped backend: its reason spans the number columns
            return f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]}"
        out = [f"{cells[0]:<{widths[0]}}", f"{cells[1]:<{widths[1]}}"]
        out += [f"{cell:>{wd}}" for cell, wd in zip(cells[2:], widths[2:])]
        return "  ".join(out)

    lines.append(fmt_row(head))
    lines.append("  ".join("-" * wd for wd in widths))
    lines += [fmt_row(row) for row in table]
    lines.append("")
    ratio, share = r["onnxruntime_vs_torch"], r["onnxruntime_ceiling_share"]
    bars = r.get("bars")  # only for the configuration the issue's bars are set for
    if ratio is not None:
        verdict = ""
        if bars:
            ok = "met" if ratio >= bars["onnxruntime_vs_torch"] else "NOT met"
            verdict = f"   [issue bar >= {bars['onnxruntime_vs_torch']}x: {ok}]"
        lines.append(f"onnxruntime vs torch eager (median): {ratio:.2f}x faster" + verdict)
    if share is not None:
        verdict = ""
        if bars:
            ok = "met" if share >= bars["onnxruntime_ceiling_share"] else "NOT met"
            verdict = f"   [issue bar >= {100 * bars['onnxruntime_ceiling_share']:.0f} %: {ok}]"
        best = r.get("onnxruntime_ceiling_share_best")
        lines.append(f"onnxruntime share of the conv ceiling (median run): {100 * share:.1f} %" + verdict
                     + ("" if best is None else f"   (best run: {100 * best:.1f} %)"))
    return "\n".join(lines)
