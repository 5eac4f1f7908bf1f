"""Gradio web UI: Image, Video, Webcam and Compare tabs over `restore.api`.

    from restore.ui import build_demo, launch
    launch(build_demo())            # what `python app.py` and `restore ui` do

Everything the tabs do goes through the same pipeline as the CLI (`restore.api`,
`restore.io.images`, `restore.io.video`, `restore.pipeline.governor`); nothing here
re-implements restoration, tiling or file I/O.  The controls are built from the registry, so
a newly registered restorer (its variants, scales, extra inputs and routing subnets) shows up
without touching this file.

Each handler is a method of `UIState` with plain Python arguments, so tests can call it
directly; `build_demo` wires them to components.  Every failure reaches the browser as a
one-line `gr.Error`, never as a traceback (the traceback goes to the server log).
"""
from __future__ import annotations

import functools
import inspect
import logging
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gradio as gr

from restore import registry
from restore.io.images import ImageError, Picture, read_image, write_image
from restore.weights import WeightsError, find_weights

log = logging.getLogger("restore.ui")

BACKENDS = ("auto", "onnxruntime", "torch")
ROUTING_LEVELS = ("off", "quality", "balanced", "fast")
QUEUE_MAX_SIZE = 16  # waiting requests beyond this are refused with "queue full"
MAX_FILE_SIZE = "500mb"  # uploads (videos included)
PREVIEW_MAX_SIDE = 4096  # the on-page slider is capped; the download is always full size
CACHE_SIZE = 4  # loaded restorers kept in memory (each holds a model and an engine)
OUTPUT_TTL_S = 3600  # our temp result files older than this are removed
LIVE_STREAM_EVERY = 0.1  # seconds between webcam frames sent by the browser
# Ask the browser for a small camera picture: on a CPU the restorer cannot keep up with 720p.
LIVE_CAMERA = {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}
LIVE_TIME_LIMIT = 600  # seconds one webcam stream may run before the browser must restart it

# Extra inputs a restorer may declare (RestorerSpec.extras) -> how the UI asks for them.
# An extra not listed here still gets a generic number box, so a new restorer is usable at once.
EXTRA_CONTROLS = {
    "noise_level": lambda **kw: gr.Slider(0, 75, value=0, step=1, label="Noise level σ (0–255 scale)",
                                          info="how strong the noise in the photo is, if you know it "
                                               "(0 = let the network judge)", **kw),
    "mask": lambda **kw: gr.ImageMask(label="Mask: paint the area to restore", type="numpy",
                                      sources=["upload", "clipboard"], layers=False, **kw),
}


def _extra_control(name: str, visible: bool):
    make = EXTRA_CONTROLS.get(name)
    if make is None:  # an extra this UI does not know yet: a plain number box
        return gr.Number(0, label=name.replace("_", " "), visible=visible, elem_id=f"extra-{name}")
    return make(visible=visible, elem_id=f"extra-{name}")


CSS = """
#backend-box textarea {font-family: ui-monospace, monospace;}
.note {opacity: 0.75; font-size: 0.9em;}
"""


# ------------------------------------------------------------------------------- small helpers

class UserError(Exception):
    """A problem to show the user as-is (one line)."""


def one_line(message: str, limit: int = 300) -> str:
    line = " ".join(str(message).strip().splitlines()[:1]) or "failed"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _user_message(e: BaseException) -> str:
    if isinstance(e, ImageError):  # uploads live under random temp folders: show the file name only
        return f"{Path(str(e.path)).name}: {e.reason}"
    if isinstance(e, MemoryError):
        return "out of memory: try a smaller image, a smaller tile or another restorer"
    if isinstance(e, (UserError, WeightsError, registry.UnknownRestorer, ValueError, RuntimeError, OSError)):
        return str(e)
    return f"unexpected {type(e).__name__}: {e}"


def user_errors(fn):
    """Turn any exception into a one-line gr.Error (the traceback goes to the server log only)."""

    @functools.wraps(fn)  # keeps the signature, so gr.Progress defaults are still found
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - the browser gets one line whatever happened
            if not isinstance(e, (UserError, ImageError, WeightsError, registry.UnknownRestorer, ValueError)):
                log.exception("%s failed", fn.__name__)
            raise gr.Error(one_line(_user_message(e)), print_exception=False) from None

    return wrapper


