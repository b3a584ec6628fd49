"""The named switch sets and where Winograd applies (no conversion: module structure only)."""
from __future__ import annotations

from models.components import build_module
from models.config import LADDER, RUNGS, get_model_config, get_variant
from models.layers import WINOGRAD_MIN_CHANNELS, Conv3x3


def _winograd_convs(module) -> dict[str, int]:
    return {n: m.winograd_m for n, m in module.named_modules() if isinstance(m, Conv3x3)}


def test_the_cpu_set_keeps_the_fused_ops_and_drops_the_gpu_attention_tricks():
    cpu = get_variant("cpu").opts
    assert cpu.gn_gelu and cpu.winograd_unet and cpu.winograd_decoder
    assert not cpu.softmax and not cpu.flash
    assert "cpu" not in RUNGS and set(RUNGS) <= set(LADDER) and LADDER["optimized"] == LADDER[RUNGS[-1]]


def test_winograd_skips_convs_with_a_handful_of_channels():
    cfg = get_model_config("tiny")
    opts = get_variant("cpu").opts
    unet = _winograd_convs(build_module("unet", cfg, opts))
    assert unet["conv_in"] == 0 and unet["conv_out"] == 0  # 4 channels in / out
    inner = {n: m for n, m in unet.items() if n not in ("conv_in", "conv_out")}
    assert inner and all(m == opts.winograd_unet for m in inner.values())
    vae = _winograd_convs(build_module("vae_decoder", cfg, opts))
    assert vae["decoder.conv_in"] == 0 and vae["decoder.conv_out"] == 0  # 4 latent channels in, 3 RGB out
    assert sum(1 for m in vae.values() if m) >= 4
    assert cfg.vae.out_channels < WINOGRAD_MIN_CHANNELS <= min(cfg.unet.block_out_channels)
