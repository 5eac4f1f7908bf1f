"""PyTorch inference engine (always available; the reference the other engines are tested against).

CPU: fp32, channels_last (oneDNN's fast convolutions). CUDA: fp16 autocast by default (bf16 or
fp32 on request) with the same fp16 guard as TensorRT (a tile that comes out NaN/Inf or black
while its input is not is redone in fp32), channels_last, optional CUDA graphs per fixed input
shape (tiles all have one shape, so one capture serves a whole batch of images) and optional
`torch.compile`. CUDA out-of-memory propagates as torch.cuda.OutOfMemoryError so the tiler can
shrink the work; `release_memory()` gives cached blocks back.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def bad_tiles(x: torch.Tensor, y: torch.Tensor, black: float = 0.5 / 255) -> torch.Tensor:
    """On-device twin of tensorrt_backend.fp16_bad_tiles: per item, NaN/Inf or black-from-non-black."""
    yf, xf = y.flatten(1), x.flatten(1)
    return ~torch.isfinite(yf).all(1) | ((yf <= black).all(1) & ~(xf <= black).all(1))


class TorchEngine:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None, channels_last: bool | None = None, cuda_graphs: bool = False,
                 compile: bool = False, max_graphs: int = 4):
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module setting
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        precision = precision or ("fp16" if cuda else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and not cuda:
            raise ValueError(f"{precision} autocast is for CUDA; on CPU use fp32 (bf16 on CPUs without "
                             "AMX is far slower than fp32)")
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU")
        self.precision = precision
        # NHWC lets oneDNN (CPU) and the tensor cores (CUDA) pick their fast convolution kernels.
        self.channels_last = True if channels_last is None else bool(channels_last)
        if self.device.type != "cpu":
            model = copy.deepcopy(model)  # keep the caller's module on the CPU (ONNX export needs it there)
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.scale = int(getattr(model, "scale", 1))
        self._forward = torch.compile(model) if compile else model
        self.cuda_graphs = bool(cuda_graphs and cuda)
        self.max_graphs = max(1, int(max_graphs))
        self._graphs: dict = {}  # (shape) -> (graph, static input, static output)
        self.fp16_redone = 0

    def _run(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        with torch.inference_mode():
            if precision == "fp32":
                return self._forward(x).float()
            with torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[precision]):
                return self._forward(x).float()

    def _run_graph(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:  # shapes keep changing: graphs do not pay off
                return self._run(x, self.precision)
            static_in = x.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside capture (cuDNN autotuning, lazy init)
                for _ in range(2):
                    self._run(static_in, self.precision)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in, self.precision)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def run_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Device-resident API: (N,3,h,w) tensor on this engine's device → float32 tensor there."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self._run_graph(x) if self.cuda_graphs else self._run(x, self.precision)
        if self.precision != "fp32":
            bad = bad_tiles(x, y)
            if bool(bad.any()):  # overflow/underflow in reduced precision: redo those tiles in fp32
                idx = torch.nonzero(bad).flatten()
                y = y.clone()
                y[idx] = self._run(x[idx], "fp32")
                self.fp16_redone += int(idx.numel())
        return y

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.device.type == "cpu":
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                y = self._forward(x)
            # Back to plain NCHW float32 so callers can index the array like any other.
            return y.to("cpu", torch.float32).contiguous().numpy()
        y = self.run_torch(x)
        return y.to("cpu", torch.float32).contiguous().numpy()

    def release_memory(self) -> None:
        """After an out-of-memory error: drop captured graphs and give cached blocks back."""
        self._graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
