"""Resnet, transformer and resampling blocks shared by the UNet and the VAE decoder.

Parameter names follow diffusers (``ResnetBlock2D``, ``Transformer2DModel``, ``BasicTransformerBlock``,
``Attention``, ``Downsample2D``, ``Upsample2D``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import Optimizations
from models.layers import Conv2d, GroupNorm, attention, broadcast_batch, conv3x3, gelu, merge_heads, split_heads


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int | None, groups: int, eps: float, opts: Optimizations, wino: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps, opts.gn_gelu)
        self.conv1 = conv3x3(cin, cout, wino)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = GroupNorm(groups, cout, eps, opts.gn_gelu)
        self.conv2 = conv3x3(cout, cout, wino)
        self.conv_shortcut = Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            if temb.shape[0] > x.shape[0]:  # x is computed once for every CFG entry, whose timesteps are the same
                temb = temb[: x.shape[0]]
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
        self.q_scaled = False

    def prepare(self) -> None:
        """Folds attention's 1/sqrt(head dim) into to_q (new tensors; the loaded ones may be shared). Left in the
        graph, the converter fuses that multiply into to_q's weights itself, and for a weight over litert-torch's
        resource threshold (1280 x 1280 in the UNet) leaves the product to LiteRT's runtime constant folding,
        which then serialises and runs the whole model once more during conversion."""
        if not self.q_scaled:
            s = (self.to_q.out_features // self.heads) ** -0.5
            self.to_q.weight = nn.Parameter(self.to_q.weight.detach() * s, requires_grad=False)
            if self.to_q.bias is not None:
                self.to_q.bias = nn.Parameter(self.to_q.bias.detach() * s, requires_grad=False)
            self.q_scaled = True

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = (split_heads(p(t), self.heads) for p, t in ((self.to_q, x), (self.to_k, ctx), (self.to_v, ctx)))
        o = attention(q, k, v, self.mode, self.block_q, self.block_kv, q_scaled=self.q_scaled)
        return self.to_out[0](merge_heads(o))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int, fused: bool):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.fused = fused
        for name in ("hidden_w", "hidden_b", "gate_w", "gate_b"):
            self.register_buffer(name, None, persistent=False)

    def prepare(self) -> None:
        """Splits the projection into its value and gate halves (new tensors): two FULLY_CONNECTED ops. As one,
        its output was copied by XNNPACK's reshape and again by the two slices that halve it: 14 ms of copies
        per 64x64 transformer of the full-size UNet, ~120 ms per step."""
        if self.proj.weight is None:
            return
        w, b = self.proj.weight.detach(), self.proj.bias.detach()
        n = w.shape[0] // 2
        self.hidden_w, self.gate_w = w[:n].clone(), w[n:].clone()
        self.hidden_b, self.gate_b = b[:n].clone(), b[n:].clone()
        self.proj.weight = None
        self.proj.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj.weight is not None:
            h, gate = self.proj(x).chunk(2, dim=-1)
        else:
            h, gate = F.linear(x, self.hidden_w, self.hidden_b), F.linear(x, self.gate_w, self.gate_b)
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

    def prepare(self) -> None:
        """Folds norm3's scale and shift into the feed-forward's first projection (new tensors, float64 math).
        Left to the converter, its optimizer makes that fusion itself after the constant folding, as a MUL and a
        FULLY_CONNECTED on constants (16 of each in the full-size UNet), and LiteRT's runtime folding then
        serialises and runs the whole model once more to evaluate them."""
        if self.norm3.weight is None:
            return
        proj = self.ff.net[0].proj
        assert proj.weight is not None, "norm3 must be folded before the GEGLU projection is split"
        g, b = self.norm3.weight.detach().double(), self.norm3.bias.detach().double()
        w = proj.weight.detach().double()
        proj.weight = nn.Parameter((w * g).float(), requires_grad=False)
        proj.bias = nn.Parameter((proj.bias.detach().double() + w @ b).float(), requires_grad=False)
        self.norm3.weight = None
        self.norm3.bias = None
        self.ff.net[0].prepare()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = broadcast_batch(x, context.shape[0])  # the self-attention of a CFG-shared prefix ends here
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    def __init__(self, dim: int, heads: int, ctx_dim: int, groups: int, mode: str, opts: Optimizations):
        super().__init__()
        self.norm = GroupNorm(groups, dim, 1e-6, opts.gn_gelu)
        self.proj_in = Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, heads, ctx_dim, mode, opts)])
        self.proj_out = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)
        for blk in self.transformer_blocks:
            t = blk(t, context)
        return self.proj_out(t.transpose(1, 2).reshape(t.shape[0], c, h, w)) + x  # t may have more batch than x


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c: int, wino: int):
        super().__init__()
        self.conv = conv3x3(c, c, wino)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
