"""The one entry point front ends use: load a restorer, restore pictures.

    from restore.api import load_restorer
    r = load_restorer("lipt", variant="tiny", scale=2)
    out = r.restore_picture(read_image("photo.png"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from restore import registry
from restore.weights import WeightsError, find_weights, load_state, read_manifest, weights_stem


ENSEMBLE_WITH_ROUTING = ("self-ensemble and patch routing do not combine (routing is for speed, the "
                         "ensemble for quality): drop one")


@dataclass
class Restorer:
    spec: registry.RestorerSpec
    variant: str
    scale: int
    model: torch.nn.Module  # reparameterised, eval mode
    engine: object  # restore.backends.Engine
    weights_path: Path | None
    manifest: dict = field(default_factory=dict)
    routing: str = "off"  # default routing mode (restorers with subnets): off|quality|balanced|fast
    route_budget_ms: float | None = None  # default time budget per frame; overrides the mode
    backend_request: str = "auto"
    threads: int | None = None
    engines_dir: str | Path | None = None
    last_route: object = None  # RouteMap of the latest routed call
    task: str = ""  # what the weights restore: "sr", "denoise", "deblur" (set by load_restorer)
    noise_level: float | None = None  # σ (0–255) hint for restorers that take one; None = blind
    ensemble: bool = False  # the engine averages the 8 flips/rotations (restore.pipeline.ensemble)
    _router: object = None

    @property
    def stem(self) -> str:
        return weights_stem(self.spec.name, self.variant, self.scale, self.task or self.spec.task)

    @property
    def backend(self) -> str:
        return self.engine.name

    def with_ensemble(self) -> "Restorer":
        """A copy whose engine averages the 8 flips/rotations (restore.pipeline.ensemble); the
        original, and its engine, are left as they are (the UI keeps them cached)."""
        from dataclasses import replace

        from restore.pipeline.ensemble import SelfEnsemble

        if self.routing != "off" or self.route_budget_ms is not None:
            raise ValueError(ENSEMBLE_WITH_ROUTING)
        return replace(self, engine=SelfEnsemble(self.engine), ensemble=True, _router=None)

    def router(self):
        """The patch router over this restorer's subnets (built on first use)."""
        if self._router is None:
            from restore.routing import Router

            self._router = Router.for_restorer(self)
        return self._router

    def _routed(self, routing: str | None, budget_ms: float | None) -> bool:
        mode = routing or self.routing
        budget = budget_ms if budget_ms is not None else self.route_budget_ms
        if mode == "off" and budget is None:
            return False
        if not self.spec.subnets:
            raise ValueError(f"{self.spec.name} has no subnets to route between (use --route off)")
        if self.ensemble:
            raise ValueError(ENSEMBLE_WITH_ROUTING)
        return True

    def restore_rgb(self, rgb: np.ndarray, *, tile: int | None = None, overlap: int | None = None,
                    routing: str | None = None, budget_ms: float | None = None,
                    noise_level: float | None = None) -> np.ndarray:
        """HxWx3 float32 [0,1] → (sH)x(sW)x3 float32 [0,1].

        `routing` (quality|balanced|fast) or `budget_ms` sends each patch to a subnet of its own
        (restorers that declare subnets); the RouteMap is left in `last_route`.
        """
        if self._routed(routing, budget_ms):
            out, self.last_route = self.router().run(
                rgb, mode=routing or self.routing,
                budget_ms=budget_ms if budget_ms is not None else self.route_budget_ms)
            return out
        from restore.pipeline.run import restore_array

        return restore_array(self, rgb, tile=tile, overlap=overlap, noise_level=noise_level)

    def restore_picture(self, picture, *, tile: int | None = None, overlap: int | None = None,
                        routing: str | None = None, budget_ms: float | None = None,
                        noise_level: float | None = None):
        """A restored Picture; routed runs carry `routing_map` (subnet index per input pixel) and
        `route` (the RouteMap)."""
        from restore.pipeline.run import restore_picture

        if self._routed(routing, budget_ms):
            rgb = self.restore_rgb(picture.rgb, routing=routing, budget_ms=budget_ms)
            return restore_picture(self, picture, restored_rgb=rgb, route=self.last_route)
        return restore_picture(self, picture, tile=tile, overlap=overlap, noise_level=noise_level)


