"""Live restoration: the frame-deadline governor, and `restore live` driven by a playing file."""
from __future__ import annotations

import json
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from restore import cli
from restore.io.live import LiveError, run_live
from restore.io.video import make_test_clip
from restore.pipeline.governor import FrameGovernor, default_levels, restore_at_level


class FakeRestorer:
    scale = 2
    stem = "fake-x2"
    backend = "numpy"

    def __init__(self, seconds_per_megapixel: float = 0.0):
        self.cost = seconds_per_megapixel
        self.sizes = []

    def restore_rgb(self, rgb, tile=None, overlap=None):
        self.sizes.append(rgb.shape[:2])
        if self.cost:
            time.sleep(self.cost * rgb.shape[0] * rgb.shape[1] / 1e6)
        return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# ------------------------------------------------------------------------------ governor

def test_governor_admits_at_most_the_target_rate():
    clock = Clock()
    gov = FrameGovernor(15, clock=clock)
    admitted = 0
    for _ in range(60):  # 2 s of a 30 fps source, restoring instantly
        if gov.admit():
            admitted += 1
            gov.done(0.001)
        clock.t += 1 / 30
    assert admitted == 30 and gov.dropped == 30
    s = gov.stats()
    assert s["processed"] == 30 and s["dropped"] == 30 and abs(s["achieved_fps"] - 15) < 0.6


def test_governor_sheds_work_then_recovers():
    clock = Clock()
    gov = FrameGovernor(10, levels=[{"q": "best"}, {"q": "good"}, {"q": "cheap"}], patience=2, clock=clock)
    cost = {"best": 0.25, "good": 0.15, "cheap": 0.05}  # seconds per frame; the budget is 0.1
    seen = []
    for _ in range(20):
        if gov.admit():
            latency = cost[gov.settings["q"]]
            clock.t += latency
            gov.done(latency)
            seen.append(gov.level)
        clock.t += 0.01
    assert gov.level == 2 and gov.settings == {"q": "cheap"}  # stepped down to what fits the budget
    assert seen == sorted(seen)  # and never back up while the load stays
    for c in cost:  # the load goes away: everything is 10x cheaper
        cost[c] /= 10
    for _ in range(60):
        if gov.admit():
            latency = cost[gov.settings["q"]]
            clock.t += latency
            gov.done(latency)
        clock.t += 0.1
    assert gov.level == 0


def test_governor_counts_skips_and_validates():
    gov = FrameGovernor(5)
    gov.skip(3)
    assert gov.stats()["dropped"] == 3 and gov.stats()["latency_ms"] is None
    with pytest.raises(ValueError):
        FrameGovernor(0)


def test_levels_keep_the_output_size():
    r = FakeRestorer()
    rgb = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)
    for settings in default_levels(r):
        out = restore_at_level(r, rgb, settings)
        assert out.shape == (48, 64, 3) and out.dtype == np.float32
    assert r.sizes == [(24, 32), (18, 24), (12, 16)]  # the work shrinks, the output does not


# ------------------------------------------------------------------------------ run_live

def packets_pts(path):
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        pts = sorted(Fraction(p.pts) * p.time_base for p in c.demux(vs) if p.size)
        return pts, (vs.codec_context.width, vs.codec_context.height)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_test_clip(tmp_path_factory.mktemp("live") / "clip.mp4", frames=20, fps=15)


def test_run_live_records_a_constant_rate(clip, tmp_path):
    out = tmp_path / "live.mp4"
    stats = run_live(FakeRestorer(), str(clip), fps=15, output=out, max_frames=10)
    assert stats["frames"] == 10 and stats["output"] == str(out) and stats["stopped_by"] == "max frames"
    assert stats["processed"] >= 5 and stats["processed"] + stats["dropped"] <= 20
    pts, size = packets_pts(out)
    assert len(pts) == 10 and size == (64, 48)
    assert set(np.diff(pts)) == {Fraction(1, 15)}  # constant frame rate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mp4"]

    whole = run_live(FakeRestorer(), str(clip), fps=15, output=tmp_path / "whole.mp4")  # to the end
    assert whole["stopped_by"] == "end of source"
    assert whole["frames"] == whole["processed"] + whole["repeated"]  # every restored frame is in it
    assert 15 <= whole["frames"] <= 30  # real time: about the clip's 20 frames at 15 fps (a busy CPU lags)


def test_run_live_slow_restorer_sheds_and_repeats(tmp_path):
    src = make_test_clip(tmp_path / "fast.mp4", frames=30, fps=30, audio=None)  # 1 s at 30 fps
    # 0.1 s per frame at full size against a 15 fps budget (0.067 s).
    slow = FakeRestorer(seconds_per_megapixel=0.1 / (24 * 32 / 1e6))
    stats = run_live(slow, str(src), fps=15, output=tmp_path / "o.mp4")
    assert stats["stopped_by"] == "end of source"
    assert stats["level"] > 0 and min(h for h, w in slow.sizes) < 24  # worked at a lower resolution
    assert stats["dropped"] > 0 and stats["processed"] + stats["dropped"] == 30
    pts, _ = packets_pts(tmp_path / "o.mp4")
    assert len(pts) == stats["frames"] and set(np.diff(pts)) == {Fraction(1, 15)}


def test_run_live_errors(clip, tmp_path):
    with pytest.raises(LiveError, match="nothing to do"):
        run_live(FakeRestorer(), str(clip))
    with pytest.raises(LiveError, match="no such file"):
        run_live(FakeRestorer(), str(tmp_path / "missing.mp4"), output=tmp_path / "o.mp4")
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"x")
    with pytest.raises(LiveError, match="exists"):
        run_live(FakeRestorer(), str(clip), output=taken)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(LiveError, match="not a readable video"):
        run_live(FakeRestorer(), str(bad), output=tmp_path / "o.mp4")


# ------------------------------------------------------------------------------ the CLI

@pytest.fixture
def fake_load(monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda args: FakeRestorer())


def test_cli_live_file_source(clip, tmp_path, fake_load, capsys):
    out = tmp_path / "out.mp4"
    code = cli.main(["live", "--source", str(clip), "-o", str(out), "--max-frames", "10", "--json"])
    assert code == cli.EXIT_OK
    stats = json.loads(capsys.readouterr().out)
    assert stats["frames"] == 10 and stats["target_fps"] == 15
    assert len(packets_pts(out)[0]) == 10


def test_cli_live_show_without_display_is_one_line(clip, tmp_path, fake_load, capsys, monkeypatch):
    import cv2

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = cli.main(["live", "--source", str(clip), "--show"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and len(err.splitlines()) == 1 and "--show" in err
    assert cv2  # imported: the check reads OpenCV's build information


def test_cli_live_needs_a_sink(clip, fake_load, capsys):
    assert cli.main(["live", "--source", str(clip)]) == cli.EXIT_USAGE
    assert "nothing to do" in capsys.readouterr().err
