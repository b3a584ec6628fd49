"""The SD 1.x UNet, parameter names as diffusers' ``UNet2DConditionModel``.

Inputs: latents [B, 4, h, w]; the sinusoidal timestep projection [B, block_out_channels[0]]
(computed on the host from the scheduler table, so no runner implements it); the text embeddings
[B, 77, cross_attention_dim]. Output: the noise prediction [B, 4, h, w].

The forward pass is a list of named stages (``stages()``), so a profile build can export and time
each UNet block on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import Downsample, ResnetBlock, Transformer2D, Upsample
from models.config import Optimizations, UNetConfig
from models.layers import GroupNorm, broadcast_batch, conv3x3


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def winograd_tile(opts: Optimizations, level: int, levels: int) -> int:
    """The Winograd tile of the UNet's stride-1 3x3 convs at ``level`` (0: the latent's resolution) of
    ``levels``: ``winograd_wide`` for the ``winograd_wide_levels`` deepest, ``winograd_unet`` above them."""
    if not opts.winograd_unet:
        return 0
    return opts.winograd_wide if level >= levels - opts.winograd_wide_levels else opts.winograd_unet


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: UNetConfig, attn: bool, down: bool, mode: str, opts: Optimizations,
                 w: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps, opts, w)
            for i in range(cfg.layers_per_block)
        )
        self.attentions = nn.ModuleList(
            Transformer2D(cout, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups, mode, opts)
            for _ in range(cfg.layers_per_block)
        ) if attn else None
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if down else None

    def forward(self, x, temb, ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, res in enumerate(self.resnets):
            x = res(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, c: int, cfg: UNetConfig, mode: str, opts: Optimizations, w: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(c, c, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps, opts, w) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [Transformer2D(c, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups, mode, opts)]
        )

    def forward(self, x, temb, ctx):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, ctx)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    def __init__(self, cin: int, prev: int, cout: int, cfg: UNetConfig, attn: bool, up: bool, mode: str,
                 opts: Optimizations, w: int, w_up: int):
        """``w``: the Winograd tile of the resnets' convs, ``w_up`` of the upsampler's (one level up)."""
        super().__init__()
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            ResnetBlock((prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, cfg.time_embed_dim,
                        cfg.norm_num_groups, cfg.norm_eps, opts, w)
            for i in range(n)
        )
        self.attentions = nn.ModuleList(
            Transformer2D(cout, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups, mode, opts)
            for _ in range(n)
        ) if attn else None
        self.upsamplers = nn.ModuleList([Upsample(cout, w_up)]) if up else None

    def forward(self, x, skips: list[torch.Tensor], temb, ctx):
        for i, res in enumerate(self.resnets):
            x = res(torch.cat([x, broadcast_batch(skips.pop(), x.shape[0])], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


@dataclass(frozen=True)
class Stage:
    """One UNet block as the profiler sees it: named input and output tensors and the computation.

    Tensor names: ``sample``, ``t_emb``, ``context`` (the UNet inputs), ``temb`` (the time embedding),
    ``skip_<i>`` (skip connections; the newest skip is also the running feature map on the way down),
    ``x`` (the running feature map from the mid block on) and ``noise_pred`` (the output).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: Callable[..., tuple[torch.Tensor, ...]]

    def __call__(self, state: dict[str, torch.Tensor]) -> None:
        state.update(zip(self.outputs, self.fn(*(state[k] for k in self.inputs))))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, opts: Optimizations = Optimizations()):
        super().__init__()
        self.config = cfg
        self.cfg_shared_prefix = opts.cfg_shared_prefix
        ch = cfg.block_out_channels
        n = len(ch)
        soft = "partial" if opts.softmax else "softmax"
        # FlashAttention pays at the highest resolution (the 64x64 level, head dim 40 at full size).
        mode_at = lambda level: "flash" if (opts.flash and level == 0) else soft  # noqa: E731
        tile = lambda level: winograd_tile(opts, level, n)  # noqa: E731
        self.conv_in = conv3x3(cfg.in_channels, ch[0], tile(0))
        self.time_embedding = TimestepEmbedding(cfg.time_proj_dim, cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], cfg, t == "CrossAttnDownBlock2D", i < n - 1, mode_at(i), opts, tile(i))
            for i, t in enumerate(cfg.down_block_types)
        )
        self.mid_block = MidBlock(ch[-1], cfg, soft, opts, tile(n - 1))
        rev = list(reversed(ch))
        ups = []
        for i, t in enumerate(cfg.up_block_types):
            prev = rev[max(i - 1, 0)]
            ups.append(UpBlock(rev[min(i + 1, n - 1)], prev, rev[i], cfg, t == "CrossAttnUpBlock2D", i < n - 1,
                               mode_at(n - 1 - i), opts, tile(n - 1 - i), tile(n - 2 - i)))
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], cfg.norm_eps, opts.gn_gelu)
        self.conv_out = conv3x3(ch[0], cfg.out_channels, tile(0))

    def stages(self) -> list[Stage]:
        """The forward pass as named stages, each one UNet block (what the per-block profile times)."""
        # cfg_shared_prefix: conv_in and what follows run on batch entry 0 until the first transformer's
        # self-attention has been added (BasicTransformerBlock broadcasts there, UpBlock at the skip connection)
        first = (lambda sample: sample[:1]) if self.cfg_shared_prefix else (lambda sample: sample)  # noqa: E731
        stages = [Stage("conv_in", ("sample", "t_emb"), ("skip_0", "temb"),
                        lambda sample, t_emb: (self.conv_in(first(sample)), self.time_embedding(t_emb)))]
        n = 1
        for i, blk in enumerate(self.down_blocks):
            k = len(blk.resnets) + (blk.downsamplers is not None)
            stages.append(Stage(f"down_blocks.{i}", (f"skip_{n - 1}", "temb", "context"),
                                tuple(f"skip_{n + j}" for j in range(k)),
                                lambda x, temb, context, blk=blk: tuple(blk(x, temb, context)[1])))
            n += k
        stages.append(Stage("mid_block", (f"skip_{n - 1}", "temb", "context"), ("x",),
                            lambda x, temb, context: (self.mid_block(x, temb, context),)))
        for i, blk in enumerate(self.up_blocks):
            k = len(blk.resnets)
            n -= k
            stages.append(Stage(f"up_blocks.{i}", ("x",) + tuple(f"skip_{n + j}" for j in range(k)) + ("temb", "context"),
                                ("x",), lambda x, *rest, blk=blk, k=k: (blk(x, list(rest[:k]), rest[k], rest[k + 1]),)))
        stages.append(Stage("conv_out", ("x",), ("noise_pred",),
                            lambda x: (self.conv_out(F.silu(self.conv_norm_out(x))),)))
        return stages

    def forward(self, sample: torch.Tensor, t_emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        state = {"sample": sample, "t_emb": t_emb, "context": context}
        for stage in self.stages():
            stage(state)
        return state["noise_pred"]
