"""FSRCNN as ARM's any-time supernet (Chen et al., ECCV 2022; Dong et al., ECCV 2016).

    x ─ head 5x5 (3→d) ─ PReLU ─ shrink 1x1 (d→s) ─ PReLU ─ map 3x3 (s→s) × m ─ PReLU
      ─ expand 1x1 (s→d) ─ PReLU ─ deconv 9x9 stride r (d→3)

The d-wide layers (the head's output, the expand's output, the deconv's input) are width-sliced
(blocks/slimmable.py): a subnet of width w uses the first w of the d filters; the s-wide mapping
part is shared whole by every width. ARM's subnets are w ∈ {16, 36, 56} for d = 56, plus bicubic
as "subnet 0". Module names follow ARM's checkpoints (`head_conv.0`, `body_conv.0.0`, ...,
`tail_conv`), so `load_official` reads them as they are.

Input and output are RGB in [0, 1] (as in ARM); there is no mean shift and no global skip.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .blocks.slimmable import SlimConv2d, SlimConvTranspose2d, Supernet


@dataclass(frozen=True)
class FSRCNNConfig:
    d: int = 56  # feature width (the sliced one)
    s: int = 12  # shrunk width of the mapping layers
    m: int = 4  # mapping layers
    widths: tuple[int, ...] = (16, 36, 56)  # trained subnet widths, narrowest first

    def to_dict(self) -> dict:
        return asdict(self)


VARIANTS = {"arm": FSRCNNConfig()}

# ConvTranspose(k=9, stride r) with padding p and output_padding q gives exactly r·H when
# 2p − q = 9 − r; ARM's ×4 uses (3, 1).
_DECONV_PADDING = {2: (4, 1), 3: (3, 0), 4: (3, 1)}


class FSRCNN(Supernet):
    def __init__(self, config: FSRCNNConfig = FSRCNNConfig(), scale: int = 4):
        super().__init__()
        self.config, self.scale = config, scale
        d, s = config.d, config.s
        self.head_conv = nn.Sequential(
            SlimConv2d(3, d, 5, padding=2, full_width=d, slice_in=False, slice_out=True), nn.PReLU())
        mapping: list[nn.Module] = [nn.Sequential(
            SlimConv2d(d, s, 1, full_width=d, slice_in=True, slice_out=False), nn.PReLU())]
        mapping += [SlimConv2d(s, s, 3, padding=1, full_width=d, slice_in=False, slice_out=False)
                    for _ in range(config.m)]
        mapping += [nn.PReLU(), nn.Sequential(
            SlimConv2d(s, d, 1, full_width=d, slice_in=False, slice_out=True), nn.PReLU())]
        self.body_conv = nn.Sequential(*mapping)
        padding, output_padding = _DECONV_PADDING[scale]
        self.tail_conv = SlimConvTranspose2d(d, 3, 9, stride=scale, padding=padding, output_padding=output_padding,
                                             full_width=d, slice_in=True, slice_out=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # ARM's init: Kaiming-normal (fan-in) convs scaled by 0.1, zero biases; the deconv keeps
        # PyTorch's default.
        for m in self.modules():
            if type(m) is SlimConv2d:
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                m.weight.data.mul_(0.1)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) → (N,3,rH,rW)
        return self.tail_conv(self.body_conv(self.head_conv(x)))


def build(variant: str = "arm", scale: int = 4) -> FSRCNN:
    return FSRCNN(VARIANTS[variant], scale)


def _register() -> None:
    from restore.registry import RestorerSpec, RouteSpec, register

    register(RestorerSpec(
        name="fsrcnn",
        task="sr",
        summary="FSRCNN any-time supernet (ARM): bicubic or 16/36/56-wide subnets per patch",
        paper="Chen et al., ARM: Any-Time Super-Resolution Method, ECCV 2022 (arXiv 2203.10812); "
              "Dong et al., FSRCNN, ECCV 2016",
        build=build,
        variants=tuple(VARIANTS),
        default_variant="arm",
        scales=(2, 3, 4),
        default_scale=4,
        tile=256,
        overlap=16,  # reach: 2 (head) + 4 (mapping) + 2 (deconv) LR pixels; 16 leaves a wide margin
        subnets=("bicubic", "w16", "w36", "w56"),
        route=RouteSpec(score="edge", patch=32, overlap=4),
        train_defaults=dict(patch=32, batch=16, lr=1e-3, steps=20000),
    ))


_register()
