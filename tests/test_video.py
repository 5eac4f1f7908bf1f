"""Video files: frames restored, everything else kept, resumable, checked, wired into `restore run`.

Clips are synthesised here (32x24, 20 frames, ~1.3 s, with a tone) and restored by a fake ×2
restorer (nearest neighbour), so the whole file runs in a few seconds.
"""
from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from restore import cli
from restore.io.video import (VideoError, check_encoder, is_video_path, make_test_clip, pick_codec,
                              probe_video, restore_video, video_output_name, work_dir_for)


class FakeRestorer:
    """×2 nearest neighbour; counts calls and can fail on a given call."""

    scale = 2
    stem = "fake-x2"
    backend = "numpy"

    def __init__(self, fail_on_call: int | None = None, exc: type[BaseException] = KeyboardInterrupt):
        self.calls = 0
        self.fail_on_call, self.exc = fail_on_call, exc

    def restore_rgb(self, rgb, tile=None, overlap=None):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise self.exc()
        return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)


def streams_and_packets(path):
    """{stream index: (type, codec name, [(pts seconds, bytes), ...])} for every stream."""
    with av.open(str(path)) as c:
        out = {s.index: (s.type, s.codec_context.name if s.codec_context else None, []) for s in c.streams}
        for p in c.demux():
            if p.size:
                t = None if p.pts is None else Fraction(p.pts) * p.time_base
                out[p.stream.index][2].append((t, bytes(p)))
    return out


def video_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def frame_times(path):
    with av.open(str(path)) as c:
        return [Fraction(f.pts) * f.time_base for f in c.decode(video=0)]


def green_levels(path):
    return [float(f[..., 1].mean()) for f in video_frames(path)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_test_clip(d / "tone.mp4"),
        "mkv": make_test_clip(d / "vfr.mkv", vfr=True, audio="libopus", subtitles=True, rotation=90),
        "avi": make_test_clip(d / "old.avi", audio="adpcm_ms"),
    }


def test_names_and_codecs():
    assert is_video_path("a/b/Clip.MP4") and is_video_path("x.webm") and not is_video_path("x.png")
    assert not is_video_path("out/.clip.mp4.work/seg000000.mp4")  # our own segments are not inputs
    assert video_output_name("d/a.avi").as_posix() == "d/a.mp4"
    assert video_output_name("a.webm").suffix == ".mp4" and video_output_name("a.mkv").suffix == ".mkv"
    assert pick_codec() == "libx264"  # the bundled FFmpeg has it
    assert pick_codec("h264") == "libx264"
    with pytest.raises(ValueError, match="unknown video encoder"):
        pick_codec("no-such-codec")
    with pytest.raises(ValueError, match="crf"):
        check_encoder(None, 99)


def test_mp4_frames_size_timestamps_and_audio_unchanged(clips, tmp_path):
    src, dst = clips["mp4"], tmp_path / "out" / "tone.mp4"
    r = restore_video(FakeRestorer(), src, dst, segment_seconds=0.5)
    assert r["frames"] == 20 and r["segments"] == 3 and r["size"] == [64, 48] and r["notes"] == []
    assert dst.exists() and not work_dir_for(dst).exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["tone.mp4"]  # no temporary files left

    info_in, info_out = probe_video(src), probe_video(dst)
    assert (info_out.width, info_out.height) == (2 * info_in.width, 2 * info_in.height)
    assert frame_times(dst) == frame_times(src)  # every frame keeps its timestamp
    assert abs(info_out.duration - info_in.duration) < 1 / 15
    levels = green_levels(dst)
    assert len(levels) == 20 and all(b > a for a, b in zip(levels, levels[1:]))  # in order, none twice

    a_in, a_out = streams_and_packets(src)[1], streams_and_packets(dst)[1]
    assert a_out[0] == "audio" and a_out[1] == "aac"
    assert a_out[2] == a_in[2]  # the same packets, byte for byte, at the same times


def test_mkv_vfr_subtitles_rotation(clips, tmp_path):
    src, dst = clips["mkv"], tmp_path / "vfr.mkv"
    restore_video(FakeRestorer(), src, dst, segment_seconds=0.4)
    times = frame_times(dst)
    assert times == frame_times(src) and len(set(np.diff([float(t) for t in times]).round(3))) > 1  # VFR
    s_in, s_out = streams_and_packets(src), streams_and_packets(dst)
    assert [(t, c) for t, c, _ in s_out.values()] == [("video", "h264"), ("audio", "opus"), ("subtitle", "srt")]
    assert s_out[1][2] == s_in[1][2] and s_out[2][2] == s_in[2][2]
    assert probe_video(dst).rotation == 90


def test_audio_the_container_refuses_is_reencoded(clips, tmp_path):
    notes = []
    dst = tmp_path / video_output_name(clips["avi"].name)
    r = restore_video(FakeRestorer(), clips["avi"], dst, log=notes.append)
    assert dst.suffix == ".mp4" and r["frames"] == 20
    assert any("re-encoded to AAC" in n for n in notes)
    kinds = [(t, c) for t, c, _ in streams_and_packets(dst).values()]
    assert kinds == [("video", "h264"), ("audio", "aac")]
    with av.open(str(dst)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples / 48000 - 20 / 15) < 0.1


