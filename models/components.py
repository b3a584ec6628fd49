"""The three deployable components: how to build each, its named inputs, and its seeded weights.

Signatures (what every runner feeds and reads):
  text_encoder: input_ids int32 [2, 77]                       -> embeddings [2, 77, hidden]
  unet:         sample [2, 4, h, w], t_emb [2, C0], context [2, 77, hidden] -> noise_pred [2, 4, h, w]
  vae_decoder:  latents [1, 4, h, w] (already / scaling_factor) -> image [1, 3, 8h, 8w] in [-1, 1]
Batch 2 is classifier-free guidance (unconditional, conditional).
"""
from __future__ import annotations

import hashlib
import math
import numpy as np
import torch
from torch import nn

from models.clip import ClipTextEncoder
from models.config import COMPONENTS, ModelConfig, Optimizations
from models.layers import prepare
from models.timestep import timestep_embedding
from models.unet import UNet
from models.vae import VaeDecoder

OUTPUT_NAMES = {"text_encoder": "embeddings", "unet": "noise_pred", "vae_decoder": "image"}


def check_component(name: str) -> str:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; choose one of: {', '.join(COMPONENTS)}")
    return name


def build_module(component: str, cfg: ModelConfig, opts: Optimizations = Optimizations()) -> nn.Module:
    check_component(component)
    if component == "text_encoder":
        m = ClipTextEncoder(cfg.text_encoder, opts)
    elif component == "unet":
        m = UNet(cfg.unet, opts)
    else:
        m = VaeDecoder(cfg.vae, opts)
    return m.eval().requires_grad_(False)


def sample_inputs(component: str, cfg: ModelConfig, seed: int = 0, timestep: float = 500.0) -> dict[str, torch.Tensor]:
    """Realistic-scale inputs for conversion tracing and the verification gates."""
    check_component(component)
    g = torch.Generator().manual_seed(seed)
    te, un = cfg.text_encoder, cfg.unet
    lat = cfg.latent_size
    if component == "text_encoder":
        ids = torch.randint(0, te.vocab_size, (cfg.cfg_batch, te.max_position_embeddings), generator=g)
        return {"input_ids": ids.to(torch.int32)}
    if component == "unet":
        return {
            "sample": torch.randn(cfg.cfg_batch, un.in_channels, lat, lat, generator=g),
            "t_emb": torch.from_numpy(timestep_embedding([timestep] * cfg.cfg_batch, un.time_proj_dim)),
            "context": torch.randn(cfg.cfg_batch, te.max_position_embeddings, un.cross_attention_dim, generator=g),
        }
    return {"latents": torch.randn(1, cfg.vae.latent_channels, lat, lat, generator=g) / cfg.vae.scaling_factor * 0.18}


# ----------------------------------------------------------------------------------------------
# Seeded random weights. Every tensor is written explicitly, from a generator seeded by the
# parameter's name, so the same seed gives the same weights whatever the construction order.
# ----------------------------------------------------------------------------------------------


def _name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def random_state_dict(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights with sane activation scales: fan-in-scaled matrices, unit norms, small biases."""
    out = {}
    for name, p in module.state_dict().items():
        rng = np.random.default_rng(_name_seed(seed, name))
        shape = tuple(p.shape)
        leaf = name.rsplit(".", 1)[-1]
        is_norm = any(s in name for s in ("norm", "layer_norm"))
        if leaf == "bias":
            arr = rng.normal(0.0, 0.02, shape)
        elif is_norm:
            arr = 1.0 + rng.normal(0.0, 0.02, shape)
        elif "embedding" in name and len(shape) == 2 and "time_embedding" not in name:
            arr = rng.normal(0.0, 0.02, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            arr = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def load_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Loads a complete state dict (strict), then runs the weight transforms the variant needs."""
    # assign=True: the module holds the given tensors, no copy (matters at 3.4 GB for the UNet).
    module.load_state_dict(state, strict=True, assign=True)
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"weight {name} has non-finite values")
    return prepare(module)
