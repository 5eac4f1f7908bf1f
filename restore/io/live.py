"""Live sources: restore a camera, a network stream or a playing file at a steady frame rate.

    from restore.io.live import run_live
    stats = run_live(restorer, "0", fps=15, output="out.mp4", max_frames=300)

* **Sources**: a digit is a camera index (OpenCV VideoCapture); a URL (rtsp://, http://, ...)
  is opened by OpenCV's FFmpeg backend; a file is decoded with PyAV and *played*: its frames
  become available at their timestamps, as a camera's would. A reader thread keeps only the
  newest frame, so a slow restorer never works on stale frames; the ones it never got to are
  counted as dropped.
* **Governor**: `restore.pipeline.governor.FrameGovernor` admits at most `fps` frames per second
  and sheds work when restoring is slower than that (a lower working resolution, then
  skipping frames).
* **Sinks**: `output` records H.264 mp4 at a constant `fps` (the last restored frame is
  repeated when no new one is ready, so the recording keeps real-time pace); `show` opens an
  OpenCV window (q or Esc stops). Needs OpenCV with GUI support and a display; the
  opencv-python-headless wheel has none, which is reported in one line.
* Ctrl-C ends a session normally: the recording is finished and kept.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from restore.pipeline.governor import FrameGovernor, default_levels, restore_at_level


class LiveError(Exception):
    """A user-facing problem with a live source or sink (one line)."""


# ------------------------------------------------------------------------------ sources

class _Source:
    """A reader thread that keeps the newest frame (uint8 RGB) of a camera, stream or file."""

    def __init__(self, name: str):
        self.name = name
        self.fps: float | None = None
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0  # frames read so far
        self._taken = 0  # seq of the last frame handed out
        self._overwritten = 0  # frames replaced before anyone took them
        self._finished = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-source", daemon=True)

    def start(self) -> "_Source":
        self._thread.start()
        return self

    def _read_loop(self) -> None:  # subclasses: call self._push(rgb) per frame, return at the end
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._read_loop()
        except BaseException as e:  # noqa: BLE001 (reported by next_frame)
            self._error = e
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _push(self, rgb: np.ndarray) -> None:
        with self._cond:
            if self._frame is not None and self._taken < self._seq:
                self._overwritten += 1
            self._frame = rgb
            self._seq += 1
            self._cond.notify_all()

    def next_frame(self, timeout: float) -> tuple[np.ndarray | None, int]:
        """(the newest frame not handed out yet, or None after `timeout`; frames skipped over)."""
        with self._cond:
            if self._taken >= self._seq and not self._finished:
                self._cond.wait(timeout)
            if self._error is not None:
                raise LiveError(f"{self.name}: {self._error}") from None
            if self._taken >= self._seq:
                return None, 0
            self._taken = self._seq
            skipped, self._overwritten = self._overwritten, 0
            return self._frame, skipped

    @property
    def finished(self) -> bool:
        """The source has ended and its last frame was handed out."""
        with self._cond:
            return self._finished and self._taken >= self._seq

    def unread(self) -> int:
        with self._cond:
            return self._overwritten + (1 if self._taken < self._seq else 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _CvSource(_Source):
    def __init__(self, name: str, target):
        import cv2

        super().__init__(name)
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            what = f"camera {target}" if isinstance(target, int) else "stream"
            raise LiveError(f"{name}: cannot open {what} (missing, busy, or unsupported)")
        rate = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = rate if rate and 0 < rate < 1000 else None

    def _read_loop(self) -> None:
        import cv2

        try:
            while not self._stop.is_set():
                ok, bgr = self._cap.read()
                if not ok:
                    return
                self._push(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            self._cap.release()


class _FileSource(_Source):
    """A video file played in real time: frame i is available at its timestamp."""

    def __init__(self, name: str, realtime: bool = True):
        from restore.io.video import probe_video

        super().__init__(name)
        info = probe_video(name)  # VideoError (one line) if it is not a video
        self._info = info
        self.fps = float(info.rate) if info.rate else None
        self._realtime = realtime

    def _read_loop(self) -> None:
        import av

        start, first = time.monotonic(), None
        with av.open(self._info.path) as container:
            vs = container.streams[self._info.index]
            vs.thread_type = "AUTO"
            for frame in container.decode(vs):
                if self._stop.is_set():
                    return
                rgb = frame.reformat(format="rgb24", threads=1).to_ndarray()  # see restore.io.video
                if self._realtime and frame.pts is not None and frame.time_base:
                    t = float(frame.pts * frame.time_base)
                    first = t if first is None else first
                    wait = start + (t - first) - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                elif not self._realtime:  # as fast as it is consumed (tests, benchmarks)
                    with self._cond:
                        while self._taken < self._seq and not self._stop.is_set():
                            self._cond.wait(0.05)
                self._push(rgb)


def open_source(source: str, *, realtime: bool = True) -> _Source:
    """A started reader for '0' (camera index), 'rtsp://...' (any URL) or a video file path."""
    source = str(source).strip()
    if source.isdigit():
        return _CvSource(f"camera {source}", int(source)).start()
    if "://" in source:
        return _CvSource(source, source).start()
    if not Path(source).exists():
        raise LiveError(f"{source}: no such file (give a camera index such as 0, a URL, or a video file)")
    from restore.io.video import VideoError

    try:
        return _FileSource(source, realtime=realtime).start()
    except VideoError as e:
        raise LiveError(str(e)) from None


# ------------------------------------------------------------------------------ sinks

def check_display() -> None:
    """LiveError (one line) unless an OpenCV window can be opened here."""
    import cv2

    info = cv2.getBuildInformation()
    gui = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")), "")
    if gui.upper() in ("", "NONE"):
        raise LiveError("--show needs OpenCV with GUI support; this install has none (opencv-python-headless): "
                        "install opencv-python, or record with -o instead")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise LiveError("--show needs a display and none is set (DISPLAY); record with -o instead")


class _Recorder:
    """Constant-rate H.264 mp4, written under a temporary name and linked into place at the end."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str | None, crf: int):
        import av

        from restore.io.video import _MUXER, _encoder_options, pick_codec

        self.path = path
        self.tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.rate = Fraction(fps).limit_denominator(1001)
        codec = pick_codec(codec)
        options = _encoder_options(codec, crf)
        if "preset" in options and codec in ("libx264", "libx265"):
            options["preset"] = "veryfast"  # keep up with the source
        self.container = av.open(str(self.tmp), "w", format=_MUXER[path.suffix.lower()])
        self.stream = self.container.add_stream(codec, rate=self.rate, options=options)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        # Explicit, tagged YUV matrix: what players assume for untagged video of this size.
        self.matrix, tag = ("ITU709", 1) if size[1] >= 720 else ("ITU601", 6)
        self.stream.codec_context.colorspace = tag
        self.stream.codec_context.color_range = 1  # limited ("MPEG") range
        self.frames = 0

    def write(self, rgb8: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb8, format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace=self.matrix, dst_color_range="MPEG", threads=1)
        frame.pts = self.frames  # time base 1/fps: one tick per frame, a constant rate
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        from restore.io.video import VideoError, _publish

        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
            if self.frames:
                _publish(self.tmp, self.path)
        except VideoError as e:
            raise LiveError(str(e)) from None
        finally:
            with contextlib.suppress(OSError):
                self.tmp.unlink()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


