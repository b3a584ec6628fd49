"""The protocol's generation algorithm (docs/protocol.md), traced, and the per-block profiling pass."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from host.protocol.constants import COMPONENTS, REFERENCE_BLOCK
from host.protocol.messages import BlockModelSpec, RunRequest
from host.runner.loading import Inputs, RunnerError, output_name
from host.runner.tracing import Tracer
from host.runtime import LiteRtModel, trim_heap


@dataclass(frozen=True)
class Models:
    """The three components and the names of their outputs. A component is either held (loaded for the whole
    run: residency "all") or None, and then ``loader`` opens it for its stage only (residency "phase")."""

    text_encoder: LiteRtModel | None
    unet: LiteRtModel | None
    vae_decoder: LiteRtModel | None
    outputs: dict[str, str]  # component -> output tensor name
    loader: Callable[[str], LiteRtModel] | None = None
    files: dict[str, str] = field(default_factory=dict)  # component -> model file (stage load spans)

    @classmethod
    def of(cls, loaded: dict[str, LiteRtModel], request: RunRequest) -> "Models":
        return cls(text_encoder=loaded["text_encoder"], unet=loaded["unet"], vae_decoder=loaded["vae_decoder"],
                   outputs={c: output_name(request.models[c]) for c in loaded})

    @classmethod
    def per_stage(cls, loader: Callable[[str], LiteRtModel], request: RunRequest) -> "Models":
        return cls(text_encoder=None, unet=None, vae_decoder=None, loader=loader,
                   outputs={c: output_name(request.models[c]) for c in COMPONENTS},
                   files={c: request.models[c].file for c in COMPONENTS})

    def run_stage(self, component: str, tracer: Tracer, fn: Callable[[LiteRtModel], Any], *, repeat: int,
                  warmup: bool) -> Any:
        """``fn(model)`` with the component: the held one, or one loaded now (a ``load`` span, phase "stage")
        that is released when ``fn`` returns (this frame holds the only reference)."""
        model = getattr(self, component)
        if model is None:
            if self.loader is None:
                raise RunnerError(f"{component}: not loaded and no loader to open it")
            with tracer.span("load", "load", component=component, repeat=repeat, warmup=warmup,
                             args={"phase": "stage", "file": self.files.get(component)}):
                model = self.loader(component)
            try:
                return fn(model)
            finally:
                del model
                trim_heap()
        return fn(model)


@dataclass
class Generation:
    """One generation's results; ``unet_io`` holds (sample fed, raw noise_pred) per step when recorded."""

    context: np.ndarray   # [2, L, D]
    latents: np.ndarray   # final x, float32 [1, C, h, w] (before 1 / vae_scaling_factor)
    image: np.ndarray     # decoder output, float32 [1, 3, H, W] in about [-1, 1]
    unet_io: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def unet_feed(m: np.ndarray, t_emb_row: np.ndarray, context: np.ndarray) -> dict[str, np.ndarray]:
    """The UNet inputs of one step: batch 0 unconditional, batch 1 conditional (same latents)."""
    return {"sample": np.concatenate([m, m]), "t_emb": np.stack([t_emb_row, t_emb_row]), "context": context}


def generate(models: Models, inputs: Inputs, steps: int, tracer: Tracer, *, repeat: int, warmup: bool,
             record: bool = False) -> Generation:
    """One full generation, exactly the protocol's loop, in float32; spans for every stage."""
    k = dict(repeat=repeat, warmup=warmup)
    c = inputs.coeffs
    io: list[tuple[np.ndarray, np.ndarray]] = []

    def encode(text_encoder) -> np.ndarray:
        with tracer.span("text_encoder", "component", component="text_encoder", **k):
            return text_encoder.run(input_ids=inputs.ids)[models.outputs["text_encoder"]]

    def denoise(unet) -> np.ndarray:
        x = inputs.noise * inputs.init_scale
        d_prev = np.zeros_like(x)
        for i in range(steps):
            with tracer.span("unet_step", "step", component="unet", step=i, **k):
                m = x * c["in_scale"][i]
                feed = unet_feed(m, inputs.t_emb[i], ctx)
                e = unet.run(**feed)[models.outputs["unet"]]
                eps = e[0:1] + inputs.guidance * (e[1:2] - e[0:1])
                d = x * c["d_x"][i] + eps * c["d_eps"][i]
                x = x * c["x_x"][i] + d * c["x_d"][i] + d_prev * c["x_dprev"][i]
                d_prev = d
            if record:
                io.append((feed["sample"], e))
        return x

    def decode(vae_decoder) -> np.ndarray:
        with tracer.span("vae_decoder", "component", component="vae_decoder", **k):
            return vae_decoder.run(latents=x / inputs.vae_scale)[models.outputs["vae_decoder"]]

    with tracer.span("generation", "total", **k):
        ctx = models.run_stage("text_encoder", tracer, encode, **k)
        x = models.run_stage("unet", tracer, denoise, **k)
        img = models.run_stage("vae_decoder", tracer, decode, **k)
    return Generation(context=ctx, latents=x, image=img, unet_io=io)


