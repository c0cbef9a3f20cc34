"""Swin building blocks on channels-last tensors: window attention, 2-D and 3-D Swin blocks.

Shifted windows use a cyclic shift and, as in CTHNet, no attention mask: tokens that wrap around
the border attend to each other. Token order inside a window is raster order ((z,) y, x), the order
the relative-position index (and so the official weights) assumes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_index(window: tuple[int, ...]) -> torch.Tensor:
    """(N, N) int64 index into a ((2w−1)^d, heads) bias table, N = prod(window), raster order."""
    grids = torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")
    coords = torch.stack([g.flatten() for g in grids])              # (d, N)
    rel = coords[:, :, None] - coords[:, None, :]                   # (d, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.int64)
    for axis, w in enumerate(window):
        stride = 1
        for later in window[axis + 1:]:
            stride *= 2 * later - 1
        index += (rel[axis] + w - 1) * stride
    return index


def window_partition(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *spatial, C) → (B·windows, prod(window), C); spatial sizes must be multiples of window."""
    b, *spatial, c = x.shape
    shape = [b]
    for size, w in zip(spatial, window, strict=True):
        shape += [size // w, w]
    d = len(window)
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
    return x.view(*shape, c).permute(*order).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of window_partition: (B·windows, prod(window), C) → (B, *spatial, C)."""
    c = windows.shape[-1]
    counts = [size // w for size, w in zip(spatial, window, strict=True)]
    d = len(window)
    x = windows.view(-1, *counts, *window, c)
    order = [0]
    for axis in range(d):
        order += [1 + axis, 1 + d + axis]
    return x.permute(*order, 2 * d + 1).reshape(-1, *spatial, c)


def window_order(spatial: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                 device: torch.device | None = None) -> torch.Tensor:
    """(L,) flat spatial index of each token when listed window by window (raster inside a window)
    for the grid cyclically shifted by −shift: what roll + window_partition would produce."""
    index = torch.arange(math.prod(spatial), device=device).view(1, *spatial, 1)
    if any(shift):
        index = torch.roll(index, shifts=tuple(-s for s in shift), dims=tuple(range(1, len(spatial) + 1)))
    return window_partition(index, window).reshape(-1)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, chunk_tokens: int | None) -> torch.Tensor:
    """Apply Swin blocks to (B, *spatial, C), keeping tokens in window order between blocks.

    LayerNorm and MLP do not care about token order, so each block only needs its tokens grouped
    by its own (shifted or not) windows: one gather per block replaces roll + partition + reverse
    + roll, and the result is gathered back to spatial order once at the end.
    """
    b, *spatial_list, c = x.shape
    spatial = tuple(spatial_list)
    flat = x.reshape(b, -1, c)
    current: torch.Tensor | None = None
    for block in blocks:
        assert isinstance(block, SwinBlock)
        order = window_order(spatial, block.window, block.shift, x.device)
        gather = order if current is None else _inverse(current)[order]
        flat = flat.index_select(1, gather)
        current = order
        flat = block.forward_tokens(flat, chunk_tokens)
    if current is not None:
        flat = flat.index_select(1, _inverse(current))
    return flat.view(b, *spatial, c)


def _inverse(permutation: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative-position bias."""

    def __init__(self, dim: int, heads: int, window: tuple[int, ...]) -> None:
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in window), heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        """(heads, N, N) additive attention bias."""
        index = self.relative_position_index
        assert isinstance(index, torch.Tensor)
        n = index.shape[0]
        return self.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias().to(qkv.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        result: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return result


class SwinBlock(nn.Module):
    """Pre-norm Swin block on (B, *spatial, C) for 2-D or 3-D windows; shift = window // 2 if shifted."""

    def __init__(self, dim: int, heads: int, window: tuple[int, ...], shifted: bool,
                 mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.window = window
        self.shift = tuple(w // 2 for w in window) if shifted else tuple(0 for _ in window)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward_tokens(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
        """x: (B, L, C) listed window by window for this block's grid (see window_order).

        Without autograd and with `chunk_tokens`, the block runs in place on chunks of whole windows
        so that its intermediates (qkv, the 4·C MLP hidden layer) stay in cache: same arithmetic,
        far less memory traffic on CPU.
        """
        b, length, c = x.shape
        n = math.prod(self.window)
        if chunk_tokens is None or torch.is_grad_enabled():
            y = self.attn(self.norm1(x).view(-1, n, c)).view(b, length, c)
            x = x + self.drop_path(y)
            out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
            return out
        tokens = x.view(-1, c)
        step = max(n, chunk_tokens // n * n)
        for start in range(0, tokens.shape[0], step):
            part = tokens[start:start + step]
            part += self.attn(self.norm1(part).view(-1, n, c)).view(-1, c)
            part += self.mlp(self.norm2(part))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[1:-1])
        dims = tuple(range(1, len(spatial) + 1))
        shifted = any(self.shift)
        y = self.norm1(x)
        if shifted:
            y = torch.roll(y, shifts=tuple(-s for s in self.shift), dims=dims)
        y = window_reverse(self.attn(window_partition(y, self.window)), self.window, spatial)
        if shifted:
            y = torch.roll(y, shifts=self.shift, dims=dims)
        x = x + self.drop_path(y)
        out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out

