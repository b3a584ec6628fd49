"""Preparing a run folder on the host: tokens, noise, scheduler table and model files (docs/protocol.md).

The noise is made here, from the seed, so every runner starts from the same latents::

    numpy.random.default_rng(seed).standard_normal((1, C, h, w), dtype=numpy.float32)

written to ``noise.bin`` as float32 little-endian NCHW (:data:`NOISE_GENERATOR` records this in the request).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from host.errors import HarnessError
from host.protocol.constants import (
    COMPONENTS, IMAGE_F32, IMAGE_PNG, MODELS_DIR, NOISE_FILE, NOISE_GENERATOR, REQUEST_FILE, STATUS_FILE, TEXT_ENCODER_INPUT,
    TRACE_FILE,
)
from host.protocol.jsonio import write_json
from host.protocol.messages import (
    BlockModelSpec, ImageSpec, ModelSpec, NoiseSpec, ProfilingSpec, PromptSpec, RunRequest, RuntimeSpec,
    SchedulerSpec, TensorSpec,
)
from host.schedulers import SCHEDULERS, make_table, timestep_embedding
from models.tokenizer import Tokenizer, get_tokenizer
from host.hashing import file_sha256


BLOCKS_DIR = "blocks"


class RequestError(HarnessError):
    """Bad arguments for a run (size, steps, scheduler, files); ``str()`` is one line naming the culprit."""


def make_noise(seed: int, shape: Sequence[int]) -> np.ndarray:
    """The initial latents for ``seed``: standard normal float32 from numpy's default generator (PCG64)."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model_spec(manifest: Mapping[str, Any], component: str) -> ModelSpec:
    try:
        comp = manifest["components"][component]
        sig = comp["signature"]
        return ModelSpec(file=comp["file"], sha256=comp["sha256"], signature=sig["name"],
                         inputs=tuple(TensorSpec.from_dict(t) for t in sig["inputs"]),
                         outputs=tuple(TensorSpec.from_dict(t) for t in sig["outputs"]))
    except (KeyError, TypeError) as e:
        raise RequestError(f"manifest.json: components.{component}: missing {e}") from None


def _tensor(spec: ModelSpec, name: str, component: str) -> TensorSpec:
    t = spec.input(name)
    if t is None:
        raise RequestError(f"manifest.json: components.{component} has no input {name!r}")
    return t


def _image_size(size: int | Sequence[int] | None, latent: TensorSpec, image: TensorSpec) -> tuple[int, int]:
    """(height, width) of the request; must be a multiple of 64 and what the models were built for."""
    built = (int(image.shape[2]), int(image.shape[3]))
    if size is None:
        return built
    try:
        hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise RequestError(f"size {size!r}: expected pixels as an int or (height, width)") from None
    label = f"{hw[0]}x{hw[1]}" if len(hw) == 2 and hw[0] != hw[1] else str(hw[0])
    if len(hw) != 2 or any(s <= 0 or s % 64 for s in hw):
        raise RequestError(f"size {label}: must be a positive multiple of 64")
    if hw != built:
        raise RequestError(f"size {label} does not match the built models (latents {latent.shape[2]}x{latent.shape[3]}"
                           f" -> image {built[0]}x{built[1]}); rebuild with --image-size {hw[0]}")
    return hw  # type: ignore[return-value]


def _block_spec(entry: Mapping[str, Any], build_dir: Path) -> tuple[BlockModelSpec, Path]:
    """A block-model entry (as host.build.blocks lists them: file relative to ``build_dir`` or absolute)
    -> spec + source path. The run folder gets it as ``models/blocks/<name>.tflite``.

    Missing ``signature`` / ``inputs`` / ``outputs`` are read from the .tflite itself; ``sha256`` is computed.
    """
    name, file = entry.get("name"), entry.get("file")
    if not name or not file:
        raise RequestError(f"profiling.block_models: each entry needs 'name' and 'file' (got {dict(entry)})")
    src = (build_dir / file).resolve()
    if not src.is_file():
        raise RequestError(f"profiling.block_models[{name}]: {src}: file not found")
    rel = f"{BLOCKS_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', str(name))}.tflite"  # block files may share a basename
    sig, ins, outs = entry.get("signature"), entry.get("inputs"), entry.get("outputs")
    if sig is None or ins is None or outs is None:
        from host.runtime import LiteRtModel

        m = LiteRtModel(str(src), threads=1)
        sig = sig or m.signature
        ins = ins or [{"name": k, "shape": list(s), "dtype": d} for k, (s, d) in m.inputs.items()]
        outs = outs or [{"name": k, "shape": list(s), "dtype": d} for k, (s, d) in m.outputs.items()]
        del m
    spec = BlockModelSpec(name=str(name), file=rel, signature=str(sig),
                          inputs=tuple(TensorSpec.from_dict(t) for t in ins),
                          outputs=tuple(TensorSpec.from_dict(t) for t in outs),
                          sha256=entry.get("sha256") or file_sha256(src))
    return spec, src


