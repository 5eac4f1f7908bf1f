"""Video files: restore every frame, keep everything else, survive interruptions.

    from restore.io.video import restore_video
    restore_video(restorer, "clip.mp4", "out/clip.mp4", crf=18, resume=True)

Decoding and encoding happen in process with PyAV (FFmpeg in the wheel; no ffmpeg binary).

* **Frames** go through `restorer.restore_rgb` as float32 RGB in [0, 1] (rgb48 for sources
  deeper than 8 bits). Decode, inference and encode run in three threads joined by bounded
  queues, so the restorer never waits on the codecs.
* **Output**: H.264 (libx264) in the input's container (.mp4/.m4v/.mov/.mkv; .avi and .webm
  become .mp4, see `video_output_name`), yuv420p, `crf` 18 by default, no B-frames (segments
  are joined packet by packet and must have rising decode times). `codec` takes any FFmpeg
  video encoder of the bundled build (libx265, libvpx-vp9, mpeg4, ...); without libx264 the
  default falls back to mpeg4. Odd output sizes lose their last row/column (yuv420p needs even
  sizes).
* **Colour**: the source's YUV matrix and range are used both ways (untagged sources get what
  players assume: BT.709 from 720p up, BT.601 below) and written into the output's tags, so an
  upscaled SD video does not shift colour when players switch to their HD guess.
* **Timestamps**: each output frame carries its source frame's pts in the source's time base,
  so variable frame rate, a non-zero start and A/V sync survive. The display rotation is kept.
* **Other streams**: audio and subtitle streams are copied packet for packet. Audio the output
  container refuses is re-encoded to AAC; subtitles it refuses, data streams and extra video
  streams (cover art) are left out with a note. Attachments (fonts) are kept in .mkv.
* **Resume**: frames are encoded in segments of about `segment_seconds`, each a small file in a
  hidden work folder next to the output (`.NAME.work/`), listed in `manifest.json` once
  finished. An interrupted run leaves that folder; `resume=True` skips the finished segments
  (their frames are decoded again, cheaply, but not restored again) and a run that finishes
  joins the segments, copies the other streams, checks the frame count and removes the folder.
* **Checks**: the output must hold exactly as many frames as were decoded, and a source that
  declares more frames than can be decoded (truncated or damaged) is an error.
* **Pixel conversions** run swscale with one thread (`threads=1`): its slice threads can
  deadlock in the bundled FFmpeg (seen as a hang under load) and gain nothing beside the restorer.
* **Atomic**: the result is written under a temporary name and linked into place; an existing
  output is never overwritten.
"""
from __future__ import annotations

import contextlib
import heapq
import io
import json
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from restore.io.images import ImageError
from restore.io.publish import publish_new

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"})

# Output suffix for each input suffix, and the FFmpeg muxer for each output suffix.
_OUTPUT_SUFFIX = {".mp4": ".mp4", ".m4v": ".m4v", ".mov": ".mov", ".mkv": ".mkv", ".avi": ".mp4", ".webm": ".mp4"}
_MUXER = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

DEFAULT_CRF = 18
_PREFERRED_CODECS = ("libx264", "mpeg4")  # H.264 when the bundled FFmpeg has it
_SEGMENT_MUXER = "mp4"  # keeps any time base exactly (it only multiplies the denominator)
_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1

# AVColorSpace tags → swscale matrix names (PyAV's Colorspace enum).
_MATRIX_BY_TAG = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_AVCOL_SPC_BT709, _AVCOL_SPC_SMPTE170M = 1, 6
_AVCOL_RANGE_MPEG, _AVCOL_RANGE_JPEG = 1, 2
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class VideoError(ImageError):
    """A user-facing problem with a video file: ``"<path>: <reason>"`` (an ImageError, so a batch
    collects it like any bad image)."""


def is_video_path(path) -> bool:
    """True if the file name has a video suffix (the content is not checked).

    Segments inside a work folder (`.NAME.work/`) are ours, not inputs: False for them.
    """
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        return False
    parent = p.parent.name
    return not (parent.startswith(".") and parent.endswith(".work"))


def video_output_name(rel) -> Path:
    """The output's relative path for an input's: same container, except .avi/.webm → .mp4."""
    rel = Path(rel)
    return rel.with_suffix(_OUTPUT_SUFFIX.get(rel.suffix.lower(), ".mp4"))