def to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """``round(clip((img + 1) / 2, 0, 1) * 255)`` as HWC uint8 (image is [1, 3, H, W])."""
    scaled = np.clip((image[0].astype(np.float32) + 1.0) / 2.0, 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8).transpose(1, 2, 0)


def run_blocks(blocks: Sequence[tuple[BlockModelSpec, LiteRtModel]], feed: dict[str, np.ndarray], tracer: Tracer,
               *, step: int, repeat: int, warmup: bool = False) -> dict[str, np.ndarray]:
    """Run the block chain once: each block takes its inputs by name from everything produced so far."""
    pool = dict(feed)
    for spec, model in blocks:
        missing = [t.name for t in spec.inputs if t.name not in pool]
        if missing:
            raise RunnerError(f"block {spec.name}: input {missing[0]!r} is not produced by the UNet inputs or an earlier block")
        args = {t.name: pool[t.name] for t in spec.inputs}
        with tracer.span(spec.name, "block", component="unet", step=step, repeat=repeat, warmup=warmup):
            out = model.run(**args)
        pool.update(out)
    return pool


def profile_blocks(blocks: Sequence[tuple[BlockModelSpec, LiteRtModel]], gen: Generation, inputs: Inputs,
                   unet_output: str, tracer: Tracer, *, repeat: int, max_steps: int = 0,
                   reference: LiteRtModel | None = None) -> float | None:
    """Time every block at every step, fed the same UNet inputs as the recorded generation.

    With a ``reference`` (the whole UNet), it runs on the same feed beside each step's chain, one block span
    named REFERENCE_BLOCK: before the chain at even steps, after it at odd ones, so that a drift of the
    machine's speed over the pass weighs on both sides alike. One warm-up round on step 0's inputs comes
    first (its spans marked warmup): on this host the first chain after loading the pass's models ran 10-19%
    slower than the next, each block's first invocation on zeros notwithstanding.
    Returns the largest |difference| between the chain's ``unet_output`` and the UNet's, or None when
    the chain does not produce a tensor of that name. ``max_steps`` > 0 limits the pass to the first steps.
    """
    worst: float | None = None

    def feed_of(i: int) -> dict[str, np.ndarray]:
        return {"sample": gen.unet_io[i][0], "t_emb": np.stack([inputs.t_emb[i]] * 2), "context": gen.context}

    def whole(feed: dict[str, np.ndarray], i: int, warmup: bool = False) -> None:
        if reference is not None:
            with tracer.span(REFERENCE_BLOCK, "block", component="unet", step=i, repeat=repeat, warmup=warmup,
                             args={"reference": True}):
                reference.run(**feed)

    if gen.unet_io:
        whole(feed_of(0), 0, warmup=True)
        run_blocks(blocks, feed_of(0), tracer, step=0, repeat=repeat, warmup=True)
    for i, (_, e) in enumerate(gen.unet_io[:max_steps or None]):
        feed = feed_of(i)
        if i % 2 == 0:
            whole(feed, i)
        pool = run_blocks(blocks, feed, tracer, step=i, repeat=repeat)
        if i % 2 == 1:
            whole(feed, i)
        if unet_output in pool and pool[unet_output].shape == e.shape:
            diff = float(np.max(np.abs(pool[unet_output] - e)))
            worst = diff if worst is None else max(worst, diff)
    return worst
