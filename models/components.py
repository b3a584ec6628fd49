"""The three deployable components: how to build each, its named inputs, and its seeded weights.

Signatures (what every runner feeds and reads):
  text_encoder: input_ids int32 [2, 77]                       -> embeddings [2, 77, hidden]
  unet:         sample [2, 4, h, w], t_emb [2, C0], context [2, 77, hidden] -> noise_pred [2, 4, h, w]
  vae_decoder:  latents [1, 4, h, w] (already / scaling_factor) -> image [1, 3, 8h, 8w] in [-1, 1]
Batch 2 is classifier-free guidance (unconditional, conditional).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

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


#: torch.nn.init functions the layers' constructors call (reset_parameters) to fill their weights.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_", "eye_", "orthogonal_")


@contextlib.contextmanager
def uninitialised() -> Iterator[None]:
    """Constructs modules without filling their parameters (they stay ``torch.empty``): every caller loads a
    complete state dict next, and torch's default initialisation of the full-size UNet alone took 13 s of each
    build (this project's host). Not thread-safe: it swaps ``torch.nn.init``'s functions while it is open."""
    saved = {n: getattr(torch.nn.init, n) for n in _INIT_FUNCTIONS if hasattr(torch.nn.init, n)}

    def keep(tensor, *args, **kwargs):
        return tensor

    try:
        for n in saved:
            setattr(torch.nn.init, n, keep)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def build_module(component: str, cfg: ModelConfig, opts: Optimizations = Optimizations()) -> nn.Module:
    """The component's module with UNINITIALISED parameters: load weights (``load_weights``) before running it."""
    check_component(component)
    with uninitialised():
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
        # classifier-free guidance: one latent and one timestep for every batch entry, the contexts differ
        sample = torch.randn(1, un.in_channels, lat, lat, generator=g)
        return {
            "sample": torch.cat([sample] * cfg.cfg_batch),
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
    """Weights with sane activation scales: fan-in-scaled matrices, unit norms, small biases. Drawn in float32
    by torch's generator (the same values whatever the thread count; 5x faster than numpy's float64 draws
    for the UNet's 860 M parameters)."""
    out = {}
    for name, p in module.state_dict().items():
        g = torch.Generator().manual_seed(_name_seed(seed, name) & 0x7FFF_FFFF_FFFF_FFFF)
        shape = tuple(p.shape)
        leaf = name.rsplit(".", 1)[-1]
        is_norm = any(s in name for s in ("norm", "layer_norm"))
        if leaf == "bias":
            mean, std = 0.0, 0.02
        elif is_norm:
            mean, std = 1.0, 0.02
        elif "embedding" in name and len(shape) == 2 and "time_embedding" not in name:
            mean, std = 0.0, 0.02
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            mean, std = 0.0, 1.0 / math.sqrt(fan_in)
        out[name] = torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=g)
    return out


def load_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Loads a complete state dict (strict), then runs the weight transforms the variant needs."""
    # assign=True: the module holds the given tensors, no copy (matters at 3.4 GB for the UNet).
    module.load_state_dict(state, strict=True, assign=True)
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"weight {name} has non-finite values")
    return prepare(module)
