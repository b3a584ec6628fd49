"""The SD UNet's sinusoidal timestep projection, computed outside the graph (on the host)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def timestep_embedding(timesteps: Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
    """Sinusoidal timestep projection of the SD UNet, float32 [len(timesteps), dim].

    Same as diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``: ``[cos(t * f_k), sin(t * f_k)]`` with
    ``f_k = exp(-ln(10000) * k / (dim // 2))`` (zero-padded if ``dim`` is odd).
    Computed in float64 and rounded once; diffusers works in float32 and so
    differs by its own rounding (up to ~1e-4 for t near 1000).
    """
    t = np.asarray(timesteps, dtype=np.float64).reshape(-1)
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / max(half, 1))
    args = t[:, None] * freqs[None, :]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)
