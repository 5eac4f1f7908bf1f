"""Restorers by name: what each one is, what it needs, and how to build it.

A restorer file (restore/models/<name>.py) declares a `RestorerSpec` and calls `register()`.
Everything else (CLI, pipeline, trainer, UI) asks this registry, never a model file directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


class UnknownRestorer(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class RouteSpec:
    """How the patch router (restore/routing) cuts and scores an image for this restorer."""

    score: str = "edge"  # patch difficulty score, a name in restore.routing.scores
    patch: int = 32  # routed patch side, input pixels
    overlap: int = 4  # overlap between neighbouring patches, input pixels (blended)


@dataclass(frozen=True)
class RestorerSpec:
    name: str
    task: str  # "sr" (output is `scale` times larger) or a same-size task: "denoise", "deblur", ...
    summary: str
    paper: str
    build: Callable[..., nn.Module]  # build(variant, scale) -> training-form model with .reparameterize()
    variants: tuple[str, ...]
    default_variant: str
    scales: tuple[int, ...] = (1,)
    default_scale: int = 1
    extras: tuple[str, ...] = ()  # extra inputs the restorer takes (e.g. "noise_level", "mask")
    size_multiple: int = 1  # the model pads to this internally; tiles are aligned to it
    min_size: int = 1  # smallest H/W the network accepts (smaller inputs are edge-padded first)
    tile_safe: bool = True  # tiled output matches untiled output (bounded receptive field)
    tile: int = 256  # default tile (input pixels) for large images
    overlap: int = 16  # default tile overlap (input pixels)
    precisions: tuple[str, ...] = ("fp32",)
    subnets: tuple[str, ...] = ()  # subnets for patch routing, cheapest first ("bicubic", "w16", ...)
    route: RouteSpec | None = None  # set when subnets are declared
    train_defaults: dict = field(default_factory=dict)
    tasks: tuple[str, ...] = ()  # every task the restorer has weights for (default: just `task`)

    @property
    def all_tasks(self) -> tuple[str, ...]:
        return self.tasks or (self.task,)

    def check_task(self, task: str | None, scale: int) -> str:
        """The task a run does: `task` if given, else "sr" above scale 1, else the default."""
        if task is None:
            return "sr" if scale > 1 and "sr" in self.all_tasks else self.task
        if task not in self.all_tasks:
            raise ValueError(f"{self.name} has no task {task!r} (choose from {', '.join(self.all_tasks)})")
        if (task == "sr") != (scale > 1):
            raise ValueError(f"{self.name}: task {task} " + ("needs --scale 2 or more" if task == "sr"
                                                             else "is same-size (use --scale 1)"))
        return task

    def check_scale(self, scale: int) -> int:
        if scale not in self.scales:
            allowed = ", ".join(f"x{s}" for s in self.scales)
            raise ValueError(f"{self.name} does not support scale x{scale} (supported: {allowed})")
        return scale

    def check_variant(self, variant: str | None) -> str:
        variant = variant or self.default_variant
        if variant not in self.variants:
            raise ValueError(f"{self.name} has no variant {variant!r} (choose from {', '.join(self.variants)})")
        return variant


_REGISTRY: dict[str, RestorerSpec] = {}


def register(spec: RestorerSpec) -> RestorerSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    import restore.models  # noqa: F401  (importing the package registers every restorer)


def get(name: str) -> RestorerSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownRestorer(f"unknown restorer {name!r} (available: {', '.join(sorted(_REGISTRY))})") from None


def all_specs() -> list[RestorerSpec]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
