"""The calibration table: score bin → expected quality of each subnet, and each subnet's cost.

Made by `restore calibrate` (restore/routing/calibrate.py) and stored beside the weights as
`<weights stem>.route.json`. ARM's released `.state` files hold the same kind of table
(`hmap`: 30 edge bins, mean PSNR per bin and subnet, MACs per subnet); `from_arm_state` reads
them without unpickling arbitrary objects.

The router works with mean squared error per bin rather than mean PSNR: an image's PSNR is a
function of its *mean* MSE, so predicted MSEs add up across patches and PSNRs do not. For ARM's
tables (PSNR only) the MSE is derived from the PSNR.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TABLE_SUFFIX = ".route.json"


def psnr_to_mse(psnr: np.ndarray) -> np.ndarray:
    """MSE on a [0, 1] scale."""
    return 10.0 ** (-np.asarray(psnr, np.float64) / 10.0)


def mse_to_psnr(mse: np.ndarray) -> np.ndarray:
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), 1e-12))


@dataclass
class RouteTable:
    subnets: list[str]  # cheapest first, e.g. ["bicubic", "w16", "w36", "w56"]
    bin_centres: list[float]  # score bin centres, ascending
    psnr: list[list[float]]  # [subnet][bin] mean patch PSNR (dB)
    mse: list[list[float]]  # [subnet][bin] mean patch MSE ([0,1] scale)
    cost_ms: list[float]  # wall time per patch on the machine that calibrated (0 for bicubic)
    macs: list[float]  # multiply-accumulates per patch (0 for bicubic)
    counts: list[int] = field(default_factory=list)  # calibration patches per bin
    overhead_ms: float = 0.0  # per patch, whatever the subnet: scoring, cropping, blending
    score: str = "edge"
    patch: int = 32
    scale: int = 4
    info: dict = field(default_factory=dict)  # how it was made: data, backend, weights sha256

    def bin_of(self, scores: np.ndarray) -> np.ndarray:
        """Nearest bin centre for each score (ARM's `getnearpos`)."""
        centres = np.asarray(self.bin_centres)
        return np.abs(np.asarray(scores, np.float64)[:, None] - centres[None, :]).argmin(axis=1)

    def predict(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(psnr, mse) arrays of shape (patches, subnets) for the given scores."""
        b = self.bin_of(scores)
        return np.asarray(self.psnr, np.float64)[:, b].T, np.asarray(self.mse, np.float64)[:, b].T

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): a reader never sees half a table. The table is
        ours, not a user's file, so a re-calibration replaces it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RouteTable":
        try:
            data = json.loads(Path(path).read_text())
            table = cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a routing table ({e})") from None
        n, b = len(table.subnets), len(table.bin_centres)
        if np.shape(table.psnr) != (n, b) or np.shape(table.mse) != (n, b) or len(table.cost_ms) != n:
            raise ValueError(f"{path}: routing table shapes do not match its {n} subnets and {b} bins")
        return table


def table_path(weights_path: str | Path) -> Path:
    """Where the table of a weights file lives: `x.safetensors` → `x.route.json`."""
    p = Path(weights_path)
    return p.with_name(p.name.removesuffix(p.suffix) + TABLE_SUFFIX)


# --- ARM's .state files --------------------------------------------------------------------------

_ARM_GLOBALS = {
    ("collections", "OrderedDict"), ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("_codecs", "encode"), ("numpy.core.multiarray", "scalar"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"), ("torch", "LongStorage"),
}


class _ArmUnpickler(pickle.Unpickler):
    """Only what ARM's training states contain; numpy 1's `numpy.core` is numpy 2's `numpy._core`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARM_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and not hasattr(np, "core"):
            module = "numpy._core" + module[len("numpy.core"):]
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            if module.startswith("numpy.core"):
                return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
            raise


_ARM_PICKLE = types.SimpleNamespace(Unpickler=_ArmUnpickler, load=lambda f, **kw: _ArmUnpickler(f, **kw).load(),
                                    __name__="restore_arm_pickle")


def from_arm_state(path: str | Path, subnets: list[str], patch: int = 32, scale: int = 4) -> RouteTable:
    """The lookup table (`hmap`) of an ARM-Net `.state` file as a RouteTable."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core deprecation
        state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_ARM_PICKLE)
    hmap = state["hmap"]
    centres = np.asarray(hmap["hmap_x_list"][0], np.float64)
    psnr = np.asarray(hmap["hmap_y_mean_list"], np.float64)
    if psnr.shape != (len(subnets), len(centres)):
        raise ValueError(f"{path}: table has {psnr.shape[0]} subnets, expected {len(subnets)}")
    # Bins no validation patch fell in hold NaN: take the nearest filled bin.
    for row in psnr:
        bad = ~np.isfinite(row)
        if bad.any() and (~bad).any():
            row[bad] = np.interp(centres[bad], centres[~bad], row[~bad])
    macs = np.asarray(hmap["cost_list"], np.float64)
    return RouteTable(subnets=list(subnets), bin_centres=centres.tolist(), psnr=psnr.tolist(),
                      mse=psnr_to_mse(psnr).tolist(), cost_ms=[0.0] * len(subnets), macs=macs.tolist(),
                      counts=[], score="edge", patch=patch, scale=scale,
                      info={"source": str(path), "eta": str(hmap.get("eta")), "bins": int(hmap.get("bins", 0))})
