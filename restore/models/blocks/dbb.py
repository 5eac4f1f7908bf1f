"""Re-parameterisable 3x3 convolution with six training-time branches (LIPT's HRM conv).

At training time the block sums six branches (a "diverse branch block" with two extra
isotropic-Sobel branches, as in LIPT); `fold()` turns the sum into one plain 3x3 conv that
gives the same output in eval mode. Sub-module and parameter names follow the official LIPT
checkpoints (``dbb_origin.conv.weight``, ``dbb_avg.bn.bn.running_mean``, ``dbb_sobelx.k0`` ...)
so their training state dicts load unchanged.

Every branch is written so that it is exactly an affine function of the input with a 3x3
footprint, including at the image border: branches that start with a 1x1 conv pad their
intermediate map with the value the 1x1 stage produces for a zero input (not with zeros),
which is what a single zero-padded 3x3 conv does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a bias-free conv into (kernel, bias)."""
    std = (bn.running_var + bn.eps).sqrt()
    gain = bn.weight / std
    return kernel * gain.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * gain


def chain_1x1_then_kxk(k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor):
    """Compose a 1x1 conv (k1: O1xIx1x1, b1) followed by a kxk conv (k2: OxO1xkxk, b2).

    Exact when the intermediate map is padded with the 1x1 stage's response to zero (= b1).
    """
    kernel = torch.einsum("omhw,mi->oihw", k2, k1[:, :, 0, 0])
    bias = b2 + torch.einsum("omhw,m->o", k2, b1)
    return kernel, bias


class BNWithBorder(nn.Module):
    """BatchNorm followed by padding with BN(0), i.e. what a zero-padded input would give.

    Named ``bn`` inside so that keys read ``<name>.bn.weight`` like the official checkpoints.
    """

    def __init__(self, channels: int, pad: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def border_value(self) -> torch.Tensor:
        bn = self.bn
        return bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        # Pad with zeros, then add the border value only where padding was added.
        ones = torch.ones_like(y[:1, :1])
        inside = F.pad(ones, [self.pad] * 4)
        value = self.border_value().detach().view(1, -1, 1, 1)
        return F.pad(y, [self.pad] * 4) + (1.0 - inside) * value


class IdentityInitConv1x1(nn.Module):
    """1x1 conv whose effective kernel is identity + a learned residual (starts at identity)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, channels, 1, 1))
        self.register_buffer("identity", torch.eye(channels).view(channels, channels, 1, 1), persistent=False)

    def kernel(self) -> torch.Tensor:
        return self.weight + self.identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel())


def _isotropic_sobel(direction: str) -> torch.Tensor:
    """3x3 Sobel mask with centre taps sqrt(2) (LIPT's 'isotropic Sobel')."""
    r2 = math.sqrt(2.0)
    col = torch.tensor([1.0, r2, 1.0])
    mask = torch.zeros(3, 3)
    if direction == "x":  # responds to horizontal gradients: left column +, right column -
        mask[:, 0], mask[:, 2] = col, -col
    else:
        mask[0, :], mask[2, :] = col, -col
    return mask


class SobelBranch(nn.Module):
    """1x1 conv (k0, b0) then a fixed Sobel depthwise 3x3 with a learned per-channel scale."""

    def __init__(self, in_channels: int, out_channels: int, direction: str):
        super().__init__()
        init = nn.Conv2d(in_channels, out_channels, 1)
        self.k0 = nn.Parameter(init.weight.detach().clone())
        self.b0 = nn.Parameter(init.bias.detach().clone())
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        # A buffer (not trained) but persistent: official checkpoints store it as `mask`.
        self.register_buffer("mask", _isotropic_sobel(direction).expand(out_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.k0, self.b0)
        ones = torch.ones_like(y[:1, :1])
        inside = F.pad(ones, [1, 1, 1, 1])
        y = F.pad(y, [1, 1, 1, 1]) + (1.0 - inside) * self.b0.view(1, -1, 1, 1)
        return F.conv2d(y, self.scale * self.mask, self.bias, groups=y.shape[1])

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        depthwise = (self.scale * self.mask)[:, 0]  # O x 3 x 3
        kernel = depthwise[:, None] * self.k0  # O x I x 3 x 3 (k0 is O x I x 1 x 1)
        bias = self.bias + self.b0 * depthwise.sum(dim=(1, 2))
        return kernel, bias


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(out_channels))
    return seq


class RepConv3x3(nn.Module):
    """Six-branch 3x3 conv for training; `fold()` returns the equivalent plain nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dbb_origin = _conv_bn(in_channels, out_channels, 3)
        self.dbb_1x1 = _conv_bn(in_channels, out_channels, 1)
        self.dbb_avg = nn.Sequential()
        self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))
        self.dbb_avg.add_module("bn", BNWithBorder(out_channels, pad=1))
        self.dbb_avg.add_module("avg", nn.AvgPool2d(3, stride=1, padding=0))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))
        self.dbb_1x1_kxk = nn.Sequential()
        self.dbb_1x1_kxk.add_module("idconv1", IdentityInitConv1x1(in_channels))
        self.dbb_1x1_kxk.add_module("bn1", BNWithBorder(in_channels, pad=1))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(in_channels, out_channels, 3, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))
        self.dbb_sobelx = SobelBranch(in_channels, out_channels, "x")
        self.dbb_sobely = SobelBranch(in_channels, out_channels, "y")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dbb_origin(x) + self.dbb_1x1(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
                + self.dbb_sobelx(x) + self.dbb_sobely(x))

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernels, biases = [], []

        k, b = fuse_bn(self.dbb_origin.conv.weight, self.dbb_origin.bn)
        kernels.append(k), biases.append(b)

        k, b = fuse_bn(self.dbb_1x1.conv.weight, self.dbb_1x1.bn)
        kernels.append(F.pad(k, [1, 1, 1, 1])), biases.append(b)

        k1, b1 = fuse_bn(self.dbb_avg.conv.weight, self.dbb_avg.bn.bn)
        box = torch.eye(self.out_channels, dtype=k1.dtype, device=k1.device)[:, :, None, None].expand(-1, -1, 3, 3) / 9.0
        k2, b2 = fuse_bn(box, self.dbb_avg.avgbn)
        k, b = chain_1x1_then_kxk(k1, b1, k2, b2)
        kernels.append(k), biases.append(b)

        seq = self.dbb_1x1_kxk
        k1, b1 = fuse_bn(seq.idconv1.kernel(), seq.bn1.bn)
        k2, b2 = fuse_bn(seq.conv2.weight, seq.bn2)
        k, b = chain_1x1_then_kxk(k1, b1, k2, b2)
        kernels.append(k), biases.append(b)

        for branch in (self.dbb_sobelx, self.dbb_sobely):
            k, b = branch.folded()
            kernels.append(k), biases.append(b)
        return sum(kernels), sum(biases)

    def fold(self) -> nn.Conv2d:
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, padding=1).to(kernel)
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        return conv


def fold_conv_bn(seq: nn.Sequential) -> nn.Conv2d:
    """Fold Sequential(conv-with-bias, BatchNorm) into one conv (NVSM-SA's project_inp)."""
    conv, bn = seq[0], seq[1]
    with torch.no_grad():
        kernel, shift = fuse_bn(conv.weight, bn)
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding).to(kernel)
        fused.weight.copy_(kernel)
        fused.bias.copy_(shift + conv.bias * gain)
    return fused
