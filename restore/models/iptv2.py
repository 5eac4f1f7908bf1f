"""IPT-V2-style hierarchical-attention transformer (Tu et al., arXiv 2404.00633) for denoising,
deblurring and super-resolution.

No official code or weights exist (methods.md §1), so the block follows the paper's description
and the sizes are ours:

    FG block:  x += FCSA(LN(x))       channel attention inside w×w windows (shifted every other block)
               x += GGSA(LN(x))       spatial attention among g×g tokens taken one per window,
                                      i.e. on a grid of stride w spanning g×g windows
               x += RepLeFFN(LN(x))   gated FFN whose depthwise conv trains as dw3x3 + dw1x1 +
                                      identity and folds into one dw3x3 (`reparameterize()`)

    U-shape (Restormer-like, 3 down / 3 up, concatenated skips):
      [RGB, hint] ─ conv3x3 ─ L1 ─ down ─ L2 ─ down ─ L3 ─ down ─ L4 ─ up ─ L3' ─ up ─ L2' ─ up ─ L1'
                                                                   skips concatenated, 1x1 reduce
      L1' ─ conv3x3 ─(+ input RGB)─ out            same-size tasks (scale 1)
      L1' ─ conv3x3 → PixelShuffle(s) ─(+ bilinear ×s input)─ out   super-resolution

The input has a fourth plane, the noise-level hint: σ/50 (σ on the 0–255 scale) when the
caller knows the noise level, -1 when it does not. Training shows the network both, so one
set of weights is blind and can still take the hint (`noise_plane`).

Shifted windows are made by reflect-padding half a window on every side (not by rolling), so
no window ever mixes opposite image borders. The network reflect-pads its input to a multiple
of `size_multiple` (the largest window×grid span times the downsampling) and crops back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

UNKNOWN_NOISE = -1.0  # hint-plane value meaning "noise level not given"
NOISE_HINT_SCALE = 50.0  # hint = σ / 50, σ on the 0–255 scale


@dataclass(frozen=True)
class IPTV2Config:
    dim: int = 16  # features at full resolution; doubles per level
    enc_blocks: tuple[int, ...] = (1, 1, 2)  # FG blocks at levels 1–3 on the way down
    mid_blocks: int = 2  # level 4 (1/8 resolution)
    dec_blocks: tuple[int, ...] = (2, 1, 1)  # levels 3, 2, 1 on the way up
    heads: tuple[int, ...] = (1, 2, 4, 8)  # per level
    windows: tuple[int, ...] = (8, 8, 4, 2)  # FCSA window side per level
    grids: tuple[int, ...] = (4, 2, 2, 2)  # GGSA: tokens per group side (one per window)
    ffn_expand: float = 2.0
    in_channels: int = 4  # RGB + noise-level hint
    scale: int = 1

    @property
    def size_multiple(self) -> int:
        return max(w * g * 2 ** i for i, (w, g) in enumerate(zip(self.windows, self.grids)))

    def to_dict(self) -> dict:
        return asdict(self)


VARIANTS = {
    # 1.20 M parameters, 4.16 GMACs at 256x256: trains on two CPU cores in hours.
    "tiny": dict(dim=16, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(2, 1, 1)),
    # 6.74 M parameters, 22.5 GMACs at 256x256: for a GPU.
    "small": dict(dim=32, enc_blocks=(2, 2, 2), mid_blocks=4, dec_blocks=(2, 2, 2)),
}


def make_config(variant: str = "tiny", scale: int = 1, **overrides) -> IPTV2Config:
    if variant not in VARIANTS:
        raise ValueError(f"unknown IPT-V2 variant {variant!r} (choose from {', '.join(VARIANTS)})")
    return IPTV2Config(**{**VARIANTS[variant], "scale": scale, **overrides})


def hint_value(sigma: float | None) -> float:
    """The hint plane's value: σ/50 (σ on the 0–255 scale), or -1 when σ is unknown."""
    return UNKNOWN_NOISE if sigma is None else float(sigma) / NOISE_HINT_SCALE


