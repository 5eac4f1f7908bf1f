import os
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from restore.backends import make_engine
from restore.backends import export as export_mod
from restore.backends.cache import get_or_export_onnx, onnx_cache_path
from restore.backends.export import export_onnx
from restore.backends.onnxruntime_backend import OrtEngine
from restore.backends.torch_backend import TorchEngine


from helpers import TinySR  # noqa: E402  (shared with the other backend tests)


KEY = dict(model_name="tiny", variant="t", scale=2, weights_sha256="ab" * 32)
SIZES = [(1, 24, 40), (2, 33, 17)]


def torch_ref(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def rand(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    return TinySR().eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("exp") / "tiny.onnx")


def assert_dynamic_and_close(path, model):
    eng = OrtEngine(path, threads=1)
    for n, h, w in SIZES:
        x = rand(n, h, w)
        out = eng(x)
        assert out.shape == (n, 3, 2 * h, 2 * w) and out.dtype == np.float32
        assert np.abs(out - torch_ref(model, x)).max() < 1e-4


def test_export_is_dynamic_and_matches_torch(onnx_file, model):
    assert_dynamic_and_close(onnx_file, model)
    proto = onnx.load(str(onnx_file))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3 and all(dims[i].dim_param for i in (0, 2, 3))


def test_export_is_one_self_contained_file(onnx_file):
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["tiny.onnx"]  # no .data, no scratch
    onnx.checker.check_model(str(onnx_file))
    proto = onnx.load(str(onnx_file), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_export_is_quiet(model, tmp_path, capfd):
    export_onnx(model, tmp_path / "q.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_legacy_fallback_when_dynamo_fails(model, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("dynamo says no")

    monkeypatch.setattr(export_mod, "_export_dynamo", broken)
    path = export_onnx(model, tmp_path / "legacy.onnx")
    assert_dynamic_and_close(path, model)


class BakesWidth(nn.Module):
    """int() of a traced size becomes a constant under the legacy tracer -> only works at 64 wide."""
    scale = 1

    def forward(self, x):
        return x * (1 + torch.arange(int(x.shape[-1]), dtype=x.dtype) / 100)


def test_graph_that_does_not_generalise_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_export_dynamo", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(RuntimeError, match="ONNX export of BakesWidth failed"):
        export_onnx(BakesWidth(), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_cache_reuses_and_repairs(model, tmp_path):
    p1 = get_or_export_onnx(model, root=tmp_path, **KEY)
    assert p1 == onnx_cache_path(KEY["model_name"], KEY["variant"], 2, KEY["weights_sha256"], 18, root=tmp_path)
    assert p1.name.startswith("tiny-t-x2-") and len(p1.stem.rsplit("-", 1)[1]) == 12
    mtime = p1.stat().st_mtime_ns
    assert get_or_export_onnx(model, root=tmp_path, **KEY) == p1
    assert p1.stat().st_mtime_ns == mtime  # reused, not re-exported

    p1.write_bytes(b"\x00garbage, not a protobuf\xff" * 10)
    p2 = get_or_export_onnx(model, root=tmp_path, **KEY)
    assert p2 == p1
    onnx.checker.check_model(str(p2))
    assert_dynamic_and_close(p2, model)


def test_cache_path_is_deterministic_and_keyed(tmp_path, monkeypatch):
    a = onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18, root=tmp_path)
    assert a == onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18, root=tmp_path)
    others = {onnx_cache_path("lipt", "tiny", 2, "11" * 32, 18, root=tmp_path),
              onnx_cache_path("lipt", "tiny", 2, "00" * 32, 17, root=tmp_path),
              onnx_cache_path("lipt", "tiny", 4, "00" * 32, 18, root=tmp_path),
              onnx_cache_path("lipt", "small", 2, "00" * 32, 18, root=tmp_path)}
    assert a not in others and len(others) == 4
    monkeypatch.setenv("RESTORE_ENGINES", str(tmp_path / "env"))
    assert onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18).parent == tmp_path / "env"
    monkeypatch.delenv("RESTORE_ENGINES")
    from restore.backends.cache import PROJECT_ENGINES

    # not relative to the working folder: the project's own engines/ cache
    assert onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18).parent == PROJECT_ENGINES


def test_cache_key_follows_the_model_code(tmp_path, monkeypatch):
    # Same weights, rewritten model (e.g. a faster window layout): the old graph must not be reused.
    from restore.backends import cache

    before = onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18, root=tmp_path)
    monkeypatch.setattr(cache, "graph_code_digest", lambda: "another model source")
    assert onnx_cache_path("lipt", "tiny", 2, "00" * 32, 18, root=tmp_path) != before
    monkeypatch.undo()
    assert cache.graph_code_digest() == cache.graph_code_digest() and len(cache.graph_code_digest()) == 64


def test_torch_engine_shape():
    eng = TorchEngine(TinySR().eval(), threads=1)
    assert eng.name == "torch"
    x = rand(2, 21, 30)
    out = eng(x)
    assert out.shape == (2, 3, 42, 60) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.abs(out - torch_ref(TinySR().eval(), x)).max() < 1e-5


def test_make_engine(model, tmp_path, monkeypatch):
    monkeypatch.delenv("RESTORE_ENGINES", raising=False)
    eng = make_engine(model, "auto", name="tiny", variant="t", scale=2, weights_sha256="cd" * 32,
                      threads=1, engines_dir=tmp_path)
    assert eng.name == "onnxruntime" and len(list(tmp_path.glob("*.onnx"))) == 1
    x = rand(1, 24, 40)
    assert np.abs(eng(x) - torch_ref(model, x)).max() < 1e-4
    assert make_engine(model, "torch", name="tiny", variant="t", scale=2, weights_sha256="cd" * 32).name == "torch"


def test_make_engine_auto_falls_back_to_torch_when_export_fails(tmp_path):
    with pytest.warns(RuntimeWarning, match="using torch"):
        eng = make_engine(BakesWidth(), "auto", name="bad", variant="t", scale=1, weights_sha256="0" * 64,
                          engines_dir=tmp_path)
    assert eng.name == "torch"


def test_make_engine_unknown_backend():
    with pytest.raises(RuntimeError) as info:
        make_engine(TinySR(), "nonsense", name="tiny", variant="t", scale=2, weights_sha256="0" * 64)
    msg = str(info.value)
    assert "nonsense" in msg and "\n" not in msg and "onnxruntime" in msg


def test_tiled_ort_matches_untiled_torch(onnx_file, model):
    from restore.pipeline.tiling import run_tiled

    img = rand(1, 70, 53)[0]
    out = run_tiled(OrtEngine(onnx_file, threads=1), img, scale=2, tile=32, overlap=16, batch=4)
    ref = torch_ref(model, img[None])[0]
    # Pad-to-8 model: only the last r=2 input rows/cols (4 output px) may differ at the border.
    assert np.abs(out - ref)[:, :-4, :-4].max() < 1e-4
