"""TensorRT backend: everything that can be checked without a GPU, plus real-GPU tests that skip here.

Without TensorRT/CUDA: cache keys, profile choice, checksummed files, the corrupted-plan and
corrupted-timing-cache paths (builder mocked), the fallback decisions, the fp16 guard, the
in-engine tiling to the profile, the build subprocess plumbing, fp16 ONNX conversion, and the
tiler's out-of-memory back-off (which serves every backend).
"""
import json
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from restore.backends import make_engine
from restore.backends import tensorrt_backend as tb
from restore.backends import trt_cache as tc
from restore.pipeline.tiling import OutOfMemory, is_out_of_memory, run_tiled


from helpers import TinySR  # noqa: E402  (shared with the other backend tests)


def rand(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


PROFILE = tc.choose_profile(64, size_multiple=8, min_size=8, max_batch=4)


def spec(**over):
    base = dict(onnx_sha256="a" * 64, precision="fp16", profile=PROFILE, trt_version="11.4.0.106",
                gpu_name="NVIDIA H100", compute_capability="9.0")
    return tc.BuildSpec(**{**base, **over})


# ------------------------------------------------------------------------------ keys, profiles

def test_cache_key_changes_with_every_input():
    base = spec()
    variants = [spec(onnx_sha256="b" * 64), spec(precision="fp32"),
                spec(profile=tc.choose_profile(128, 8, 8, 4)), spec(profile=tc.choose_profile(64, 8, 8, 2)),
                spec(profile=tc.choose_profile(64, 16, 16, 4)), spec(trt_version="10.13.0"),
                spec(gpu_name="NVIDIA RTX 4090"), spec(compute_capability="8.9"), spec(workspace_mb=1024),
                spec(opt_level=5), spec(flags=("SPARSE_WEIGHTS",))]
    keys = {v.key() for v in variants}
    assert base.key() == spec().key()  # deterministic
    assert base.key() not in keys and len(keys) == len(variants)
    paths = {tc.plan_path("lipt-tiny-x2", v, root="/e") for v in [base, *variants]}
    assert len(paths) == len(variants) + 1
    p = tc.plan_path("lipt-tiny-x2", base, root="/e")
    assert p.name.startswith("lipt-tiny-x2-fp16-") and p.suffix == ".plan"


def test_build_spec_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        spec(precision="int8")


@pytest.mark.parametrize("tile,m,min_size,batch,lo,hi", [
    (512, 8, 8, 4, 8, 512), (500, 8, 8, 4, 8, 504), (256, 1, 1, 1, 1, 256), (64, 8, 16, 2, 16, 64),
    (4, 8, 8, 4, 8, 8)])
def test_profile_from_tile_and_size_multiple(tile, m, min_size, batch, lo, hi):
    p = tc.choose_profile(tile, m, min_size, batch)
    assert p.min == (1, 3, lo, lo)
    assert p.opt == p.max == (batch, 3, hi, hi)
    assert p.fits((1, 3, lo, hi)) and p.fits((batch, 3, hi, lo))
    assert not p.fits((batch + 1, 3, hi, hi)) and not p.fits((1, 3, hi + 1, hi))
    assert tc.Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_profile_rejects_bad_tile():
    with pytest.raises(ValueError):
        tc.choose_profile(0, 8)


# ------------------------------------------------------------------------------ checksummed files

def test_checked_files_detect_damage(tmp_path):
    f = tmp_path / "x.plan"
    assert tc.check_file(f) == "missing"
    tc.write_checked(f, b"engine bytes" * 100, {"note": 1})
    assert tc.check_file(f) == "ok" and tc.read_checked(f) == b"engine bytes" * 100
    assert tc.read_sidecar(f)["note"] == 1

    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF  # one flipped bit, same size
    f.write_bytes(bytes(data))
    assert tc.check_file(f) == "damaged" and tc.read_checked(f) is None

    tc.write_checked(f, b"abc")
    f.write_bytes(b"ab")  # truncated
    assert tc.check_file(f) == "damaged"

    tc.write_checked(f, b"abc")
    tc.sidecar(f).write_text("{not json")
    assert tc.check_file(f) == "damaged"
    tc.sidecar(f).unlink()
    assert tc.check_file(f) == "damaged"  # a plan without its sidecar is never trusted


def test_damaged_timing_cache_is_dropped_and_rebuilt_empty(tmp_path):
    t = tc.timing_cache_path("11.4.0.106", "NVIDIA H100-9.0", root=tmp_path)
    assert tc.load_timing_cache(t) == b""  # none yet: start empty
    tc.write_checked(t, b"timings")
    assert tc.load_timing_cache(t) == b"timings"
    t.write_bytes(b"tim\x00ngs")
    assert tc.load_timing_cache(t) == b""  # damaged: never handed to TensorRT
    assert not t.exists() and not tc.sidecar(t).exists()


def test_resolve_plan_decisions(tmp_path):
    plan = tmp_path / "m.plan"
    assert tb.resolve_plan(plan) == "build"
    tc.write_checked(plan, b"good")
    assert tb.resolve_plan(plan) == "load"
    plan.write_bytes(b"evil")
    assert tb.resolve_plan(plan) == "build"
    assert not plan.exists()  # the damaged plan is gone before the rebuild


def test_fp32_only_marking(tmp_path):
    sha = "c" * 64
    assert tc.choose_precision(None, "m", sha, tmp_path) == "fp16"
    assert tc.choose_precision("fp32", "m", sha, tmp_path) == "fp32"
    tc.mark_fp32_only("m", sha, "NaN tiles", tmp_path)
    assert tc.is_fp32_only("m", sha, tmp_path)
    assert tc.choose_precision(None, "m", sha, tmp_path) == "fp32"
    assert tc.choose_precision("fp16", "m", sha, tmp_path) == "fp32"
    assert tc.choose_precision(None, "m", "d" * 64, tmp_path) == "fp16"  # another graph is unaffected
    tc.notes_path("m", sha, tmp_path).write_text("garbage")
    assert tc.choose_precision(None, "m", sha, tmp_path) == "fp16"  # unreadable notes: default
    with pytest.raises(ValueError):
        tc.choose_precision("int8", "m", sha, tmp_path)


# ------------------------------------------------------------------------------ fp16 guard

def test_fp16_guard_decision():
    x = rand(5, 8, 8)
    y = np.repeat(np.repeat(x, 2, 2), 2, 3).copy()
    x[3] = 0.0  # a black input tile
    y[0, 0, 1, 1] = np.nan
    y[1, 2, 0, 0] = np.inf
    y[2] = -3.0  # black (after clipping) from a non-black input: an fp16 overflow symptom
    y[3] = 0.0  # black from black: fine
    assert tb.fp16_bad_tiles(x, y).tolist() == [True, True, True, False, False]
    y[4, 0, 0, 0] = -np.inf
    assert tb.fp16_bad_tiles(x, y)[4]


def _bare_engine(profile=PROFILE, scale=2, precision="fp16", size_multiple=8, overlap=16, **attrs):
    """A TrtEngine without TensorRT: `_execute` is replaced by a CPU stand-in."""
    eng = object.__new__(tb.TrtEngine)
    eng.profile, eng.scale, eng.precision, eng.size_multiple = profile, scale, precision, size_multiple
    eng.overlap, eng.fp16_redone, eng._reported = overlap, 0, False
    eng.fp32_redo, eng.on_fp16_failure = None, None
    eng.calls = []
    for k, v in attrs.items():
        setattr(eng, k, v)
    return eng


def test_fp16_guard_redoes_bad_tiles_in_fp32_and_marks_once():
    net = TinySR().eval()
    ref = lambda x: net(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    marks = []

    def broken_fp16(x):
        y = ref(x)
        y[x[:, 0, 0, 0] > 0.5] = np.nan  # some tiles "overflow"
        return y

    eng = _bare_engine(fp32_redo=ref, on_fp16_failure=marks.append)
    eng._execute = broken_fp16
    x = rand(4, 16, 24, seed=3)
    x[:, 0, 0, 0] = [0.9, 0.1, 0.7, 0.2]
    with torch.no_grad():
        out = eng(x)
        assert np.isfinite(out).all() and np.abs(out - ref(x)).max() < 1e-6
        eng(x)
    assert eng.fp16_redone == 4 and len(marks) == 1 and "2 tile(s)" in marks[0]

    fp32 = _bare_engine(precision="fp32")
    fp32._execute = broken_fp16
    with torch.no_grad():
        assert np.isnan(fp32(x)).any()  # the guard is for fp16 only


def test_trt_engine_tiles_and_pads_inputs_outside_the_profile():
    net = TinySR().eval()
    seen = []

    def execute(x):
        assert PROFILE.fits(x.shape), x.shape  # TensorRT would reject anything else
        seen.append(x.shape)
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    eng = _bare_engine(precision="fp32")
    eng._execute = execute
    with torch.no_grad():
        big = rand(1, 150, 100, seed=1)  # larger than the 64x64 profile: tiled inside the engine
        out = eng(big)
        ref = net(torch.from_numpy(big)).numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref)[..., :-8, :-8].max() < 1e-4  # seams exact; the reflect-padded border may differ
        small = rand(6, 5, 7, seed=2)  # below the profile minimum (8) and a batch above its max (4)
        out = eng(small)
        assert out.shape == (6, 3, 10, 14) and np.isfinite(out).all()
    assert all(s[0] <= 4 for s in seen)


# ------------------------------------------------------------------------------ availability / fallback

def test_status_here_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(tb, "_cuda_available", lambda: False)
    name, reason = tb.tensorrt_status()
    assert name is None and "CUDA" in reason and "\n" not in reason
    monkeypatch.setattr(tb, "_cuda_available", lambda: True)
    monkeypatch.setattr(tb, "_find_module", lambda n: n == "tensorrt_lean")
    assert tb.tensorrt_status(need_builder=True)[1].startswith("building engines needs the full `tensorrt`")


def test_make_engine_tensorrt_is_one_clear_line_without_trt_or_cuda(monkeypatch):
    if torch.cuda.is_available() and tb.tensorrt_status()[0]:
        pytest.skip("TensorRT and CUDA are present here")
    with pytest.raises(RuntimeError) as info:
        make_engine(TinySR(), "tensorrt", name="tiny", variant="t", scale=2, weights_sha256="0" * 64)
    msg = str(info.value)
    assert "\n" not in msg and "tensorrt" in msg.lower() and ("CUDA" in msg or "installed" in msg)


def test_auto_never_picks_tensorrt_without_cuda(monkeypatch, tmp_path):
    import restore.backends as backends

    monkeypatch.setattr(tb, "_cuda_available", lambda: False)
    monkeypatch.setattr(tb, "_find_module", lambda n: True)  # pretend TensorRT is installed
    called = []
    monkeypatch.setattr(tb, "make_trt_engine", lambda *a, **k: called.append(1))
    monkeypatch.setattr(backends, "_make_ort", lambda *a: types.SimpleNamespace(name="onnxruntime"))  # no export
    eng = make_engine(TinySR().eval(), "auto", name="tiny", variant="t", scale=2, weights_sha256="e" * 64,
                      threads=1, engines_dir=tmp_path)
    assert eng.name == "onnxruntime" and not called


def test_auto_without_tensorrt_on_cuda_uses_torch_cuda(monkeypatch, tmp_path):
    import restore.backends as backends

    monkeypatch.setattr(tb, "_cuda_available", lambda: True)
    monkeypatch.setattr(tb, "tensorrt_status", lambda need_builder=False: (None, "TensorRT is not installed"))
    made = []
    monkeypatch.setattr(backends, "_make_torch", lambda model, device, threads, precision:
                        made.append(device) or types.SimpleNamespace(name="torch"))
    eng = make_engine(TinySR().eval(), "auto", name="tiny", variant="t", scale=2, weights_sha256="e" * 64,
                      engines_dir=tmp_path)
    assert eng.name == "torch" and made == ["cuda"]


# ------------------------------------------------------------------------------ build/load with a mocked builder

class FakeBuild:
    def __init__(self, plan, rc=0, polls_until_done=0, log=None):
        self.plan, self.rc, self.left = plan, rc, polls_until_done
        self.error = None if rc == 0 else "parse failed"
        self.log = log or plan.with_suffix(".build.log")
        if rc == 0:
            tc.write_checked(plan, b"PLAN:" + plan.name.encode())
        else:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.log.write_text("kept log")

    def poll(self):
        if self.left > 0:
            self.left -= 1
            return None
        return self.rc

    def wait(self, timeout=None):
        return self.rc


class FakeTrtEngine:
    name = "tensorrt"
    refuse = set()

    def __init__(self, plan, **kw):
        if plan in self.refuse:
            raise tb.EngineLoadError("cannot deserialise")
        self.plan, self.kw, self.precision = plan, kw, kw["precision"]

    def __call__(self, batch):
        return np.zeros((batch.shape[0], 3, batch.shape[2] * 2, batch.shape[3] * 2), np.float32)


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """TensorRT 'present' with a mocked builder and runtime; returns the list of builds started."""
    module = types.SimpleNamespace(__name__="tensorrt", __version__="11.4.0.106")
    monkeypatch.setattr(tb, "require_tensorrt", lambda need_builder=False: module)
    monkeypatch.setattr(tb, "gpu_identity", lambda: ("Fake GPU", "9.0"))
    monkeypatch.setattr(tb, "TrtEngine", FakeTrtEngine)
    FakeTrtEngine.refuse = set()
    builds = []

    def start_build(onnx_path, plan, spec, timing, progress=True):
        builds.append({"plan": plan, "spec": spec, "timing": timing})
        return FakeBuild(plan, **fake_trt_options)

    fake_trt_options = {}
    monkeypatch.setattr(tb, "start_build", start_build)
    onnx_file = tmp_path / "g.onnx"
    onnx_file.write_bytes(b"pretend graph")
    ns = types.SimpleNamespace(builds=builds, options=fake_trt_options, onnx=onnx_file, root=tmp_path / "engines",
                               module=module)
    return ns


def _make(fake, **kw):
    args = dict(stem="tiny-t-x2", scale=2, tile=64, size_multiple=8, min_size=8, engines_dir=fake.root)
    return tb.make_trt_engine(fake.onnx, **{**args, **kw})


def test_build_once_then_load_from_cache(fake_trt):
    eng = _make(fake_trt)
    assert isinstance(eng, FakeTrtEngine) and len(fake_trt.builds) == 1
    b = fake_trt.builds[0]
    assert b["spec"].precision == "fp16" and b["spec"].profile == PROFILE
    assert b["spec"].onnx_sha256 == tc.sha256_file(fake_trt.onnx) and b["spec"].gpu_name == "Fake GPU"
    assert b["timing"].name.startswith("timing-11.4.0.106-Fake_GPU")
    assert eng.plan == b"PLAN:" + b["plan"].name.encode()
    again = _make(fake_trt)
    assert len(fake_trt.builds) == 1 and again.plan == eng.plan  # served from the cache


def test_new_onnx_content_gives_a_new_plan(fake_trt):
    _make(fake_trt)
    fake_trt.onnx.write_bytes(b"retrained graph")
    _make(fake_trt)
    assert len(fake_trt.builds) == 2 and fake_trt.builds[0]["plan"] != fake_trt.builds[1]["plan"]


def test_corrupted_plan_is_rebuilt(fake_trt):
    _make(fake_trt)
    plan = fake_trt.builds[0]["plan"]
    plan.write_bytes(b"PLAN:damaged!!" + b"\x00" * 30)
    eng = _make(fake_trt)
    assert len(fake_trt.builds) == 2 and eng.plan == b"PLAN:" + plan.name.encode()
    tc.sidecar(plan).unlink()  # sidecar lost: rebuilt too
    _make(fake_trt)
    assert len(fake_trt.builds) == 3


def test_plan_tensorrt_refuses_is_rebuilt(fake_trt):
    eng = _make(fake_trt)
    FakeTrtEngine.refuse = {eng.plan}  # checksum fine, but e.g. built by another TensorRT
    calls = []
    orig = FakeTrtEngine.__init__

    def init(self, plan, **kw):
        calls.append(plan)
        if len(calls) > 1:
            FakeTrtEngine.refuse = set()
        orig(self, plan, **kw)

    FakeTrtEngine.__init__ = init
    try:
        _make(fake_trt)
    finally:
        FakeTrtEngine.__init__ = orig
    assert len(fake_trt.builds) == 2


def test_blocking_build_failure_is_one_error_naming_the_log(fake_trt):
    fake_trt.options.update(rc=1)
    with pytest.raises(RuntimeError, match=r"build failed: parse failed \(log: .*build.log\)"):
        _make(fake_trt)


class _Named:
    def __init__(self, name, fn):
        self.name, self._fn = name, fn

    def __call__(self, batch):
        return self._fn(batch)


def test_serves_on_fallback_while_building_then_switches(fake_trt):
    fake_trt.options.update(polls_until_done=2)
    fallback_calls = []

    def fb(batch):
        fallback_calls.append(batch.shape)
        return np.ones((batch.shape[0], 3, batch.shape[2] * 2, batch.shape[3] * 2), np.float32)

    eng = _make(fake_trt, fallback=_Named("onnxruntime", fb))
    assert isinstance(eng, tb.SwitchingEngine) and eng.name == "onnxruntime"
    x = rand(1, 8, 8)
    assert eng(x).max() == 1 and eng(x).max() == 1  # still building: fallback
    assert eng(x).max() == 0 and eng.name == "tensorrt" and eng.state == "ready"
    assert len(fallback_calls) == 2
    assert eng.engine.kw["fp32_redo"] is eng.fallback  # the fp16 guard redoes tiles on the fp32 fallback


def test_failed_background_build_stays_on_fallback_with_a_warning(fake_trt):
    fake_trt.options.update(rc=1)
    eng = _make(fake_trt, fallback=_Named("torch", lambda b: np.ones((1, 3, 16, 16), np.float32)))
    with pytest.warns(RuntimeWarning, match="staying on torch.*log:"):
        assert eng.wait() == "failed"
    assert eng(rand(1, 8, 8)).max() == 1 and eng.name == "torch"


def test_lean_runtime_cannot_build(fake_trt):
    fake_trt.module.__name__ = "tensorrt_lean"
    with pytest.raises(tb.TensorRTUnavailable, match="full `tensorrt` package"):
        _make(fake_trt)
    # ... but loads a plan that is already there
    fake_trt.module.__name__ = "tensorrt"
    _make(fake_trt)
    fake_trt.module.__name__ = "tensorrt_lean"
    assert isinstance(_make(fake_trt), FakeTrtEngine) and len(fake_trt.builds) == 1


def test_fp32_only_graph_builds_fp32(fake_trt):
    sha = tc.sha256_file(fake_trt.onnx)
    tc.mark_fp32_only("tiny-t-x2", sha, "test", fake_trt.root)
    eng = _make(fake_trt)
    assert eng.precision == "fp32" and fake_trt.builds[-1]["spec"].precision == "fp32"


def test_fp16_failure_marks_the_graph(fake_trt):
    eng = _make(fake_trt)
    with pytest.warns(RuntimeWarning, match="fp16"):
        eng.kw["on_fp16_failure"]("NaN tiles")
    assert tc.is_fp32_only("tiny-t-x2", tc.sha256_file(fake_trt.onnx), fake_trt.root)


# ------------------------------------------------------------------------------ build subprocess plumbing

def test_build_progress_fraction_and_label():
    p = tb.BuildProgress()
    assert p.fraction == 0.0
    p.feed({"event": "phase_start", "phase": "Building engine", "parent": None, "steps": 4})
    p.feed({"event": "step", "phase": "Building engine", "step": 0})
    assert p.fraction == pytest.approx(0.25)
    p.feed({"event": "phase_start", "phase": "Tactics", "parent": "Building engine", "steps": 10})
    for i in range(5):
        p.feed({"event": "step", "phase": "Tactics", "step": i})
    assert p.fraction == pytest.approx((1 + 0.5) / 4) and p.label == "Tactics"
    p.feed({"event": "phase_finish", "phase": "Tactics"})
    p.feed({"event": "phase_finish", "phase": "Building engine"})
    assert p.fraction == 1.0
    p.feed({"event": "step", "phase": "unknown", "step": 3})  # tolerated


def test_build_process_keeps_the_log_only_on_failure(tmp_path):
    events = [{"event": "phase_start", "phase": "P", "parent": None, "steps": 2},
              {"event": "step", "phase": "P", "step": 1}]
    script = ("import json,sys\n"
              f"for e in {events!r}: print(json.dumps(e), flush=True)\n"
              "print('TensorRT says something', file=sys.stderr)\n"
              "print(json.dumps({'event': 'error', 'message': 'boom'}), flush=True)\n"
              "sys.exit(int(sys.argv[1]))\n")
    bad = tb.BuildProcess([sys.executable, "-c", script, "1"], tmp_path / "bad.log", progress=False)
    assert bad.wait(timeout=30) == 1
    assert bad.error == "boom" and "TensorRT says something" in (tmp_path / "bad.log").read_text()
    assert bad.progress.fraction == 1.0
    good = tb.BuildProcess([sys.executable, "-c", script, "0"], tmp_path / "good.log", progress=False)
    assert good.wait(timeout=30) == 0 and not (tmp_path / "good.log").exists()


def test_builder_without_tensorrt_reports_one_error_event(tmp_path, capsys):
    if tb._find_module("tensorrt"):
        pytest.skip("TensorRT is installed here")
    from restore.backends import trt_build

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec().to_dict()))
    rc = trt_build.main(["--onnx", str(tmp_path / "g.onnx"), "--plan", str(tmp_path / "p.plan"),
                         "--spec", str(spec_file)])
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and events[-1]["event"] == "error" and "tensorrt" in events[-1]["message"].lower()
    assert "Traceback" in err  # the traceback goes to the (kept) log
    assert not (tmp_path / "p.plan").exists()