def work_dir_for(dst) -> Path:
    """The hidden folder that holds a video's finished segments until the output is complete."""
    dst = Path(dst)
    return dst.parent / f".{dst.name}.work"


def available_codecs() -> list[str]:
    """Video encoders of the bundled FFmpeg that can write yuv420p (what `codec` accepts)."""
    import av

    names = []
    for name in sorted(av.codecs_available):
        with contextlib.suppress(Exception):
            c = av.codec.Codec(name, "w")
            if c.type == "video" and (not c.video_formats or any(f.name == "yuv420p" for f in c.video_formats)):
                names.append(c.name)
    return sorted(set(names))


def pick_codec(name: str | None = None) -> str:
    """The encoder to use: `name` (checked; aliases such as 'h264' resolve), else libx264/mpeg4."""
    import av

    if not name:
        for cand in _PREFERRED_CODECS:
            with contextlib.suppress(Exception):
                return av.codec.Codec(cand, "w").name
        raise ValueError("this FFmpeg build has neither libx264 nor mpeg4; pass --codec (see available_codecs())")
    try:
        codec = av.codec.Codec(name, "w")
    except Exception:
        raise ValueError(f"unknown video encoder {name!r} (this build has e.g. libx264, libx265, "
                         f"libvpx-vp9, mpeg4)") from None
    if codec.type != "video":
        raise ValueError(f"{name!r} is not a video encoder")
    try:
        _try_encoder(codec.name)
    except Exception as e:
        raise ValueError(f"video encoder {name!r} does not work in this FFmpeg build "
                         f"({_reason(e)}); try libx264, libx265 or libvpx-vp9") from None
    return codec.name


def _try_encoder(name: str) -> None:
    """Encode two small frames into an in-memory mp4 and read the stream back, as the
    segments will be (some encoders have no decoder here, e.g. AV1 without libdav1d)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=_SEGMENT_MUXER) as out:
        st = out.add_stream(name, rate=15, options=_encoder_options(name, DEFAULT_CRF))
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for i in range(2):
            frame = av.VideoFrame(64, 64, "yuv420p")
            frame.pts = i
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as back:
        vs = back.streams.video[0]
        _ = vs.codec_context.extradata
        if sum(1 for p in back.demux(vs) if p.size) != 2:
            raise ValueError("frames went missing")


def check_encoder(codec: str | None, crf: int) -> str:
    """Validate --codec/--crf up front (ValueError with a one-line message); the encoder's name."""
    if not 0 <= int(crf) <= 63:
        raise ValueError(f"--crf must be between 0 and 63 (lower is better; 18 is the default), not {crf}")
    return pick_codec(codec)


# ---------------------------------------------------------------------------- probing

@dataclass
class VideoInfo:
    path: str
    index: int  # the video stream restored (the first one that is not cover art)
    width: int
    height: int
    time_base: Fraction
    rate: Fraction  # average frame rate (guessed when the container does not say)
    frames: int  # as declared by the container; 0 when unknown
    duration: float | None  # seconds, of the video stream
    rotation: int  # display rotation, degrees counter-clockwise
    matrix: str  # swscale matrix used for YUV <-> RGB
    colorspace: int  # AVColorSpace written into the output
    color_range: int  # AVColorRange
    color_primaries: int
    color_trc: int
    streams: list[dict] = field(default_factory=list)  # every stream: index, type, codec


