"""Generates the golden protocol files in ``host/protocol/golden/`` (``python -m host.protocol.make_golden``).

They describe one realistic full-size run (SD 1.x at 512x512, 20 DPM++ 2M steps, on an Android phone,
with per-op and per-block profiling) and are what the Kotlin / Swift contract tests parse. Everything is
deterministic: the scheduler table and ``t_emb`` rows are the real ones (host.schedulers), the noise
sha256 is that of the real seed-42 noise, the tokens come from the fallback tokenizer; model sha256s
and all timings / memory numbers are made up (stable placeholders).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from host.protocol.constants import MODELS_DIR, NOISE_FILE, NOISE_GENERATOR, REFERENCE_BLOCK, TRACE_FILE
from host.protocol.jsonio import write_json
from host.protocol.messages import (
    BlockModelSpec, EventRecord, ImageSpec, MemoryRecord, MetaRecord, ModelSpec, NoiseSpec, ProfilingSpec,
    PromptSpec, RunRequest, RuntimeSpec, SchedulerSpec, SpanRecord, Status, TensorSpec,
)
from host.schedulers import make_table, timestep_embedding
from models.tokenizer import FallbackTokenizer

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
RUN_ID = "20261121T233000Z_optimized"
SEED, STEPS, SIZE, LATENT = 42, 20, 512, 64
PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
ERROR_MESSAGE = "unet step 2: java.lang.OutOfMemoryError: Failed to allocate 268435456 bytes"


def _placeholder_sha(file: str) -> str:
    return hashlib.sha256(f"golden placeholder: {file}".encode()).hexdigest()


def _t(name: str, shape: list[int], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name=name, shape=tuple(shape), dtype=dtype)


def _model(component: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelSpec:
    file = f"{component}.tflite"
    return ModelSpec(file=file, sha256=_placeholder_sha(file), signature=component, inputs=tuple(inputs),
                     outputs=tuple(outputs))


def _blocks() -> tuple[BlockModelSpec, ...]:
    """The real SD 1.x UNet split of the profile build (host/build/blocks.py), shapes traced on torch's
    meta device (no weights, no compute): block names and tensor names are exactly what runners get."""
    import torch

    from models.config import sd14
    from models.unet import UNet

    b, h = 2, LATENT
    with torch.device("meta"):
        unet = UNet(sd14().unet)
        state = {"sample": torch.empty(b, 4, h, h), "t_emb": torch.empty(b, 320), "context": torch.empty(b, 77, 768)}
        chain = []
        for stage in unet.stages():
            ins = [_t(k, list(state[k].shape)) for k in stage.inputs]
            stage(state)
            chain.append((stage.name, ins, [_t(k, list(state[k].shape)) for k in stage.outputs]))
    return tuple(BlockModelSpec(name=n, file=f"blocks/{n}.tflite", signature=f"unet_{n.replace('.', '_')}",
                                inputs=tuple(i), outputs=tuple(o), sha256=_placeholder_sha(f"blocks/{n}.tflite"))
                 for n, i, o in chain)


def golden_request() -> RunRequest:
    table = make_table("dpmpp_2m", STEPS)
    t_emb = timestep_embedding(table.timestep, 320)
    tok = FallbackTokenizer(49408)
    noise = np.random.default_rng(SEED).standard_normal((1, 4, LATENT, LATENT), dtype=np.float32)
    return RunRequest(
        run_id=RUN_ID,
        models_dir=MODELS_DIR,
        models={
            "text_encoder": _model("text_encoder", [_t("input_ids", [2, 77], "int32")], [_t("embeddings", [2, 77, 768])]),
            "unet": _model("unet", [_t("sample", [2, 4, LATENT, LATENT]), _t("t_emb", [2, 320]), _t("context", [2, 77, 768])],
                           [_t("noise_pred", [2, 4, LATENT, LATENT])]),
            "vae_decoder": _model("vae_decoder", [_t("latents", [1, 4, LATENT, LATENT])], [_t("image", [1, 3, SIZE, SIZE])]),
        },
        prompt=PromptSpec(text=PROMPT, negative=NEGATIVE, tokenizer=tok.kind,
                          tokens=(tuple(tok.encode(NEGATIVE)), tuple(tok.encode(PROMPT)))),
        noise=NoiseSpec(file=NOISE_FILE, shape=(1, 4, LATENT, LATENT), dtype="float32", seed=SEED,
                        sha256=hashlib.sha256(noise.astype("<f4").tobytes()).hexdigest(), generator=NOISE_GENERATOR),
        scheduler=SchedulerSpec(table=table, t_emb=tuple(tuple(float(v) for v in row) for row in t_emb)),
        guidance_scale=7.5,
        vae_scaling_factor=0.18215,
        image=ImageSpec(height=SIZE, width=SIZE),
        runtime=RuntimeSpec(accelerator="cpu", precision="fp32", threads=4, warmup=1, repeats=1),
        profiling=ProfilingSpec(memory_interval_ms=50, per_op=True, per_block=True, block_models=_blocks(),
                                block_steps=2, block_reference=True),
    )


class _Timeline:
    """Builds a plausible trace: spans laid end to end, memory sampled every 50 ms, all sorted by ``t``."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.rss = 182 << 20
        self.records: list[Any] = []
        self.memory: list[tuple[float, int]] = []  # (time from which, rss)

    def jitter(self, seconds: float) -> float:
        return round(seconds * float(self.rng.uniform(0.97, 1.03)), 6)

    def span(self, name: str, cat: str, dur: float, *, gap: float = 0.0004, rss_after: int | None = None,
             **kw: Any) -> SpanRecord:
        start = round(self.now + gap, 6)
        dur = self.jitter(dur)
        self.now = round(start + dur, 6)
        rec = SpanRecord(t=self.now, name=name, cat=cat, start=start, dur=dur, **kw)
        self.records.append(rec)
        if rss_after is not None:
            self.rss = rss_after
            self.memory.append((start + dur * 0.6, rss_after))
        return rec

    def event(self, name: str, message: str, args: dict[str, Any] | None = None) -> None:
        self.now = round(self.now + 0.0002, 6)
        self.records.append(EventRecord(t=self.now, name=name, message=message, args=args))

    def finish(self, interval: float = 0.05) -> list[Any]:
        """Insert memory samples every ``interval`` s and sort everything by ``t``."""
        changes = sorted(self.memory)
        rss, peak, k, t = 182 << 20, 182 << 20, 0, 0.002
        samples = []
        while t < self.now + interval:
            while k < len(changes) and changes[k][0] <= t:
                rss = changes[k][1]
                k += 1
            noisy = rss + int(self.rng.integers(0, 64)) * 4096
            peak = max(peak, noisy)
            samples.append(MemoryRecord(t=round(t, 6), rss_bytes=noisy, source="dumpsys_meminfo", peak_bytes=peak))
            t += interval
        return sorted(self.records + samples, key=lambda r: r.t)


