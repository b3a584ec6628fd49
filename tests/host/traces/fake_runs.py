"""Synthetic run folders that follow docs/protocol.md, for the trace/report tests (no runner needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

UNET_BLOCKS = ("conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
               "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3", "conv_out")
# Relative block costs of a step (baseline); the optimized variant divides each by its speedup.
BLOCK_WEIGHTS = (0.01, 0.12, 0.08, 0.06, 0.02, 0.05, 0.03, 0.12, 0.2, 0.3, 0.01)
FAKE_OPS = (("CONV_2D", "down_blocks.0"), ("FULLY_CONNECTED", "down_blocks.0"), ("BATCH_MATMUL", "mid_block"),
            ("SOFTMAX", "mid_block"), ("CONV_2D", "up_blocks.3"))


def base_image(h: int = 16, w: int = 16) -> np.ndarray:
    """A smooth deterministic image in [-0.9, 0.9], float32 [1, 3, h, w]."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(x / 3.0), np.cos(y / 4.0), np.sin((x + y) / 5.0)]) * 0.9
    return img[None].astype(np.float32)


def make_run(root: Path, variant: str = "baseline", *, speed: float = 1.0, steps: int = 4, warmup: int = 1,
             repeats: int = 2, noise: float = 0.0, device: str = "host-cpu", per_block: bool = True,
             per_op: bool = True, truncated_tail: bool = False, status: str | None = "ok",
             models_dir: str | None = None, manifest: dict | None = None, image: np.ndarray | None = None,
             block_speedup: dict | None = None, run_id: str | None = None,
             block_reference: float | None = None) -> Path:
    """A run folder for ``variant``; durations are the baseline's divided by ``speed`` (and per block by
    ``block_speedup[block]``); the image is the base image plus ``noise`` (a constant offset).
    ``block_reference``: the whole UNet timed beside each chain of the per-block pass, at this multiple of
    a step. The per-block pass holds 500 MiB more than the generations."""
    run_id = run_id or f"20261121T233000Z_{variant}"
    d = Path(root) / run_id
    d.mkdir(parents=True, exist_ok=True)
    h = w = 16
    request = {
        "schema": "sdphone.run_request", "version": 1, "run_id": run_id,
        "models_dir": models_dir or "models",
        "models": {c: {"file": f"{c}.tflite", "signature": c, "sha256": "0" * 64, "inputs": [], "outputs": []}
                   for c in ("text_encoder", "unet", "vae_decoder")},
        "prompt": {"text": "a photo of an astronaut riding a horse", "negative": "", "tokenizer": "fallback",
                   "tokens": [[0] * 77, [1] * 77]},
        "noise": {"file": "noise.bin", "shape": [1, 4, 2, 2], "dtype": "float32", "seed": 42, "sha256": "0" * 64},
        "scheduler": {"name": "dpmpp_2m", "steps": steps},
        "guidance_scale": 7.5, "vae_scaling_factor": 0.18215, "image": {"height": h, "width": w},
        "runtime": {"accelerator": "cpu", "precision": "fp32", "threads": 2, "warmup": warmup, "repeats": repeats},
        "profiling": {"memory_interval_ms": 50, "per_op": per_op, "per_block": per_block, "block_models": []},
    }
    if manifest is not None:
        request["manifest"] = manifest
    (d / "request.json").write_text(json.dumps(request, indent=1))

    recs: list[dict] = [{"type": "meta", "t": 0.0, "schema": "sdphone.trace", "version": 1, "run_id": run_id,
                         "runner": "python-host", "runner_version": "0.1.0",
                         "device": {"model": device, "os": "linux", "soc": "x86_64"},
                         "runtime": {"accelerator": "cpu", "precision": "fp32", "threads": 2, "delegate": "xnnpack"}}]
    t = 0.01
    rss = 200 * 2**20

    def span(name, cat, dur, component=None, step=None, repeat=0, wu=False, args=None):
        nonlocal t
        rec = {"type": "span", "t": round(t + dur, 6), "name": name, "cat": cat, "start": round(t, 6),
               "dur": round(dur, 6), "component": component, "step": step, "repeat": repeat, "warmup": wu}
        if args:
            rec["args"] = args
        return rec

    def mem(extra=0):
        recs.append({"type": "memory", "t": round(t, 6), "rss_bytes": int(rss + extra), "source": "proc_status",
                     "peak_bytes": int(rss + extra + 2**20)})

    for phase in ("cold", "warm"):
        for c, dur in (("text_encoder", 0.05), ("unet", 0.3), ("vae_decoder", 0.1)):
            recs.append(span("load", "load", dur / (1 if phase == "cold" else 5), component=c, args={"phase": phase}))
            t += dur / (1 if phase == "cold" else 5)
            rss += 20 * 2**20 if phase == "cold" else 0
            mem()
    step_s = 0.2 / speed
    for rep_i, wu in [(i, True) for i in range(warmup)] + [(i, False) for i in range(repeats)]:
        g0 = t
        recs.append(span("text_encoder", "component", 0.02 / speed, "text_encoder", None, rep_i, wu))
        t += 0.02 / speed
        for i in range(steps):
            jitter = 1.0 + 0.01 * ((i * 7 + rep_i) % 3)
            recs.append(span("unet_step", "step", step_s * jitter, "unet", i, rep_i, wu))
            t += step_s * jitter
            mem(extra=(i % 2) * 10 * 2**20)
        recs.append(span("vae_decoder", "component", 0.1 / speed, "vae_decoder", None, rep_i, wu))
        t += 0.1 / speed
        mem(extra=30 * 2**20)
        recs.append({"type": "span", "t": round(t, 6), "name": "generation", "cat": "total", "start": round(g0, 6),
                     "dur": round(t - g0, 6), "component": None, "step": None, "repeat": rep_i, "warmup": wu})
        recs.append({"type": "event", "t": round(t, 6), "name": "progress", "message": f"repeat {rep_i} done"})
    if per_block:
        for rep_i in range(repeats):
            if block_reference is not None:
                recs.append(span("unet", "block", step_s * block_reference, "unet", 0, rep_i, False,
                                 {"reference": True}))
                t += step_s * block_reference
            for blk, wgt in zip(UNET_BLOCKS, BLOCK_WEIGHTS):
                dur = 0.2 * wgt / speed / (block_speedup or {}).get(blk, 1.0)
                recs.append(span(blk, "block", dur, "unet", 0, rep_i, False))
                t += dur
            mem(extra=500 * 2**20)
    if per_op:
        for i in range(2):
            for j, (op, blk) in enumerate(FAKE_OPS):
                dur = 0.001 * (j + 1) / speed
                recs.append(span(op, "op", dur, "unet", i, 0, False, {"op_type": op, "index": j * 10, "block": blk}))
                t += dur
    with open(d / "trace.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        if truncated_tail:
            f.write('{"type": "span", "t": 9.9, "name": "unet_st')
    img = base_image(h, w) if image is None else image
    img = np.clip(img + noise, -1, 1).astype("<f4") if noise else img.astype("<f4")
    img.tofile(d / "image.f32")
    from PIL import Image

    png = np.round(np.clip((img[0].transpose(1, 2, 0) + 1) / 2, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(png).save(d / "image.png")
    if status:
        (d / "status.json").write_text(json.dumps({"state": status, "run_id": run_id, "message": "done",
                                                   "finished_t": t, "images": ["image.png"]}))
    return d
