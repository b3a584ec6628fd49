"""The SD 1.x VAE decoder, parameter names as diffusers' ``AutoencoderKL`` (post_quant_conv + decoder).

Input: latents already divided by the VAE scaling factor, [B, 4, h, w]. Output: image in [-1, 1],
[B, 3, 8h, 8w]. Equivalent to ``AutoencoderKL.decode(z).sample``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import Attention, ResnetBlock, Upsample
from models.config import Optimizations, VaeDecoderConfig
from models.layers import GroupNorm, conv3x3

VAE_EPS = 1e-6


class VaeAttention(Attention):
    """Single-head spatial self-attention with its own group norm and a residual connection."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        t = super().forward(t)
        return t.transpose(1, 2).reshape(b, c, h, w) + x


class VaeMidBlock(nn.Module):
    def __init__(self, c: int, groups: int, opts: Optimizations):
        super().__init__()
        w = opts.winograd_decoder
        self.resnets = nn.ModuleList(ResnetBlock(c, c, None, groups, VAE_EPS, opts, w) for _ in range(2))
        mode = "partial" if opts.softmax else "softmax"
        self.attentions = nn.ModuleList([VaeAttention(c, 1, None, True, mode, opts, groups=groups, eps=VAE_EPS)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class UpDecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, up: bool, opts: Optimizations):
        super().__init__()
        w = opts.winograd_decoder
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, None, groups, VAE_EPS, opts, w) for i in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(cout, w)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for res in self.resnets:
            x = res(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VaeDecoderConfig, opts: Optimizations):
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        g = cfg.norm_num_groups
        self.conv_in = conv3x3(cfg.latent_channels, rev[0], opts.winograd_decoder)
        self.mid_block = VaeMidBlock(rev[0], g, opts)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, i < len(rev) - 1, opts)
            for i in range(len(rev))
        )
        self.conv_norm_out = GroupNorm(g, rev[-1], VAE_EPS, opts.gn_gelu)
        self.conv_out = conv3x3(rev[-1], cfg.out_channels, opts.winograd_decoder)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VaeDecoder(nn.Module):
    def __init__(self, cfg: VaeDecoderConfig, opts: Optimizations = Optimizations()):
        super().__init__()
        self.config = cfg
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg, opts)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents))
