"""Sampler schedules for SD 1.x, precomputed as per-step linear-update tables.

Every scheduler is reduced, once and in float64, to a table of coefficients so
that a runner (Python host, Kotlin, Swift) only needs one generic loop::

    x = noise * init_scale
    d_prev = 0
    for i in range(steps):
        eps = unet(x * in_scale[i], timestep[i])      # CFG already applied
        d = x * d_x[i] + eps * d_eps[i]                # x0 prediction
        x = x * x_x[i] + d * x_d[i] + d_prev * x_dprev[i]
        d_prev = d

The schedules follow diffusers' schedulers as configured from the SD 1.x
``scheduler_config`` (scaled_linear betas 0.00085..0.012, 1000 train steps,
steps_offset=1, set_alpha_to_one=False). Loaded that way, ``DDIMScheduler``
uses "leading" timestep spacing, while ``EulerDiscreteScheduler`` and
``DPMSolverMultistepScheduler`` fall back to their own default, "linspace"
(the SD config does not set ``timestep_spacing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from models.timestep import timestep_embedding  # noqa: F401  (re-exported: runners get it from here)

SCHEDULERS = ("ddim", "dpmpp_2m", "euler")

_COEFF_FIELDS = ("timestep", "in_scale", "d_x", "d_eps", "x_x", "x_d", "x_dprev")


@dataclass(frozen=True)
class SchedulerTable:
    """Per-step coefficients of one sampler run (see module docstring)."""

    name: str
    steps: int
    init_scale: float
    timestep: tuple[float, ...]
    in_scale: tuple[float, ...]
    d_x: tuple[float, ...]
    d_eps: tuple[float, ...]
    x_x: tuple[float, ...]
    x_d: tuple[float, ...]
    x_dprev: tuple[float, ...]
    sigmas: tuple[float, ...]
    karras: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SchedulerTable":
        """Inverse of :meth:`to_dict`; the result is validated."""
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"scheduler table is missing field(s): {', '.join(missing)}")
        table = cls(
            name=str(data["name"]),
            steps=int(data["steps"]),
            init_scale=float(data["init_scale"]),
            karras=bool(data["karras"]),
            sigmas=tuple(float(v) for v in data["sigmas"]),
            **{k: tuple(float(v) for v in data[k]) for k in _COEFF_FIELDS},
        )
        table.validate()
        return table

    def validate(self) -> None:
        """Check lengths and finiteness; raise ValueError naming the bad field."""
        if self.name not in SCHEDULERS:
            raise ValueError(f"name: unknown scheduler {self.name!r}")
        if self.steps <= 0:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not math.isfinite(self.init_scale):
            raise ValueError(f"init_scale: not finite ({self.init_scale})")
        for key in _COEFF_FIELDS + ("sigmas",):
            values = getattr(self, key)
            want = self.steps + 1 if key == "sigmas" else self.steps
            if len(values) != want:
                raise ValueError(f"{key}: length {len(values)}, expected {want}")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{key}: contains a non-finite value")


def _alphas_cumprod(beta_start: float, beta_end: float, n: int) -> np.ndarray:
    """abar_t for the "scaled_linear" beta schedule, float64, t = 0..n-1."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def _karras(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels, descending from sigma_max to sigma_min."""
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _sigma_to_t(sigmas: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """Continuous timestep for each sigma: linear interpolation in log-sigma."""
    log_train = np.log(train_sigmas)  # increasing with t
    return np.interp(np.log(np.maximum(sigmas, 1e-10)), log_train, np.arange(len(train_sigmas)))


def _ddim(steps: int, abar: np.ndarray) -> dict[str, np.ndarray | float]:
    """DDIM (eta=0), "leading" spacing, steps_offset=1, final alpha = abar[0]."""
    n = len(abar)
    ratio = n // steps
    t = np.arange(steps)[::-1] * ratio + 1
    if t[0] >= n:
        raise ValueError(f"steps={steps} is too many for ddim with {n} training timesteps")
    prev = t - ratio
    a = abar[t]
    a_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], abar[0])
    # x0 = (x - sqrt(1-a) eps) / sqrt(a);  x' = sqrt(a') x0 + sqrt(1-a') eps,
    # with eps rewritten as (x - sqrt(a) x0) / sqrt(1-a).
    x_x = np.sqrt((1.0 - a_prev) / (1.0 - a))
    return dict(
        timestep=t.astype(np.float64),
        in_scale=np.ones(steps),
        d_x=1.0 / np.sqrt(a),
        d_eps=-np.sqrt((1.0 - a) / a),
        x_x=x_x,
        x_d=np.sqrt(a_prev) - x_x * np.sqrt(a),
        x_dprev=np.zeros(steps),
        sigmas=np.append(np.sqrt((1.0 - a) / a), 0.0),
        init_scale=1.0,
    )


