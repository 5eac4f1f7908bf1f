"""Patch-adaptive routing (ARM / ClassSR / APE / DDA): easy patches to cheap subnets.

    from restore.api import load_restorer
    r = load_restorer("carn", scale=4, routing="balanced")
    out = r.restore_rgb(rgb)          # r.last_route: which subnet each patch used

Modules: scores (per-patch difficulty), table (calibration: score → quality per subnet, cost),
decide (one knob from quality to speed), router (cut, batch per subnet, blend), calibrate
(`restore calibrate`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .decide import MODES, assign  # noqa: F401
from .router import RouteMap, run_routed  # noqa: F401
from .table import RouteTable, table_path  # noqa: F401


class NoRouteTable(ValueError):
    pass


FULL = "full"  # the restorer's own network as loaded (routing a non-sliced model: bicubic vs full)


def subnet_width(name: str) -> int | None:
    """"w36" → 36; "bicubic" and "full" → None."""
    if name in ("bicubic", FULL):
        return None
    if name.startswith("w") and name[1:].isdigit():
        return int(name[1:])
    raise ValueError(f"unknown subnet {name!r}")


class Router:
    """The subnets of one restorer as engines, its calibration table, and `run()`."""

    def __init__(self, restorer, table: RouteTable):
        self.restorer, self.table = restorer, table
        spec = restorer.spec
        if list(table.subnets) != list(spec.subnets):
            raise NoRouteTable(f"routing table subnets {table.subnets} do not match {spec.name}'s {list(spec.subnets)}")
        self.patch, self.overlap, self.score = spec.route.patch, spec.route.overlap, spec.route.score
        self._engines: list | None = None

    @classmethod
    def for_restorer(cls, restorer, table: RouteTable | None = None) -> "Router":
        if table is None:
            table = load_table(restorer)
        return cls(restorer, table)

    def engines(self) -> list:
        """One engine per subnet (None for bicubic); the widest reuses the restorer's own engine."""
        if self._engines is None:
            from restore.backends import make_engine
            from restore.models.blocks.slimmable import Subnet

            r = self.restorer
            sha = r.manifest.get("sha256") or ("untrained" if r.weights_path is None else Path(r.weights_path).name)
            widest = max(getattr(r.model, "subnet_widths", None) or [0])
            engines = []
            for name in r.spec.subnets:
                width = subnet_width(name)
                if name == FULL or width == widest:
                    engines.append(r.engine)
                elif width is None:
                    engines.append(None)
                else:
                    engines.append(make_engine(Subnet(r.model, width).eval(), r.backend_request, name=r.spec.name,
                                               variant=f"{r.variant}-{name}", scale=r.scale, weights_sha256=sha,
                                               threads=r.threads, engines_dir=r.engines_dir))
            self._engines = engines
        return self._engines

    def run(self, rgb: np.ndarray, *, mode: str = "balanced", budget_ms: float | None = None,
            choice: np.ndarray | None = None, blend: str = "feather", patch: int | None = None,
            overlap: int | None = None, loss_db: float | None = None) -> tuple[np.ndarray, RouteMap]:
        return run_routed(rgb, engines=self.engines(), table=self.table, scale=self.restorer.scale,
                          patch=patch or self.patch, overlap=self.overlap if overlap is None else overlap,
                          score=self.score, mode=mode, budget_ms=budget_ms, choice=choice, blend=blend,
                          loss_db=loss_db)


def load_table(restorer) -> RouteTable:
    """The table stored beside the restorer's weights (made by `restore calibrate`)."""
    cmd = (f"restore calibrate --model {restorer.spec.name} --variant {restorer.variant} "
           f"--scale {restorer.scale} PHOTOS")
    if restorer.weights_path is None:
        raise NoRouteTable(f"no routing table for untrained {restorer.stem} (calibrate trained weights: `{cmd}`)")
    path = table_path(restorer.weights_path)
    if not path.exists():
        raise NoRouteTable(f"no routing table for {restorer.stem} ({path.name} missing; make it with `{cmd}`)")
    table = RouteTable.load(path)
    made_for = table.info.get("weights_sha256")
    sha = restorer.manifest.get("sha256")
    if made_for and sha and made_for != sha:
        raise NoRouteTable(f"{path.name} was calibrated for other weights; run `{cmd}` again")
    return table