def load_restorer(name: str = "lipt", variant: str | None = None, scale: int | None = None, *,
                  backend: str = "auto", weights: str | Path | None = None, threads: int | None = None,
                  allow_untrained: bool = False, engines_dir: str | Path | None = None,
                  routing: str = "off", route_budget_ms: float | None = None, task: str | None = None,
                  noise_level: float | None = None, ensemble: bool = False) -> Restorer:
    """Build the named restorer with its shipped weights on the chosen backend.

    `task` picks the weights of a restorer with several tasks (iptv2: denoise, deblur; sr above
    scale 1); `noise_level` (σ on the 0–255 scale) is the hint for restorers that take one.
    Raises ValueError / registry.UnknownRestorer / WeightsError with one-line messages.
    `ensemble` averages the network over the eight flips/rotations of the input (8x the time).
    `allow_untrained` runs a randomly initialised network (benchmarks and tests only).
    """
    spec = registry.get(name)
    if ensemble and (routing != "off" or route_budget_ms is not None):
        raise ValueError(ENSEMBLE_WITH_ROUTING)
    variant = spec.check_variant(variant)
    scale = spec.check_scale(scale or spec.default_scale)
    if task is None and weights:  # explicit weights say what they were trained for
        trained_for = read_manifest(Path(weights)).get("task")
        task = trained_for if trained_for in spec.all_tasks else None
    task = spec.check_task(task, scale)
    if noise_level is not None:
        if "noise_level" not in spec.extras:
            raise ValueError(f"{name} takes no noise level")
        if not 0 <= float(noise_level) <= 255:
            raise ValueError(f"noise level must be in [0, 255] (σ on the 8-bit scale), got {noise_level:g}")
    model = spec.build(variant, scale).eval()
    model.reparameterize()
    path = Path(weights) if weights else find_weights(spec.name, variant, scale, task)
    manifest: dict = {}
    if path is not None:
        state = load_state(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{path}: does not fit {name}-{variant} x{scale} ({str(e).splitlines()[0]})") from None
        manifest = read_manifest(path)
        if manifest.get("task") not in (None, task):
            raise WeightsError(f"{path}: these weights were trained for {manifest['task']}, not {task}")
    elif not allow_untrained:
        stem = weights_stem(spec.name, variant, scale, task)
        task_arg = f" --task {task}" if len(spec.all_tasks) > 1 else ""
        raise WeightsError(f"no trained weights for {stem} (train them with "
                           f"`restore train --model {name} --variant {variant} --scale {scale}{task_arg} "
                           "--data PHOTOS`)")
    from restore.backends import make_engine

    sha = manifest.get("sha256") or ("untrained" if path is None else path.name)
    engine = make_engine(model, backend, name=spec.name, variant=variant, scale=scale,
                         weights_sha256=sha, threads=threads, engines_dir=engines_dir)
    restorer = Restorer(spec, variant, scale, model, engine, path, manifest, routing=routing,
                        route_budget_ms=route_budget_ms, backend_request=backend, threads=threads,
                        engines_dir=engines_dir, task=task, noise_level=noise_level)
    if ensemble:
        restorer = restorer.with_ensemble()
    if routing != "off" or route_budget_ms is not None:
        restorer._routed(routing, route_budget_ms)  # one-line error now for a restorer without subnets
        from restore.routing.decide import MODES

        if routing not in MODES:
            raise ValueError(f"unknown routing mode {routing!r} (choose from {', '.join(MODES)})")
        restorer.router()  # load the table (and fail early if it is missing)
    return restorer