def _euler(steps: int, abar: np.ndarray, karras: bool) -> dict[str, np.ndarray | float]:
    """Euler (k-diffusion form, s_churn=0), "linspace" spacing, sigma interpolated in t."""
    n = len(abar)
    train_sigmas = np.sqrt((1.0 - abar) / abar)
    t = np.linspace(0.0, n - 1, steps)[::-1]
    sig = np.interp(t, np.arange(n), train_sigmas)
    if karras:
        sig = _karras(sig[-1], sig[0], steps)
        t = _sigma_to_t(sig, train_sigmas)
    s = np.append(sig, 0.0)
    ratio = s[1:] / s[:-1]
    # d = x - sigma eps;  x' = x + (x - d)/sigma * (sigma' - sigma)
    return dict(
        timestep=t,
        in_scale=1.0 / np.sqrt(sig**2 + 1.0),
        d_x=np.ones(steps),
        d_eps=-sig,
        x_x=ratio,
        x_d=1.0 - ratio,
        x_dprev=np.zeros(steps),
        sigmas=s,
        init_scale=float(s.max()),  # "linspace" spacing: init sigma is sigma_max
    )


def _dpmpp_2m(steps: int, abar: np.ndarray, karras: bool) -> dict[str, np.ndarray | float]:
    """DPM-Solver++(2M) in VP space (x = alpha * (x0 + sigma * noise)).

    First step is first order (no previous x0 yet); the last step is also first
    order because the final sigma is 0 (diffusers' final_sigmas_type="zero"),
    which makes it return the x0 prediction exactly.
    """
    n = len(abar)
    train_sigmas = np.sqrt((1.0 - abar) / abar)
    if karras:
        sig = _karras(train_sigmas[0], train_sigmas[-1], steps)
        t = np.round(_sigma_to_t(sig, train_sigmas))
    else:
        t = np.round(np.linspace(0, n - 1, steps + 1))[::-1][:-1]
        sig = train_sigmas[t.astype(np.int64)]
    s = np.append(sig, 0.0)
    alpha = 1.0 / np.sqrt(s**2 + 1.0)  # VP alpha_t; VP sigma_t = s * alpha
    lam = -np.log(sig)  # log(alpha_t / sigma_t) = -log(s), for the non-zero sigmas

    x_x = np.empty(steps)
    x_d = np.empty(steps)
    x_dprev = np.zeros(steps)
    for i in range(steps):
        ratio = s[i + 1] / s[i]  # = exp(-h)
        x_x[i] = ratio * alpha[i + 1] / alpha[i]  # sigma_vp(t) / sigma_vp(s)
        phi = alpha[i + 1] * (1.0 - ratio)  # -alpha_t * (exp(-h) - 1)
        if i == 0 or i == steps - 1:
            x_d[i] = phi
        else:
            h = lam[i + 1] - lam[i]
            r = (lam[i] - lam[i - 1]) / h
            # x' = x_x x + phi * D0 + phi/2 * D1,  D1 = (d - d_prev) / r
            x_d[i] = phi * (1.0 + 0.5 / r)
            x_dprev[i] = -phi * 0.5 / r
    return dict(
        timestep=t.astype(np.float64),
        in_scale=np.ones(steps),
        d_x=1.0 / alpha[:-1],
        d_eps=-sig,
        x_x=x_x,
        x_d=x_d,
        x_dprev=x_dprev,
        sigmas=s,
        init_scale=1.0,
    )


def make_table(
    name: str,
    steps: int,
    *,
    karras: bool = False,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
) -> SchedulerTable:
    """Build the coefficient table for scheduler ``name`` and ``steps`` steps."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps >= num_train_timesteps:
        raise ValueError(f"steps={steps} must be smaller than num_train_timesteps={num_train_timesteps}")
    if karras and name == "ddim":
        raise ValueError("karras sigmas are not supported for scheduler 'ddim'")
    steps = int(steps)
    abar = _alphas_cumprod(beta_start, beta_end, num_train_timesteps)
    if name == "ddim":
        raw = _ddim(steps, abar)
    elif name == "euler":
        raw = _euler(steps, abar, karras)
    else:
        raw = _dpmpp_2m(steps, abar, karras)
    table = SchedulerTable(
        name=name,
        steps=steps,
        init_scale=float(raw.pop("init_scale")),
        karras=bool(karras),
        **{k: tuple(float(v) for v in np.asarray(arr)) for k, arr in raw.items()},
    )
    table.validate()
    return table


def sample(
    table: SchedulerTable,
    noise: np.ndarray,
    eps_fn: Callable[[np.ndarray, float, int], np.ndarray],
) -> np.ndarray:
    """Reference runner loop: denoise ``noise`` (N(0,1) latents) with ``table``.

    ``eps_fn(model_in, timestep, i)`` returns the guided noise prediction.
    The state is kept in ``noise``'s floating dtype (float32 or float64).
    Returns the final latents (before the 1/vae_scaling_factor scaling).
    """
    dtype = noise.dtype if np.issubdtype(noise.dtype, np.floating) else np.dtype(np.float32)
    x = np.asarray(noise, dtype=dtype) * dtype.type(table.init_scale)
    d_prev = np.zeros_like(x)
    for i in range(table.steps):
        c = {k: dtype.type(getattr(table, k)[i]) for k in ("in_scale", "d_x", "d_eps", "x_x", "x_d", "x_dprev")}
        eps = np.asarray(eps_fn(x * c["in_scale"], table.timestep[i], i), dtype=dtype)
        d = x * c["d_x"] + eps * c["d_eps"]
        x = x * c["x_x"] + d * c["x_d"] + d_prev * c["x_dprev"]
        d_prev = d
    return x
