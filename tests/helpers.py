"""Small synthetic images and models for tests."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful HxWx3 float image in [0, 1] (what SR networks are good at)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(3):
        fy, fx, ph = rng.uniform(0.05, 0.3, 2).tolist() + [rng.uniform(0, 6.28)]
        chans.append(0.5 + 0.4 * np.sin(fy * y + ph) * np.cos(fx * x))
    return np.stack(chans, -1).astype(np.float32)


class TinySR(nn.Module):
    """Shaped like the real models: reflect-pad to a multiple of 8, convs, PixelShuffle, crop."""

    def __init__(self, scale=2, multiple=8, width=8, gain=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.scale, self.size_multiple, self.gain = scale, multiple, gain
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.size_multiple
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = self.body(x)
        if self.gain != 1.0:  # huge intermediate values: inf in fp16, fine in fp32 (fp16 guard tests)
            y = (y * self.gain + 1.0) - y * self.gain
        return y[:, :, : h * self.scale, : w * self.scale]