def to_uint8(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """float [0,1] HxWx3 (+ HxW alpha) -> uint8 HxWx3 or HxWx4 for display."""
    planes = rgb if alpha is None else np.concatenate([rgb, alpha[..., None]], axis=2)
    return np.rint(np.clip(np.nan_to_num(planes), 0.0, 1.0) * 255).astype(np.uint8)


def resize_to(img: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_CUBIC if h >= img.shape[0] else cv2.INTER_AREA)
    out = cv2.resize(img, (w, h), interpolation=interp)
    return out if out.ndim == img.ndim else out[..., None]


def cap_preview(img: np.ndarray, limit: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= limit:
        return img
    f = limit / max(h, w)
    return resize_to(img, (max(1, round(h * f)), max(1, round(w * f))))


def routing_overlay(display: np.ndarray, routing_map: np.ndarray, strength: float = 0.35) -> np.ndarray:
    """Tint a display image by subnet index per patch (green = cheapest subnet ... red = largest)."""
    rmap = np.asarray(routing_map)
    levels = max(1, int(rmap.max()))
    t = resize_to((rmap.astype(np.float32) / levels)[..., None], display.shape[:2], nearest=True)[..., 0]
    tint = np.stack([t, 1.0 - t, np.zeros_like(t)], axis=-1) * 255
    out = display.astype(np.float32)
    out[..., :3] = (1 - strength) * out[..., :3] + strength * tint
    return np.rint(out).astype(np.uint8)


def _describe(pic: Picture) -> str:
    h, w = pic.rgb.shape[:2]
    kind = "gray" if pic.gray else "RGB"
    return f"{w}×{h} {pic.bit_depth}-bit {kind}{' + alpha' if pic.alpha is not None else ''}"


def _stem_of(path) -> str:
    return Path(str(path)).stem or "image"


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _progress(progress, fraction: float, desc: str) -> None:
    if progress is not None:
        try:
            progress(fraction, desc=desc)
        except Exception:  # noqa: BLE001 - a Progress not bound to an event (direct calls in tests)
            pass


def file_image(**kwargs) -> gr.Image:
    """gr.Image(type="filepath") that hands over the uploaded file untouched.

    Stock gr.Image opens every upload with Pillow before our handler runs, so a damaged file
    fails inside Gradio with a generic message. This one passes the path straight on; our
    read_image then validates it and explains the problem in one line.  (The override is
    per instance: a gr.Image subclass would make Gradio write a .pyi stub beside this file.)
    """
    img = gr.Image(type="filepath", **kwargs)
    stock = img.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return stock(payload)

    img.preprocess = preprocess
    return img


# ----------------------------------------------------------------------------- registry → choices

DEFAULT_RESTORER = "lipt"  # the CLI's default too; the others follow by name


def specs() -> list[registry.RestorerSpec]:
    return sorted(registry.all_specs(), key=lambda s: (s.name != DEFAULT_RESTORER, s.name))


def picker_tasks(spec: registry.RestorerSpec) -> list[str]:
    """The tasks offered in the restorer picker: all of a restorer's same-size tasks, or "sr" for
    an SR restorer (a multi-task restorer's SR head is reached with the CLI's --task sr)."""
    same_size = [t for t in spec.all_tasks if t != "sr"]
    return same_size if spec.task != "sr" else ["sr"]


def choice_value(spec: registry.RestorerSpec, task: str) -> str:
    """The picker's value for a restorer and task: "iptv2" (its default task) or "iptv2:deblur"."""
    return spec.name if task == spec.task else f"{spec.name}:{task}"


def parse_choice(value: str) -> tuple[registry.RestorerSpec, str]:
    name, _, task = str(value).partition(":")
    spec = registry.get(name)
    task = task or spec.task
    if task not in spec.all_tasks:
        raise UserError(f"{spec.name} has no task {task!r}")
    return spec, task


def has_weights(spec: registry.RestorerSpec, variant: str, scale: int, task: str | None = None) -> bool:
    try:
        task = spec.check_task(task, scale)
    except ValueError:
        return False
    return find_weights(spec.name, variant, scale, task) is not None


def restorer_choices() -> list[tuple[str, str]]:
    return [(f"{s.name} — {t}: {s.summary}", choice_value(s, t)) for s in specs() for t in picker_tasks(s)]


def task_scales(spec: registry.RestorerSpec, task: str | None = None) -> list[int]:
    task = task or spec.task
    return [s for s in spec.scales if (s > 1) == (task == "sr")] or [spec.default_scale]


def variant_choices(spec: registry.RestorerSpec, task: str | None = None) -> list[tuple[str, str]]:
    out = []
    for v in spec.variants:
        trained = any(has_weights(spec, v, s, task) for s in task_scales(spec, task))
        out.append((v if trained else f"{v} (no weights yet)", v))
    return out


def scale_choices(spec: registry.RestorerSpec, variant: str, task: str | None = None) -> list[tuple[str, int]]:
    if (task or spec.task) != "sr":
        return [("1× (same size)", s) for s in task_scales(spec, task)]
    return [(f"×{s}" if has_weights(spec, variant, s) else f"×{s} (no weights yet)", s)
            for s in task_scales(spec, task)]


def default_scale(spec: registry.RestorerSpec, variant: str, task: str | None = None) -> int:
    scales = task_scales(spec, task)
    if spec.default_scale in scales and has_weights(spec, variant, spec.default_scale, task):
        return spec.default_scale
    trained = [s for s in scales if has_weights(spec, variant, s, task)]
    return trained[0] if trained else scales[0]


def candidate_key(name: str, variant: str, scale: int) -> str:
    return f"{name}/{variant}/{scale}"


def parse_candidate(key: str) -> tuple[str, str, int]:
    try:
        name, variant, scale = str(key).split("/")
        return name, variant, int(scale)
    except ValueError:
        raise UserError(f"bad restorer choice {key!r} (expected name/variant/scale)") from None


def candidate_choices() -> list[tuple[str, str]]:
    out = []
    for spec in specs():
        for task in picker_tasks(spec):
            shown = spec.name if task == "sr" else f"{spec.name} {task}"
            for v in spec.variants:
                for s in task_scales(spec, task):
                    label = f"{shown} · {v} · ×{s}" + ("" if has_weights(spec, v, s, task) else " (no weights)")
                    out.append((label, candidate_key(choice_value(spec, task), v, s)))
    return out


def extra_names() -> list[str]:
    """Every extra input declared by any restorer, in first-seen order."""
    seen: dict[str, None] = {}
    for spec in specs():
        for e in spec.extras:
            seen.setdefault(e, None)
    return list(seen)


def _mask_from_editor(value, hw: tuple[int, int]) -> np.ndarray | None:
    """gr.ImageMask value -> float HxW mask in [0,1] at the image size (painted = 1)."""
    if value is None:
        return None
    if isinstance(value, dict):
        layers = [x for x in value.get("layers") or [] if x is not None]
        if layers:
            layer = np.asarray(layers[0])
            m = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer.mean(axis=-1) if layer.ndim == 3 else layer
        elif value.get("composite") is not None:
            c = np.asarray(value["composite"])
            m = c.mean(axis=-1) if c.ndim == 3 else c
        else:
            return None
    else:
        a = np.asarray(value)
        m = a.mean(axis=-1) if a.ndim == 3 else a
    m = (m.astype(np.float32) > 0).astype(np.float32)
    return resize_to(m, hw, nearest=True)


# ---------------------------------------------------------------------------------- the state

@dataclass
class ImageResult:
    before: np.ndarray  # uint8, input resized to the output size (display)
    after: np.ndarray  # uint8, the result (display, maybe routing-tinted, capped in size)
    png: Path  # full-fidelity result (source bit depth, alpha, ICC, EXIF)
    backend: str
    info: str
    picture: Picture  # the full result


@dataclass
class LiveSession:
    """Per-browser-tab state of the webcam tab (kept in gr.State)."""
    governor: object | None = None  # restore.pipeline.governor.FrameGovernor
    key: tuple | None = None  # (restorer stem, backend, target fps) the governor was made for


class UIState:
    """Settings and the restorer cache shared by all tabs of one app."""

    def __init__(self, backend: str = "auto", allow_untrained: bool = False, engines_dir=None,
                 threads: int | None = None, cache_size: int = CACHE_SIZE, output_dir=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.backend = backend
        self.allow_untrained = allow_untrained
        self.engines_dir = engines_dir
        self.threads = threads
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()  # guards the two dicts, never held while loading
        self._loading: dict[tuple, threading.Lock] = {}  # one lock per restorer being loaded
        self.output_root = Path(output_dir or tempfile.mkdtemp(prefix="restore-ui-"))

    # -- restorers ------------------------------------------------------------------------
    def restorer(self, name: str, variant: str | None, scale, backend: str | None = None):
        """(Restorer, seconds spent loading: 0 when cached), keyed by (name, variant, scale, backend)."""
        from restore.api import load_restorer

        spec, task = parse_choice(name)
        variant = spec.check_variant(variant or None)
        scale = spec.check_scale(int(scale) if scale not in (None, "") else task_scales(spec, task)[0])
        backend = backend or self.backend
        key = (choice_value(spec, task), variant, scale, backend)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], 0.0
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # a second request for the same key waits for this load and reuses it
            with self._lock:
                if key in self._cache:
                    return self._cache[key], 0.0
            t0 = time.perf_counter()
            r = load_restorer(spec.name, variant, scale, backend=backend, threads=self.threads,
                              allow_untrained=self.allow_untrained, engines_dir=self.engines_dir, task=task)
            with self._lock:
                self._cache[key] = r
                self._loading.pop(key, None)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return r, time.perf_counter() - t0

    def is_cached(self, name, variant, scale, backend=None) -> bool:
        return (name, variant, int(scale), backend or self.backend) in self._cache

    def _load_note(self, name, variant, scale, backend) -> str:
        b = backend or self.backend
        slow = b in ("auto", "onnxruntime")
        return f"loading {name}-{variant} ×{scale}" + (" (first use exports ONNX: ~30 s)" if slow else "")

    # -- outputs --------------------------------------------------------------------------
    def new_output_dir(self) -> Path:
        """A fresh folder for one result; folders older than OUTPUT_TTL_S are removed."""
        self.output_root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.output_root.iterdir():
            try:
                if now - old.stat().st_mtime > OUTPUT_TTL_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(dir=self.output_root))

    # -- image ----------------------------------------------------------------------------
    def run_picture(self, restorer, picture: Picture, routing: str = "off", extras: dict | None = None):
        spec = restorer.spec
        kwargs = {}
        if routing and routing != "off":
            if not spec.subnets:
                raise UserError(f"{spec.name} has no subnets to route between; set routing to off")
            if not _accepts(restorer.restore_picture, "routing"):
                raise UserError("routing is not available in this version of the pipeline; set routing to off")
            kwargs["routing"] = routing
        for name in spec.extras:
            value = (extras or {}).get(name)
            if name == "mask":
                value = _mask_from_editor(value, picture.rgb.shape[:2])
            if name == "noise_level" and value is not None and float(value) <= 0:
                value = None  # 0 on the slider means "let the network judge" (blind)
            if value is None:
                continue
            if not _accepts(restorer.restore_picture, name):
                raise UserError(f"{spec.name}: the pipeline does not take the extra input {name!r} yet")
            kwargs[name] = value
        return restorer.restore_picture(picture, **kwargs)

    def restore_image(self, path, name: str, variant: str, scale, backend: str | None = None,
                      routing: str = "off", overlay: bool = False, extras: dict | None = None,
                      progress=None, ensemble: bool = False) -> ImageResult:
        if not path:
            raise UserError("upload an image first")
        _progress(progress, 0.0, "reading image")
        picture = read_image(path)
        if not self.is_cached(name, variant, scale, backend):
            _progress(progress, 0.1, self._load_note(name, variant, scale, backend))
        restorer, load_s = self.restorer(name, variant, scale, backend)
        if ensemble:  # a per-call copy; the cached restorer stays single-pass
            restorer = restorer.with_ensemble()
        _progress(progress, 0.5, f"restoring on {restorer.backend}" + (" (self-ensemble: 8 passes)" if ensemble else ""))
        t0 = time.perf_counter()
        result = self.run_picture(restorer, picture, routing, extras)
        seconds = time.perf_counter() - t0
        _progress(progress, 0.9, "writing PNG")
        out_dir = self.new_output_dir()
        png = write_image(out_dir / f"{_stem_of(picture.source or path)}-{restorer.stem}.png", result, overwrite=True)
        h, w = result.rgb.shape[:2]
        after = cap_preview(to_uint8(result.rgb, result.alpha))
        before = resize_to(to_uint8(picture.rgb, picture.alpha), after.shape[:2])
        routing_map = getattr(result, "routing_map", None)
        notes = []
        if overlay:
            if routing_map is None:
                notes.append("no routing map for this run (routing is off or unavailable)")
            else:
                after = routing_overlay(after, routing_map)
        if after.shape[:2] != (h, w):
            notes.append(f"preview shrunk to {after.shape[1]}×{after.shape[0]}; the download is full size")
        info = (f"**{restorer.stem}**{' + self-ensemble' if ensemble else ''} on **{restorer.backend}** · {_describe(picture)} → {w}×{h} · "
                f"{seconds:.2f} s" + (f" (+{load_s:.1f} s loading)" if load_s > 0.05 else "")
                + f" · download: {result.bit_depth}-bit PNG")
        if notes:
            info += "\n\n" + "\n".join(f"- {n}" for n in notes)
        return ImageResult(before, after, png, restorer.backend, info, result)

    # -- compare --------------------------------------------------------------------------
    @staticmethod
    def crop_box(shape_hw, x, y, size) -> tuple[int, int, int, int]:
        """(x, y, w, h) of a square crop of `size` at top-left (x, y), clamped inside the image."""
        h, w = shape_hw
        size = int(max(1, min(int(size or 1), h, w)))
        x = int(min(max(0, int(x or 0)), w - size))
        y = int(min(max(0, int(y or 0)), h - size))
        return x, y, size, size

    def crop_preview(self, path, x, y, size) -> np.ndarray | None:
        """The image with the crop outlined (for the compare tab)."""
        if not path:
            return None
        pic = read_image(path)
        disp = to_uint8(pic.rgb)
        bx, by, bw, bh = self.crop_box(pic.rgb.shape[:2], x, y, size)
        t = max(1, round(max(disp.shape[:2]) / 300))
        colour = np.array([255, 40, 200], np.uint8)
        disp[by:by + bh, bx:bx + t] = colour
        disp[by:by + bh, max(bx, bx + bw - t):bx + bw] = colour
        disp[by:by + t, bx:bx + bw] = colour
        disp[max(by, by + bh - t):by + bh, bx:bx + bw] = colour
        return cap_preview(disp, 2048)

    def compare(self, path, x, y, size, candidates, backend: str | None = None, progress=None):
        """Run each candidate ("name/variant/scale") on the crop.

        Returns ([(uint8 image, caption)], markdown summary, [candidate keys that ran]).
        """
        if not path:
            raise UserError("upload an image first")
        if not candidates:
            raise UserError("tick at least one restorer to compare")
        picture = read_image(path)
        bx, by, bw, bh = self.crop_box(picture.rgb.shape[:2], x, y, size)
        crop = Picture(rgb=np.ascontiguousarray(picture.rgb[by:by + bh, bx:bx + bw]),
                       alpha=None if picture.alpha is None else np.ascontiguousarray(picture.alpha[by:by + bh, bx:bx + bw]),
                       bit_depth=picture.bit_depth, gray=picture.gray, source=picture.source)
        items, rows, ran, failed = [], [], [], []
        for i, key in enumerate(candidates):
            name, variant, scale = parse_candidate(key)
            _progress(progress, i / len(candidates), f"{name}-{variant} ×{scale}")
            try:
                restorer, load_s = self.restorer(name, variant, scale, backend)
                t0 = time.perf_counter()
                result = self.run_picture(restorer, crop)
                seconds = time.perf_counter() - t0
            except (UserError, ImageError, WeightsError, registry.UnknownRestorer, ValueError, RuntimeError) as e:
                failed.append(f"- {name} · {variant} · ×{scale}: {one_line(_user_message(e))}")
                continue
            caption = f"{name} · {variant} · ×{scale} — {seconds * 1000:.0f} ms on {restorer.backend}"
            items.append((to_uint8(result.rgb, result.alpha), caption))
            rows.append(f"| {name} | {variant} | ×{scale} | {restorer.backend} | {seconds * 1000:.0f} ms"
                        f"{f' (+{load_s:.1f} s load)' if load_s > 0.05 else ''} |")
            ran.append(key)
        if not items:
            raise UserError("no restorer could run: " + "; ".join(f.lstrip("- ") for f in failed))
        md = (f"Crop {bw}×{bh} at ({bx}, {by}) of {_describe(picture)}\n\n"
              "| restorer | variant | scale | backend | time |\n|---|---|---|---|---|\n" + "\n".join(rows))
        if failed:
            md += "\n\nSkipped:\n" + "\n".join(failed)
        return items, md, ran

    # -- webcam ---------------------------------------------------------------------------
    def live_frame(self, frame, name, variant, scale, backend, target_fps, session: LiveSession | None):
        """One webcam frame -> (restored uint8 frame or None if dropped, status line, session)."""
        session = session if isinstance(session, LiveSession) else LiveSession()
        if frame is None:
            return None, "waiting for the camera…", session
        out, status = _live_step(self, session, np.asarray(frame), name, variant, scale, backend, target_fps)
        return out, status, session  # out is None when the governor dropped the frame

    # -- video ----------------------------------------------------------------------------
    def restore_video(self, path, name, variant, scale, backend=None, progress=None):
        return _restore_video(self, path, name, variant, scale, backend, progress)


# ------------------------------------------------------------------------- video and webcam

def _video_module():
    try:
        from restore.io import video
    except ImportError:
        return None
    return video


def _governor_module():
    try:
        from restore.pipeline import governor
    except ImportError:
        return None
    return governor


class _FrameMeter:
    """Wraps a Restorer for restore_video: counts frames and reports progress with fps and ETA.

    restore_video calls restore_rgb in the caller's thread, so gr.Progress works from here.
    """

    def __init__(self, restorer, total: int | None, progress, start_frame: int = 0):
        self._r, self.total, self._progress = restorer, total or None, progress
        self.done = start_frame
        self._t0 = time.perf_counter()
        self._shown = 0.0

    def __getattr__(self, name):  # scale, stem, manifest, ... come from the real restorer
        return getattr(self._r, name)

    def restore_rgb(self, rgb, **kwargs):
        out = self._r.restore_rgb(rgb, **kwargs)
        self.done += 1
        now = time.perf_counter()
        if now - self._shown >= 0.25 or self.done == self.total:
            self._shown = now
            fps = self.done / max(now - self._t0, 1e-9)
            desc = f"{fps:.2f} fps"
            if self.total:
                left = max(0, self.total - self.done) / max(fps, 1e-9)
                desc += f" · ETA {int(left // 60)}:{int(left % 60):02d}"
            if self._progress is not None:
                try:
                    self._progress((self.done, self.total), desc=desc, unit="frames")
                except Exception:  # noqa: BLE001 - not bound to an event (direct calls)
                    pass
        return out

    @property
    def fps(self) -> float:
        return self.done / max(time.perf_counter() - self._t0, 1e-9)


def _restore_video(ui: UIState, path, name, variant, scale, backend, progress):
    video = _video_module()
    if video is None:
        raise UserError("video support is not installed in this build (restore/io/video.py is missing)")
    if not path:
        raise UserError("upload a video first")
    info = video.probe_video(path)
    total = info.frames or (round(info.duration * float(info.rate)) if info.duration else None)
    if not ui.is_cached(name, variant, scale, backend):
        _progress(progress, 0.0, ui._load_note(name, variant, scale, backend))
    restorer, load_s = ui.restorer(name, variant, scale, backend)
    _progress(progress, 0.0, f"restoring {total or '?'} frames on {restorer.backend}")
    dst = ui.new_output_dir() / f"{_stem_of(path)}-{restorer.stem}.mp4"
    meter = _FrameMeter(restorer, total, progress)
    notes: list[str] = []
    t0 = time.perf_counter()
    summary = video.restore_video(meter, path, dst, log=notes.append)
    seconds = time.perf_counter() - t0
    audio = sum(1 for st in info.streams if st.get("type") == "audio")
    w, h = summary.get("size", (0, 0))
    frames = summary.get("frames", meter.done)
    text = (f"**{restorer.stem}** on **{restorer.backend}** · {info.width}×{info.height} → {w}×{h} · "
            f"{frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} fps)"
            + (f" (+{load_s:.1f} s loading)" if load_s > 0.05 else "")
            + f" · {summary.get('codec', '?')} CRF {summary.get('crf', '?')} · "
            + (f"{audio} audio stream{'s' if audio != 1 else ''} kept" if audio else "no audio in the source"))
    all_notes = [*summary.get("notes", []), *(n.split(": ", 1)[-1] for n in notes)]
    if all_notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in dict.fromkeys(all_notes))
    return dst, text


