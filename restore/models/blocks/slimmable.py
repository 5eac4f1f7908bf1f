"""Width-sliced ("slimmable") convolutions for supernets whose subnets share weights.

ARM and DDA train one network at full width and run narrower copies of it by using only the
*first* k filters of every sliced layer: a width-w subnet is the full network with every sliced
conv cut to its leading rows/columns. Training samples one width per step, so all widths share
(and are trained into) the same leading weights.

`SlimConv2d` and `SlimConvTranspose2d` are ordinary `nn.Conv2d` / `nn.ConvTranspose2d` (so their
state-dict keys are the plain `weight` / `bias`), plus:

* `slice_out`: the output channels follow the active width (`out * width // full`);
* `slice_in`: the input channels follow whatever the incoming tensor has (the previous layer was
  sliced). For grouped convs the per-group input count is `channels // groups`, like ARM.

The active width is set on the whole model with `set_width(model, width)`; `width=None` means
full width. Sliced weights are views, so a subnet costs nothing to switch to and exports to ONNX
as a plain narrower network (the slices fold into constant initializers).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Slimmable:
    """Mixin state: the full width the layer was built for, and the currently active width."""

    full_width: int
    active_width: int | None

    def _init_slim(self, full_width: int, slice_in: bool, slice_out: bool) -> None:
        self.full_width = full_width
        self.active_width = None
        self.slice_in = slice_in
        self.slice_out = slice_out

    def _n_out(self, full_out: int) -> int:
        if not self.slice_out or self.active_width is None:
            return full_out
        return full_out * self.active_width // self.full_width


class SlimConv2d(nn.Conv2d, _Slimmable):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = True, *, full_width: int, slice_in: bool, slice_out: bool):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         bias=bias)
        self._init_slim(full_width, slice_in, slice_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[1] // self.groups if self.slice_in else self.in_channels // self.groups
        n_out = self._n_out(self.out_channels)
        weight = self.weight[:n_out, :n_in]
        bias = None if self.bias is None else self.bias[:n_out]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class SlimConvTranspose2d(nn.ConvTranspose2d, _Slimmable):
    """Transposed conv; its weight is (in, out, k, k), so slicing the input slices dim 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int, *, full_width: int, slice_in: bool, slice_out: bool):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding)
        self._init_slim(full_width, slice_in, slice_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n_in = x.shape[1] if self.slice_in else self.in_channels
        n_out = self._n_out(self.out_channels)
        weight = self.weight[:n_in, :n_out]
        bias = None if self.bias is None else self.bias[:n_out]
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)


def set_width(model: nn.Module, width: int | None) -> None:
    """Make every slimmable layer of `model` run at `width` (None: full width)."""
    for m in model.modules():
        if isinstance(m, _Slimmable):
            if width is not None and not 0 < width <= m.full_width:
                raise ValueError(f"width {width} outside 1..{m.full_width}")
            m.active_width = width


class Subnet(nn.Module):
    """One width of a supernet as a module of its own (for export and engines).

    It shares the supernet's parameters; the width is applied on every call, so several Subnet
    views of one supernet can be used in turn.
    """

    def __init__(self, supernet: nn.Module, width: int):
        super().__init__()
        self.supernet = supernet
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        set_width(self.supernet, self.width)
        try:
            return self.supernet(x)
        finally:
            set_width(self.supernet, None)

    def reparameterize(self) -> "Subnet":
        return self


def count_macs(model: nn.Module, width: int | None, hw: tuple[int, int] = (32, 32)) -> int:
    """Multiply-accumulates of the convolutions of one (1, 3, *hw) forward pass at `width`."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * output.shape[1] * k
        else:
            total += output.numel() * (inputs[0].shape[1] // module.groups) * k

    handles = [m.register_forward_hook(conv_hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        set_width(model, width)
        with torch.no_grad():
            model(torch.zeros(1, 3, *hw))
    finally:
        set_width(model, None)
        for h in handles:
            h.remove()
    return total


class Supernet(nn.Module):
    """Base of the width-sliced models: `config.widths` are the trained subnet widths."""

    config: object

    @property
    def subnet_widths(self) -> tuple[int, ...]:
        return tuple(self.config.widths)

    def set_width(self, width: int | None) -> None:
        set_width(self, width)

    def reparameterize(self) -> "Supernet":
        return self  # plain convs: nothing to fold

    def load_official(self, state: dict) -> None:
        """Load an official (ARM-Net style) state dict; a DataParallel `module.` prefix is dropped."""
        self.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
