"""The named switch sets and where Winograd applies (no conversion: module structure only)."""
from __future__ import annotations

import pytest

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


def test_wide_convs_take_their_own_tile():
    cfg = get_model_config("tiny")
    narrow = min(cfg.unet.block_out_channels)
    opts = get_variant("cpu", winograd_max_channels=narrow, winograd_wide=2).opts
    convs = {n: m for n, m in _winograd_convs(build_module("unet", cfg, opts)).items() if n not in ("conv_in", "conv_out")}
    unet = build_module("unet", cfg, opts)
    cin = {n: m.in_channels for n, m in unet.named_modules() if n in convs}
    assert {convs[n] for n in convs if cin[n] <= narrow} == {opts.winograd_unet}
    assert {convs[n] for n in convs if cin[n] > narrow} == {2}
    direct = get_variant("cpu", winograd_max_channels=narrow, winograd_wide=0).opts  # wide convs stay direct
    convs = _winograd_convs(build_module("unet", cfg, direct))
    assert {convs[n] for n in cin if cin[n] > narrow} == {0}


def test_wide_tile_is_validated_and_keyed_only_where_winograd_is_on():
    from models.config import ConfigError, component_opts

    with pytest.raises(ConfigError, match="winograd_wide"):
        get_variant("cpu", winograd_wide=3)
    assert "winograd_wide" in component_opts("unet", get_variant("cpu").opts)
    assert "winograd_wide" not in component_opts("unet", get_variant("baseline").opts)
    assert "winograd_wide" not in component_opts("text_encoder", get_variant("cpu").opts)