def _live_step(ui: UIState, session: LiveSession, frame, name, variant, scale, backend, target_fps):
    """Restore one webcam frame under the frame-deadline governor.

    Returns (restored uint8 frame, or None when the governor dropped this frame; status line).
    A new governor starts when the restorer or the target changes.
    """
    gov_mod = _governor_module()
    if gov_mod is None:
        raise UserError("live restoration is not installed in this build (restore/pipeline/governor.py is missing)")
    restorer, _ = ui.restorer(name, variant, scale, backend)
    key = (restorer.stem, restorer.backend, float(target_fps or 1))
    if session.governor is None or session.key != key:
        session.governor = gov_mod.FrameGovernor(float(target_fps or 1), levels=gov_mod.default_levels(restorer))
        session.key = key
    gov = session.governor
    out = None
    if gov.admit():
        rgb = frame[..., :3].astype(np.float32) / (65535.0 if frame.dtype == np.uint16 else 255.0)
        t0 = time.perf_counter()
        restored = gov_mod.restore_at_level(restorer, np.ascontiguousarray(rgb), gov.settings)
        gov.done(time.perf_counter() - t0)
        out = to_uint8(restored)
    st = gov.stats()
    ws = st["settings"].get("work_scale")
    status = (f"**{st['achieved_fps']:.1f} fps** achieved (target {st['target_fps']:g}) · "
              f"latency {st['latency_ms'] if st['latency_ms'] is not None else '–'} ms · "
              f"level {st['level'] + 1}/{st['levels']}" + (f" (work scale {ws:g})" if ws is not None else "")
              + f" · {st['processed']} restored, {st['dropped']} dropped · {restorer.stem} on {restorer.backend}")
    return out, status


