"""`restore bench` and the ONNX FLOP counter behind its GFLOP figures (small graphs, tiny runs)."""
import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from restore import registry
from restore.backends.onnx_flops import count_flops
from restore.bench import BARS, bars_apply, format_report, parse_size, run_bench


# ------------------------------------------------------------------------------ FLOP counter

def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _w(name, *shape):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def test_counts_conv_convtranspose_matmul_gemm_by_hand():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),  # 8->16, 3x3
        helper.make_node("Conv", ["a", "w2"], ["b"], group=4, strides=[2, 2], kernel_shape=[1, 1]),  # grouped, /2
        helper.make_node("ConvTranspose", ["b", "w3"], ["c"], strides=[2, 2]),  # 16->4, 2x2, x2
        helper.make_node("Reshape", ["c", "s"], ["d"]),  # (n*4, h, w)
        helper.make_node("MatMul", ["d", "m"], ["e"]),  # (n*4, h, w) @ (w, 5)
        helper.make_node("Flatten", ["e"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    n, h, w = 2, 12, 10
    inits = [_w("w1", 16, 8, 3, 3), _w("w2", 16, 4, 1, 1), _w("w3", 16, 4, 2, 2),
             numpy_helper.from_array(np.array([-1, h, w], np.int64), "s"), _w("m", w, 5), _w("g", 7, h * 5)]
    m = _model(nodes, [x], [y], inits)
    r = count_flops(m, (n, 8, h, w))
    conv1 = 2 * n * 16 * h * w * 8 * 9
    conv2 = 2 * n * 16 * (h // 2) * (w // 2) * 4
    convt = 2 * n * 16 * (h // 2) * (w // 2) * 4 * 4  # each input element: Cout/group * k*k MACs
    matmul = 2 * (n * 4) * h * w * 5
    gemm = 2 * (n * 4) * (h * 5) * 7
    assert not r.unresolved
    assert r.by_op["Conv"] == conv1 + conv2
    assert r.by_op["ConvTranspose"] == convt and r.by_op["MatMul"] == matmul and r.by_op["Gemm"] == gemm
    assert r.total == conv1 + conv2 + convt + matmul + gemm
    assert r.nodes == {"Conv": 2, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}


class PadToEight(nn.Module):
    """Run-time shape arithmetic (pad to a multiple of 8) in front of the convs, like LIPT."""
    scale = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.size_multiple = 8

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8), mode="reflect")
        y = F.pixel_shuffle(self.c2(torch.relu(self.c1(x))), 2)
        return y[:, :, : 2 * h, : 2 * w]

    def reparameterize(self):
        return self


def test_counts_through_runtime_shape_arithmetic():
    from restore.backends.cache import get_or_export_onnx

    # the same cached export the bench tests below use (the dynamo export is the slow part)
    path = get_or_export_onnx(PadToEight().eval(), model_name="benchtiny", variant="t", scale=2,
                              weights_sha256="untrained")
    for h, w in [(37, 50), (64, 64)]:
        r = count_flops(path, (1, 3, h, w))
        hp, wp = math.ceil(h / 8) * 8, math.ceil(w / 8) * 8
        assert not r.unresolved
        assert r.total == 2 * hp * wp * 9 * (3 * 8 + 8 * 12)


def test_counts_a_torchscript_export_whose_constants_are_nodes(tmp_path):
    # The legacy exporter (IPT-V2 uses it) writes constants as Constant nodes, not initializers:
    # the pad arithmetic must fold through them too.
    from restore.backends.export import _export_legacy

    path = tmp_path / "legacy.onnx"
    _export_legacy(PadToEight().eval(), torch.rand(1, 3, 16, 16), path, 18)
    import onnx

    assert any(n.op_type == "Constant" for n in onnx.load(str(path)).graph.node)
    r = count_flops(path, (1, 3, 37, 50))
    assert not r.unresolved and r.total == 2 * 40 * 56 * 9 * (3 * 8 + 8 * 12)


# ------------------------------------------------------------------------------ bench

@pytest.fixture
def tiny_restorer(monkeypatch):
    spec = registry.RestorerSpec(name="benchtiny", task="sr", summary="test net", paper="-",
                                 build=lambda variant, scale: PadToEight(), variants=("t",), default_variant="t",
                                 scales=(2,), default_scale=2, size_multiple=8, min_size=8, tile=64, overlap=16)
    registry._load_all()
    monkeypatch.setitem(registry._REGISTRY, "benchtiny", spec)
    return spec


def test_parse_size():
    assert parse_size("640x360") == (640, 360) and parse_size("64X48") == (64, 48)
    for bad in ("640", "ax3", "0x10", "-2x5"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT|positive"):
            parse_size(bad)


def test_bench_report_and_table(tiny_restorer):
    r = run_bench("benchtiny", size=(48, 32), runs=2, warmup=1, threads=1, ceiling_runs=1)
    json.dumps(r)  # machine-readable as is
    assert r["untrained"] and r["input"] == [48, 32] and r["output"] == [96, 64]
    assert r["gflop_per_frame"] == pytest.approx(2 * 32 * 48 * 9 * (3 * 8 + 8 * 12) / 1e9, rel=1e-3)
    rows = {b["backend"]: b for b in r["backends"]}
    for name in ("onnxruntime", "torch"):
        b = rows[name]
        assert b["status"] == "ok" and b["runs"] == 2
        assert b["min_ms"] <= b["median_ms"] <= b["max_ms"]
        assert b["gflops_per_s"] == pytest.approx(b["gflop_per_frame"] / (b["median_ms"] / 1e3), rel=2e-2)
        assert b["ceiling_share"] == pytest.approx(b["gflops_per_s"] / r["ceiling"]["gflops_per_s"], rel=2e-2)
    if not torch.cuda.is_available():
        assert rows["tensorrt"]["status"] == "skipped" and "CUDA" in rows["tensorrt"]["reason"]
        assert "torch-cuda" not in rows
    assert r["ceiling"]["gflops_per_s"] > 0 and set(r["ceiling"]["by_backend"]) == {"onnxruntime", "torch"}
    assert r["onnxruntime_vs_torch"] == pytest.approx(rows["torch"]["median_ms"] / rows["onnxruntime"]["median_ms"],
                                                      rel=2e-2)  # the JSON rounds ms to 3 decimals
    assert [b["backend"] for b in r["bicubic"]] == ["bicubic-cv2", "bicubic-matlab"]

    text = format_report(r)
    assert "UNTRAINED" in text and "conv ceiling" in text and "onnxruntime vs torch eager" in text
    # the bars are for LIPT-Tiny x2 at 640x360: no verdict for this net and size ...
    assert r["bars"] is None and "issue bar" not in text
    # ... and a verdict when the report is for that configuration
    lipt_report = {**r, "bars": BARS, "onnxruntime_vs_torch": 1.2, "onnxruntime_ceiling_share": 0.7}
    assert bars_apply({"model": "lipt", "variant": "tiny", "scale": 2, "input": [640, 360]})
    verdicts = [line for line in format_report(lipt_report).splitlines() if "issue bar" in line]
    assert "NOT met" in verdicts[0] and "NOT met" not in verdicts[1]
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    table = [line for line in lines[head:] if line and "skipped" not in line][:4]
    assert len({len(line) for line in table}) == 1  # header, rule and rows line up (numbers right-aligned)


def test_bench_cli_json(tiny_restorer, capsys):
    from restore.cli import main

    rc = main(["bench", "--model", "benchtiny", "--size", "40x24", "--backend", "onnxruntime", "--runs", "1",
               "--warmup", "0", "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    r = json.loads(out)
    assert [b["backend"] for b in r["backends"]] == ["onnxruntime"] and r["backends"][0]["status"] == "ok"
    assert r["onnxruntime_vs_torch"] is None


def test_bench_cli_bad_size_is_one_line(tiny_restorer, capsys):
    from restore.cli import main

    assert main(["bench", "--model", "benchtiny", "--size", "big"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --size") and err.count("\n") == 1