def test_resume_after_interruptions_loses_and_repeats_nothing(clips, tmp_path):
    src, dst = clips["mp4"], tmp_path / "tone.mp4"
    seg = dict(segment_seconds=0.34)  # 5 frames a segment, 4 segments

    class Stop(Exception):
        pass

    def stop_after_second(i):
        if i == 1:
            raise Stop

    notes = []
    with pytest.raises(Stop):  # a crash right after segment 1 was saved
        restore_video(FakeRestorer(), src, dst, on_segment=stop_after_second, log=notes.append, **seg)
    work = work_dir_for(dst)
    assert not dst.exists() and work.is_dir() and "--resume" in notes[-1]
    assert json.loads((work / "manifest.json").read_text())["segments"][-1]["index"] == 1

    with pytest.raises(VideoError, match="--resume"):  # no silent restart over kept work
        restore_video(FakeRestorer(), src, dst, **seg)
    with pytest.raises(VideoError, match="crf"):  # no mixing of settings
        restore_video(FakeRestorer(), src, dst, resume=True, crf=30, **seg)

    ctrl_c = FakeRestorer(fail_on_call=3)  # Ctrl-C in the middle of segment 2
    with pytest.raises(KeyboardInterrupt):
        restore_video(ctrl_c, src, dst, resume=True, **seg)
    assert not list(work.glob("*.part"))
    assert len(json.loads((work / "manifest.json").read_text())["segments"]) == 2

    last = FakeRestorer()
    r = restore_video(last, src, dst, resume=True, **seg)
    assert r["resumed_frames"] == 10 and last.calls == 10  # only the unfinished frames were restored
    assert r["frames"] == 20 and not work.exists()
    levels = green_levels(dst)
    assert len(levels) == 20 and all(b > a for a, b in zip(levels, levels[1:]))
    assert frame_times(dst) == frame_times(src)
    assert streams_and_packets(dst)[1][2] == streams_and_packets(src)[1][2]


def test_refuses_to_overwrite_and_rejects_non_videos(clips, tmp_path):
    dst = tmp_path / "x.mp4"
    dst.write_bytes(b"keep me")
    with pytest.raises(VideoError, match="exists"):
        restore_video(FakeRestorer(), clips["mp4"], dst)
    assert dst.read_bytes() == b"keep me"
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video at all")
    with pytest.raises(VideoError, match="not a readable video"):
        restore_video(FakeRestorer(), fake, tmp_path / "o" / "fake.mp4")
    assert not (tmp_path / "o" / ".fake.mp4.work").exists()


@pytest.fixture
def fake_load(monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda args: FakeRestorer())


def test_cli_run_folder_with_videos_images_and_a_broken_video(clips, tmp_path, fake_load, capsys):
    import shutil

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(clips["mp4"], folder / "a.mp4")
    shutil.copy(clips["avi"], folder / "sub" / "b.avi")
    (folder / "broken.mp4").write_text("this is text, not a video")
    out = tmp_path / "out"
    code = cli.main(["run", str(folder), "-o", str(out), "--crf", "23", "--json"])
    assert code == cli.EXIT_SOME_FAILED
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["written"] == 2 and summary["failed"] == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0] and "not a readable video" in errors[0]
    assert (out / "a.mp4").exists() and (out / "sub" / "b.mp4").exists()
    ok = {f["output"]: f for f in summary["files"] if f["status"] == "ok"}
    assert ok[str(out / "a.mp4")]["frames"] == 20 and ok[str(out / "a.mp4")]["size"] == [64, 48]


def test_cli_non_video_with_mp4_suffix_one_line_error(tmp_path, fake_load, capsys):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 100)
    assert cli.main(["run", str(fake), "-o", str(tmp_path / "out")]) == cli.EXIT_SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"error: {fake}: ") and "Traceback" not in "".join(err)


def test_cli_bad_codec_is_a_usage_error(clips, tmp_path, fake_load, capsys):
    code = cli.main(["run", str(clips["mp4"]), "-o", str(tmp_path / "o"), "--codec", "nope"])
    assert code == cli.EXIT_USAGE and "unknown video encoder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_resume_flag(tmp_path, monkeypatch, capsys):
    src = make_test_clip(tmp_path / "long.mp4", frames=45)  # 3 s: two 2-second segments
    dst_dir = tmp_path / "o"
    monkeypatch.setattr(cli, "_load", lambda args: FakeRestorer(fail_on_call=40))
    assert cli.main(["run", str(src), "-o", str(dst_dir)]) == 130  # Ctrl-C during the second segment
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["run", str(src), "-o", str(dst_dir)]) == cli.EXIT_SOME_FAILED  # kept work is not clobbered
    second = FakeRestorer()
    monkeypatch.setattr(cli, "_load", lambda args: second)
    assert cli.main(["run", str(src), "-o", str(dst_dir), "--resume"]) == cli.EXIT_OK
    assert second.calls == 45 - 30
    assert len(video_frames(dst_dir / "long.mp4")) == 45