# -------------------------------------------------------------------------------- the Blocks

def _signature(names: list[str]) -> inspect.Signature:
    """Positional parameters `names`, then progress=gr.Progress() (for handlers taking *args)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n if n.isidentifier() else re.sub(r"\W", "_", n), kind) for n in names]
    return inspect.Signature([*params, inspect.Parameter("progress", kind, default=gr.Progress())])


def _picker(prefix: str, state: UIState):
    """Restorer / variant / scale / backend dropdowns, wired to follow the registry."""
    all_specs = specs()
    if not all_specs:
        raise RuntimeError("no restorers are registered")
    first = all_specs[0]
    v0 = first.default_variant
    with gr.Row():
        name = gr.Dropdown(restorer_choices(), value=first.name, label="Restorer", scale=3,
                           elem_id=f"{prefix}-restorer")
        variant = gr.Dropdown(variant_choices(first), value=v0, label="Variant", elem_id=f"{prefix}-variant")
        scale = gr.Dropdown(scale_choices(first, v0), value=default_scale(first, v0), label="Scale",
                            interactive=len(task_scales(first)) > 1, elem_id=f"{prefix}-scale")
        backend = gr.Dropdown(list(BACKENDS), value=state.backend, label="Backend",
                              info="auto = ONNX Runtime on CPU", elem_id=f"{prefix}-backend")

    def on_name(n):
        spec, task = parse_choice(n)
        v = spec.default_variant
        return (gr.Dropdown(choices=variant_choices(spec, task), value=v),
                gr.Dropdown(choices=scale_choices(spec, v, task), value=default_scale(spec, v, task),
                            interactive=len(task_scales(spec, task)) > 1))

    def on_variant(n, v):
        spec, task = parse_choice(n)
        return gr.Dropdown(choices=scale_choices(spec, v, task), value=default_scale(spec, v, task),
                           interactive=len(task_scales(spec, task)) > 1)

    name.change(on_name, name, [variant, scale], api_visibility="private", queue=False)
    variant.input(on_variant, [name, variant], scale, api_visibility="private", queue=False)
    return name, variant, scale, backend


def routing_note(spec: registry.RestorerSpec) -> str:
    if spec.subnets:
        return (f"Routing sends easy patches to `{spec.subnets[0]}` and hard ones to `{spec.subnets[-1]}` "
                f"(tiers: {', '.join(spec.subnets)}); the map overlay shows which patch went where. "
                "Needs the routing table made by `restore calibrate`.")
    return f"{spec.name} declares no subnets, so routing is off (every patch uses the full network)."


def restorer_controls(spec: registry.RestorerSpec, extras: list[str]) -> list:
    """Updates for [routing, overlay, note, *extra boxes] when `spec` is picked."""
    routed = bool(spec.subnets)
    return [gr.update(interactive=routed, value="off"),
            gr.update(interactive=routed, value=False),
            gr.update(value=routing_note(spec)),
            *[gr.update(visible=e in spec.extras) for e in extras]]


def build_demo(state: UIState | None = None, **settings) -> gr.Blocks:
    """The whole app. `settings` go to UIState (backend, allow_untrained, engines_dir, threads)."""
    state = state or UIState(**settings)
    all_specs = specs()
    extras = extra_names()

    with gr.Blocks(title="restore — image restoration", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# restore\nReal-time image restoration: super-resolution and more, on your CPU or GPU.")

        # ---------------------------------------------------------------------- Image tab
        with gr.Tab("Image", id="image"):
            name, variant, scale, backend = _picker("img", state)
            with gr.Row():
                routed = bool(all_specs[0].subnets)
                routing = gr.Radio(list(ROUTING_LEVELS), value="off",
                                   label="Routing (quality ↔ speed)", interactive=routed, elem_id="img-routing")
                overlay = gr.Checkbox(False, label="Show routing map", interactive=routed, elem_id="img-overlay")
                ensemble = gr.Checkbox(False, label="Self-ensemble (8 flips/rotations averaged: 8× slower, "
                                              "a little sharper; not with routing)", elem_id="img-ensemble")
            note = gr.Markdown(routing_note(all_specs[0]), elem_classes="note", elem_id="img-routing-note")
            extra_boxes = []
            with gr.Row():
                for e in extras:
                    extra_boxes.append(_extra_control(e, visible=e in all_specs[0].extras))
            with gr.Row():
                with gr.Column(scale=1):
                    img_in = file_image(label="Image (PNG, JPEG, TIFF, WebP, BMP; 8 or 16-bit)",
                                        sources=["upload", "clipboard"], image_mode=None, height=340,
                                        elem_id="img-input")
                    img_go = gr.Button("Restore", variant="primary", elem_id="img-restore")
                with gr.Column(scale=2):
                    img_slider = gr.ImageSlider(label="Before / after", type="numpy", format="png",
                                                image_mode=None, interactive=False, elem_id="img-result",
                                                buttons=["download", "fullscreen"])
                    with gr.Row():
                        img_file = gr.File(label="Full-fidelity PNG", interactive=False, elem_id="img-file")
                        img_backend = gr.Textbox(label="Backend", interactive=False, elem_id="backend-box")
                    img_info = gr.Markdown(label="details", elem_id="img-info")

            def on_restorer(n):
                return restorer_controls(parse_choice(n)[0], extras)

            name.change(on_restorer, name, [routing, overlay, note, *extra_boxes],
                        api_visibility="private", queue=False)

            def restore_image(*args):
                path, restorer, variant, scale, backend, routing, overlay, *extra_values, ensemble, progress = args
                res = state.restore_image(path, restorer, variant, scale, backend, routing, overlay,
                                          dict(zip(extras, extra_values)), progress, bool(ensemble))
                return (res.before, res.after), str(res.png), res.backend, res.info

            # The extras vary with the registry, so the handler takes *args; this signature names
            # them for the API page and puts gr.Progress last, where Gradio passes it.
            restore_image = user_errors(restore_image)
            restore_image.__signature__ = _signature(
                ["image", "restorer", "variant", "scale", "backend", "routing", "overlay", *extras, "ensemble"])

            # ensemble goes last so API clients that predate it keep their argument positions
            img_go.click(restore_image, [img_in, name, variant, scale, backend, routing, overlay, *extra_boxes, ensemble],
                         [img_slider, img_file, img_backend, img_info], api_name="restore_image",
                         concurrency_id="restore")

        # ---------------------------------------------------------------------- Video tab
        with gr.Tab("Video", id="video"):
            v_name, v_variant, v_scale, v_backend = _picker("vid", state)
            with gr.Row():
                with gr.Column():
                    vid_in = gr.Video(label="Video", sources=["upload"], elem_id="vid-input")
                    vid_go = gr.Button("Restore video", variant="primary", elem_id="vid-restore")
                with gr.Column():
                    vid_out = gr.Video(label="Result (H.264 MP4, original audio)", format="mp4",
                                       interactive=False, elem_id="vid-result")
                    vid_info = gr.Markdown(label="details", elem_id="vid-info")

            @user_errors
            def restore_video(video, restorer, variant, scale, backend, progress=gr.Progress()):
                out, info = state.restore_video(video, restorer, variant, scale, backend, progress)
                return str(out), info

            vid_go.click(restore_video, [vid_in, v_name, v_variant, v_scale, v_backend], [vid_out, vid_info],
                         api_name="restore_video", concurrency_id="video", concurrency_limit=1)

        # --------------------------------------------------------------------- Webcam tab
        with gr.Tab("Webcam", id="webcam"):
            w_name, w_variant, w_scale, w_backend = _picker("cam", state)
            target_fps = gr.Slider(1, 30, value=10, step=1, label="Target frame rate (fps)",
                                   info="work is shed to hold it: a lower working resolution, then skipped frames",
                                   elem_id="cam-fps")
            cam_stats = gr.Markdown("Start the camera; the achieved frame rate shows here.", label="stats",
                                    elem_id="cam-stats")
            with gr.Row():
                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                               webcam_options=gr.WebcamOptions(mirror=False, constraints=LIVE_CAMERA),
                               elem_id="cam-input")
                cam_out = gr.Image(label="Restored (live)", type="numpy", format="jpeg", interactive=False,
                                   elem_id="cam-output")
            live_state = gr.State(None)

            @user_errors
            def restore_live(frame, restorer, variant, scale, backend, target_fps, session):
                out, status, session = state.live_frame(frame, restorer, variant, scale, backend, target_fps,
                                                        session)
                return (gr.skip() if out is None else out), status, session

            cam.stream(restore_live, [cam, w_name, w_variant, w_scale, w_backend, target_fps, live_state],
                       [cam_out, cam_stats, live_state], api_name="restore_live",
                       stream_every=LIVE_STREAM_EVERY, time_limit=LIVE_TIME_LIMIT,
                       concurrency_id="live", concurrency_limit=1, show_progress="hidden")

        # -------------------------------------------------------------------- Compare tab
        with gr.Tab("Compare", id="compare"):
            gr.Markdown("Pick a crop (sliders, or click the preview to centre it), run several restorers "
                        "on it, then run the one you like on the whole image.", elem_classes="note")
            cands = candidate_choices()
            trained = [key for label, key in cands if "(no weights)" not in label]
            default_cands = (trained or [k for _, k in cands])[:2]
            with gr.Row():
                with gr.Column(scale=1):
                    cmp_in = file_image(label="Image", sources=["upload", "clipboard"], image_mode=None,
                                        elem_id="cmp-input")
                    cmp_x = gr.Slider(0, 4096, value=0, step=1, label="Crop x")
                    cmp_y = gr.Slider(0, 4096, value=0, step=1, label="Crop y")
                    cmp_size = gr.Slider(8, 512, value=96, step=8, label="Crop size (input pixels)")
                with gr.Column(scale=1):
                    cmp_preview = gr.Image(label="Crop (click to move it)", type="numpy", interactive=False,
                                           format="png", elem_id="cmp-preview")
            with gr.Row():
                cmp_pick = gr.CheckboxGroup(cands, value=default_cands, label="Restorers to compare",
                                            elem_id="cmp-candidates")
                cmp_backend = gr.Dropdown(list(BACKENDS), value=state.backend, label="Backend")
            cmp_go = gr.Button("Compare on the crop", variant="primary", elem_id="cmp-run")
            cmp_gallery = gr.Gallery(label="Results (timings in the captions)", columns=4, format="png",
                                     object_fit="contain", height="auto", elem_id="cmp-gallery")
            cmp_table = gr.Markdown(label="timings", elem_id="cmp-table")
            with gr.Row():
                cmp_choice = gr.Dropdown([], label="Run this one on the whole image", allow_custom_value=True,
                                         elem_id="cmp-choice")
                cmp_full = gr.Button("Run on the whole image", elem_id="cmp-full")
            cmp_slider = gr.ImageSlider(label="Whole image: before / after", type="numpy", format="png",
                                        image_mode=None, interactive=False, elem_id="cmp-result")
            with gr.Row():
                cmp_file = gr.File(label="Full-fidelity PNG", interactive=False, elem_id="cmp-file")
                cmp_info = gr.Markdown(label="details", elem_id="cmp-info")

            @user_errors
            def crop_preview(path, x, y, size):
                return state.crop_preview(path, x, y, size)

            @user_errors
            def on_upload(path, size):
                if not path:
                    return gr.update(), gr.update(), gr.update(), None
                pic = read_image(path)
                h, w = pic.rgb.shape[:2]
                size = int(min(size, h, w))
                return (gr.Slider(maximum=max(0, w - 1), value=max(0, (w - size) // 2)),
                        gr.Slider(maximum=max(0, h - 1), value=max(0, (h - size) // 2)),
                        gr.Slider(maximum=max(8, min(h, w)), value=max(1, size)),
                        state.crop_preview(path, (w - size) // 2, (h - size) // 2, size))

            @user_errors
            def on_click(path, size, evt: gr.SelectData):
                if not path or evt is None or evt.index is None:
                    return gr.update(), gr.update()
                pic = read_image(path)
                h, w = pic.rgb.shape[:2]
                f = max(h, w) / 2048 if max(h, w) > 2048 else 1.0  # the preview may be shrunk
                cx, cy = int(evt.index[0] * f), int(evt.index[1] * f)
                bx, by, _, _ = state.crop_box((h, w), cx - int(size) // 2, cy - int(size) // 2, size)
                return bx, by

            cmp_in.upload(on_upload, [cmp_in, cmp_size], [cmp_x, cmp_y, cmp_size, cmp_preview],
                          api_visibility="private")
            for sl in (cmp_x, cmp_y, cmp_size):
                sl.release(crop_preview, [cmp_in, cmp_x, cmp_y, cmp_size], cmp_preview,
                           api_visibility="private", trigger_mode="always_last")
            cmp_preview.select(on_click, [cmp_in, cmp_size], [cmp_x, cmp_y], api_visibility="private").then(
                crop_preview, [cmp_in, cmp_x, cmp_y, cmp_size], cmp_preview, api_visibility="private")

            @user_errors
            def compare(path, x, y, size, candidates, backend, progress=gr.Progress()):
                items, md, ran = state.compare(path, x, y, size, candidates, backend, progress)
                inv = {k: lbl for lbl, k in cands}
                return items, md, gr.Dropdown(choices=[(inv.get(k, k), k) for k in ran], value=ran[0])

            cmp_go.click(compare, [cmp_in, cmp_x, cmp_y, cmp_size, cmp_pick, cmp_backend],
                         [cmp_gallery, cmp_table, cmp_choice], api_name="compare", concurrency_id="restore")

            @user_errors
            def restore_chosen(path, candidate, backend, progress=gr.Progress()):
                if not candidate:
                    raise UserError("compare first, then pick the restorer to run on the whole image")
                name_, variant_, scale_ = parse_candidate(candidate)
                res = state.restore_image(path, name_, variant_, scale_, backend, progress=progress)
                return (res.before, res.after), str(res.png), res.info

            cmp_full.click(restore_chosen, [cmp_in, cmp_choice, cmp_backend], [cmp_slider, cmp_file, cmp_info],
                           api_name="restore_chosen", concurrency_id="restore")

    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    demo.ui_state = state  # for tests and embedding
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None, **kwargs):
    """Serve the app; blocks until Ctrl-C unless prevent_thread_lock=True. Returns (app, url, None).

    No share links: the app stays on this machine (and this machine has no internet anyway).
    """
    demo = demo or build_demo()
    block = not kwargs.pop("prevent_thread_lock", False)
    quiet = kwargs.pop("quiet", False)
    kwargs.pop("share", None)
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    kwargs.setdefault("css", CSS)
    app, url, _ = demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True,
                              quiet=True, **kwargs)
    if not quiet:
        print(f"restore web UI on {url}  (Ctrl-C to stop)", flush=True)
    if block:
        try:
            demo.block_thread()  # returns after Ctrl-C
        finally:
            close(demo, timeout=10)
    return app, url, None


def close(demo: gr.Blocks, timeout: float = 30.0) -> None:
    """Stop the server once running events have finished (or after `timeout` seconds).

    A webcam stream can still be inside the restorer when the browser goes away; closing under
    it and then exiting the interpreter would kill a thread in native code.
    """
    queue = getattr(demo, "_queue", None)
    end = time.monotonic() + timeout
    while queue is not None and any(queue.active_jobs) and time.monotonic() < end:
        time.sleep(0.1)
    if demo.is_running:
        demo.close()
