"""PyTorch inference engine (always available; the reference the other engines are tested against)."""
from __future__ import annotations

import numpy as np
import torch


class TorchEngine:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module setting
        self.device = torch.device(device)
        # NHWC lets oneDNN pick its fast convolution kernels on CPU; elsewhere keep the default.
        self.channels_last = self.device.type == "cpu"
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.scale = int(getattr(model, "scale", 1))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self.model(x)
        # Back to plain NCHW float32 so callers can index the array like any other.
        return y.to("cpu", torch.float32).contiguous().numpy()
