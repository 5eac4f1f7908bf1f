"""CARN-M as ARM's any-time supernet (Chen et al., ECCV 2022; Ahn et al., CARN, ECCV 2018).

    x ─ sub_mean ─ entry 3x3 ─ B1 ─ c1 ─ B2 ─ c2 ─ B3 ─ c3 ─ upsample ─ exit 3x3 ─ add_mean
                     └─────────┴──────┴───────┘   (cascading: each c_i is a 1x1 over the concat
                                                    of the entry and every block output so far)

Each cascading block B runs one *shared* efficient residual block (grouped 3x3 → ReLU → grouped
3x3 → ReLU → 1x1, plus identity) three times, with its own cascade of 1x1 convs in between.
The upsampler is (grouped 3x3 → ReLU → PixelShuffle(2)) once per factor of 2.

Every conv is width-sliced (blocks/slimmable.py), so a width-w subnet is the network with w
features everywhere. As in ARM, a sliced layer takes the *first* n input channels of whatever
arrives: for a cascade conv at width w that is the concat of w-wide tensors, matched against
the first 2w/3w/4w columns of the full-width weight (that is how ARM trains and runs it).
Names follow ARM's checkpoints (`entry`, `b1.b1.body.0`, `b1.c1.0`, `upsample.up.body.0`, ...).
Input and output are RGB in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks.slimmable import SlimConv2d, Supernet

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass(frozen=True)
class CARNConfig:
    nf: int = 64
    group: int = 4
    widths: tuple[int, ...] = (36, 52, 64)

    def to_dict(self) -> dict:
        return asdict(self)


VARIANTS = {"arm": CARNConfig()}


def _slim(nf: int, cin: int, cout: int, k: int, groups: int = 1, *, slice_in: bool = True, slice_out: bool = True):
    return SlimConv2d(cin, cout, k, padding=k // 2, groups=groups, full_width=nf, slice_in=slice_in,
                      slice_out=slice_out)


class MeanShift(nn.Conv2d):
    """A fixed 1x1 conv adding (sign=+1) or subtracting (sign=-1) the DIV2K mean (kept as a conv so
    the checkpoint keys `sub_mean.weight/bias` load)."""

    def __init__(self, sign: int):
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * torch.tensor(DIV2K_MEAN)
        self.requires_grad_(False)


class EfficientResidual(nn.Module):
    def __init__(self, nf: int, group: int):
        super().__init__()
        self.body = nn.Sequential(
            _slim(nf, nf, nf, 3, group), nn.ReLU(inplace=True),
            _slim(nf, nf, nf, 3, group), nn.ReLU(inplace=True),
            _slim(nf, nf, nf, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


def _cascade(nf: int, parts: int) -> nn.Sequential:
    return nn.Sequential(_slim(nf, nf * parts, nf, 1), nn.ReLU(inplace=True))


class CascadingBlock(nn.Module):
    def __init__(self, nf: int, group: int):
        super().__init__()
        self.b1 = EfficientResidual(nf, group)  # used three times (shared weights, as in CARN-M)
        self.c1, self.c2, self.c3 = _cascade(nf, 2), _cascade(nf, 3), _cascade(nf, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        concat, out = x, x
        for cascade in (self.c1, self.c2, self.c3):
            concat = torch.cat([concat, self.b1(out)], dim=1)
            out = cascade(concat)
        return out


class Upsampler(nn.Module):
    def __init__(self, nf: int, scale: int, group: int):
        super().__init__()
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [_slim(nf, nf, 9 * nf, 3, group), nn.ReLU(inplace=True), nn.PixelShuffle(3)]
        else:
            for _ in range(scale.bit_length() - 1):
                layers += [_slim(nf, nf, 4 * nf, 3, group), nn.ReLU(inplace=True), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _UpsampleHolder(nn.Module):
    """ARM nests the upsampler one level deeper (`upsample.up.body...`); kept for the key names."""

    def __init__(self, nf: int, scale: int, group: int):
        super().__init__()
        self.up = Upsampler(nf, scale, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class CARN(Supernet):
    def __init__(self, config: CARNConfig = CARNConfig(), scale: int = 4):
        super().__init__()
        self.config, self.scale = config, scale
        nf, g = config.nf, config.group
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(+1)
        self.entry = _slim(nf, 3, nf, 3, slice_in=False)
        self.b1, self.b2, self.b3 = (CascadingBlock(nf, g) for _ in range(3))
        self.c1, self.c2, self.c3 = _cascade(nf, 2), _cascade(nf, 3), _cascade(nf, 4)
        self.upsample = _UpsampleHolder(nf, scale, g)
        self.exit = _slim(nf, nf, 3, 3, slice_out=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) → (N,3,rH,rW)
        x = self.entry(self.sub_mean(x))
        concat, out = x, x
        for block, cascade in ((self.b1, self.c1), (self.b2, self.c2), (self.b3, self.c3)):
            concat = torch.cat([concat, block(out)], dim=1)
            out = cascade(concat)
        return self.add_mean(self.exit(self.upsample(out)))


def build(variant: str = "arm", scale: int = 4) -> CARN:
    return CARN(VARIANTS[variant], scale)


def _register() -> None:
    from restore.registry import RestorerSpec, RouteSpec, register

    register(RestorerSpec(
        name="carn",
        task="sr",
        summary="CARN-M any-time supernet (ARM): bicubic or 36/52/64-wide subnets per patch",
        paper="Chen et al., ARM: Any-Time Super-Resolution Method, ECCV 2022 (arXiv 2203.10812); "
              "Ahn et al., CARN, ECCV 2018",
        build=build,
        variants=tuple(VARIANTS),
        default_variant="arm",
        scales=(2, 3, 4),
        default_scale=4,
        tile=256,
        overlap=32,  # 3 cascading blocks of 2 shared residual units: ~20 LR pixels of reach
        subnets=("bicubic", "w36", "w52", "w64"),
        route=RouteSpec(score="edge", patch=32, overlap=4),
        train_defaults=dict(patch=32, batch=16, lr=2e-4, steps=20000),
    ))


_register()
