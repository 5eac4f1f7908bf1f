"""The Gradio UI, driven the way a remote user would: the app runs in-process and every tab's
endpoint is called through gradio_client. Images are tiny (24×24) and restorers run on the
torch backend (no ONNX export), untrained where no weights are shipped, so the file stays fast.
"""
from __future__ import annotations

import dataclasses
import struct
import time

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from restore import registry, ui  # noqa: E402
from restore.io.images import Picture, read_image, write_image  # noqa: E402


def smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.5 + 0.4 * np.sin(rng.uniform(0.1, 0.3) * y + c) * np.cos(rng.uniform(0.1, 0.3) * x)
                     for c in range(3)], -1).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ui-in")
    alpha = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
    write_image(d / "photo16.png", smooth(24, 24, 1), alpha=alpha, bit_depth=16)
    write_image(d / "photo8.png", smooth(24, 24, 2))
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then garbage
    (d / "notes.png").write_text("not an image at all")
    return d


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(demo, client): the whole app on 127.0.0.1, launched like `restore ui` does."""
    demo = ui.build_demo(backend="torch", allow_untrained=True,
                         engines_dir=tmp_path_factory.mktemp("ui-engines"),
                         output_dir=tmp_path_factory.mktemp("ui-out"))
    try:
        _, url, _ = ui.launch(demo, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
        client = Client(url, download_files=str(tmp_path_factory.mktemp("ui-dl")), verbose=False)
        yield demo, client
    finally:
        ui.close(demo)


@pytest.fixture
def client(served):
    return served[1]


def size_of(path):
    with Image.open(path) as im:
        return im.size


def png_bit_depth(path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    assert head[12:16] == b"IHDR"
    return head[24]


def image_args(path, scale=2, variant="tiny", routing="off"):
    # restorer, variant, scale, backend, routing, overlay (lipt declares no extras)
    return (handle_file(str(path)), "lipt", variant, scale, "torch", routing, False)


# ------------------------------------------------------------------------------- the app

def test_every_tab_has_an_endpoint_and_the_queue_is_bounded(served):
    demo, client = served
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/restore_image", "/restore_video", "/restore_live", "/compare", "/restore_chosen"} <= names
    assert demo._queue.default_concurrency_limit == 1
    assert demo._queue.max_size == ui.QUEUE_MAX_SIZE
    assert demo.max_file_size == gr.FileSize.MB * 500  # launch() set the upload limit


# ------------------------------------------------------------------------------ image tab

def test_image_tab_16bit_rgba_gives_scaled_16bit_png(client, files):
    (before, after), png, backend, info = client.predict(*image_args(files / "photo16.png"),
                                                         api_name="/restore_image")
    assert size_of(after) == (48, 48) and size_of(before) == (48, 48)  # slider halves are the same size
    assert backend == "torch"
    assert png.endswith(".png") and png_bit_depth(png) == 16
    pic = read_image(png)
    assert pic.rgb.shape == (48, 48, 3) and pic.bit_depth == 16 and pic.alpha is not None
    assert "16-bit PNG" in info and "24×24" in info and "48×48" in info


def test_image_tab_8bit_stays_8bit(client, files):
    (_, after), png, _, _ = client.predict(*image_args(files / "photo8.png"), api_name="/restore_image")
    assert size_of(after) == (48, 48)  # other scales: see the compare test (×3 on the whole image)
    assert png_bit_depth(png) == 8 and read_image(png).rgb.shape == (48, 48, 3)


@pytest.mark.parametrize("name, message", [("bad.png", "bad.png: truncated or corrupt image data"),
                                           ("notes.png", "notes.png: not a recognised image file")])
def test_bad_upload_is_a_one_line_error(client, files, name, message):
    with pytest.raises(AppError) as e:
        client.predict(*image_args(files / name), api_name="/restore_image")
    assert str(e.value) == message  # exactly the line the user sees: no traceback, no temp path


def test_routing_without_subnets_is_refused_politely(files):
    state = ui.UIState(backend="torch")
    plain = _FakeRestorer(_fake_spec(subnets=()))
    with pytest.raises(ui.UserError, match="zzfake has no subnets to route between"):
        state.run_picture(plain, read_image(files / "photo8.png"), routing="fast")


def test_routed_image_comes_back_with_its_routing_map(files, tmp_path):
    """LIPT routes between bicubic and itself once its table exists (shipped, or made here)."""
    from restore.api import load_restorer
    from restore.routing import table_path

    r = load_restorer("lipt", "tiny", 2, backend="torch")
    if not table_path(r.weights_path).exists():
        pytest.skip("no routing table shipped for lipt-tiny-x2")
    state = ui.UIState(backend="torch")
    res = state.restore_image(str(files / "photo8.png"), "lipt", "tiny", 2, "torch", "fast", True)
    h, w = read_image(files / "photo8.png").rgb.shape[:2]
    assert res.picture.rgb.shape[:2] == (2 * h, 2 * w)
    assert res.picture.routing_map is not None and res.picture.routing_map.shape == (h, w)
    assert "no routing map" not in res.info


def test_image_tab_self_ensemble_over_the_api(client, files):
    plain = client.predict(*image_args(files / "photo8.png"), api_name="/restore_image")
    assert ui.extra_names() == ["noise_level"]  # its slider: 0 = blind; then ensemble, last by design
    extras = [0]
    ens = client.predict(*image_args(files / "photo8.png"), *extras, True, api_name="/restore_image")
    assert "self-ensemble" in ens[3] and "self-ensemble" not in plain[3]
    a, b = read_image(plain[1]).rgb, read_image(ens[1]).rgb
    assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 0.02
    with pytest.raises(Exception, match="do not combine"):
        client.predict(*image_args(files / "photo8.png", routing="fast"), *extras, True, api_name="/restore_image")


def test_missing_weights_is_a_one_line_gr_error(files):
    state = ui.UIState(backend="torch", allow_untrained=False)
    with pytest.raises(gr.Error) as e:
        ui.user_errors(state.restore_image)(str(files / "photo8.png"), "lipt", "small", 4)
    assert e.value.message.startswith("no trained weights for lipt-small-x4-sr")
    assert "\n" not in e.value.message


def test_restorers_are_cached_by_name_variant_scale_backend(served):
    state = served[0].ui_state
    a, _ = state.restorer("lipt", "tiny", 2, "torch")
    b, load_s = state.restorer("lipt", "tiny", 2, "torch")
    assert a is b and load_s == 0.0


def test_concurrent_requests_load_a_restorer_once(monkeypatch):
    import threading

    import restore.api

    calls = []

    def slow_load(name, variant, scale, **kw):
        calls.append((name, variant, scale, kw["backend"]))
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(restore.api, "load_restorer", slow_load)
    state = ui.UIState(backend="torch")
    got = []
    threads = [threading.Thread(target=lambda: got.append(state.restorer("lipt", "tiny", 2)[0])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [("lipt", "tiny", 2, "torch")] and len(set(map(id, got))) == 1


# ---------------------------------------------------------------------------- compare tab

def test_compare_returns_one_result_per_restorer_then_runs_the_chosen_one(client, files):
    picked = ["lipt/tiny/2", "lipt/small/2", "lipt/tiny/3"]
    gallery, table, choice = client.predict(handle_file(str(files / "photo8.png")), 4, 4, 16, picked, "torch",
                                            api_name="/compare")
    assert len(gallery) == len(picked)
    sizes = [size_of(item["image"]) for item in gallery]
    assert sizes == [(32, 32), (32, 32), (48, 48)]  # a 16×16 crop at each scale
    assert all(" ms on torch" in item["caption"] for item in gallery)
    assert table.count("| lipt |") == len(picked)
    assert [k for _, k in choice["choices"]] == picked and choice["value"] == picked[0]

    (before, after), png, info = client.predict(handle_file(str(files / "photo8.png")), "lipt/tiny/3", "torch",
                                                api_name="/restore_chosen")
    assert size_of(after) == size_of(before) == (72, 72)
    assert read_image(png).rgb.shape == (72, 72, 3)


def test_compare_crop_is_clamped_inside_the_image(files):
    assert ui.UIState.crop_box((24, 30), 25, 20, 16) == (14, 8, 16, 16)
    assert ui.UIState.crop_box((24, 30), -5, 0, 100) == (0, 0, 24, 24)
    preview = ui.UIState().crop_preview(str(files / "photo8.png"), 4, 4, 8)
    assert preview.shape == (24, 24, 3) and tuple(preview[4, 4]) == (255, 40, 200)  # the outline


def test_compare_with_nothing_picked_says_so(client, files):
    with pytest.raises(AppError, match="tick at least one restorer"):
        client.predict(handle_file(str(files / "photo8.png")), 0, 0, 16, [], "torch", api_name="/compare")


# ------------------------------------------------------------------------------ video tab

def make_clip(path, w=16, h=16, frames=6, fps=10):
    """A short H.264 clip with an AAC tone."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(frames):
            img = (smooth(h, w, i) * 255).astype(np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        t = np.arange(16000 * frames // fps) / 16000
        tone = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                          format="fltp", layout="mono")
        tone.sample_rate = 16000
        for p in [*a.encode(tone), *a.encode()]:
            c.mux(p)
    return path


def test_video_tab_keeps_audio_and_frame_count(client, tmp_path):
    pytest.importorskip("restore.io.video", reason="video support not in this build")
    av = pytest.importorskip("av")
    clip = make_clip(tmp_path / "clip.mp4")
    out, info = client.predict(handle_file(str(clip)), "lipt", "tiny", 2, "torch", api_name="/restore_video")
    out = out["video"] if isinstance(out, dict) else out
    with av.open(out) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 32, 32)
        assert len(c.streams.audio) == 1
        assert sum(1 for _ in c.decode(v)) == 6
    assert "6 frames" in info and "1 audio stream kept" in info


