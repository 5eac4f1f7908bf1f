"""Training losses, by name (`restore train --loss`).

- "l1": mean absolute error in pixels, the default for every restorer.
- "l2": mean squared error, meant for a short last phase at a low learning rate: PSNR is a function
  of the MSE, which L1 does not minimise (SR papers report small gains; not yet tried here).
- "l1+fft": L1 plus 0.1 × the L1 distance between the 2-D spectra (real and imaginary parts
  of rfft2), as MIMO-UNet trains deblurring. A blurred image differs from a sharp one mostly in
  weak high frequencies, which pixel L1 barely sees; the spectral term weighs every frequency
  alike, so a network has a reason to leave the "return the input" solution early.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FFT_WEIGHT = 0.1


def l1(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(out, target)


def l2(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target)


def spectral_l1(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |Re, Im| difference of the orthonormal rfft2 over the last two axes."""
    a = torch.view_as_real(torch.fft.rfft2(out.float(), norm="ortho"))
    b = torch.view_as_real(torch.fft.rfft2(target.float(), norm="ortho"))
    return F.l1_loss(a, b)


def l1_fft(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return l1(out, target) + FFT_WEIGHT * spectral_l1(out, target)


LOSSES = {"l1": (l1, "L1"), "l2": (l2, "L2 (MSE)"), "l1+fft": (l1_fft, f"L1 + {FFT_WEIGHT:g} x L1 of the rfft2 spectra (MIMO-UNet)")}


def get_loss(name: str):
    """(loss function, manifest label) for a --loss name; ValueError for an unknown one."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})") from None
