"""RTSR: our real-time SR tier, a plain width-sliced conv net over a nearest-neighbour skip.

    x ─ conv3x3 (3→C) ─ ReLU ─ [conv3x3 (C→C) ─ ReLU] × m ─ conv3x3 (C→3r²) ─ PixelShuffle(r) ─(+)─ y
    └──────────────────────── nearest ×r (PixelShuffle of x repeated r² times) ───────────────┘

Not from a paper: the shape follows the plain VGG-like real-time SR nets (ESPCN, ECBSR's
inference graph), sized for two CPU cores. The skip makes the network learn only the residual
over nearest-neighbour upscaling, which trains in minutes rather than days (FSRCNN, with no skip,
starts below bicubic). Every conv is width-sliced (blocks/slimmable.py) so the router can send a
patch to 8 or 16 features, or to bicubic. ~2.2 k / 6.8 k MACs per LR pixel at ×2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks.slimmable import SlimConv2d, Supernet


@dataclass(frozen=True)
class RTSRConfig:
    c: int = 16  # features at full width
    m: int = 2  # body convs
    widths: tuple[int, ...] = (8, 16)

    def to_dict(self) -> dict:
        return asdict(self)


VARIANTS = {"c16": RTSRConfig()}


class RTSR(Supernet):
    def __init__(self, config: RTSRConfig = RTSRConfig(), scale: int = 2):
        super().__init__()
        self.config, self.scale = config, scale
        c = config.c
        self.head = SlimConv2d(3, c, 3, padding=1, full_width=c, slice_in=False, slice_out=True)
        self.body = nn.ModuleList(SlimConv2d(c, c, 3, padding=1, full_width=c, slice_in=True, slice_out=True)
                                  for _ in range(config.m))
        self.tail = SlimConv2d(c, 3 * scale * scale, 3, padding=1, full_width=c, slice_in=True, slice_out=False)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.tail.weight)  # start as nearest-neighbour upscaling
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) in [0,1] → (N,3,rH,rW)
        r = self.scale
        f = F.relu(self.head(x))
        for conv in self.body:
            f = F.relu(conv(f))
        # x repeated r² times per channel, shuffled: nearest-neighbour upscaling, as one cheap op.
        skip = self.shuffle(x.repeat_interleave(r * r, dim=1))
        return self.shuffle(self.tail(f)) + skip


def build(variant: str = "c16", scale: int = 2) -> RTSR:
    return RTSR(VARIANTS[variant], scale)


def _register() -> None:
    from restore.registry import RestorerSpec, RouteSpec, register

    register(RestorerSpec(
        name="rtsr",
        task="sr",
        summary="Real-time SR: a tiny conv net over a nearest skip; bicubic, 8- or 16-wide subnets per patch",
        paper="ours (plain real-time SR design in the spirit of ESPCN / ECBSR's inference graph)",
        build=build,
        variants=tuple(VARIANTS),
        default_variant="c16",
        scales=(2, 3, 4),
        default_scale=2,
        tile=512,
        overlap=8,  # reach: 1 + m + 1 = 4 LR pixels
        subnets=("bicubic", "w8", "w16"),
        route=RouteSpec(score="edge", patch=32, overlap=4),  # 8 costs 1.4x the patches for 0.007 dB
        train_defaults=dict(patch=48, batch=16, lr=2e-3, steps=20000),
    ))


_register()