def test_video_tab_bad_file_is_a_one_line_error(client, files):
    pytest.importorskip("restore.io.video", reason="video support not in this build")
    with pytest.raises(AppError, match=r"^notes\.png: [^\n]+$"):
        client.predict(handle_file(str(files / "notes.png")), "lipt", "tiny", 2, "torch", api_name="/restore_video")


# ----------------------------------------------------------------------------- webcam tab

def test_webcam_handler_restores_admitted_frames_and_drops_early_ones(served):
    pytest.importorskip("restore.pipeline.governor", reason="governor not in this build")
    state = served[0].ui_state
    frame = (smooth(16, 20) * 255).astype(np.uint8)
    out, status, session = state.live_frame(frame, "lipt", "tiny", 2, "torch", 2, None)
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8
    out2, status2, session = state.live_frame(frame, "lipt", "tiny", 2, "torch", 2, session)  # 0.5 s too soon
    assert out2 is None and "1 dropped" in status2 and "1 restored" in status2
    assert "fps** achieved (target 2)" in status2
    gov = session.governor
    _, _, session = state.live_frame(frame, "lipt", "tiny", 2, "torch", 8, session)  # new target: new governor
    assert session.governor is not gov and session.governor.target_fps == 8
    assert state.live_frame(None, "lipt", "tiny", 2, "torch", 8, session)[0] is None  # no camera yet


