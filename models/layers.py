"""Building blocks whose lowering changes with the optimization switches.

Every block keeps the parameter names of the diffusers / transformers module it mirrors, so one
state dict loads into any variant. What the switches change is the graph the converter sees:

- ``GroupNorm``: decomposed reductions, or litert-torch's ``odml.group_norm`` StableHLO composite
  (one op in the LiteRT graph; its decomposition stays in a side subgraph for runtimes without a
  fused kernel).
- ``gelu``: an erf polynomial, or one GELU op.
- ``attention``: plain softmax, partially fused softmax, or FlashAttention-style tiling.
- ``Conv3x3``: direct convolution, or Winograd F(m x m, 3 x 3) expressed as graph ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models import winograd


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters) that lowers either decomposed or as one fused op."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, fused: bool):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return _group_norm_decomposed(x, self.num_groups, self.weight, self.bias, self.eps)
        # Imported lazily: plain PyTorch use of the models must not need the converter.
        from litert_torch.hlfb import StableHLOCompositeBuilder

        builder = StableHLOCompositeBuilder(
            name="odml.group_norm",
            attr={"num_groups": self.num_groups, "epsilon": self.eps, "reduction_axes": [1], "channel_axis": 1},
        )
        x, w, b = builder.mark_inputs(x, self.weight, self.bias)
        y = F.group_norm(x, self.num_groups, w, b, self.eps)
        return builder.mark_outputs(y)


def _group_norm_decomposed(x, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """GroupNorm spelled out as the separate reductions and element-wise ops a naive kernel runs."""
    n, c = x.shape[0], x.shape[1]
    g = x.reshape(n, groups, -1)
    mean = g.mean(dim=-1, keepdim=True)
    centered = g - mean
    var = (centered * centered).mean(dim=-1, keepdim=True)
    y = (centered * torch.rsqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return y * weight.reshape(shape) + bias.reshape(shape)


def gelu(x: torch.Tensor, fused: bool) -> torch.Tensor:
    """Exact (erf) GELU: one op when fused, otherwise the element-wise formula."""
    if fused:
        return F.gelu(x)
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


# --------------------------------------------------------------------------------------------
# Attention. q: [B, H, Nq, D], k/v: [B, H, Nk, D]. Scale is applied to q.
# --------------------------------------------------------------------------------------------

ATTENTION_MODES = ("softmax", "partial", "flash")


def attention(q, k, v, mode: str, block_q: int = 1024, block_kv: int = 1024, mask=None,
              q_scaled: bool = False) -> torch.Tensor:
    """``q_scaled``: q carries the 1/sqrt(D) factor already (folded into its projection's weights)."""
    if not q_scaled:
        q = q * q.shape[-1] ** -0.5
    if mode == "softmax":
        s = scores(q, k)
        if mask is not None:
            s = s + mask
        return torch.softmax(s, dim=-1) @ v
    if mode == "partial":
        return _partial_softmax_attention(q, k, v, mask)
    if mode == "flash":
        if mask is not None:
            raise ValueError("flash attention is only used without a mask")
        return _flash_attention(q, k, v, block_q, block_kv)
    raise ValueError(f"unknown attention mode {mode!r}")


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q @ k^T`` over the last two axes.

    With one batch and one head (the VAE decoder's attention) the converter turns that product into a
    FULLY_CONNECTED whose weight operand is k, a tensor computed at run time; XNNPACK does not take such an op,
    and LiteRT's reference kernel ran it at ~26 GFLOP/s (656 ms of the full-size ``cpu`` decoder on this
    project's host). Here the queries are split into two halves against two copies of k, which converts to a
    plain two-batch BATCH_MATMUL (the form of the UNet's multi-head attention) that XNNPACK runs: in the full-size
    ``cpu`` decoder the reference kernel's 575 ms went and batch matmul took 164 ms more (same host, ops
    profiled). Same values either way."""
    lead, (nq, d) = q.shape[:-2], q.shape[-2:]
    if math.prod(lead) != 1 or nq % 2 or k.shape[:-2] != lead:
        return q @ k.transpose(-1, -2)
    k2 = k.reshape(1, -1, d)
    s = q.reshape(2, nq // 2, d) @ torch.cat([k2, k2]).transpose(-1, -2)
    return s.reshape(*lead, nq, k.shape[-2])


def _partial_softmax_attention(q, k, v, mask) -> torch.Tensor:
    """Softmax with the reductions apart and the normalisation moved after the product with V.

    The normalised N x N probability matrix never exists: exp(S - max) feeds the matmul directly
    (a GPU delegate fuses the element-wise exp into it) and the division by the row sum is applied
    to the N x D result instead.
    """
    s = scores(q, k)
    if mask is not None:
        s = s + mask
    row_max = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - row_max)
    row_sum = e.sum(dim=-1, keepdim=True)
    return (e @ v) / row_sum


def _flash_attention(q, k, v, block_q: int, block_kv: int) -> torch.Tensor:
    """Exact attention over query and key tiles with an online softmax (running max and sum)."""
    nq, nk = q.shape[-2], k.shape[-2]
    outs = []
    for qs in range(0, nq, block_q):
        qt = q[..., qs : qs + block_q, :]
        acc = m = l = None
        for ks in range(0, nk, block_kv):
            kt = k[..., ks : ks + block_kv, :]
            vt = v[..., ks : ks + block_kv, :]
            s = scores(qt, kt)
            m_tile = s.amax(dim=-1, keepdim=True)
            if m is None:
                m_new = m_tile
                p = torch.exp(s - m_new)
                l = p.sum(dim=-1, keepdim=True)
                acc = p @ vt
            else:
                m_new = torch.maximum(m, m_tile)
                alpha = torch.exp(m - m_new)
                p = torch.exp(s - m_new)
                l = l * alpha + p.sum(dim=-1, keepdim=True)
                acc = acc * alpha + p @ vt
            m = m_new
        outs.append(acc / l)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


def broadcast_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` repeated along its batch axis to ``n`` entries (unchanged when it has them): where a tensor computed
    once for every classifier-free-guidance entry (``Optimizations.cfg_shared_prefix``) meets per-entry ones."""
    if x.shape[0] == n:
        return x
    if n % x.shape[0]:
        raise ValueError(f"cannot broadcast a batch of {x.shape[0]} to {n}")
    return torch.cat([x] * (n // x.shape[0]))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# --------------------------------------------------------------------------------------------
# 3x3 convolution, direct or Winograd.
# --------------------------------------------------------------------------------------------


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel, once ``prepare()`` has run, is held in TFLite's OHWI order and handed to the
    convolution as a permuted view. The converter moves an OIHW kernel to OHWI with a TRANSPOSE on the constant;
    for a weight above litert-torch's resource threshold (1 M elements: every 3x3 kernel from 640 channels on)
    that op is left to LiteRT's runtime constant folding, which serialises the whole model once more and runs it
    (~30 s of the full-size baseline UNet's build). On the OHWI copy the two
    transposes cancel and the graph holds no op on constants, so the folding pass has nothing to do. 1x1 kernels
    need no layout change and stay as they are."""

    def prepare(self) -> None:
        if self.weight is not None and self.kernel_size != (1, 1):
            self.register_buffer("weight_ohwi", self.weight.detach().permute(0, 2, 3, 1).contiguous(), persistent=False)
            self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return super().forward(x)
        return F.conv2d(x, self.weight_ohwi.permute(0, 3, 1, 2), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Conv3x3(Conv2d):
    """``nn.Conv2d(k=3, stride=1, padding=1)`` with the same parameters, optionally run as Winograd.

    With ``winograd_m`` set, ``prepare()`` (called once after the weights are loaded) transforms the
    kernel into the Winograd domain; ``forward`` then runs the input transform as a small constant
    convolution, the channel mixing as one batched GEMM over the (m+2)^2 tile positions, and the
    output transform as one matrix product over all tiles and channels.
    """

    def __init__(self, cin: int, cout: int, winograd_m: int = 0):
        super().__init__(cin, cout, kernel_size=3, stride=1, padding=1)
        self.winograd_m = winograd_m
        if winograd_m:
            bker, amat = winograd.transform_kernels(winograd_m)
            # Graph constants, not weights: never in a state dict. The input transform's kernel (1 input
            # channel: a DEPTHWISE_CONV_2D in the graph) is kept in TFLite's depthwise order [1, H, W, O], for
            # the reason Conv2d keeps its kernels in OHWI.
            self.register_buffer("wino_in", bker.permute(1, 2, 3, 0).contiguous(), persistent=False)
            self.register_buffer("wino_out", amat, persistent=False)
            self.register_buffer("wino_u", None, persistent=False)

    def prepare(self) -> None:
        if not self.winograd_m:
            return super().prepare()
        if self.weight is not None:
            self.wino_u = winograd.transform_weight(self.weight.detach(), self.winograd_m)
            # The 3x3 kernel is dead from here on. Kept, it rode along into conversion as 2.6 GB of constants
            # the full-size ``cpu`` UNet never uses (export lifts every parameter, used or not).
            self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.winograd_m:
            return super().forward(x)
        if self.wino_u is None:
            raise RuntimeError("Winograd conv used before prepare(): load weights with models.components.load_weights")
        return winograd.conv3x3(x, self.wino_u, self.bias, self.wino_in.permute(3, 0, 1, 2), self.wino_out,
                                self.winograd_m)


#: Winograd needs this many input and output channels: with a handful on either side (the UNet's 4-channel
#: conv_in / conv_out, the decoder's 3-channel conv_out) its transforms cost more than the GEMM work it saves
#: (full-size UNet conv_in on this project's CPU host: 71 ms with Winograd F(4,3), 9 ms direct).
WINOGRAD_MIN_CHANNELS = 16


def conv3x3(cin: int, cout: int, winograd_m: int) -> Conv3x3:
    """A stride-1 3x3 conv with Winograd tile ``winograd_m`` (0: direct); Winograd needs WINOGRAD_MIN_CHANNELS
    on both sides."""
    return Conv3x3(cin, cout, winograd_m if min(cin, cout) >= WINOGRAD_MIN_CHANNELS else 0)


def prepare(module: nn.Module) -> nn.Module:
    """Runs every ``prepare()`` hook (weight transforms) once the final weights are in place; a second call
    changes nothing. The transforms make new tensors: the loaded ones may be shared (``load_state_dict(...,
    assign=True)``) with the state dict and the reference module."""
    for m in module.modules():
        if callable(getattr(m, "prepare", None)):
            m.prepare()
    return module
