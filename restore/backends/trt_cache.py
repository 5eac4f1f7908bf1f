"""The TensorRT engine cache: keys, optimisation profiles, checksummed files. No TensorRT needed.

Layout under the engines folder (default ./engines, or $RESTORE_ENGINES):

    <restorer>-<variant>-x<scale>-<precision>-<key12>.plan        serialized engine
    <restorer>-<variant>-x<scale>-<precision>-<key12>.plan.json   sidecar: sha256, size, full key
    <restorer>-<variant>-x<scale>-<precision>-<key12>.build.log   kept when a build fails
    <restorer>-<variant>-x<scale>-<onnx12>.trt.json               per-graph notes (fp32-only flag)
    timing-<trt version>-<gpu>.cache (+ .json)                     TensorRT timing cache

The key covers everything that changes the plan: the ONNX file's content hash, every build
flag, the profile shapes, the TensorRT version, the GPU name (and its compute capability), and
the cache layout version. Every file is written atomically next to a sidecar holding its sha256;
a file whose checksum does not match (torn write, disk damage, a different file copied in) is
treated as missing and rebuilt, never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cache import engines_root

CACHE_FORMAT = 1
PRECISIONS = ("fp16", "fp32")


# ------------------------------------------------------------------------------------ files

def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_checked(path, data: bytes, meta: dict | None = None) -> None:
    """Write `data` and its sidecar (sha256, size, `meta`). Sidecar last: a file without a valid
    sidecar is never trusted, so a crash between the two writes only costs a rebuild."""
    path = Path(path)
    atomic_write(path, data)
    info = {"sha256": sha256_bytes(data), "size": len(data), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(meta or {})}
    atomic_write(sidecar(path), json.dumps(info, indent=2, sort_keys=True).encode())


def read_sidecar(path) -> dict | None:
    try:
        info = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def check_file(path) -> str:
    """'ok', 'missing' or 'damaged' (checksum, size or sidecar wrong)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    info = read_sidecar(path)
    if info is None or not isinstance(info.get("sha256"), str):
        return "damaged"
    try:
        if path.stat().st_size != info.get("size") or sha256_file(path) != info["sha256"]:
            return "damaged"
    except OSError:
        return "damaged"
    return "ok"


def read_checked(path) -> bytes | None:
    """The file's bytes when its checksum matches; None when missing or damaged."""
    path = Path(path)
    info = read_sidecar(path)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if info is None or info.get("size") != len(data) or info.get("sha256") != sha256_bytes(data):
        return None
    return data


def discard(path) -> None:
    """Remove a damaged file and its sidecar (best effort)."""
    for p in (Path(path), sidecar(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


# --------------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile for the (N, C, H, W) input: min/opt/max shapes."""
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    @property
    def max_hw(self) -> tuple[int, int]:
        return self.max[2], self.max[3]

    @property
    def min_hw(self) -> tuple[int, int]:
        return self.min[2], self.min[3]

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def fits(self, shape) -> bool:
        return all(lo <= int(v) <= hi for lo, v, hi in zip(self.min, shape, self.max))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(*(tuple(int(x) for x in d[k]) for k in ("min", "opt", "max")))


def choose_profile(tile: int, size_multiple: int = 1, min_size: int = 1, max_batch: int = 4,
                   channels: int = 3) -> Profile:
    """Profile for a restorer whose pipeline feeds tiles of at most `tile` input pixels.

    min: the smallest input the network takes (its size multiple, or min_size if larger), batch 1;
    opt = max: full tiles, batch `max_batch` (the tiler batches equal-size tiles). The tile is
    rounded up to the size multiple, since the pipeline aligns tiles to it. Inputs larger than
    max are tiled to fit, smaller than min are padded up to it (see TrtEngine).
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    m = max(1, int(size_multiple))
    lo = max(m, int(min_size))
    hi = max(lo, -(-int(tile) // m) * m)
    b = max(1, int(max_batch))
    return Profile((1, channels, lo, lo), (b, channels, hi, hi), (b, channels, hi, hi))


# --------------------------------------------------------------------------------- keys

@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines a plan. `key()` hashes all of it."""
    onnx_sha256: str
    precision: str  # "fp16" | "fp32"
    profile: Profile
    trt_version: str
    gpu_name: str
    compute_capability: str = ""
    workspace_mb: int = 0  # 0: TensorRT's default (all device memory)
    opt_level: int = 3  # builder optimisation level (0-5)
    flags: tuple[str, ...] = ()  # any other builder flags, by name

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return {"format": CACHE_FORMAT, "onnx_sha256": self.onnx_sha256, "precision": self.precision,
                "profile": self.profile.to_dict(), "trt_version": self.trt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "workspace_mb": int(self.workspace_mb),
                "opt_level": int(self.opt_level), "flags": sorted(self.flags)}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def plan_path(stem: str, spec: BuildSpec, root=None) -> Path:
    return engines_root(root) / f"{_safe(stem)}-{spec.precision}-{spec.key()[:12]}.plan"


def log_path(plan: Path) -> Path:
    return plan.with_suffix(".build.log")


def timing_cache_path(trt_version: str, gpu_name: str, root=None) -> Path:
    """One timing cache per TensorRT version and GPU (it is valid across networks)."""
    return engines_root(root) / f"timing-{_safe(trt_version)}-{_safe(gpu_name)}.cache"


def notes_path(stem: str, onnx_sha256: str, root=None) -> Path:
    return engines_root(root) / f"{_safe(stem)}-{onnx_sha256[:12]}.trt.json"


# --------------------------------------------------------------------------- decisions

def plan_status(plan) -> str:
    """What to do with a cached plan: 'ok' (load it), 'missing' or 'damaged' (build it)."""
    return check_file(plan)


def load_timing_cache(path) -> bytes:
    """Timing-cache bytes to seed a build with; b'' (start empty) when missing or damaged.
    A damaged cache is removed so the build writes a fresh one."""
    path = Path(path)
    if not path.exists():
        return b""
    data = read_checked(path)
    if data is None:
        discard(path)
        return b""
    return data


def read_notes(path) -> dict:
    try:
        notes = json.loads(Path(path).read_text())
        return notes if isinstance(notes, dict) else {}
    except (OSError, ValueError):
        return {}


def is_fp32_only(stem: str, onnx_sha256: str, root=None) -> bool:
    return bool(read_notes(notes_path(stem, onnx_sha256, root)).get("fp32_only"))


def mark_fp32_only(stem: str, onnx_sha256: str, reason: str, root=None) -> Path:
    """Record that fp16 engines of this graph produce bad tiles: build fp32 from now on."""
    path = notes_path(stem, onnx_sha256, root)
    notes = read_notes(path)
    notes.update(fp32_only=True, reason=reason, marked=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write(path, json.dumps(notes, indent=2, sort_keys=True).encode())
    return path


def choose_precision(requested: str | None, stem: str, onnx_sha256: str, root=None) -> str:
    """fp16 unless fp32 was asked for or this graph is marked fp32-only."""
    if requested not in (None, *PRECISIONS):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32" or is_fp32_only(stem, onnx_sha256, root):
        return "fp32"
    return requested or "fp16"
