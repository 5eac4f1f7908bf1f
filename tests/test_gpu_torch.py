"""PyTorch on CUDA: autocast precisions, channels_last, CUDA graphs, torch.compile, the fp16 guard
and out-of-memory recovery. The whole module skips where there is no CUDA GPU."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from restore.backends.torch_backend import TorchEngine
from restore.pipeline.tiling import run_tiled

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def TinySR(scale=2, gain=1.0):
    from helpers import TinySR as Shared

    return Shared(scale=scale, width=16, gain=gain)


def rand(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


def ref(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@needs_cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 6e-2)])
def test_cuda_precisions_match_cpu(precision, tol):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    net = TinySR().eval()
    eng = TorchEngine(net, device="cuda", precision=precision)
    x = rand(2, 40, 56)
    out = eng(x)
    assert out.dtype == np.float32 and out.shape == (2, 3, 80, 112)
    assert np.abs(out - ref(net, x)).max() < tol
    assert next(net.parameters()).device.type == "cpu"  # the caller's module stays on the CPU


@needs_cuda
def test_cuda_graphs_replay_per_shape():
    net = TinySR().eval()
    eng = TorchEngine(net, device="cuda", precision="fp16", cuda_graphs=True)
    a, b = rand(4, 32, 32, 1), rand(4, 32, 32, 2)
    ya, yb = eng(a), eng(b)
    assert len(eng._graphs) == 1  # one capture serves every tile of that shape
    assert np.abs(ya - ref(net, a)).max() < 2e-2 and np.abs(yb - ref(net, b)).max() < 2e-2
    eng(rand(1, 24, 40))
    assert len(eng._graphs) == 2
    eng.release_memory()
    assert not eng._graphs


@needs_cuda
def test_channels_last_and_tiled_pipeline():
    net = TinySR().eval()
    eng = TorchEngine(net, device="cuda", precision="fp32")
    assert eng.channels_last
    img = rand(1, 70, 90)[0]
    out = run_tiled(eng, img, scale=2, tile=32, overlap=16)
    assert np.abs(out - ref(net, img[None])[0]).max() < 1e-4


@needs_cuda
def test_fp16_guard_redoes_overflowing_tiles_in_fp32():
    net = TinySR(gain=1e6).eval()  # fp16 overflows (inf - inf = nan); fp32 gives the right answer
    eng = TorchEngine(net, device="cuda", precision="fp16")
    x = rand(2, 16, 16)
    out = eng(x)
    assert np.isfinite(out).all() and eng.fp16_redone == 2
    assert np.abs(out - ref(net, x)).max() < 0.2  # 1 +- a few fp32 ulps at 1e6


@needs_cuda
def test_torch_compile_option():
    net = TinySR().eval()
    eng = TorchEngine(net, device="cuda", precision="fp32", compile=True)
    x = rand(1, 32, 32)
    assert np.abs(eng(x) - ref(net, x)).max() < 1e-4


@needs_cuda
def test_run_torch_keeps_data_on_the_gpu():
    eng = TorchEngine(TinySR().eval(), device="cuda")
    y = eng.run_torch(torch.rand(2, 3, 16, 16, device="cuda"))
    assert y.is_cuda and y.dtype == torch.float32 and y.shape == (2, 3, 32, 32)


@needs_cuda
def test_cuda_out_of_memory_halves_the_tile():
    net = TinySR().eval()
    eng = TorchEngine(net, device="cuda", precision="fp32")
    real = eng.run_torch

    def limited(x):
        if max(x.shape[-2:]) > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real(x)

    eng.run_torch = limited
    img = rand(1, 100, 90)[0]
    out = run_tiled(eng, img, scale=2, tile=64, overlap=16, align=8)
    assert np.abs(out - ref(net, img[None])[0]).max() < 1e-4


def test_cpu_rejects_reduced_precision():
    with pytest.raises(ValueError, match="CUDA"):
        TorchEngine(TinySR().eval(), device="cpu", precision="fp16")
