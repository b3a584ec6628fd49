"""The independent implementation: diffusers / transformers modules carrying our weights."""
from __future__ import annotations

import numpy as np
import torch

from models.components import uninitialised
from models.config import ModelConfig


def reference_module(component: str, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The reference carrying ``state``'s tensors themselves (assigned, not copied: the full-size UNet's weights
    are 3.4 GB), built without torch's default initialisation (every tensor it runs comes from ``state``)."""
    with uninitialised():
        return _reference_module(component, cfg, state)


def _reference_module(component: str, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    if component == "unet":
        from diffusers import UNet2DConditionModel

        u = cfg.unet
        m = UNet2DConditionModel(
            sample_size=u.sample_size, in_channels=u.in_channels, out_channels=u.out_channels,
            block_out_channels=u.block_out_channels, down_block_types=u.down_block_types,
            up_block_types=u.up_block_types, layers_per_block=u.layers_per_block,
            attention_head_dim=u.attention_head_dim, cross_attention_dim=u.cross_attention_dim,
            norm_num_groups=u.norm_num_groups, norm_eps=u.norm_eps,
        )
        m.load_state_dict(state, strict=True, assign=True)
    elif component == "vae_decoder":
        from diffusers import AutoencoderKL

        v = cfg.vae
        m = AutoencoderKL(
            in_channels=v.out_channels, out_channels=v.out_channels, latent_channels=v.latent_channels,
            block_out_channels=v.block_out_channels, layers_per_block=v.layers_per_block,
            norm_num_groups=v.norm_num_groups, down_block_types=("DownEncoderBlock2D",) * len(v.block_out_channels),
            up_block_types=v.up_block_types,
        )
        missing, unexpected = m.load_state_dict(state, strict=False, assign=True)
        if unexpected or any(k.startswith(("decoder.", "post_quant_conv.")) for k in missing):
            raise ValueError("vae state dict does not match diffusers' AutoencoderKL decoder")
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        t = cfg.text_encoder
        m = CLIPTextModel(CLIPTextConfig(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
            max_position_embeddings=t.max_position_embeddings, layer_norm_eps=t.layer_norm_eps,
            hidden_act=t.hidden_act, bos_token_id=0, eos_token_id=min(2, t.vocab_size - 1), pad_token_id=1,
        ))
        own = {k: v for k, v in m.state_dict().items()}
        # transformers >= 5 names keys without "text_model."; older versions with it.
        mapped = {(k if k in own else k.removeprefix("text_model.")): v for k, v in state.items()}
        m.load_state_dict(mapped, strict=True, assign=True)
    return m.eval().requires_grad_(False)


@torch.no_grad()
def reference_output(component: str, module: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     timestep: float) -> np.ndarray:
    """Runs the reference on the same inputs our module gets (the UNet gets the raw timestep)."""
    if component == "unet":
        t = torch.full((inputs["sample"].shape[0],), float(timestep))
        out = module(inputs["sample"], t, inputs["context"]).sample
    elif component == "vae_decoder":
        out = module.decode(inputs["latents"]).sample
    else:
        out = module(inputs["input_ids"].long()).last_hidden_state
    return out.numpy()