# ------------------------------------------------------------------------------ fp16 ONNX for strongly typed networks

def test_fp16_onnx_conversion_keeps_float32_io(tmp_path):
    import onnx
    import onnxruntime as ort

    from restore.backends.export import export_onnx
    from restore.backends.onnx_fp16 import convert_file

    net = TinySR().eval()
    src = export_onnx(net, tmp_path / "g.onnx")
    dst = tmp_path / "g16.onnx"
    convert_file(src, dst)
    m = onnx.load(str(dst))
    onnx.checker.check_model(m)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = [t for t in m.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)
    x = rand(2, 19, 26)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    y16 = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert y16.dtype == np.float32 and y16.shape == ref.shape
    assert np.abs(y16 - ref).max() < 2e-2  # fp16 rounding, not a wrong graph


# ------------------------------------------------------------------------------ out-of-memory back-off (any backend)

class OomAbove:
    """A fake engine: x2 nearest upscale, but 'out of memory' for tiles larger than `limit` px
    (or more than `max_batch` tiles per call)."""

    def __init__(self, limit, max_batch=99, error=None):
        self.limit, self.max_batch, self.calls, self.released = limit, max_batch, [], 0
        self.error = error or (lambda: OutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB"))

    def __call__(self, batch):
        self.calls.append(batch.shape)
        if max(batch.shape[2:]) > self.limit or batch.shape[0] > self.max_batch:
            raise self.error()
        return np.repeat(np.repeat(batch, 2, 2), 2, 3)

    def release_memory(self):
        self.released += 1


def nearest_x2(img):
    return np.repeat(np.repeat(img, 2, 1), 2, 2)


def test_oom_tile_is_halved_and_result_still_correct():
    img = rand(1, 96, 80)[0]
    eng = OomAbove(limit=32)
    out = run_tiled(eng, img, scale=2, tile=64, overlap=16, align=8)
    assert np.abs(out - nearest_x2(img)).max() < 1e-6
    ok = [s for s in eng.calls if max(s[2:]) <= 32]
    assert ok and all(s[2] == 32 and s[3] == 32 for s in ok)  # 64 -> 32 px tiles
    assert eng.released >= 1
    # batch 4 -> 2 -> 1 fail at 64 px, then 64 px is never tried again for the other tiles
    assert [s[0] for s in eng.calls if max(s[2:]) > 32] == [4, 2, 1]


def test_oom_reduces_the_batch_before_the_tile():
    img = rand(1, 80, 80)[0]
    eng = OomAbove(limit=999, max_batch=1)
    out = run_tiled(eng, img, scale=2, tile=32, overlap=8, batch=4)
    assert np.abs(out - nearest_x2(img)).max() < 1e-6
    assert {s[2:] for s in eng.calls} == {(32, 32)}  # tile size kept, batch shrunk


def test_oom_on_a_whole_image_falls_back_to_tiles():
    img = rand(1, 60, 50)[0]
    eng = OomAbove(limit=30, error=lambda: RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory"))
    out = run_tiled(eng, img, scale=2, tile=None, overlap=8)
    assert np.abs(out - nearest_x2(img)).max() < 1e-6 and eng.calls[0] == (1, 3, 60, 50)


def test_oom_gives_up_below_the_smallest_tile():
    with pytest.raises(MemoryError):
        run_tiled(OomAbove(limit=4), rand(1, 64, 64)[0], scale=2, tile=32, overlap=8, min_tile=16)


def test_other_errors_are_not_mistaken_for_oom():
    eng = OomAbove(limit=8, error=lambda: ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        run_tiled(eng, rand(1, 64, 64)[0], scale=2, tile=32, overlap=8)
    assert len(eng.calls) == 1


@pytest.mark.parametrize("exc,oom", [
    (MemoryError(), True), (OutOfMemory("x"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"), True),
    (RuntimeError("std::bad_alloc"), True), (ValueError("shape mismatch"), False), (KeyError("input"), False)])
def test_is_out_of_memory(exc, oom):
    assert is_out_of_memory(exc) is oom


def test_torch_oom_class_is_recognised():
    cls = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    if cls is None:
        pytest.skip("this torch has no OutOfMemoryError class")
    assert is_out_of_memory(cls("CUDA error"))


# ------------------------------------------------------------------------------ real TensorRT on a GPU (skipped here)

def _need_trt_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("tensorrt")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_matches_torch(tmp_path, precision):
    _need_trt_gpu()
    from restore.backends.export import export_onnx

    net = TinySR().eval()
    onnx_path = export_onnx(net, tmp_path / "tiny.onnx")
    eng = tb.make_trt_engine(onnx_path, stem="tiny-t-x2", scale=2, tile=64, size_multiple=8, min_size=8,
                             precision=precision, engines_dir=tmp_path / "engines", progress=False)
    assert isinstance(eng, tb.TrtEngine) and eng.precision == precision
    x = rand(3, 48, 40)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    tol = 1e-3 if precision == "fp32" else 3e-2
    assert np.abs(eng(x) - ref).max() < tol
    big = rand(1, 150, 90)  # beyond the 64 px profile: tiled inside the engine
    with torch.no_grad():
        ref = net(torch.from_numpy(big)).numpy()
    assert np.abs(eng(big) - ref)[..., :-8, :-8].max() < tol
    # GPU-resident path: CUDA tensors in and out
    y = eng.run_torch(torch.from_numpy(x).cuda())
    assert y.is_cuda and y.shape == (3, 3, 96, 80)
    # cached: a second engine loads the plan without building
    plans = sorted((tmp_path / "engines").glob("*.plan"))
    assert plans and all(tc.check_file(p) == "ok" for p in plans)
    again = tb.make_trt_engine(onnx_path, stem="tiny-t-x2", scale=2, tile=64, size_multiple=8, min_size=8,
                               precision=precision, engines_dir=tmp_path / "engines", progress=False)
    assert np.abs(again(x[:1]) - eng(x[:1])).max() == 0


def test_real_tensorrt_background_build_switches(tmp_path):
    _need_trt_gpu()
    net = TinySR().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build would warn
        eng = make_engine(net, "tensorrt", name="tiny", variant="t", scale=2, weights_sha256="f" * 64,
                          engines_dir=tmp_path)
        x = rand(1, 32, 32)
        first = eng(x)
        assert eng.wait(timeout=600) == "ready" and eng.name == "tensorrt"
        assert np.abs(eng(x) - first).max() < 3e-2


@pytest.mark.parametrize("version,has_flag,flags,strong", [
    ("11.4.0.106", False, 0, True), ("10.13.0", True, 1 << 5, True), ("8.6.1", False, 1 << 0, False)])
def test_network_flags_per_tensorrt_generation(version, has_flag, flags, strong):
    from restore.backends import trt_build

    kinds = types.SimpleNamespace(EXPLICIT_BATCH=0, **({"STRONGLY_TYPED": 5} if has_flag else {}))
    fake = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=kinds)
    assert trt_build._network_flags(fake) == flags and trt_build.strongly_typed(fake) is strong