def _link(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest`` (replacing it); copy where links are impossible (other filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def prepare_run(
    run_dir: str | os.PathLike,
    manifest: Mapping[str, Any],
    build_dir: str | os.PathLike,
    *,
    prompt: str,
    negative_prompt: str = "",
    seed: int = 0,
    steps: int = 20,
    scheduler: str = "dpmpp_2m",
    karras: bool = False,
    guidance: float = 7.5,
    size: int | Sequence[int] | None = None,
    runtime: Mapping[str, Any] | None = None,
    profiling: Mapping[str, Any] | None = None,
    tokenizer: Tokenizer | None = None,
    run_id: str | None = None,
) -> RunRequest:
    """Write a complete run folder for the build in ``build_dir`` and return its request.

    Writes ``models/`` (hard links to the build's .tflite files, copies as a fallback), ``noise.bin``
    and, last, ``request.json``; stale outputs of an earlier run in ``run_dir`` are removed.
    ``size`` (pixels, int or (height, width)) defaults to the built size. ``runtime`` / ``profiling``
    override the defaults of :class:`RuntimeSpec` / :class:`ProfilingSpec`; ``profiling["block_models"]``
    entries name their .tflite by ``file`` relative to ``build_dir`` (or absolute). ``tokenizer``
    defaults to the build's (``manifest["tokenizer"]``).
    """
    if scheduler not in SCHEDULERS:
        raise RequestError(f"scheduler {scheduler!r}: unknown; choose one of {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise RequestError(f"steps {steps!r}: must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RequestError(f"seed {seed!r}: must be a non-negative integer")
    build_dir, run_dir = Path(build_dir), Path(run_dir)
    models = {c: _model_spec(manifest, c) for c in COMPONENTS}
    sources = {c: build_dir / models[c].file for c in COMPONENTS}
    for c, src in sources.items():
        if not src.is_file():
            raise RequestError(f"{src}: model file not found")

    ids = _tensor(models["text_encoder"], TEXT_ENCODER_INPUT, "text_encoder")
    sample = _tensor(models["unet"], "sample", "unet")
    t_emb_in = _tensor(models["unet"], "t_emb", "unet")
    height, width = _image_size(size, sample, models["vae_decoder"].outputs[0])

    if tokenizer is None:
        tok_info = manifest.get("tokenizer") or {}
        tokenizer = get_tokenizer(tok_info.get("dir"), vocab_size=int(manifest["config"]["text_encoder"]["vocab_size"]),
                                  max_length=int(ids.shape[1]))
    tokens = (tuple(tokenizer.encode(negative_prompt)), tuple(tokenizer.encode(prompt)))

    try:
        table = make_table(scheduler, int(steps), karras=karras)
    except ValueError as e:
        raise RequestError(f"scheduler {scheduler!r}: {e}") from None
    t_emb = timestep_embedding(table.timestep, int(t_emb_in.shape[1]))

    noise_shape = (1, *sample.shape[1:])
    noise = make_noise(int(seed), noise_shape).astype("<f4", copy=False)
    noise_bytes = noise.tobytes()

    prof = {**ProfilingSpec().to_dict(), **(profiling or {})}
    blocks = [_block_spec(b, build_dir) for b in prof.get("block_models") or ()]
    prof["block_models"] = [b.to_dict() for b, _ in blocks]

    request_dict = RunRequest(
        run_id=run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}_{manifest.get('variant', {}).get('name', 'run')}",
        models_dir=MODELS_DIR,
        models=models,
        prompt=PromptSpec(text=prompt, negative=negative_prompt, tokenizer=tokenizer.kind, tokens=tokens),
        noise=NoiseSpec(file=NOISE_FILE, shape=noise_shape, dtype="float32", seed=int(seed),
                        sha256=sha256_bytes(noise_bytes), generator=NOISE_GENERATOR),
        scheduler=SchedulerSpec(table=table, t_emb=tuple(tuple(float(v) for v in row) for row in t_emb)),
        guidance_scale=float(guidance),
        vae_scaling_factor=float(manifest["config"]["vae"]["scaling_factor"]),
        image=ImageSpec(height=height, width=width),
        runtime=RuntimeSpec(),
    ).to_dict()
    request_dict["runtime"] = {**RuntimeSpec().to_dict(), **(runtime or {})}
    request_dict["profiling"] = prof
    request = RunRequest.from_dict(request_dict)  # schema + cross-field checks before anything is written

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (REQUEST_FILE, TRACE_FILE, IMAGE_PNG, IMAGE_F32, STATUS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    models_dir = run_dir / MODELS_DIR
    for c in COMPONENTS:
        _link(sources[c], models_dir / models[c].file)
    for spec, src in blocks:
        _link(src, models_dir / spec.file)
    (run_dir / NOISE_FILE).write_bytes(noise_bytes)
    write_json(run_dir / REQUEST_FILE, request.to_dict())
    return request
