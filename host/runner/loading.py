"""Finding, verifying and loading the request's model files and noise."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from host.errors import HarnessError
from host.protocol.messages import BlockModelSpec, ModelSpec, RunRequest
from host.runner.tracing import Tracer
from host.runtime import LiteRtModel, open_model, trim_heap
from host.hashing import file_sha256


class RunnerError(HarnessError):
    """A run that cannot go on (missing or corrupt file, unsupported setting, crash); one line."""


def models_dir(run_dir: Path, request: RunRequest) -> Path:
    base = Path(request.models_dir)
    return base if base.is_absolute() else run_dir / base


def verify_file(path: Path, sha256: str | None, what: str) -> None:
    """``path`` must exist and, when ``sha256`` is given, hash to it."""
    if not path.is_file():
        raise RunnerError(f"{path}: {what} file not found")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise RunnerError(f"{path}: sha256 mismatch ({what}): request has {sha256[:16]}..., file has {actual[:16]}...")


def check_signature(model: LiteRtModel, spec: ModelSpec | BlockModelSpec, path: Path) -> None:
    """The loaded model's signature must be the one the request describes (names, shapes, dtypes)."""
    if model.signature != spec.signature:
        raise RunnerError(f"{path}: signature {model.signature!r}, the request says {spec.signature!r}")
    for kind, have, want in (("input", model.inputs, spec.inputs), ("output", model.outputs, spec.outputs)):
        names = {t.name for t in want}
        if set(have) != names:
            raise RunnerError(f"{path}: {kind}s {sorted(have)}, the request says {sorted(names)}")
        for t in want:
            shape, dtype = have[t.name]
            if tuple(shape) != tuple(t.shape) or dtype != t.dtype:
                raise RunnerError(f"{path}: {kind} {t.name!r} is {list(shape)} {dtype}, "
                                  f"the request says {list(t.shape)} {t.dtype}")


def load_model(path: Path, spec: ModelSpec | BlockModelSpec, component: str, threads: int, tracer: Tracer,
               phases: Sequence[str] = ("cold", "warm")) -> LiteRtModel:
    """Load ``path`` once per phase (a "warm" load is a second load of the same file), one ``load`` span
    each, then invoke it once on zeros (a ``load`` span with phase "first_invoke"); returns the last
    instance, its signature checked against ``spec``."""
    model: LiteRtModel | None = None
    for phase in phases:
        if model is not None:
            model = None  # release the previous instance before loading the next
            trim_heap()
        with tracer.span("load", "load", component=component, args={"phase": phase, "file": spec.file}):
            model = open_model(str(path), threads=threads, sha256=spec.sha256)
    assert model is not None
    check_signature(model, spec, path)
    # The first invocation packs the weights for the CPU kernels (tens of seconds for the full UNet):
    # measured here, as part of getting the model ready, so that no step or block span carries it.
    with tracer.span("load", "load", component=component, args={"phase": "first_invoke", "file": spec.file}):
        model.run(**{name: np.zeros(shape, dtype) for name, (shape, dtype) in model.inputs.items()})
    return model


@dataclass(frozen=True)
class Inputs:
    """The request's numbers as float32 / int32 arrays, ready for the loop."""

    ids: np.ndarray          # int32 [2, L]
    noise: np.ndarray        # float32 [1, C, h, w]
    t_emb: np.ndarray        # float32 [steps, C0]
    coeffs: dict[str, np.ndarray]  # float32 [steps] each: in_scale, d_x, d_eps, x_x, x_d, x_dprev
    init_scale: np.float32
    guidance: np.float32
    vae_scale: np.float32


def load_inputs(run_dir: Path, request: RunRequest) -> Inputs:
    """Read and verify noise.bin (size and sha256), and convert the request's tables."""
    noise_path = run_dir / request.noise.file
    verify_file(noise_path, request.noise.sha256, "noise")
    raw = noise_path.read_bytes()
    want = int(np.prod(request.noise.shape)) * 4
    if len(raw) != want:
        raise RunnerError(f"{noise_path}: {len(raw)} bytes, expected {want} for float32 {list(request.noise.shape)}")
    table = request.scheduler.table
    return Inputs(
        ids=np.asarray(request.prompt.tokens, dtype=np.int32),
        noise=np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(request.noise.shape),
        t_emb=np.asarray(request.scheduler.t_emb, dtype=np.float32),
        coeffs={k: np.asarray(getattr(table, k), dtype=np.float32)
                for k in ("in_scale", "d_x", "d_eps", "x_x", "x_d", "x_dprev")},
        init_scale=np.float32(table.init_scale),
        guidance=np.float32(request.guidance_scale),
        vae_scale=np.float32(request.vae_scaling_factor),
    )


def output_name(spec: ModelSpec | BlockModelSpec) -> str:
    return spec.outputs[0].name
