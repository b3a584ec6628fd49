"""Resnet, transformer and resampling blocks shared by the UNet and the VAE decoder.

Parameter names follow diffusers (``ResnetBlock2D``, ``Transformer2DModel``, ``BasicTransformerBlock``,
``Attention``, ``Downsample2D``, ``Upsample2D``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import Optimizations
from models.layers import GroupNorm, attention, conv3x3, gelu, merge_heads, split_heads


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int | None, groups: int, eps: float, opts: Optimizations, wino: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps, opts.gn_gelu)
        self.conv1 = conv3x3(cin, cout, wino, opts)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = GroupNorm(groups, cout, eps, opts.gn_gelu)
        self.conv2 = conv3x3(cout, cout, wino, opts)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h


class Attention(nn.Module):
    """diffusers ``Attention``: to_q / to_k / to_v / to_out.0, optional group norm (VAE)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None, bias: bool, mode: str, opts: Optimizations,
                 groups: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.heads, self.mode = heads, mode
        self.block_q, self.block_kv = opts.flash_block_q, opts.flash_block_kv
        self.group_norm = GroupNorm(groups, dim, eps, opts.gn_gelu) if groups else None
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(kv_dim or dim, dim, bias=bias)
        self.to_v = nn.Linear(kv_dim or dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = (split_heads(p(t), self.heads) for p, t in ((self.to_q, x), (self.to_k, ctx), (self.to_v, ctx)))
        o = attention(q, k, v, self.mode, self.block_q, self.block_kv)
        return self.to_out[0](merge_heads(o))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int, fused: bool):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * gelu(gate, self.fused)


class FeedForward(nn.Module):
    def __init__(self, dim: int, fused: bool):
        super().__init__()
        # Indices 0 and 2 match diffusers' net (index 1 is a dropout there).
        self.net = nn.ModuleList([GEGLU(dim, dim * 4, fused), nn.Identity(), nn.Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ctx_dim: int, mode: str, opts: Optimizations):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, None, False, mode, opts)
        self.norm2 = nn.LayerNorm(dim)
        # Cross-attention keys are the 77 text tokens: tiling never pays there.
        self.attn2 = Attention(dim, heads, ctx_dim, False, "partial" if opts.softmax else "softmax", opts)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, opts.gn_gelu)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    def __init__(self, dim: int, heads: int, ctx_dim: int, groups: int, mode: str, opts: Optimizations):
        super().__init__()
        self.norm = GroupNorm(groups, dim, 1e-6, opts.gn_gelu)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, heads, ctx_dim, mode, opts)])
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)
        for blk in self.transformer_blocks:
            t = blk(t, context)
        return self.proj_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c: int, wino: int, opts: Optimizations):
        super().__init__()
        self.conv = conv3x3(c, c, wino, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