def _meta() -> MetaRecord:
    return MetaRecord(t=0.0011, run_id=RUN_ID, runner="android", runner_version="1.0.0 (litert 1.4.0)",
                      device={"model": "Pixel 8 Pro", "os": "Android 14 (API 34)", "soc": "Google Tensor G3",
                              "ram_bytes": 12 << 30, "abi": "arm64-v8a"},
                      runtime={"accelerator": "cpu", "precision": "fp32", "threads": 4, "delegate": "xnnpack"})


def _loads(tl: _Timeline) -> None:
    mib = 1 << 20
    for comp, cold, warm, size in (("text_encoder", 0.41, 0.17, 470), ("unet", 4.8, 1.9, 3280), ("vae_decoder", 0.36, 0.12, 190)):
        tl.span("load", "load", cold, component=comp, args={"phase": "cold", "file": f"{comp}.tflite"},
                rss_after=tl.rss + size * mib)
        tl.span("load", "load", warm, component=comp, args={"phase": "warm", "file": f"{comp}.tflite"},
                rss_after=tl.rss)


OPS = (("CONV_2D", 3, 0.0051), ("ADD", 4, 0.0006), ("MEAN", 5, 0.0009), ("FULLY_CONNECTED", 41, 0.0032),
       ("BATCH_MATMUL", 57, 0.0104), ("SOFTMAX", 58, 0.0061), ("BATCH_MATMUL", 59, 0.0098), ("TRANSPOSE", 60, 0.0023),
       ("RESIZE_NEAREST_NEIGHBOR", 611, 0.0014), ("CONCATENATION", 612, 0.0011))


def _generation(tl: _Timeline, repeat: int, warmup: bool, total: int, n: int, per_op: bool) -> None:
    k = dict(repeat=repeat, warmup=warmup)
    g0 = tl.now + 0.0004
    tl.span("text_encoder", "component", 0.046, component="text_encoder", **k)
    for i in range(STEPS):
        step_start = tl.now
        tl.span("unet_step", "step", 1.14 if warmup else 1.08, component="unet", step=i, **k)
        if per_op and i == 0:
            at = step_start + 0.0008
            for op, index, dur in OPS:
                d = tl.jitter(dur)
                tl.records.append(SpanRecord(t=round(at + d, 6), name=op, cat="op", start=round(at, 6), dur=d,
                                             component="unet", step=i, args={"op_type": op, "index": index}, **k))
                at += d + 0.0003
    tl.span("vae_decoder", "component", 2.31, component="vae_decoder", rss_after=tl.rss + (310 << 20), **k)
    tl.memory.append((tl.now + 0.05, tl.rss - (310 << 20)))
    tl.rss -= 310 << 20
    end = tl.now
    tl.records.append(SpanRecord(t=end, name="generation", cat="total", start=round(g0, 6), dur=round(end - g0, 6), **k))
    tl.event("progress", f"generation {n}/{total} done", {"repeat": repeat, "warmup": warmup})


