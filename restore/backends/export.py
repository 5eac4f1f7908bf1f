"""PyTorch -> ONNX export with dynamic batch / height / width, written atomically as ONE file.

Strategy: the dynamo (torch.export) exporter first, the legacy TorchScript tracer as fallback.
Every candidate is checked with onnx.checker and, when onnxruntime is installed, run once at a
size different from the example and compared with PyTorch: the tracer can silently bake
shape-derived Python ints into the graph, giving a model that only works at the example size.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

INPUT, OUTPUT = "input", "output"


@contextlib.contextmanager
def _quiet():
    """Swallow the exporters' warnings, logging and progress prints (the CLI must stay quiet)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("torch", "onnx", "onnxscript", "onnx_ir")]
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir", *names)]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_dynamo(model, x, path: Path, opset: int) -> None:
    dim = torch.export.Dim
    # Positional (tuple) spec so the forward argument may have any name. Example batch is 2:
    # torch.export specialises dimensions whose example size is 0 or 1.
    shapes = ({0: dim("batch"), 2: dim("height"), 3: dim("width")},)
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                      input_names=[INPUT], output_names=[OUTPUT], external_data=False, verbose=False,
                      report=False, optimize=True)


def _export_legacy(model, x, path: Path, opset: int) -> None:
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"}}
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                      input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=axes)


def _check_dynamic(proto) -> None:
    """Both exporters may quietly specialise a dimension (e.g. the model calls int() on a size)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    static = [i for i in (0, 2, 3) if not dims[i].dim_param]
    if len(dims) != 4 or static:
        raise RuntimeError(f"input dims {static} were exported as fixed sizes, not dynamic")


def _check_numerics(model, path: Path, example_hw: tuple[int, int]) -> None:
    """Run the graph at an odd size/batch unlike the example; raise if it disagrees with torch."""
    try:
        import onnxruntime as ort
    except ImportError:  # nothing to run it with; the structural check has to do
        return
    h, w = (max(9, s - 13 + 2 * i) for i, s in enumerate(example_hw))  # 64x64 -> 51x53
    x = torch.rand(1, getattr(model, "in_channels", 3), h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x).float().numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing probe is reported by the exception, not by ORT's log
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    # Loose on purpose: this catches graphs that generalise wrongly (O(1) errors), not float noise.
    tol = 1e-2 * max(1.0, float(np.abs(ref).max()))
    if out.shape != ref.shape or not float(np.abs(out - ref).max()) <= tol:
        err = float(np.abs(out - ref).max()) if out.shape == ref.shape else f"shape {out.shape} != {ref.shape}"
        raise RuntimeError(f"exported graph disagrees with torch at {h}x{w} (max abs diff {err})")


def _first_line(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # the dynamo errors carry ANSI colours
    return text.splitlines()[0][:200] if text else ""


def export_onnx(model: torch.nn.Module, path, *, opset: int = 18, example_hw: tuple[int, int] = (64, 64)) -> Path:
    """Export `model` to a single self-contained .onnx file at `path` (dynamic N, H, W); returns path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.rand(2, getattr(model, "in_channels", 3), *example_hw, generator=torch.Generator().manual_seed(0))
    errors = []
    exporters = [("dynamo", _export_dynamo), ("legacy", _export_legacy)]
    if getattr(model, "onnx_exporter", "dynamo") == "legacy":  # a model may know dynamo is slow for it
        exporters.reverse()
    for label, exporter in exporters:
        # Own scratch dir next to the target: swallows any sidecar .data files, and keeps the
        # final os.replace on the same filesystem (atomic).
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
        try:
            raw, final = scratch / "raw.onnx", scratch / "model.onnx"
            with _quiet():
                exporter(model, x, raw, opset)
                proto = onnx.load(str(raw))  # pulls in external data if the exporter wrote any
                onnx.save(proto, str(final), save_as_external_data=False)
                onnx.checker.check_model(str(final))
                _check_dynamic(proto)
                _check_numerics(model, final, example_hw)
            os.replace(final, path)
            return path
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all at the end
            errors.append(f"{label}: {type(e).__name__}: {_first_line(e)}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    raise RuntimeError(f"ONNX export of {type(model).__name__} failed ({'; '.join(errors)})")
