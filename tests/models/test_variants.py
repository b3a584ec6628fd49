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
    opts = get_variant("cpu", winograd_wide_levels=0).opts  # one tile at every level
    unet = _winograd_convs(build_module("unet", cfg, opts))
    assert unet["conv_in"] == 0 and unet["conv_out"] == 0  # 4 channels in / out
    inner = {n: m for n, m in unet.items() if n not in ("conv_in", "conv_out")}
    assert inner and all(m == opts.winograd_unet for m in inner.values())
    vae = _winograd_convs(build_module("vae_decoder", cfg, opts))
    assert vae["decoder.conv_in"] == 0 and vae["decoder.conv_out"] == 0  # 4 latent channels in, 3 RGB out
    assert sum(1 for m in vae.values() if m) >= 4
    assert cfg.vae.out_channels < WINOGRAD_MIN_CHANNELS <= min(cfg.unet.block_out_channels)


def _level(name: str, levels: int) -> int:
    """The UNet level (0: the latent's resolution) a conv of that name runs at."""
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    assert parts[0] == "up_blocks", name
    return levels - 1 - int(parts[1]) - (parts[2] == "upsamplers")  # an upsampler's conv runs a level up


def test_the_deepest_levels_take_the_wide_tile():
    cfg = get_model_config("tiny")
    levels = len(cfg.unet.block_out_channels)
    opts = get_variant("cpu").opts
    assert opts.winograd_wide_levels == 2 and levels > 2
    convs = {n: m for n, m in _winograd_convs(build_module("unet", cfg, opts)).items() if n not in ("conv_in", "conv_out")}
    deep = {n for n in convs if _level(n, levels) >= levels - 2}
    assert deep and deep != set(convs) and "up_blocks.1.upsamplers.0.conv" not in deep
    assert {convs[n] for n in deep} == {opts.winograd_wide} == {2}
    assert {convs[n] for n in set(convs) - deep} == {opts.winograd_unet} == {4}
    direct = _winograd_convs(build_module("unet", cfg, get_variant("cpu", winograd_wide=0).opts))
    assert {direct[n] for n in deep} == {0} and {direct[n] for n in set(convs) - deep} == {4}
    every = _winograd_convs(build_module("unet", cfg, get_variant("cpu", winograd_wide_levels=levels).opts))
    assert {every[n] for n in convs} == {2}


def test_wide_tile_is_validated_and_keyed_only_where_winograd_is_on():
    from models.config import ConfigError, component_opts

    with pytest.raises(ConfigError, match="winograd_wide"):
        get_variant("cpu", winograd_wide=3)
    with pytest.raises(ConfigError, match="winograd_wide_levels"):
        get_variant("cpu", winograd_wide_levels=-1)
    assert "winograd_wide" in component_opts("unet", get_variant("cpu").opts)
    assert "winograd_wide" not in component_opts("unet", get_variant("baseline").opts)
    assert "winograd_wide" not in component_opts("text_encoder", get_variant("cpu").opts)
    # the decoder has no wide levels: its key does not move with them
    assert component_opts("vae_decoder", get_variant("cpu").opts) == \
        component_opts("vae_decoder", get_variant("cpu", winograd_wide=0, winograd_wide_levels=1).opts)


def test_the_cfg_shared_prefix_gives_the_same_noise_prediction_and_runs_the_prefix_once():
    import torch

    from models.components import load_weights, random_state_dict, sample_inputs
    from models.layers import prepare

    cfg = get_model_config("tiny")
    assert get_variant("cpu").opts.cfg_shared_prefix and not LADDER["optimized"].cfg_shared_prefix
    inputs = sample_inputs("unet", cfg)
    assert torch.equal(inputs["sample"][0], inputs["sample"][1]) and torch.equal(inputs["t_emb"][0], inputs["t_emb"][1])
    assert not torch.equal(inputs["context"][0], inputs["context"][1])
    last = f"up_blocks.{len(cfg.unet.block_out_channels) - 1}.resnets.{cfg.unet.layers_per_block}"  # takes conv_in's skip
    out, batches = {}, {}
    for shared in (False, True):
        m = build_module("unet", cfg, get_variant("cpu", cfg_shared_prefix=shared).opts)
        m = prepare(load_weights(m, random_state_dict(m, seed=3)))
        seen = []
        hooks = [mod.register_forward_hook(lambda mod, args, res, name=name: seen.append((name, res.shape[0])))
                 for name, mod in m.named_modules() if name in ("conv_in", "down_blocks.0.resnets.0",
                                                                "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                                                                "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                                                                last)]
        with torch.no_grad():
            out[shared] = m(**inputs)
        for h in hooks:
            h.remove()
        batches[shared] = dict(seen)
    assert batches[False] == dict.fromkeys(batches[False], 2) and len(batches[False]) == 5
    # conv_in, the first resnet and the first self-attention run once; the cross-attention and everything after
    # it (the skip connection from conv_in included) per CFG entry
    assert batches[True] == {"conv_in": 1, "down_blocks.0.resnets.0": 1,
                             "down_blocks.0.attentions.0.transformer_blocks.0.attn1": 1,
                             "down_blocks.0.attentions.0.transformer_blocks.0.attn2": 2, last: 2}
    assert out[True].shape == out[False].shape == (2, cfg.unet.out_channels, cfg.latent_size, cfg.latent_size)
    assert torch.isfinite(out[True]).all()
    assert (out[True] - out[False]).abs().max() <= 1e-5 * out[False].abs().max()
    assert not torch.allclose(out[True][0], out[True][1])  # the two entries still differ (their contexts do)
