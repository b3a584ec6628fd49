"""Our (diffusers / transformers) parameter names -> the original CompVis/LDM single-file layout.

Written from the config (levels, layers per block, which levels have cross-attention), not from the keys,
so it is an independent inverse of the key-driven loader in models.checkpoint: a state dict taken through
:func:`to_ldm` and loaded back by ``models.checkpoint.load_checkpoint`` must come back unchanged (tests
check that, and host.export.mediapipe checks it on every export).
"""
from __future__ import annotations

import torch

from models.config import ModelConfig

LDM_UNET, LDM_VAE, LDM_TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
LDM_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                  "conv_shortcut": "nin_shortcut"}
LDM_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_module_table(cfg: ModelConfig) -> list[tuple[str, str, dict[str, str] | None]]:
    """(diffusers prefix, LDM prefix, child renames or None) for every UNet module, from the config."""
    u = cfg.unet
    n, lpb = len(u.block_out_channels), u.layers_per_block
    rows: list[tuple[str, str, dict[str, str] | None]] = [
        ("conv_in.", "input_blocks.0.0.", None),
        ("time_embedding.linear_1.", "time_embed.0.", None),
        ("time_embedding.linear_2.", "time_embed.2.", None),
        ("mid_block.resnets.0.", "middle_block.0.", LDM_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", None),
        ("mid_block.resnets.1.", "middle_block.2.", LDM_RESNET),
        ("conv_norm_out.", "out.0.", None),
        ("conv_out.", "out.2.", None),
    ]
    idx = 1
    for level in range(n):
        cross = u.down_block_types[level].startswith("CrossAttn")
        for j in range(lpb):
            rows.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{idx}.0.", LDM_RESNET))
            if cross:
                rows.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{idx}.1.", None))
            idx += 1
        if level < n - 1:
            rows.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{idx}.0.op.", None))
            idx += 1
    idx = 0
    for level in range(n):
        cross = u.up_block_types[level].startswith("CrossAttn")
        for j in range(lpb + 1):
            rows.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{idx}.0.", LDM_RESNET))
            if cross:
                rows.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{idx}.1.", None))
            if j == lpb and level < n - 1:
                slot = 2 if cross else 1
                rows.append((f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{idx}.{slot}.conv.", None))
            idx += 1
    return rows


def vae_module_table(cfg: ModelConfig) -> list[tuple[str, str, dict[str, str] | None]]:
    v = cfg.vae
    n = len(v.block_out_channels)
    rows: list[tuple[str, str, dict[str, str] | None]] = [
        ("post_quant_conv.", "post_quant_conv.", None),
        ("decoder.conv_in.", "decoder.conv_in.", None),
        ("decoder.conv_out.", "decoder.conv_out.", None),
        ("decoder.conv_norm_out.", "decoder.norm_out.", None),
        ("decoder.mid_block.resnets.0.", "decoder.mid.block_1.", LDM_VAE_RESNET),
        ("decoder.mid_block.resnets.1.", "decoder.mid.block_2.", LDM_VAE_RESNET),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1.", LDM_VAE_ATTN),
    ]
    for i in range(n):
        k = n - 1 - i  # LDM numbers decoder levels from the lowest resolution up
        for j in range(v.layers_per_block + 1):
            rows.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{k}.block.{j}.", LDM_VAE_RESNET))
        if i < n - 1:
            rows.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{k}.upsample.conv.", None))
    return rows


def apply_table(sd: dict[str, torch.Tensor], rows, reshape_attn: bool = False) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    rows = sorted(rows, key=lambda r: -len(r[0]))  # longest prefix first
    for key, t in sd.items():
        for src, dst, renames in rows:
            if key.startswith(src):
                rest = key[len(src):]
                if renames is not None:
                    child = next(c for c in sorted(renames, key=len, reverse=True) if rest.startswith(c + "."))
                    rest = renames[child] + rest[len(child):]
                    if reshape_attn and renames is LDM_VAE_ATTN and child != "group_norm" and t.ndim == 2:
                        t = t.reshape(*t.shape, 1, 1)
                out[dst + rest] = t
                break
        else:
            raise KeyError(f"no LDM mapping for {key}")
    return out




def to_ldm(cfg: ModelConfig, unet: dict[str, torch.Tensor], vae_decoder: dict[str, torch.Tensor],
           text_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three components' weights (our naming: UNet as diffusers, ``decoder.*`` + ``post_quant_conv.*``,
    ``text_model.*``) under their LDM names; the VAE attention's Linear weights become 1x1 convolutions."""
    sd: dict[str, torch.Tensor] = {}
    for k, v in apply_table(dict(unet), unet_module_table(cfg)).items():
        sd[LDM_UNET + k] = v
    dec = {k: v for k, v in vae_decoder.items() if k.startswith(("decoder.", "post_quant_conv."))}
    for k, v in apply_table(dec, vae_module_table(cfg), reshape_attn=True).items():
        sd[LDM_VAE + k] = v
    for k, v in text_encoder.items():
        if k.endswith("position_ids"):
            continue
        sd[LDM_TEXT + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return sd
