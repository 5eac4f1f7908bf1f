"""LIPT: Latency-aware Image Processing Transformer (Qiao et al., IEEE TIP 2025) for super-resolution.

A re-implementation from the paper and the official code's structure (methods.md §2):

    x ─ sub_mean ─ head(3x3) ─┬─ LIPTB × n ─(+)─ tail(3x3 → PixelShuffle) ─ add_mean
                              └──────────────┘

Each LIPT block (LIPTB) runs 1 + n_share sub-blocks of  HRM_a → HRM_c → NVSM-SA → HRM_b  (all
residual). The attention maps are computed once, in sub-block 0, and reused by the shared
sub-blocks on fresh values: that keeps the memory-bound attention a small share of the latency.
HRMs are conv3x3 → ReLU → conv3x3 built from six-branch re-parameterisable convs that fold into
single 3x3 convs for inference (`reparameterize()`), together with the BatchNorm after NVSM-SA's
input projection.

Module names follow the official checkpoints so their state dicts load (see `load_official`).
The model takes RGB in [0, 1] and returns RGB in [0, 1] (unclipped); internally it works on
[0, rgb_range] like the original so that official weights and MeanShift constants apply as is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks.dbb import RepConv3x3, fold_conv_bn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)

# The sparse half of NVSM-SA keeps these positions of every 2w-long stretch on each axis
# (the official fixed masks for w = 8 and w = 16): even offsets in the first w, odd in the second.
SPARSE_MASKS = {
    8: (1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1),
    16: (1, 0) * 8 + (0, 1) * 8,
}


@dataclass(frozen=True)
class LIPTConfig:
    channels: int = 28  # c_elan
    n_layers: int = 8  # m_elan: LIPT blocks = n_layers // (1 + n_share)
    n_share: int = 1  # sub-blocks reusing the first one's attention
    expand: int = 1  # r_expand: HRM hidden width = channels * expand
    window: int = 8
    scale: int = 2
    rgb_range: float = 255.0

    @property
    def n_blocks(self) -> int:
        return self.n_layers // (1 + self.n_share)

    def to_dict(self) -> dict:
        return asdict(self)


# Variants as in the paper's table (figs/light.png). The released tinyx2.yml uses 24 channels,
# which gives 0.265 M parameters; 28 channels gives the table's 0.36 M, so Tiny uses 28.
VARIANTS = {
    "tiny": dict(channels=28, n_layers=8, n_share=1, expand=1, window=8),
    "small": dict(channels=64, n_layers=10, n_share=1, expand=1, window=8),
}


def make_config(variant: str = "tiny", scale: int = 2, **overrides) -> LIPTConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown LIPT variant {variant!r} (choose from {', '.join(VARIANTS)})")
    return LIPTConfig(**{**VARIANTS[variant], "scale": scale, **overrides})


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv that subtracts (sign=-1) or adds (sign=+1) the dataset mean."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(DIV2K_MEAN)
        self.requires_grad_(False)


class HRM(nn.Module):
    """conv3x3 → ReLU → conv3x3; the convs are six-branch RepConv3x3 until reparameterised."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.conv0 = RepConv3x3(channels, channels * expand)
        self.conv1 = RepConv3x3(channels * expand, channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.act(self.conv0(x)))

    def reparameterize(self) -> None:
        if isinstance(self.conv0, RepConv3x3):
            self.conv0, self.conv1 = self.conv0.fold(), self.conv1.fold()