def golden_trace(request: RunRequest) -> list[Any]:
    tl = _Timeline()
    _loads(tl)
    rt = request.runtime
    total = rt.warmup + rt.repeats
    for n in range(total):
        warm = n < rt.warmup
        _generation(tl, n if warm else n - rt.warmup, warm, total, n + 1, per_op=not warm)
    tl.event("progress", "image saved", {"file": "image.png"})
    blocks = request.profiling.block_models
    for b in blocks:
        tl.span("load", "load", 0.05 + 0.01 * len(b.inputs), component=b.name, args={"phase": "cold", "file": b.file},
                rss_after=tl.rss + (140 << 20))
    prof = request.profiling
    if prof.block_reference:
        tl.span("load", "load", 0.6, component="unet", args={"phase": "reference", "file": "unet.tflite"},
                rss_after=tl.rss + (1600 << 20))
    share = {"conv_in": 0.01, "conv_out": 0.01, "mid_block": 0.05, "down_blocks.3": 0.02, "up_blocks.0": 0.03}

    def whole(i: int, warm: bool = False) -> None:
        if prof.block_reference:
            tl.span(REFERENCE_BLOCK, "block", 1.12, component="unet", step=i, repeat=rt.repeats - 1, warmup=warm,
                    args={"reference": True})

    def chain(i: int, warm: bool = False) -> None:
        for b in blocks:
            tl.span(b.name, "block", (1.25 if warm else 1.08) * share.get(b.name, 0.145), component="unet", step=i,
                    repeat=rt.repeats - 1, warmup=warm)

    whole(0, warm=True)
    chain(0, warm=True)
    for i in range(prof.block_steps or STEPS):
        if i % 2 == 0:
            whole(i)
        chain(i)
        if i % 2 == 1:
            whole(i)
    tl.event("per_block_check", "block chain vs unet: max |diff| 3.81e-06",
             {"output": "noise_pred", "max_abs_diff": 3.814697265625e-06})
    return [_meta()] + tl.finish(request.profiling.memory_interval_ms / 1000.0)


def golden_error_trace() -> list[Any]:
    """A run that failed at step 2 (out of memory reported by the runner), then stopped cleanly."""
    tl = _Timeline(seed=11)
    _loads(tl)
    tl.span("text_encoder", "component", 0.046, component="text_encoder", repeat=0, warmup=True)
    for i in range(2):
        tl.span("unet_step", "step", 1.14, component="unet", step=i, repeat=0, warmup=True)
    tl.event("oom", "onTrimMemory(TRIM_MEMORY_RUNNING_CRITICAL)", {"level": 15})
    tl.event("error", ERROR_MESSAGE,
             {"error_type": "OutOfMemoryError", "step": 2})
    return [_meta()] + tl.finish()


def write_golden(out: Path = GOLDEN_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    request = golden_request()
    write_json(out / "request.json", request.to_dict())
    trace = golden_trace(request)
    _write_lines(out / TRACE_FILE, trace)
    write_json(out / "status.json", Status(state="ok", run_id=RUN_ID, message="done", finished_t=round(trace[-1].t + 0.02, 6),
                                           images=("image.png",)).to_dict())
    err = golden_error_trace()
    _write_lines(out / "trace_error.jsonl", err)
    write_json(out / "status_error.json", Status(state="error", run_id=RUN_ID, message=ERROR_MESSAGE,
                                                 finished_t=round(err[-1].t + 0.01, 6)).to_dict())
    # A runner killed mid-write: complete lines, then half a line, and a status still "running".
    lines = (out / "trace_error.jsonl").read_text().splitlines(keepends=True)
    cut = [ln for ln in lines if '"type":"event"' not in ln]
    (out / "trace_truncated.jsonl").write_text("".join(cut[:-1]) + cut[-1][: len(cut[-1]) // 2])
    write_json(out / "status_running.json", Status(state="running", run_id=RUN_ID).to_dict())


def _write_lines(path: Path, records: list[Any]) -> None:
    path.write_text("".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records))


if __name__ == "__main__":
    write_golden()
    print(f"wrote {GOLDEN_DIR}")