def test_webcam_stream_function_skips_output_for_dropped_frames(served):
    pytest.importorskip("restore.pipeline.governor", reason="governor not in this build")
    demo = served[0]
    fn = next(f.fn for f in demo.fns.values() if f.api_name == "restore_live")
    frame = (smooth(16, 16) * 255).astype(np.uint8)
    out, status, session = fn(frame, "lipt", "tiny", 2, "torch", 1, None)
    assert isinstance(out, np.ndarray) and "fps" in status
    out, _, _ = fn(frame, "lipt", "tiny", 2, "torch", 1, session)
    assert out == gr.skip()  # the browser keeps showing the last restored frame


# ------------------------------------------------------------------- controls from registry

def _fake_spec(**kw):
    base = registry.get("lipt")
    return dataclasses.replace(base, name="zzfake", task="denoise", scales=(1,), default_scale=1,
                               variants=("one",), default_variant="one", **kw)


def _by_id(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_controls_follow_the_registry(monkeypatch):
    spec = _fake_spec(extras=("noise_level", "mask", "strength"), subnets=("small", "large"))
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    demo = ui.build_demo(backend="torch")
    assert isinstance(_by_id(demo, "extra-noise_level"), gr.Slider)
    assert isinstance(_by_id(demo, "extra-mask"), gr.ImageMask)
    assert isinstance(_by_id(demo, "extra-strength"), gr.Number)  # unknown extra: generic box
    assert _by_id(demo, "extra-noise_level").visible is False  # lipt (first) declares none
    assert _by_id(demo, "img-routing").interactive is True  # lipt (first) routes: bicubic or itself
    assert _by_id(demo, "img-routing").value == "off"
    assert "zzfake/one/1" in [k for _, k in ui.candidate_choices()]

    routing, overlay, note, *extras = ui.restorer_controls(spec, ui.extra_names())
    assert routing["interactive"] and overlay["interactive"] and "`small`" in note["value"]
    assert [e["visible"] for e in extras] == [True, True, True]
    plain = _fake_spec(subnets=())
    routing, overlay, _, *extras = ui.restorer_controls(plain, ui.extra_names())
    assert routing["value"] == "off" and not routing["interactive"] and not any(e["visible"] for e in extras)


class _FakeRestorer:
    def __init__(self, spec, accepts=True):
        self.spec, self.calls = spec, []
        if accepts:
            self.restore_picture = self._restore_with

    def _restore_with(self, picture, *, noise_level=None, mask=None):
        self.calls.append({"noise_level": noise_level, "mask": mask})
        return picture

    def restore_picture(self, picture):
        return picture


def test_extra_inputs_reach_the_restorer_or_fail_clearly():
    spec = _fake_spec(extras=("noise_level", "mask"))
    pic = Picture(rgb=np.zeros((6, 8, 3), np.float32))
    fake = _FakeRestorer(spec)
    painted = np.zeros((3, 4, 4), np.uint8)
    painted[1:, :2, 3] = 255  # brush strokes in the editor's layer, at a smaller size
    ui.UIState().run_picture(fake, pic, "off", {"noise_level": 15, "mask": {"layers": [painted]}})
    assert fake.calls[0]["noise_level"] == 15
    mask = fake.calls[0]["mask"]
    assert mask.shape == (6, 8) and mask[5, 0] == 1 and mask[0, 7] == 0
    with pytest.raises(ui.UserError, match="does not take the extra input 'noise_level'"):
        ui.UIState().run_picture(_FakeRestorer(spec, accepts=False), pic, "off", {"noise_level": 15})


def test_routing_overlay_tints_by_subnet():
    disp = np.full((8, 8, 3), 128, np.uint8)
    out = ui.routing_overlay(disp, np.array([[0, 1], [1, 0]]))
    assert out.shape == disp.shape
    assert out[0, 0, 1] > out[0, 0, 0] and out[0, 7, 0] > out[0, 7, 1]  # green = cheap, red = large


def test_one_line_messages():
    assert ui.one_line("first\nsecond") == "first"
    assert len(ui.one_line("x" * 1000)) == 300


# ----------------------------------------------------------------------------------- CLI

def test_cli_ui_parses_host_and_port_and_has_no_share(monkeypatch):
    from restore import cli

    seen = {}
    monkeypatch.setattr(ui, "launch", lambda demo, host, port: seen.update(host=host, port=port, demo=demo))
    monkeypatch.setattr(ui, "build_demo", lambda **kw: seen.update(kw) or "demo")
    assert cli.main(["ui", "--port", "7999", "--backend", "torch"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 7999, "demo": "demo", "backend": "torch", "threads": None,
                    "allow_untrained": False}
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ui", "--share"])
