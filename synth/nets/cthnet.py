"""CTHNet (Yu et al., npj Digit. Med. 2024): 8 thick slices → 36 thin slices, the central 30 returned.

Module names and shapes follow the official code, so the released weights load with strict=True.
The through-plane branch reproduces the official channel/slice reshape order exactly (spec §1.6): it
is what the weights were trained with, even though its "z" axis is not the physical one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from synth.nets.blocks import SwinBlock, run_blocks
from synth.nets.spec import CTHNetSpec

HEAD_CHUNK = 32768
"""Voxels per chunk of the fused per-voxel output head at inference."""


class CTHLayer3d(nn.Module):
    """Swin-3D blocks, then conv + LayerNorm, plus a residual around the whole layer."""

    def __init__(self, spec: CTHNetSpec) -> None:
        super().__init__()
        dim = spec.enc_dim
        self.blocks = nn.ModuleList(
            SwinBlock(dim, spec.enc_heads, spec.enc_window, shifted=i % 2 == 1,
                      mlp_ratio=spec.mlp_ratio, drop_path=0.0)
            for i in range(spec.enc_depth)
        )
        self.layer_conv = nn.Conv3d(dim, dim, 3, padding=1)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:   # (B, Z, Y, X, C)
        y = run_blocks(self.blocks, x, chunk_tokens)
        y = self.layer_conv(y.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        out: torch.Tensor = x + self.layer_norm(y)
        return out


class Encoder3d(nn.Module):
    def __init__(self, spec: CTHNetSpec) -> None:
        super().__init__()
        dim = spec.enc_dim
        self.conv_first = nn.Conv3d(1, dim, (3, 7, 7), padding=(1, 3, 3))
        self.norm_first = nn.LayerNorm(dim)
        self.norm_last = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(CTHLayer3d(spec) for _ in range(spec.enc_layers))
        self.conv_after_body = nn.Conv3d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:   # → (B, enc_dim, Z, Y, X)
        shallow = self.conv_first(x)
        y = self.norm_first(shallow.permute(0, 2, 3, 4, 1))
        for layer in self.layers:
            y = layer(y, chunk_tokens)
        y = self.norm_last(y).permute(0, 4, 1, 2, 3)
        out: torch.Tensor = self.conv_after_body(y) + shallow
        return out


class PatchNorm(nn.Module):
    """Holds the token LayerNorm the official code keeps at `patch_embed.norm`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class ResidualGroup(nn.Module):
    def __init__(self, blocks: list[SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin-2D blocks, then a 3×3 conv, plus a residual."""

    def __init__(self, dim: int, heads: int, window: int, depth: int, mlp_ratio: int,
                 drop_paths: list[float]) -> None:
        super().__init__()
        self.residual_group = ResidualGroup([
            SwinBlock(dim, heads, (window, window), shifted=i % 2 == 1, mlp_ratio=mlp_ratio,
                      drop_path=drop_paths[i])
            for i in range(depth)
        ])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:   # (B, Y, X, C)
        y = run_blocks(self.residual_group.blocks, x, chunk_tokens)
        out: torch.Tensor = x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out


class SwinDecoder2d(nn.Module):
    """LayerNorm, RSTBs, LayerNorm on (B, C, Y, X) images (the official `Swin_backbone` features)."""

    def __init__(self, dim: int, heads: int, window: int, layers: int, depth: int, mlp_ratio: int,
                 drop_path: float) -> None:
        super().__init__()
        n = layers * depth
        rates = [drop_path * i / (n - 1) if n > 1 else 0.0 for i in range(n)]   # linear 0 → drop_path
        self.patch_embed = PatchNorm(dim)
        self.layers = nn.ModuleList(
            RSTB(dim, heads, window, depth, mlp_ratio, rates[k * depth:(k + 1) * depth])
            for k in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
        y = self.patch_embed.norm(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            y = layer(y, chunk_tokens)
        out: torch.Tensor = self.norm(y).permute(0, 3, 1, 2)
        return out


def sinusoid_positions(channels: int, length: int) -> torch.Tensor:
    """(1, channels, length, 1, 1): pe[d, 2i] = sin(d·10000^(−2i/C)), pe[d, 2i+1] = cos(…)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(length, channels)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe.t().reshape(1, channels, length, 1, 1).contiguous()


def legacy_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output for PyTorch's legacy `nearest` mode: floor(dst·n_in/n_out)."""
    return (torch.arange(n_out) * n_in) // n_out


class CTHNet(nn.Module):
    """(B, 1, in_slices, Y, X) in [0, 1] → (B, 1, out_slices, Y, X); Y, X multiples of the windows."""

    def __init__(self, spec: CTHNetSpec | None = None) -> None:
        super().__init__()
        spec = CTHNetSpec() if spec is None else spec
        if not isinstance(spec, CTHNetSpec):
            raise TypeError(f"CTHNet needs a CTHNetSpec, got {type(spec).__name__}")
        self.spec = spec
        self.chunk_tokens: int | None = None      # see SwinBlock.forward_tokens; the engine sets it on CPU
        c = spec.feat_channels
        self.Encoder = Encoder3d(spec)
        self.conv_after_E = nn.Conv3d(spec.enc_dim, c, 3, padding=1)
        self.Decoder_T1 = SwinDecoder2d(spec.t_dim, spec.dec_heads, spec.t_window, spec.t_layers,
                                        spec.t_depth, spec.mlp_ratio, spec.dec_drop_path)
        self.Decoder_I1 = SwinDecoder2d(spec.i_dim, spec.dec_heads, spec.i_window, spec.i_layers,
                                        spec.i_depth, spec.mlp_ratio, spec.dec_drop_path)
        self.conv_after_body = nn.Conv2d(spec.i_dim, spec.i_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(nn.Conv3d(c, 16, 1), nn.LeakyReLU())
        self.conv_last = nn.Conv3d(16, 1, 1)
        self.register_buffer("positions_z", sinusoid_positions(c, spec.window_slices), persistent=False)
        self.register_buffer("z_source", legacy_nearest_index(spec.in_slices, spec.window_slices),
                             persistent=False)
        self.apply(_init_weights)
        if spec.global_residual:
            self.register_buffer("z_interpolation", bspline_window_matrix(spec.in_slices, spec.ratio),
                                 persistent=False)
            nn.init.zeros_(self.conv_last.weight)          # untrained: exactly the interpolation
            if self.conv_last.bias is not None:
                nn.init.zeros_(self.conv_last.bias)

    def check_input(self, x: torch.Tensor) -> None:
        s = self.spec
        step = s.window_step
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != s.in_slices or x.shape[3] % step or x.shape[4] % step:
            raise ValueError(f"CTHNet input must be (B, 1, {s.in_slices}, Y, X) with Y and X multiples of {step}, "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The official output: the central out_slices of the window's thin slices."""
        crop = self.spec.crop
        return self.forward_window(x)[:, :, crop:self.spec.window_slices - crop]

    def forward_window(self, x: torch.Tensor) -> torch.Tensor:
        """All window_slices thin slices (the outer `crop` at each end were never trained)."""
        self.check_input(x)
        b, _, _, h, w = x.shape
        c, zo = self.spec.feat_channels, self.spec.window_slices
        chunk = self.chunk_tokens
        e = self.conv_after_E(self.Encoder(x, chunk))
        u = e.index_select(2, self.z_source) + self.positions_z        # (B, C, Zo, Y, X)
        t = self._through_plane(u.reshape(b, zo, c, h, w))               # official pseudo-slice view
        f = self.conv_after_body(self.Decoder_I1(t.reshape(b, c * zo, h, w), chunk)) + u.reshape(b, c * zo, h, w)
        out = self._head(f.reshape(b, c, zo, h, w))
        if self.spec.global_residual:
            base = torch.einsum("oz,bczyx->bcoyx", self.z_interpolation.to(x.dtype), x)
            out = out + base
        return out

    def _head(self, f: torch.Tensor) -> torch.Tensor:
        """conv_before_upsample (1×1×1 conv, LeakyReLU) then conv_last (1×1×1) on (B, C, Zo, Y, X).

        Without autograd the two per-voxel maps run as small matrix products over chunks of voxels,
        fused so the 16-channel hidden layer stays in cache (the same sums; mkldnn's 1×1×1 Conv3d with a
        handful of channels is memory-bound and was ~7 % of a CPU window).
        """
        first, act = self.conv_before_upsample[0], self.conv_before_upsample[1]
        last = self.conv_last
        if torch.is_grad_enabled() or not isinstance(first, nn.Conv3d) or first.bias is None \
                or last.bias is None:
            out: torch.Tensor = last(self.conv_before_upsample(f))
            return out
        b, c, zo, h, w = f.shape
        w1, b1 = first.weight.view(first.out_channels, c), first.bias[:, None]
        w2, b2 = last.weight.view(last.out_channels, first.out_channels), last.bias[:, None]
        flat = f.reshape(b, c, -1)
        result = flat.new_empty(b, last.out_channels, flat.shape[-1])
        step = HEAD_CHUNK if f.device.type == "cpu" else flat.shape[-1]      # GPU: one product, few launches
        for k in range(b):
            for start in range(0, flat.shape[-1], step):
                hidden = act(torch.addmm(b1, w1, flat[k, :, start:start + step]))
                torch.addmm(b2, w2, hidden, out=result[k, :, start:start + step])
        return result.view(b, last.out_channels, zo, h, w)

    def _through_plane(self, g: torch.Tensor) -> torch.Tensor:
        """Sagittal + coronal slab decoding with shared weights on (B, n, k, Y, X) pseudo-slices."""
        b, n, k, h, w = g.shape
        p = self.spec.t_fold
        sag = g.reshape(b, n, k, h, w // p, p).permute(0, 4, 2, 5, 1, 3).reshape(b * (w // p), k * p, n, h)
        sag_out: torch.Tensor = self.Decoder_T1(sag, self.chunk_tokens)
        sag = sag_out.reshape(b, w // p, k, p, n, h).permute(0, 4, 2, 5, 1, 3)
        cor = g.reshape(b, n, k, h // p, p, w).permute(0, 3, 2, 4, 1, 5).reshape(b * (h // p), k * p, n, w)
        cor_out: torch.Tensor = self.Decoder_T1(cor, self.chunk_tokens)
        cor = cor_out.reshape(b, h // p, k, p, n, w).permute(0, 4, 2, 1, 3, 5)
        return sag.reshape(b, n, k, h, w) + cor.reshape(b, n, k, h, w)


def bspline_window_matrix(in_slices: int, ratio: int) -> torch.Tensor:
    """(window_slices, in_slices) matrix M with M @ thick = the BIS interpolation of one window.

    Built by interpolating unit impulses with synth.bspline (the maths of the node's BIS backend), so the
    residual base and the BIS baseline are one computation.
    """
    from synth.bspline import interpolate_z
    from synth.volume import CTVolume

    impulses = np.eye(in_slices, dtype=np.float32)[:, :, None]          # (z, impulse, 1)
    thin = interpolate_z(CTVolume(impulses, (float(ratio), 1.0, 1.0)), ratio).hu[:, :, 0]
    return torch.from_numpy(np.ascontiguousarray(thin))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif hasattr(module, "relative_position_bias_table"):
        table = module.relative_position_bias_table
        if isinstance(table, nn.Parameter):
            nn.init.trunc_normal_(table, std=0.02)