def probe_video(path) -> VideoInfo:
    """Open a video and describe it; VideoError if it is not a readable video."""
    import av

    p = Path(path)
    if not p.exists():
        raise VideoError(path, "no such file")
    if p.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as e:
        raise VideoError(path, f"not a readable video file ({_reason(e)})") from None
    with container:
        video = [s for s in container.streams.video
                 if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not video:
            raise VideoError(path, "has no video stream")
        vs = video[0]
        cc = vs.codec_context
        if not cc.width or not cc.height:
            raise VideoError(path, "video stream has no frame size (damaged or unsupported)")
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate or Fraction(25)
        tb = vs.time_base or (1 / Fraction(rate))
        duration = float(vs.duration * tb) if vs.duration else (
            container.duration / 1e6 if container.duration else None)
        try:  # one frame: proves the stream decodes, and carries the display rotation
            first = next(container.decode(vs), None)
        except av.error.FFmpegError as e:
            raise VideoError(path, f"video stream cannot be decoded ({_reason(e)})") from None
        if first is None:
            raise VideoError(path, "video stream has no frames")
        rotation = int(first.rotation or 0)
        tag = cc.colorspace
        hd = cc.width >= 1280 or cc.height > 576
        colorspace = tag if tag in _MATRIX_BY_TAG else (_AVCOL_SPC_BT709 if hd else _AVCOL_SPC_SMPTE170M)
        return VideoInfo(
            path=str(p), index=vs.index, width=cc.width, height=cc.height, time_base=Fraction(tb),
            rate=Fraction(rate), frames=int(vs.frames or 0), duration=duration, rotation=rotation,
            matrix=_MATRIX_BY_TAG[colorspace], colorspace=colorspace,
            color_range=_AVCOL_RANGE_JPEG if cc.color_range == _AVCOL_RANGE_JPEG else _AVCOL_RANGE_MPEG,
            color_primaries=cc.color_primaries, color_trc=cc.color_trc,
            streams=[{"index": s.index, "type": s.type, "codec": s.codec_context.name if s.codec_context else None}
                     for s in container.streams])


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '", 1)[0].strip() or type(e).__name__


# ---------------------------------------------------------------------------- manifest

class _Manifest:
    """The work folder's record of finished segments; rewritten atomically after each one."""

    def __init__(self, work: Path, data: dict):
        self.work, self.data = work, data

    @property
    def segments(self) -> list[dict]:
        return self.data["segments"]

    @property
    def segment_frames(self) -> int:
        return self.data["segment_frames"]

    @property
    def done_frames(self) -> int:
        return sum(s["frames"] for s in self.segments)

    @property
    def total_frames(self) -> int | None:
        return self.data.get("total_frames")

    def add(self, segment: dict, total_frames: int | None = None) -> None:
        self.segments.append(segment)
        if total_frames is not None:
            self.data["total_frames"] = total_frames
        self.save()

    def save(self) -> None:
        tmp = self.work / f".{_MANIFEST}.{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.work / _MANIFEST)

    @classmethod
    def load_or_create(cls, work: Path, src: Path, fingerprint: dict, segment_frames: int,
                       resume: bool) -> "_Manifest":
        path = work / _MANIFEST
        old = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
        if old and old.get("segments"):
            if not resume:
                raise VideoError(src, f"an interrupted run left {work}; add --resume to continue it "
                                      f"(or delete that folder to start over)")
            if old.get("version") != _MANIFEST_VERSION or old.get("fingerprint") != fingerprint:
                changed = [k for k in fingerprint if (old.get("fingerprint") or {}).get(k) != fingerprint[k]]
                raise VideoError(src, f"cannot resume: {', '.join(changed) or 'the work format'} changed since "
                                      f"the interrupted run; delete {work} to start over")
            man = cls(work, old)
            man._drop_missing()
            return man
        # Nothing worth keeping: start afresh.
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        man = cls(work, {"version": _MANIFEST_VERSION, "fingerprint": fingerprint,
                         "segment_frames": segment_frames, "segments": [], "total_frames": None})
        man.save()
        return man

    def _drop_missing(self) -> None:
        """Keep the finished segments up to the first one whose file is gone; clear half-written ones."""
        kept = []
        for i, seg in enumerate(self.segments):
            f = self.work / seg["file"]
            if seg["index"] != i or not f.is_file() or f.stat().st_size != seg["bytes"]:
                break
            kept.append(seg)
        if len(kept) != len(self.segments):
            self.data["segments"] = kept
            self.data["total_frames"] = None
        for f in self.work.iterdir():
            if f.name.endswith(".part"):
                f.unlink(missing_ok=True)
        self.save()


# ---------------------------------------------------------------------------- the run

ProgressHook = Callable[[int], None]


def restore_video(restorer, src, dst, *, crf: int = DEFAULT_CRF, codec: str | None = None,
                  resume: bool = False, tile: int | None = None, overlap: int | None = None,
                  segment_seconds: float = 2.0, progress: bool = False,
                  log: Callable[[str], None] | None = None,
                  on_segment: ProgressHook | None = None) -> dict:
    """Restore the video `src` into the new file `dst`; returns a summary dict.

    restorer: anything with `.scale` and `.restore_rgb(rgb, tile=, overlap=)` (an api.Restorer).
    crf/codec: encoder quality and name (`pick_codec`). resume: continue an interrupted run from
    its work folder. segment_seconds: length of the resumable units. progress: a tqdm bar on
    stderr (frames, fps, ETA). log: where notes go (one line each). on_segment(i): called after
    segment i is safely on disk (tests interrupt runs with it).
    Raises VideoError (one line) for bad input or a failed check; other exceptions and Ctrl-C
    leave the work folder for `resume`.
    """
    import av

    src, dst = Path(src), Path(dst)
    log = log or (lambda message: None)
    started = time.time()
    if dst.exists():
        raise VideoError(dst, "exists; refusing to overwrite")
    suffix = dst.suffix.lower()
    if suffix not in _MUXER:
        raise VideoError(dst, f"cannot write '{suffix}' videos (use one of {', '.join(sorted(_MUXER))})")
    if not 0 <= int(crf) <= 63:
        raise ValueError(f"crf must be in 0..63, got {crf}")
    info = probe_video(src)
    codec = pick_codec(codec)
    scale = int(getattr(restorer, "scale", 1))
    out_w, out_h = (info.width * scale) // 2 * 2, (info.height * scale) // 2 * 2
    if out_w < 2 or out_h < 2:
        raise VideoError(src, f"frame size {info.width}x{info.height} is too small")
    seg_frames = max(1, round(float(info.rate) * segment_seconds))
    stat = src.stat()
    fingerprint = {
        "source": str(src.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
        "restorer": getattr(restorer, "stem", type(restorer).__name__), "scale": scale,
        "weights": (getattr(restorer, "manifest", None) or {}).get("sha256"),
        "tile": tile, "overlap": overlap, "codec": codec, "crf": int(crf), "size": [out_w, out_h],
    }
    work = work_dir_for(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        man = _Manifest.load_or_create(work, src, fingerprint, seg_frames, resume)
    except OSError as e:
        raise VideoError(dst, f"cannot create work folder {work}: {e.strerror or e}") from None
    resumed_from = man.done_frames
    if resumed_from:
        log(f"{src}: resuming after {resumed_from} frames ({len(man.segments)} segments done)")
    tmp = work / f"output{suffix}.part"  # inside the work folder: a killed run leaves nothing beside it
    try:
        if man.total_frames is None:
            _run_segments(restorer, info, man, codec, int(crf), (out_w, out_h), tile, overlap,
                          progress, on_segment)
        total = man.total_frames
        if info.frames and total < info.frames - max(2, info.frames // 100):
            raise VideoError(src, f"only {total} of the {info.frames} frames it declares could be decoded "
                                  f"(truncated or damaged file?)")
        notes = _mux(info, [work / s["file"] for s in man.segments], tmp, _MUXER[suffix])
        written, seconds = _count_video(tmp)
        if written != total:
            raise VideoError(src, f"frame count check failed: {total} frames decoded, {written} written")
        _publish(tmp, dst)
    except VideoError as e:
        if Path(e.path) == dst:  # e.g. the output appeared meanwhile: the work is still good
            _keep_note(log, src, work, man)
        else:  # the source is at fault (undecodable, truncated): retrying cannot help
            shutil.rmtree(work, ignore_errors=True)
        raise
    except (av.error.FFmpegError, av.codec.codec.UnknownCodecError) as e:
        _keep_note(log, src, work, man)
        raise VideoError(src, f"video processing failed ({_reason(e)})") from None
    except BaseException:
        _keep_note(log, src, work, man)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    shutil.rmtree(work, ignore_errors=True)
    for note in notes:
        log(f"{src}: {note}")
    return {"frames": total, "resumed_frames": resumed_from, "segments": len(man.segments),
            "size": [out_w, out_h], "codec": codec, "crf": int(crf), "duration": round(seconds, 3),
            "seconds": round(time.time() - started, 3), "notes": notes}


def _keep_note(log, src, work: Path, man: _Manifest) -> None:
    with contextlib.suppress(Exception):
        if man.segments:
            log(f"{src}: stopped with {man.done_frames} frames done; run again with --resume to continue "
                f"(work kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _publish(tmp: Path, dst: Path) -> None:
    """Link the finished file into place; never replace a file that appeared meanwhile."""
    try:
        publish_new(tmp, dst)
    except FileExistsError:
        raise VideoError(dst, "exists; refusing to overwrite") from None


# ------------------------------------------------------------------- threads and queues

class _End:
    def __init__(self, frames: int):
        self.frames = frames


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, errors: list):
    while True:
        if errors:
            raise errors[0]
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set() and not errors:
                raise RuntimeError("video pipeline stopped")


def _run_segments(restorer, info: VideoInfo, man: _Manifest, codec: str, crf: int, size: tuple[int, int],
                  tile, overlap, progress: bool, on_segment: ProgressHook | None) -> None:
    """Decode → restore → encode the frames after the finished segments, one segment file at a time."""
    start = man.done_frames
    decoded: queue.Queue = queue.Queue(maxsize=4)
    restored: queue.Queue = queue.Queue(maxsize=2)  # output-size float frames: 100 MB each at 4K
    stop, errors = threading.Event(), []
    decoder = threading.Thread(target=_decode_worker, name="video-decode",
                               args=(info, start, decoded, stop, errors), daemon=True)
    encoder = threading.Thread(target=_encode_worker, name="video-encode",
                               args=(info, man, codec, crf, size, restored, stop, errors, on_segment), daemon=True)
    bar = _bar(info, start) if progress else None
    decoder.start()
    encoder.start()
    ok = False
    try:
        while True:
            item = _get(decoded, stop, errors)
            if isinstance(item, _End):
                _put(restored, item, stop)  # the encoder finishes the last segment
                break
            index, pts, duration, rgb = item
            out = restorer.restore_rgb(rgb, tile=tile, overlap=overlap)
            if not _put(restored, (index, pts, duration, out), stop):
                break
            if bar is not None:
                bar.update(1)
        while encoder.is_alive() and not errors:
            encoder.join(timeout=0.1)
        if errors:
            raise errors[0]
        ok = True
    finally:
        if not ok:
            stop.set()
        for q in (decoded, restored):  # unblock a worker waiting on a full queue
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()
        decoder.join(timeout=10)
        encoder.join(timeout=10)
        if bar is not None:
            bar.close()


def _bar(info: VideoInfo, start: int):
    from tqdm import tqdm

    total = info.frames or (round(info.duration * float(info.rate)) if info.duration else None)
    return tqdm(total=total, initial=start, unit="frame", desc=Path(info.path).name, dynamic_ncols=True,
                leave=False, file=sys.stderr)


def _decode_worker(info: VideoInfo, skip: int, out: queue.Queue, stop: threading.Event, errors: list) -> None:
    import av

    index = 0
    try:
        with av.open(info.path) as container:
            vs = container.streams[info.index]
            vs.thread_type = "AUTO"
            step = max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1
            last = None
            for frame in container.decode(vs):
                if stop.is_set():
                    return
                # Rising, present timestamps whatever the source did (the encoder needs them).
                pts = frame.pts
                if pts is None:
                    pts = 0 if last is None else last + step
                elif last is not None and pts <= last:
                    pts = last + 1
                last = pts
                if index >= skip:
                    item = (index, pts, frame.duration or 0, _frame_to_rgb(frame, info))
                    if not _put(out, item, stop):
                        return
                index += 1
        _put(out, _End(index), stop)
    except av.error.FFmpegError as e:
        errors.append(VideoError(info.path, f"cannot decode frame {index} ({_reason(e)})"))
        stop.set()
    except BaseException as e:  # noqa: BLE001 (handed to the main thread)
        errors.append(e)
        stop.set()


def _frame_to_rgb(frame, info: VideoInfo) -> np.ndarray:
    deep = max((c.bits for c in frame.format.components), default=8) > 8
    fmt = "rgb48le" if deep else "rgb24"
    rng = "JPEG" if info.color_range == _AVCOL_RANGE_JPEG else "MPEG"
    rgb = frame.reformat(format=fmt, src_colorspace=info.matrix, src_color_range=rng, threads=1).to_ndarray()
    out = rgb.astype(np.float32)
    out *= 1.0 / (65535.0 if deep else 255.0)
    return out


class _SegmentWriter:
    """One segment: an mp4 holding frames [first, first + n) encoded on their own."""

    def __init__(self, path: Path, info: VideoInfo, codec: str, crf: int, size: tuple[int, int]):
        import av

        self.path, self.info, self.size = path, info, size
        self.frames, self.first_pts, self.last_pts = 0, None, None
        self.container = av.open(str(path), "w", format=_SEGMENT_MUXER, options=_mov_options(info.time_base))
        try:
            st = self.container.add_stream(codec, rate=info.rate, options=_encoder_options(codec, crf))
            st.width, st.height = size
            st.pix_fmt = "yuv420p"
            cc = st.codec_context
            cc.time_base = info.time_base
            st.time_base = info.time_base
            cc.framerate = info.rate
            with contextlib.suppress(AttributeError, ValueError):
                cc.max_b_frames = 0
            cc.colorspace = info.colorspace
            cc.color_range = info.color_range
            if info.color_primaries not in (0, 2):  # leave "unspecified" alone
                cc.color_primaries = info.color_primaries
            if info.color_trc not in (0, 2):
                cc.color_trc = info.color_trc
            self.stream = st
        except BaseException:
            self.container.close()
            raise

    def write(self, rgb: np.ndarray, pts: int, duration: int = 0) -> None:
        import av

        w, h = self.size
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < h or rgb.shape[1] < w:
            raise ValueError(f"the restorer returned a {rgb.shape} frame; expected at least {h}x{w}x3")
        x = np.asarray(rgb[:h, :w], dtype=np.float32) * 255.0  # a new array: safe to work in place
        np.nan_to_num(x, copy=False, nan=0.0)
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(x.astype(np.uint8)), format="rgb24")
        rng = "JPEG" if self.info.color_range == _AVCOL_RANGE_JPEG else "MPEG"
        frame = frame.reformat(format="yuv420p", dst_colorspace=self.info.matrix, dst_color_range=rng,
                               threads=1)
        frame.pts = pts
        frame.time_base = self.info.time_base
        if duration:
            frame.duration = duration  # the last frame's length survives into the packet
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        self.first_pts = pts if self.first_pts is None else self.first_pts
        self.last_pts = pts

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()
        self.path.unlink(missing_ok=True)


def _mov_options(time_base: Fraction) -> dict[str, str]:
    """mp4/mov options that keep timestamps exact: a start offset is an edit list in the *movie*
    timescale, 1/1000 s by default, so a video starting at, say, 8192/15360 s would come back a
    few ticks early. Both timescales become a multiple of the time base's denominator."""
    scale = Fraction(time_base).denominator
    while scale < 10000:
        scale *= 2
    return {"video_track_timescale": str(scale), "movie_timescale": str(scale)}


def _encoder_options(codec: str, crf: int) -> dict[str, str]:
    if codec == "libx264":
        return {"crf": str(crf), "preset": "medium", "bf": "0"}
    if codec == "libx265":
        return {"crf": str(crf), "preset": "medium", "x265-params": "bframes=0:log-level=error"}
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0", "row-mt": "1"}
    if codec == "libsvtav1":
        return {"crf": str(crf), "preset": "8"}
    if codec in ("mpeg4", "mpeg2video", "mpeg1video", "msmpeg4", "msmpeg4v2", "h263p"):
        q = min(31, max(2, round(crf / 6)))  # crf 18 → q 3: visually lossless-ish
        return {"flags": "+qscale", "global_quality": str(q * 118), "bf": "0"}  # 118 = FF_QP2LAMBDA
    return {}


def _encode_worker(info: VideoInfo, man: _Manifest, codec: str, crf: int, size: tuple[int, int],
                   inbox: queue.Queue, stop: threading.Event, errors: list, on_segment: ProgressHook | None) -> None:
    n = man.segment_frames
    writer: _SegmentWriter | None = None
    try:
        while True:
            item = _get(inbox, stop, errors)
            if isinstance(item, _End):
                if writer is not None and writer.frames:
                    _finish_segment(writer, man, on_segment, total=item.frames)
                    writer = None
                else:
                    man.data["total_frames"] = item.frames
                    man.save()
                return
            index, pts, duration, rgb = item
            seg = index // n
            if writer is None:
                if index != seg * n or seg != len(man.segments):
                    raise RuntimeError(f"segment {seg} would start at frame {index}, not {seg * n}")
                writer = _SegmentWriter(man.work / f"seg{seg:06d}.mp4.part", info, codec, crf, size)
            writer.write(rgb, pts, duration)
            if writer.frames == n:
                _finish_segment(writer, man, on_segment)
                writer = None
    except BaseException as e:  # noqa: BLE001 (handed to the main thread)
        if writer is not None:
            writer.abort()
        if not (isinstance(e, RuntimeError) and str(e) == "video pipeline stopped" and errors):
            errors.append(e)
        stop.set()


def _finish_segment(writer: _SegmentWriter, man: _Manifest, on_segment: ProgressHook | None,
                    total: int | None = None) -> None:
    writer.close()
    index = len(man.segments)
    final = writer.path.with_name(writer.path.name.removesuffix(".part"))
    os.replace(writer.path, final)
    man.add({"index": index, "file": final.name, "first_frame": index * man.segment_frames,
             "frames": writer.frames, "first_pts": writer.first_pts, "last_pts": writer.last_pts,
             "bytes": final.stat().st_size}, total_frames=total)
    if on_segment is not None:
        on_segment(index)


# ---------------------------------------------------------------------------- muxing

def _mux(info: VideoInfo, segments: list[Path], tmp: Path, muxer: str) -> list[str]:
    """Join the segments' video packets with the source's other streams into `tmp`; notes back."""
    import av

    if not segments:
        raise VideoError(info.path, "no frames could be decoded")
    notes: list[str] = []
    options = _mov_options(info.time_base) if muxer in ("mp4", "mov") else {}
    with av.open(info.path) as source, av.open(str(tmp), "w", format=muxer, options=options) as out:
        with av.open(str(segments[0])) as first:
            template = first.streams.video[0]
            ov = out.add_stream_from_template(template, opaque=True)  # a remux: no encoder needed
            extradata = template.codec_context.extradata
        _copy_metadata(source.streams[info.index], ov)
        if info.rotation:
            ov.set_display_rotation(info.rotation)
        for key, value in source.metadata.items():
            if key.lower() not in ("major_brand", "minor_version", "compatible_brands", "encoder", "duration"):
                out.metadata[key] = value

        copies: dict[int, object] = {}
        transcodes: dict[int, object] = {}
        for s in source.streams:
            if s.index == info.index:
                continue
            label = f"{s.type} stream #{s.index} ({s.codec_context.name if s.codec_context else '?'})"
            if s.type in ("audio", "subtitle") and _muxer_accepts(muxer, s):
                o = out.add_stream_from_template(s)
                _copy_metadata(s, o)
                copies[s.index] = o
            elif s.type == "audio" and s.codec_context and s.codec_context.sample_rate:
                o = out.add_stream("aac", rate=s.codec_context.sample_rate)
                # The channel count's standard layout: some decoders report an unordered one.
                o.layout = _AAC_LAYOUTS.get(s.codec_context.channels or 2, "stereo")
                _copy_metadata(s, o)
                transcodes[s.index] = o
                notes.append(f"{label}: the .{muxer} container refuses it; re-encoded to AAC")
            elif s.type == "attachment" and muxer == "matroska":
                with contextlib.suppress(Exception):
                    out.add_attachment(s.metadata.get("filename", f"attachment{s.index}"),
                                       s.mimetype or "application/octet-stream", s.data)
                    continue
                notes.append(f"{label}: could not be kept")
            else:
                notes.append(f"{label}: left out (cannot be stored in .{muxer})")

        video_packets = _segment_packets(segments, ov, extradata, info)
        other_packets = _source_packets(source, copies, transcodes)
        for _, _, packet, stream in heapq.merge(video_packets, other_packets, key=lambda x: (x[0], x[1])):
            packet.stream = stream
            out.mux(packet)
    return notes


def _copy_metadata(src_stream, dst_stream) -> None:
    for key in ("language", "title", "handler_name"):
        value = src_stream.metadata.get(key)
        if value:
            dst_stream.metadata[key] = value
    with contextlib.suppress(Exception):
        dst_stream.disposition = src_stream.disposition


def _seconds(packet) -> float:
    ts = packet.dts if packet.dts is not None else packet.pts
    return float(ts * packet.time_base) if ts is not None and packet.time_base else 0.0


def _segment_packets(segments: list[Path], stream, extradata, info: VideoInfo):
    import av

    order = 0
    for path in segments:
        with av.open(str(path)) as seg:
            vs = seg.streams.video[0]
            if vs.codec_context.extradata != extradata:
                raise VideoError(info.path, f"segment {path.name} was encoded with different settings; "
                                            f"delete {path.parent} to start over")
            for packet in seg.demux(vs):
                if packet.size == 0:
                    continue
                order += 1
                yield _seconds(packet), order, packet, stream


def _source_packets(source, copies: dict, transcodes: dict):
    """The source's kept streams in demux order; refused audio decoded and re-encoded on the way."""
    if not copies and not transcodes:
        return
    streams = [s for s in source.streams if s.index in copies or s.index in transcodes]
    order = 0
    for packet in source.demux(*streams):
        idx = packet.stream.index
        if idx in copies:
            if packet.size == 0 or (packet.dts is None and packet.pts is None):
                continue
            order += 1
            yield _seconds(packet), order, packet, copies[idx]
            continue
        encoder = transcodes[idx]
        frames = packet.decode() if packet.size else packet.stream.codec_context.decode(None)
        for frame in frames:
            for out_packet in encoder.encode(frame):
                order += 1
                yield _seconds(out_packet), order, out_packet, encoder
    for encoder in transcodes.values():
        for out_packet in encoder.encode(None):
            order += 1
            yield _seconds(out_packet), order, out_packet, encoder


def _muxer_accepts(muxer: str, stream) -> bool:
    """Whether `muxer` takes this stream as it is (found by writing a header to memory)."""
    import av

    buf = io.BytesIO()
    try:
        probe = av.open(buf, "w", format=muxer)
    except Exception:
        return False
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            probe.close()


def _count_video(path: Path) -> tuple[int, float]:
    """(video packets, seconds from the first frame's start to the last frame's end) in a file."""
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        count, first, end = 0, None, None
        for packet in c.demux(vs):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None:
                t = float(packet.pts * vs.time_base)
                first = t if first is None else min(first, t)
                t_end = t + float((packet.duration or 0) * vs.time_base)
                end = t_end if end is None else max(end, t_end)
    return count, (end - first) if count and first is not None else 0.0


# ---------------------------------------------------------------------------- test clips

def make_test_clip(path, *, size: tuple[int, int] = (32, 24), frames: int = 20, fps: int = 15,
                   audio: str | None = "aac", vfr: bool = False, subtitles: bool = False,
                   rotation: int = 0, codec: str = "libx264") -> Path:
    """Write a short synthetic clip for tests and demos; the container follows the suffix.

    Frame i is a horizontal red ramp with green level round(255 * i / (frames - 1)) (so frames
    can be told apart after lossy coding) and a blue line moving down. `audio` is an encoder
    name (aac, libopus, pcm_s16le, adpcm_ms, ...) playing a 440 Hz tone for the clip's length;
    `vfr` spaces frames 1, 1, 1.5 frame periods apart in turn; `subtitles` adds one text cue
    (SubRip in .mkv, mov_text in .mp4/.mov); `rotation` sets the display rotation.
    """
    import av

    path = Path(path)
    w, h = size
    ticks = 2 if vfr else 1  # VFR: a time base of half a frame period
    tb = Fraction(1, fps * ticks)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = tb
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            aus = out.add_stream(audio, rate=48000)
            aus.layout = "mono"
        sub = None
        if subtitles:
            sub = out.add_mux_stream("subrip" if path.suffix.lower() == ".mkv" else "mov_text",
                                     time_base=Fraction(1, 1000))
            sub.metadata["language"] = "eng"
        pts = 0
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (np.arange(w) * 255 // max(1, w - 1))[None, :]
            img[..., 1] = round(255 * i / max(1, frames - 1))
            img[(i * 2) % h, :, 2] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p", threads=1)
            frame.pts, frame.time_base = pts, tb
            pts += (3 if i % 3 == 2 else 2) if vfr else 1
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if aus is not None:
            rate = 48000
            n = int(rate * pts * tb)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
            for k in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, k, Fraction(1, rate)
                for packet in aus.encode(frame):
                    out.mux(packet)
            for packet in aus.encode(None):
                out.mux(packet)
        if sub is not None:
            text = b"restore test cue"
            data = text if path.suffix.lower() == ".mkv" else len(text).to_bytes(2, "big") + text
            packet = av.Packet(data)
            packet.stream = sub
            packet.pts = packet.dts = 0
            packet.duration = 500
            packet.time_base = Fraction(1, 1000)
            out.mux(packet)
    return path