def noise_plane(like: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """The (N,1,H,W) hint plane for RGB `like`."""
    return torch.full_like(like[:, :1], hint_value(sigma))


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every pixel of an NCHW map (with bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-5) * self.weight[:, None, None] + self.bias[:, None, None]


def to_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, C, H, W) → (B·H/w·W/w, C, w·w): one window per row, tokens last."""
    b, c, h, wd = x.shape
    x = x.reshape(b, c, h // w, w, wd // w, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, w * w)


def from_windows(t: torch.Tensor, b: int, h: int, wd: int, w: int) -> torch.Tensor:
    c = t.shape[1]
    t = t.reshape(b, h // w, wd // w, c, w, w).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, h, wd)


def to_grid_groups(x: torch.Tensor, w: int, g: int) -> torch.Tensor:
    """(B, C, H, W) → (groups, g·g, C): within each (g·w)² region, the tokens at the same offset
    in each of its g×g windows form one group (a grid of stride w), channels last.

    The map is first turned into pixel rows (B, H, W, C), so the 8-axis regrouping moves whole
    C-channel rows: ONNX Runtime copies those as blocks, while a regrouping that moves the channel
    axis runs element by element (it was 40 % of IPT-V2's CPU time)."""
    b, c, h, wd = x.shape
    rows = x.permute(0, 2, 3, 1)
    # h = (regions_y, g, w): region, window-in-region, offset-in-window
    rows = rows.reshape(b, h // (g * w), g, w, wd // (g * w), g, w, c).permute(0, 1, 4, 3, 6, 2, 5, 7)
    return rows.reshape(-1, g * g, c)


def from_grid_groups(t: torch.Tensor, b: int, h: int, wd: int, w: int, g: int) -> torch.Tensor:
    c = t.shape[-1]
    t = t.reshape(b, h // (g * w), wd // (g * w), w, w, g, g, c).permute(0, 1, 5, 3, 2, 6, 4, 7)
    return t.reshape(b, h, wd, c).permute(0, 3, 1, 2)


class FCSA(nn.Module):
    """Focal context self-attention: transposed (channel×channel) attention per window, one shared
    qkv projection (1x1 then depthwise 3x3), L2-normalised q/k with a learned temperature."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool):
        super().__init__()
        self.heads, self.window, self.shifted = heads, window, shifted
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.window
        qkv = self.qkv_dw(self.qkv(x))
        if self.shifted:  # windows offset by half a window: pad, attend, crop
            qkv = F.pad(qkv, (w // 2,) * 4, mode="reflect")
        b, c3, h, wd = qkv.shape
        c = c3 // 3
        t = to_windows(qkv, w)  # (nW, 3C, n)
        t = t.reshape(t.shape[0], 3, self.heads, c // self.heads, w * w)
        q, k, v = F.normalize(t[:, 0], dim=-1), F.normalize(t[:, 1], dim=-1), t[:, 2]
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (nW, heads, d, d)
        out = attn.softmax(-1) @ v  # (nW, heads, d, n)
        out = from_windows(out.reshape(out.shape[0], c, w * w), b, h, wd, w)
        if self.shifted:
            out = out[:, :, w // 2: h - w // 2, w // 2: wd - w // 2]
        return self.proj(out)


class GGSA(nn.Module):
    """Global grid self-attention: spatial multi-head attention among the g×g tokens of a grid
    of stride w (one token per window), so every window talks to g×g − 1 others."""

    def __init__(self, dim: int, heads: int, window: int, grid: int):
        super().__init__()
        self.heads, self.window, self.grid = heads, window, grid
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        # Relative position of the tokens inside a group: one learned bias per head and offset.
        self.pos_bias = nn.Parameter(torch.zeros(heads, grid * grid, grid * grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, wd = x.shape
        w, g, nh = self.window, self.grid, self.heads
        t = to_grid_groups(self.qkv(x), w, g)  # (G, n = g², 3C)
        groups, n, d = t.shape[0], g * g, c // nh
        if nh == 1:  # no head axis to move: a reshape, where ORT would copy element by element
            q, k, v = t.reshape(groups, 1, n, 3, d).unbind(3)  # each (G, 1, n, d)
        else:
            q, k, v = t.reshape(groups, n, 3, nh, d).permute(2, 0, 3, 1, 4)  # each (G, heads, n, d)
        attn = (q @ k.transpose(-2, -1)) * d ** -0.5 + self.pos_bias  # (G, heads, n, n)
        out = attn.softmax(-1) @ v
        out = out.reshape(groups, n, c) if nh == 1 else out.transpose(1, 2).reshape(groups, n, c)
        return self.proj(from_grid_groups(out, b, h, wd, w, g))


class RepDWConv(nn.Module):
    """Depthwise 3x3 + depthwise 1x1 + identity while training; one depthwise 3x3 after
    `reparameterize()` (exact: all three are per-channel affine maps with a 3x3 footprint)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.dw3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.dw1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.folded: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded is not None:
            return self.folded(x)
        return self.dw3(x) + self.dw1(x) + x

    def reparameterize(self) -> None:
        if self.folded is not None:
            return
        k = self.dw3.weight.detach().clone()
        k[:, :, 1, 1] += self.dw1.weight.detach()[:, :, 0, 0] + 1.0
        conv = nn.Conv2d(self.channels, self.channels, 3, padding=1, groups=self.channels)
        conv.weight.data.copy_(k)
        conv.bias.data.copy_(self.dw3.bias.detach() + self.dw1.bias.detach())
        self.folded = conv
        del self.dw3, self.dw1


class RepLeFFN(nn.Module):
    """Locally-enhanced gated FFN: 1x1 expand → re-parameterisable depthwise 3x3 → GELU gate → 1x1."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.inp = nn.Conv2d(dim, hidden * 2, 1)
        self.dw = RepDWConv(hidden * 2)
        self.out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dw(self.inp(x)).chunk(2, dim=1)
        return self.out(F.gelu(a) * b)


class FGBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, grid: int, expand: float, shifted: bool):
        super().__init__()
        self.norm1, self.fcsa = ChannelNorm(dim), FCSA(dim, heads, window, shifted)
        self.norm2, self.ggsa = ChannelNorm(dim), GGSA(dim, heads, window, grid)
        self.norm3, self.ffn = ChannelNorm(dim), RepLeFFN(dim, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fcsa(self.norm1(x))
        x = x + self.ggsa(self.norm2(x))
        return x + self.ffn(self.norm3(x))


def _stage(cfg: IPTV2Config, level: int, n: int) -> nn.Sequential:
    dim = cfg.dim * 2 ** level
    return nn.Sequential(*(FGBlock(dim, cfg.heads[level], cfg.windows[level], cfg.grids[level], cfg.ffn_expand,
                                   shifted=i % 2 == 1) for i in range(n)))


class Down(nn.Sequential):  # C → 2C, half resolution
    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim // 2, 3, padding=1), nn.PixelUnshuffle(2))


class Up(nn.Sequential):  # C → C/2, double resolution
    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim * 2, 3, padding=1), nn.PixelShuffle(2))


class IPTV2(nn.Module):
    # The dynamo exporter spends ~2 minutes on the window/grid reshapes (symbolic shape guards);
    # the TorchScript exporter gives an equivalent dynamic graph in seconds.
    onnx_exporter = "legacy"

    def __init__(self, config: IPTV2Config = IPTV2Config()):
        super().__init__()
        cfg, c = config, config.dim
        self.config, self.scale, self.in_channels = cfg, cfg.scale, cfg.in_channels
        self.size_multiple = cfg.size_multiple
        self.embed = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.encoders = nn.ModuleList(_stage(cfg, i, n) for i, n in enumerate(cfg.enc_blocks))
        self.downs = nn.ModuleList(Down(c * 2 ** i) for i in range(3))
        self.middle = _stage(cfg, 3, cfg.mid_blocks)
        self.ups = nn.ModuleList(Up(c * 2 ** (i + 1)) for i in reversed(range(3)))  # 8C→4C, 4C→2C, 2C→C
        self.reduces = nn.ModuleList(nn.Conv2d(c * 2 ** (i + 1), c * 2 ** i, 1) for i in reversed(range(3)))
        self.decoders = nn.ModuleList(_stage(cfg, 2 - j, n) for j, n in enumerate(cfg.dec_blocks))
        s = cfg.scale
        self.out = nn.Conv2d(c, 3 * s * s, 3, padding=1)
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        nn.init.zeros_(self.out.weight)  # start as the identity (or bilinear upscaling)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 4, H, W): RGB in [0, 1] and the hint plane (see `noise_plane`) → (N, 3, sH, sW).
        A 3-channel input is taken as RGB with an unknown noise level."""
        if x.shape[1] == 3 and self.in_channels == 4:
            x = torch.cat([x, noise_plane(x, None)], dim=1)
        rgb = x[:, :3]
        h, w = x.shape[2], x.shape[3]
        m = self.size_multiple
        f = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        f = self.embed(f)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            f = enc(f)
            skips.append(f)
            f = down(f)
        f = self.middle(f)
        for up, reduce, dec, skip in zip(self.ups, self.reduces, self.decoders, reversed(skips)):
            f = dec(reduce(torch.cat([up(f), skip], dim=1)))
        s = self.scale
        y = self.shuffle(self.out(f))[:, :, : h * s, : w * s]
        if s > 1:
            rgb = F.interpolate(rgb, scale_factor=s, mode="bilinear", align_corners=False)
        return y + rgb

    @staticmethod
    def hint_value(noise_level: float | None) -> float:  # the pipeline builds the plane with this
        return hint_value(noise_level)

    def reparameterize(self) -> "IPTV2":
        for m in self.modules():
            if isinstance(m, RepDWConv):
                m.reparameterize()
        return self


def build(variant: str = "tiny", scale: int = 1, **overrides) -> IPTV2:
    return IPTV2(make_config(variant, scale, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register() -> None:
    from restore.registry import RestorerSpec, register

    register(RestorerSpec(
        name="iptv2",
        task="denoise",
        tasks=("denoise", "deblur", "sr"),
        summary="IPT-V2-style hierarchical-attention U-Net: blind colour denoising, motion deblurring",
        paper="Tu et al., IPT-V2: Efficient Image Processing Transformer using Hierarchical Attentions "
              "(arXiv 2404.00633); sizes ours",
        build=build,
        variants=tuple(VARIANTS),
        default_variant="tiny",
        scales=(1, 2, 4),
        default_scale=1,
        extras=("noise_level",),
        size_multiple=32,
        min_size=32,
        tile_safe=False,  # U-Net reach exceeds any practical overlap: tiles are blended, not exact
        tile=256,
        overlap=32,
        train_defaults=dict(patch=64, batch=8, lr=1e-3, steps=20000),
    ))


_register()