def to_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, C, H, W) → (B·H/w·W/w, w·w, C): one row of tokens per w×w window."""
    b, c, h, wd = x.shape
    x = x.reshape(b, c, h // w, w, wd // w, w)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, c)


def from_windows(t: torch.Tensor, b: int, h: int, wd: int, w: int) -> torch.Tensor:
    """Inverse of `to_windows`."""
    c = t.shape[-1]
    t = t.reshape(b, h // w, wd // w, w, w, c)
    return t.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, wd)


def sparse_index(length: int, w: int, device: torch.device) -> torch.Tensor:
    """Source rows (or columns) of the sparse 2w×2w windows, re-tiled into w×w windows.

    The official code pads the map circularly by w at the bottom/right, cuts 2w-wide windows
    with stride w and keeps the masked positions; position k of the re-tiled map therefore reads
    (k // w)·w + keep[k % w] of the padded map, i.e. that index modulo `length`.
    """
    keep = torch.tensor([i for i, m in enumerate(SPARSE_MASKS[w]) if m], device=device)
    k = torch.arange(length, device=device)
    idx = (k // w) * w + keep[k % w]
    # idx < length + w <= 2·length, so one subtraction wraps it; `% length` with a symbolic
    # length does not export to ONNX.
    return torch.where(idx >= length, idx - length, idx)


def window_gather_index(h: int, wd: int, w: int, shifted: bool, sparse: bool, device) -> torch.Tensor:
    """Row index into a flattened (H·W) map that yields the tokens of `to_windows`, after the
    cyclic shift by −w/2 (`shifted`) and the sparse re-tiling (`sparse`): (nW·w·w,) int64."""
    grid = torch.arange(h * wd, device=device).reshape(1, 1, h, wd)
    if shifted:
        grid = torch.roll(grid, shifts=(-w // 2, -w // 2), dims=(2, 3))
    if sparse:
        grid = grid.index_select(2, sparse_index(h, w, device)).index_select(3, sparse_index(wd, w, device))
    return to_windows(grid, w).reshape(-1)


def window_merge_index(h: int, wd: int, w: int, shifted: bool, device) -> torch.Tensor:
    """Inverse of the dense `window_gather_index`: for each pixel, the token row holding it."""
    tokens = torch.arange(h * wd, device=device).reshape(-1, w * w, 1)
    grid = from_windows(tokens, 1, h, wd, w)
    if shifted:
        grid = torch.roll(grid, shifts=(w // 2, w // 2), dims=(2, 3))
    return grid.reshape(-1)


class NVSMSA(nn.Module):
    """Non-volatile sparse-mask self-attention (ELAN-style: Q doubles as K, no 1/sqrt(d) scale).

    Half the channels attend inside dense w×w windows, the other half inside a sparse sample of
    2w×2w windows. With calc_attn=False the module only projects values and reuses the attention
    maps it is given.
    """

    def __init__(self, channels: int, window: int, shifted: bool, calc_attn: bool):
        super().__init__()
        self.channels, self.window, self.shifted, self.calc_attn = channels, window, shifted, calc_attn
        out = channels * 2 if calc_attn else channels
        self.project_inp = nn.Sequential(nn.Conv2d(channels, out, 1), nn.BatchNorm2d(out))
        self.project_out = nn.Conv2d(channels, channels, 1)

    def reparameterize(self) -> None:
        if isinstance(self.project_inp, nn.Sequential):
            self.project_inp = fold_conv_bn(self.project_inp)

    def forward(self, x: torch.Tensor, attns: list[torch.Tensor] | None = None):
        b, _, h, wd = x.shape
        w, n, half = self.window, h * wd, self.channels // 2
        dense = window_gather_index(h, wd, w, self.shifted, sparse=False, device=x.device)

        def tokens(group: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            """(B, c, H, W) → (B·nW, w·w, c). Pixels become rows, then one row gather does the
            shift, the sparse sampling and the window partition at once. Same arithmetic as
            roll → reshape → 6-D permute, but ONNX Runtime runs 6-D transposes element by
            element on one thread (a third of LIPT's time on a CPU); a gather copies rows."""
            rows = group.reshape(b, half, n).transpose(1, 2)
            return rows.index_select(1, index).reshape(-1, w * w, half)

        # Channel groups are cut on the NCHW map, where each is one contiguous block. (Cutting
        # rows instead copies with a stride; a 1x1 conv done as matmuls on rows loses ORT's
        # fusion of the residual add into project_out: both measured slower.)
        groups = torch.split(self.project_inp(x), half, dim=1)
        if attns is None:  # groups: q, v of the dense half, then q, v of the sparse half
            sparse = window_gather_index(h, wd, w, self.shifted, sparse=True, device=x.device)
            attns, values = [], []
            for (q, v), index in zip((groups[:2], groups[2:]), (dense, sparse)):
                q = tokens(q, index)
                attns.append(torch.softmax(q @ q.transpose(-2, -1), dim=-1))
                values.append(tokens(v, index))
        else:
            # Shared sub-block: values in plain w×w windows (as in the official code), the
            # attention maps of the first sub-block.
            values = [tokens(v, dense) for v in groups]
        # Both halves' outputs sit on the plain window grid (the sparse half too, as in the
        # official code): one row gather puts each back in place.
        merge = window_merge_index(h, wd, w, self.shifted, device=x.device)
        out = [(attn @ v).reshape(b, n, half).index_select(1, merge).transpose(1, 2).reshape(b, half, h, wd)
               for attn, v in zip(attns, values)]
        return self.project_out(torch.cat(out, dim=1)), attns


class LIPTB(nn.Module):
    """One LIPT block: 1 + n_share sub-blocks sharing the first sub-block's attention maps."""

    def __init__(self, channels: int, expand: int, window: int, shifted: bool, n_share: int):
        super().__init__()
        n = 1 + n_share
        self.n_sub = n
        self.modules_hrm_a = nn.ModuleDict({f"lcs_a_{i}": HRM(channels, expand) for i in range(n)})
        self.modules_hrm_c = nn.ModuleDict({f"lcs_c_{i}": HRM(channels, expand) for i in range(n)})
        self.modules_nvsm_sa = nn.ModuleDict(
            {f"smmsa_{i}": NVSMSA(channels, window, shifted, calc_attn=(i == 0)) for i in range(n)})
        self.modules_hrm_b = nn.ModuleDict({f"lcs_b_{i}": HRM(channels, expand) for i in range(n)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attns = None
        for i in range(self.n_sub):
            x = self.modules_hrm_a[f"lcs_a_{i}"](x) + x
            x = self.modules_hrm_c[f"lcs_c_{i}"](x) + x
            y, attns = self.modules_nvsm_sa[f"smmsa_{i}"](x, attns)
            x = y + x
            x = self.modules_hrm_b[f"lcs_b_{i}"](x) + x
        return x


class LIPT(nn.Module):
    """LIPT super-resolution network. Input/output: (N, 3, H, W) RGB in [0, 1]."""

    def __init__(self, config: LIPTConfig):
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.size_multiple = config.window
        c = config.channels
        self.sub_mean = MeanShift(config.rgb_range, sign=-1)
        self.add_mean = MeanShift(config.rgb_range, sign=+1)
        self.head = nn.Sequential(nn.Conv2d(3, c, 3, padding=1))
        self.body = nn.Sequential(*[
            LIPTB(c, config.expand, config.window, shifted=(i % 2 == 1), n_share=config.n_share)
            for i in range(config.n_blocks)])
        tail = [nn.Conv2d(c, 3 * config.scale ** 2, 3, padding=1)]
        if config.scale > 1:
            tail.append(nn.PixelShuffle(config.scale))
        self.tail = nn.Sequential(*tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        # Reflect-pad to the window multiple (as the original does) and crop the output back.
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        x = self.sub_mean(x * self.config.rgb_range)
        x = self.head(x)
        x = self.tail(self.body(x) + x)
        x = self.add_mean(x) / self.config.rgb_range
        return x[:, :, : h * self.scale, : w * self.scale]

    @torch.no_grad()
    def reparameterize(self) -> "LIPT":
        """Fold every training-time branch and BatchNorm into plain convs (in place)."""
        self.eval()
        for module in list(self.modules()):
            if isinstance(module, (HRM, NVSMSA)):
                module.reparameterize()
        return self

    plain_graph_label = "HRMs as plain 3x3 convs; BatchNorm after project_inp (folded at export)"

    def plain_training_graph(self) -> "LIPT":
        """The graph `restore train --plain` trains: every HRM folded to its single 3x3 conv (the
        six-branch RepConvs cost 4x per step on a CPU), but the BatchNorm after `project_inp` kept,
        as in the paper's training graph; `reparameterize()` folds it after training.

        Why the BatchNorm stays: Q doubles as K with no 1/sqrt(d) scale, and the residual stream
        works in [0, 255], so without normalisation the logits q·q come out in the hundreds to
        thousands. Softmax is then one-hot and passes no gradient: a net trained that way
        (our first plain runs) ends with attention that is ~97 % on one token, a CNN in disguise.
        """
        self.train()
        for module in self.modules():
            if isinstance(module, HRM):
                module.reparameterize()
        return self

    @torch.no_grad()
    def adopt_folded_projections(self, state: dict, lr_batch: torch.Tensor) -> dict | None:
        """Convert a state dict from a plain run whose `project_inp` was folded (no BatchNorm) to
        `plain_training_graph()`; None when `state` needs no conversion.

        The value channels keep their function (BatchNorm statistics and affine set so that the
        layer is the identity on `lr_batch`); the query channels are normalised to zero mean and
        unit variance, which brings the saturated attention logits back into softmax's working
        range (the function changes there; training then re-learns the attention).
        """
        folded = [k[: -len(".project_inp.weight")] for k in state if k.endswith(".project_inp.weight")]
        if not folded:
            return None
        state = dict(state)
        own = self.state_dict()
        for prefix in folded:
            state[f"{prefix}.project_inp.0.weight"] = state.pop(f"{prefix}.project_inp.weight")
            state[f"{prefix}.project_inp.0.bias"] = state.pop(f"{prefix}.project_inp.bias")
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                state[f"{prefix}.project_inp.1.{name}"] = own[f"{prefix}.project_inp.1.{name}"].clone()
        self.load_state_dict(state)
        # Measure each projection's output on the batch: forward hooks see the conv outputs.
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = []
        for name, module in self.named_modules():
            if isinstance(module, NVSMSA) and isinstance(module.project_inp, nn.Sequential):
                def grab(mod, inp, out, name=name):
                    stats[name] = (out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False))
                hooks.append(module.project_inp[0].register_forward_hook(grab))
        was_training = self.training
        self.eval()
        # Eval-mode BatchNorms with default statistics are the identity, so each block sees
        # exactly what the folded net computed when its statistics are taken.
        self(lr_batch)
        for h in hooks:
            h.remove()
        for name, module in self.named_modules():
            if name not in stats:
                continue
            bn = module.project_inp[1]
            mean, var = stats[name]
            std = torch.sqrt(var + bn.eps)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            gamma, beta = std.clone(), mean.clone()  # identity for every channel ...
            half = module.channels // 2
            if module.calc_attn:  # ... but the queries: channels [0, half) and [2·half, 3·half)
                for lo in (0, 2 * half):
                    gamma[lo:lo + half], beta[lo:lo + half] = 1.0, 0.0
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
        self.train(was_training)
        return self.state_dict()

    @torch.no_grad()
    def init_plain(self) -> "LIPT":
        """Initialise a folded model (`plain_training_graph()` or reparameterised) for training.

        Without the multi-branch BatchNorms, ~50 residual branches at default init blow the
        activations up (the [0, 255] working range makes it worse). Zeroing the last layer of
        every residual branch makes each block start as the identity (SkipInit-style).
        """
        for m in self.modules():
            if isinstance(m, HRM):
                nn.init.kaiming_normal_(m.conv0.weight, nonlinearity="relu")
                nn.init.zeros_(m.conv0.bias)
                nn.init.zeros_(m.conv1.weight)
                nn.init.zeros_(m.conv1.bias)
            elif isinstance(m, NVSMSA):
                nn.init.zeros_(m.project_out.weight)
                nn.init.zeros_(m.project_out.bias)
        return self

    @property
    def is_reparameterized(self) -> bool:
        return not any(isinstance(m, RepConv3x3) for m in self.modules())


def build(variant: str = "tiny", scale: int = 2, deploy: bool = False, **overrides) -> LIPT:
    model = LIPT(make_config(variant, scale, **overrides))
    return model.reparameterize() if deploy else model


def load_official(state: dict, config: LIPTConfig) -> LIPT:
    """Load an official LIPT *training* checkpoint and return the reparameterised model.

    Accepts the whole checkpoint dict ({'model_state_dict': ...}) or a bare state dict, with
    or without the `module.` prefix that nn.DataParallel adds.
    """
    if "model_state_dict" in state:
        state = state["model_state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = LIPT(config)
    model.load_state_dict(state, strict=True)
    return model.reparameterize()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(config: LIPTConfig, height: int, width: int) -> float:
    """Multiply-adds ×2 of the deploy graph for an LR input of height×width (convs + attention)."""
    c, e, w = config.channels, config.expand, config.window
    hp, wp = math.ceil(height / w) * w, math.ceil(width / w) * w
    px = hp * wp
    per_px = 2 * 9 * c * c * e * 3 * 2  # three HRMs (two convs each) per sub-block
    flops = 0.0
    for i in range(config.n_blocks):
        for s in range(1 + config.n_share):
            flops += per_px * px
            inp = 2 * c if s == 0 else c
            flops += 2 * (c * inp + c * c) * px  # 1x1 projections
            # attention: q·qᵀ (only when computed) and attn·v on w·w tokens per window
            tokens = w * w
            if s == 0:
                flops += 2 * 2 * tokens * (c / 2) * px
            flops += 2 * 2 * tokens * (c / 2) * px
    flops += 2 * 9 * 3 * c * px + 2 * 9 * c * 3 * config.scale ** 2 * px  # head, tail
    return flops / 1e9


def _register() -> None:
    from restore.registry import RestorerSpec, RouteSpec, register

    register(RestorerSpec(
        name="lipt",
        task="sr",
        summary="Latency-aware image processing transformer for super-resolution",
        paper="Qiao et al., LIPT: Latency-aware Image Processing Transformer, IEEE TIP 34, 2025 (arXiv 2404.06075)",
        build=build,
        variants=tuple(VARIANTS),
        default_variant="tiny",
        scales=(2, 3, 4),
        default_scale=2,
        size_multiple=8,
        min_size=8,  # reflect padding to the window multiple needs at least 8 pixels
        tile_safe=True,
        tile=512,  # tiles bound memory; larger tiles waste less on overlaps
        overlap=48,  # the attention reaches far: 48 px keeps seams below 1e-3 (see tests)
        precisions=("fp32", "fp16"),
        # Routing: bicubic for flat patches, the network for the rest (see README, "Routing").
        # Patches are large and overlap by 16: the attention reaches far.
        subnets=("bicubic", "full"),
        route=RouteSpec(score="edge", patch=64, overlap=16),
        train_defaults=dict(patch=64, batch=8, lr=5e-4, steps=20000),
    ))


_register()
