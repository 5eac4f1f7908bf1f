"""Frame-deadline governor: hold a target frame rate on a live source by shedding work.

Used by `restore live` and by the UI's webcam tab. The whole API:

    from restore.pipeline.governor import FrameGovernor, default_levels, restore_at_level

    gov = FrameGovernor(target_fps=15, levels=default_levels(restorer))
    for rgb in frames:                        # HxWx3 float32 in [0, 1], as they arrive
        if not gov.admit():                   # too soon after the last one: drop it (counted)
            continue
        t = time.perf_counter()
        out = restore_at_level(restorer, rgb, gov.settings)
        gov.done(time.perf_counter() - t)     # the measured latency drives the level
    gov.stats()   # {"target_fps", "achieved_fps", "latency_ms", "level", "levels", "settings",
                  #  "processed", "dropped"}

How it sheds work, in order:
1. **Cheaper settings.** `levels` is a ladder of settings, best first. When the smoothed
   latency (an exponential moving average, per level) stays above the frame budget
   (1 / target_fps, less a little headroom) for a few frames, the governor steps one level
   down; when the latency predicted for the level above fits comfortably again (the load went
   away), it steps back up. Hysteresis and a cool-down keep it from flapping.
2. **Skipping frames.** `admit()` lets through at most `target_fps` frames per second, on a
   fixed grid of slots; a frame that arrives too early is dropped. When even the cheapest
   level is slower than the budget, processing runs back to back and every frame that arrives
   meanwhile is dropped (a live source keeps only its newest frame; report those with
   `skip(n)`). An output that must keep a constant rate repeats the last restored frame
   (`restore live` does that when recording).

The default ladder (`default_levels`) lowers the resolution the restorer works at
(`work_scale` 1 → 0.75 → 0.5; the result is resized to the full output size). Smaller tiles are
not on it: tiles bound memory, not latency, and smaller tiles redo more overlap per frame.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Sequence

import numpy as np

__all__ = ["FrameGovernor", "default_levels", "restore_at_level"]


class FrameGovernor:
    """Decide which frames of a live stream to restore, and at which level of work.

    target_fps: the rate to hold. levels: settings dicts, best quality first (default: one
    level, `{}`, i.e. only frame skipping). smoothing: EMA weight of a new latency sample.
    headroom: the share of the frame budget the latency may use before shedding work.
    patience: how many frames over budget in a row before stepping a level down.
    clock: seconds, monotonic (tests pass a fake one). Thread-safe.
    """

    def __init__(self, target_fps: float, levels: Sequence[dict] | None = None, *, smoothing: float = 0.3,
                 headroom: float = 0.9, patience: int = 3, clock: Callable[[], float] = time.monotonic):
        if not target_fps or target_fps <= 0:
            raise ValueError(f"target fps must be positive, got {target_fps}")
        self.target_fps = float(target_fps)
        self.budget = 1.0 / self.target_fps  # seconds per frame
        self.levels = [dict(x) for x in (levels or [{}])]
        self.smoothing, self.headroom, self.patience = smoothing, headroom, max(1, patience)
        self._clock = clock
        self._lock = threading.Lock()
        self.level = 0
        self.processed = 0
        self.dropped = 0
        self._ema: list[float | None] = [None] * len(self.levels)
        self._ratio: list[float | None] = [None] * len(self.levels)  # ema[level] / ema[level-1]
        self._over = self._under = self._cooldown = 0
        self._came_down = False
        self._next_slot: float | None = None
        self._done_times: collections.deque[float] = collections.deque()

    # ------------------------------------------------------------------ the three calls

    @property
    def settings(self) -> dict:
        """The settings of the current level (a copy), to pass to the restore call."""
        return dict(self.levels[self.level])

    def admit(self, now: float | None = None) -> bool:
        """True: restore the frame that just arrived. False: drop it (counted as dropped)."""
        now = self._clock() if now is None else now
        with self._lock:
            tolerance = 0.25 * self.budget  # a source at exactly the target rate jitters
            if self._next_slot is None or now + tolerance >= self._next_slot:
                # Next slot one budget later; a caller that fell behind restarts the grid at now.
                base = self._next_slot if self._next_slot is not None and self._next_slot > now - self.budget else now
                self._next_slot = base + self.budget
                return True
            self.dropped += 1
            return False

    def done(self, latency: float, now: float | None = None) -> None:
        """Report how long restoring an admitted frame took (seconds); may change the level."""
        now = self._clock() if now is None else now
        with self._lock:
            self.processed += 1
            self._done_times.append(now)
            while len(self._done_times) > 2 and now - self._done_times[0] > 2.0:
                self._done_times.popleft()
            lvl = self.level
            prev = self._ema[lvl]
            self._ema[lvl] = latency if prev is None else prev + self.smoothing * (latency - prev)
            if self._came_down and self._cooldown > 0 and self._ema[lvl - 1] is not None:
                # Just stepped down: the level above was measured moments ago, so the two
                # latencies compare fairly. Later the level above goes stale; the ratio stays.
                self._ratio[lvl] = self._ema[lvl] / max(self._ema[lvl - 1], 1e-9)
            self._adjust()

    def skip(self, n: int = 1) -> None:
        """Count frames dropped outside `admit` (e.g. overwritten while the restorer was busy)."""
        with self._lock:
            self.dropped += int(n)

    def stats(self) -> dict:
        """Numbers to show: achieved fps (restored frames per second over the last ~2 s), etc."""
        with self._lock:
            times = self._done_times
            achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else 0.0
            ema = self._ema[self.level]
            return {"target_fps": self.target_fps, "achieved_fps": round(achieved, 2),
                    "latency_ms": None if ema is None else round(ema * 1000, 1),
                    "level": self.level, "levels": len(self.levels), "settings": self.settings,
                    "processed": self.processed, "dropped": self.dropped}

    # ------------------------------------------------------------------ level control

    def _adjust(self) -> None:
        if self._cooldown > 0:
            self._cooldown -= 1
            return
        lvl, ema, limit = self.level, self._ema[self.level], self.budget * self.headroom
        if ema > limit and lvl + 1 < len(self.levels):
            self._over += 1
            self._under = 0
            if self._over >= self.patience:
                self._step(lvl + 1)
            return
        self._over = 0
        if lvl > 0:
            # Latency the level above would have now: its cost relative to this one, as last
            # measured, times this level's current latency (so a load that went away shows).
            ratio = self._ratio[lvl]
            predicted = ema / ratio if ratio else None
            if predicted is not None and predicted < 0.75 * limit:
                self._under += 1
                if self._under >= 3 * self.patience:
                    self._step(lvl - 1)
            else:
                self._under = 0

    def _step(self, level: int) -> None:
        old = self.level
        self.level = level
        self._over = self._under = 0
        self._cooldown = self.patience
        self._came_down = level > old
        if level < old and self._ema[old] is not None and self._ratio[old]:
            self._ema[level] = self._ema[old] / self._ratio[old]  # start from the prediction


# ---------------------------------------------------------------------- the default ladder

def default_levels(restorer=None) -> list[dict]:
    """Settings from best to cheapest: full resolution, then the restorer at 0.75 and 0.5 of it."""
    return [{"work_scale": 1.0}, {"work_scale": 0.75}, {"work_scale": 0.5}]


def restore_at_level(restorer, rgb: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Restore one HxWx3 float32 [0,1] frame with a level's settings → (sH)x(sW)x3 float32.

    Keys: work_scale (resize the input by this before restoring, the result back to the full
    output size), tile and overlap (passed to `restore_rgb`). The output size never changes.
    """
    import cv2

    settings = settings or {}
    h, w = rgb.shape[:2]
    s = restorer.scale
    ws = float(settings.get("work_scale", 1.0) or 1.0)
    kw = {k: settings[k] for k in ("tile", "overlap") if k in settings}
    if ws >= 0.999:
        return restorer.restore_rgb(rgb, **kw)
    sw, sh = max(8, round(w * ws)), max(8, round(h * ws))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    out = restorer.restore_rgb(np.ascontiguousarray(small, dtype=np.float32), **kw)
    out = cv2.resize(out, (w * s, h * s), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0, out=out)