# ------------------------------------------------------------------------------ the loop

def run_live(restorer, source: str, *, fps: float = 15.0, show: bool = False, output=None,
             max_frames: int | None = None, crf: int = 20, codec: str | None = None,
             levels: list[dict] | None = None, realtime: bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Restore `source` live until it ends, `max_frames` frames were output, q/Esc or Ctrl-C.

    Returns the governor's stats plus: frames (output), repeated (output frames that repeat the
    previous one), seconds, output (the recording's path or None), stopped_by.
    """
    import cv2

    log = log or (lambda message: None)
    if not show and output is None:
        raise LiveError("nothing to do: give --show, -o OUT.mp4, or both")
    if fps <= 0:
        raise LiveError(f"--fps must be positive, not {fps}")
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        if out_path.suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv"):
            raise LiveError(f"{out_path}: record to an .mp4, .mov or .mkv file")
        if out_path.exists():
            raise LiveError(f"{out_path}: exists; refusing to overwrite")
        out_path.parent.mkdir(parents=True, exist_ok=True)
    if show:
        check_display()
    gov = FrameGovernor(fps, levels if levels is not None else default_levels(restorer))
    src = open_source(source, realtime=realtime)
    scale = int(getattr(restorer, "scale", 1))
    recorder: _Recorder | None = None
    window = "restore live" if show else None
    last: np.ndarray | None = None
    written = repeated = 0
    last_written_id = current_id = 0
    t0 = started = time.monotonic()
    stopped_by = "end of source"
    ok = False
    try:
        while True:
            rgb, skipped = src.next_frame(timeout=gov.budget / 2)
            if skipped:
                gov.skip(skipped)
            if rgb is not None:
                if gov.admit():
                    t = time.perf_counter()
                    out = restore_at_level(restorer, rgb.astype(np.float32) / 255.0, gov.settings)
                    gov.done(time.perf_counter() - t)
                    h, w = rgb.shape[0] * scale // 2 * 2, rgb.shape[1] * scale // 2 * 2
                    last = np.ascontiguousarray(np.rint(np.clip(out[:h, :w], 0, 1) * 255).astype(np.uint8))
                    current_id += 1
                    if recorder is None and out_path is not None:
                        recorder = _Recorder(out_path, (w, h), fps, codec, crf)
                    if current_id == 1:
                        t0 = time.monotonic()  # the output clock starts with the first restored frame
            if last is not None:
                due = int((time.monotonic() - t0) * fps) + 1
                if max_frames:
                    due = min(due, max_frames)
                while written < due:
                    if recorder is not None:
                        recorder.write(last)
                    repeated += last_written_id == current_id
                    last_written_id = current_id
                    written += 1
                if window is not None and last_written_id:
                    cv2.imshow(window, cv2.cvtColor(last, cv2.COLOR_RGB2BGR))
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        stopped_by = "key"
                        break
            if max_frames and written >= max_frames:
                stopped_by = "max frames"
                break
            if src.finished:
                if last is not None and last_written_id != current_id and written < (max_frames or written + 1):
                    if recorder is not None:  # the last restored frame is not due yet: keep it anyway
                        recorder.write(last)
                    last_written_id = current_id
                    written += 1
                break
        ok = True
    except KeyboardInterrupt:
        stopped_by = "interrupt"
        ok = True
    finally:
        src.close()
        gov.skip(src.unread())
        if window is not None:
            with contextlib.suppress(Exception):
                cv2.destroyWindow(window)
        if recorder is not None:
            if ok:
                recorder.finish()
            else:
                recorder.abort()
    stats = gov.stats()
    seconds = time.monotonic() - started
    stats.update(frames=written, repeated=repeated, seconds=round(seconds, 3),
                 mean_fps=round(stats["processed"] / seconds, 2) if seconds > 0 else 0.0,
                 output=str(out_path) if recorder is not None and recorder.frames else None,
                 stopped_by=stopped_by, source=src.name)
    return stats
