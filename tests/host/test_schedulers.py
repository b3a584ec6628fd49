"""host.schedulers tables against the diffusers schedulers they stand in for."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.schedulers import scheduling_ddim, scheduling_dpmsolver_multistep, scheduling_euler_discrete

from host.schedulers import SCHEDULERS, SchedulerTable, make_table, sample, timestep_embedding

# SD 1.4 / 1.5 scheduler/scheduler_config.json (PNDMScheduler in the checkpoint).
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "trained_betas": None,
    "clip_sample": False,
}

STEPS = (1, 2, 10, 20, 25)
CASES = [("ddim", False), ("dpmpp_2m", False), ("dpmpp_2m", True), ("euler", False), ("euler", True)]


def _diffusers_scheduler(name: str, karras: bool):
    """The scheduler a user gets via `Cls.from_config(pipe.scheduler.config)` for SD 1.x."""
    if name == "ddim":
        return DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(
            SD_SCHEDULER_CONFIG, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras
        )
    return EulerDiscreteScheduler.from_config(SD_SCHEDULER_CONFIG, use_karras_sigmas=karras)


def _eps(model_in: np.ndarray, t: float) -> np.ndarray:
    """Deterministic, nonlinear, t-dependent stand-in for the guided UNet."""
    return np.tanh(0.3 * model_in) + 0.01 * float(t) / 1000.0


def _noise() -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((2, 4, 8, 8))


def _diffusers_sample(sched, noise: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(noise) * sched.init_noise_sigma
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        eps = torch.from_numpy(_eps(model_in.numpy(), float(t)))
        x = sched.step(eps, t, x).prev_sample
    return x.numpy()


class _Float32IsFloat64:
    """Proxy for the `torch` / `np` module whose `float32` is `float64`."""

    def __init__(self, module, float64) -> None:
        self._module = module
        self.float32 = float64

    def __getattr__(self, name: str):
        return getattr(self._module, name)


@pytest.fixture
def diffusers_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the diffusers schedulers in float64.

    They hard-code float32 (betas/alphas_cumprod, sigmas, and an upcast of the
    sample inside Euler/DPM step()), which alone puts ~1e-5 of error on latents
    of magnitude ~30 and would hide real differences.
    """
    for module in (scheduling_ddim, scheduling_dpmsolver_multistep, scheduling_euler_discrete):
        monkeypatch.setattr(module, "torch", _Float32IsFloat64(torch, torch.float64))
        monkeypatch.setattr(module, "np", _Float32IsFloat64(np, np.float64))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name,karras", CASES)
def test_matches_diffusers(name: str, karras: bool, steps: int, diffusers_float64: None) -> None:
    table = make_table(name, steps, karras=karras)
    sched = _diffusers_scheduler(name, karras)
    sched.set_timesteps(steps)
    assert sched.alphas_cumprod.dtype == torch.float64  # the fixture took effect

    assert table.steps == steps and table.karras == karras and table.name == name
    np.testing.assert_array_equal(np.diff(table.timestep) < 0, True)
    np.testing.assert_allclose(table.timestep, sched.timesteps.double().numpy(), rtol=1e-9, atol=1e-9)
    if name == "ddim":  # DDIM has no sigmas; the table holds sqrt((1 - abar) / abar) at each timestep, then 0
        abar = sched.alphas_cumprod[sched.timesteps].numpy()
        ref_sigmas = np.append(np.sqrt((1 - abar) / abar), 0.0)
    else:
        ref_sigmas = sched.sigmas.double().numpy()
    np.testing.assert_allclose(table.sigmas, ref_sigmas, rtol=1e-9, atol=0)
    assert math.isclose(table.init_scale, float(sched.init_noise_sigma), rel_tol=1e-9)

    noise = _noise()
    ours = sample(table, noise, lambda x, t, i: _eps(x, t))
    ref = _diffusers_sample(sched, noise)
    assert ours.dtype == np.float64
    assert np.max(np.abs(ours - ref)) <= 1e-5


@pytest.mark.parametrize("name,karras", CASES)
def test_close_to_stock_float32_diffusers(name: str, karras: bool) -> None:
    """Unpatched diffusers (float32 internals) agrees up to float32 rounding."""
    sched = _diffusers_scheduler(name, karras)
    sched.set_timesteps(20)
    noise = _noise()
    ours = sample(make_table(name, 20, karras=karras), noise, lambda x, t, i: _eps(x, t))
    ref = _diffusers_sample(sched, noise)
    assert np.max(np.abs(ours - ref)) <= 2e-6 * max(1.0, float(np.abs(ref).max()))


def test_float32_sample_stays_float32() -> None:
    table = make_table("dpmpp_2m", 5)
    noise = _noise()
    out32 = sample(table, noise.astype(np.float32), lambda x, t, i: _eps(x, t))
    out64 = sample(table, noise, lambda x, t, i: _eps(x, t))
    assert out32.dtype == np.float32
    assert np.max(np.abs(out32 - out64)) < 1e-4


def test_eps_fn_gets_step_index_and_timestep() -> None:
    table = make_table("euler", 4)
    seen = []

    def eps_fn(x: np.ndarray, t: float, i: int) -> np.ndarray:
        seen.append((i, t))
        return np.zeros_like(x)

    sample(table, _noise(), eps_fn)
    assert seen == list(enumerate(table.timestep))


@pytest.mark.parametrize("name,karras", CASES)
def test_dict_round_trip_through_json(name: str, karras: bool) -> None:
    table = make_table(name, 7, karras=karras)
    data = json.loads(json.dumps(table.to_dict()))
    assert isinstance(data["timestep"], list) and len(data["sigmas"]) == 8
    assert SchedulerTable.from_dict(data) == table


def test_validate_rejects_nan_and_bad_lengths() -> None:
    table = make_table("ddim", 3)
    data = table.to_dict()
    data["x_d"][1] = float("nan")
    with pytest.raises(ValueError, match="x_d"):
        SchedulerTable.from_dict(data)
    data = table.to_dict()
    data["sigmas"] = data["sigmas"][:-1]
    with pytest.raises(ValueError, match="sigmas"):
        SchedulerTable.from_dict(data)
    bad = SchedulerTable(**{**table.__dict__, "init_scale": float("inf")})
    with pytest.raises(ValueError, match="init_scale"):
        bad.validate()


def test_bad_arguments_raise() -> None:
    assert SCHEDULERS == ("ddim", "dpmpp_2m", "euler")
    with pytest.raises(ValueError, match="'pndm'"):
        make_table("pndm", 10)
    for steps in (0, -3):
        with pytest.raises(ValueError, match=str(steps)):
            make_table("euler", steps)
    with pytest.raises(ValueError, match="ddim"):
        make_table("ddim", 10, karras=True)


def test_timestep_embedding_matches_diffusers() -> None:
    # diffusers computes t * freq in float32: ~6e-8 relative, so up to ~1e-4 absolute at t ~ 1000.
    ts = [0, 1, 48.5, 500, 999, 957.375]
    for dim in (320, 7):
        ours = timestep_embedding(ts, dim)
        ref = get_timestep_embedding(
            torch.tensor(ts, dtype=torch.float32), dim, flip_sin_to_cos=True, downscale_freq_shift=0
        ).numpy()
        assert ours.dtype == np.float32 and ours.shape == (len(ts), dim)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours[:2], ref[:2], rtol=0, atol=1e-6)  # small t: exact to float32
