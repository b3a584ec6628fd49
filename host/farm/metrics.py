"""What one farm attempt measured, as long-format metric rows (one value per row).

Per generation (``repeat`` = the runner's repeat index): ``end_to_end_s``, ``text_encoder_s``,
``unet_step_s`` (median step of that generation), ``unet_total_s``, ``vae_decoder_s``.
Per run (``repeat`` null): ``load_s`` (cold loads), ``peak_rss_bytes`` (to the end of the generations), ``psnr_db`` (image against the host
reference from the same noise; inf when identical), and ``layer_s`` per UNet block (``layer`` = block
name; the median over the timed steps of the per-block profile pass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metric:
    unit: str
    better: str          # "lower" or "higher"
    kind: str            # "rel": relative thresholds; "db": absolute dB thresholds
    label: str
    per_layer: bool = False


METRICS: dict[str, Metric] = {
    "end_to_end_s": Metric("s", "lower", "rel", "end to end"),
    "text_encoder_s": Metric("s", "lower", "rel", "text encoder"),
    "unet_step_s": Metric("s", "lower", "rel", "UNet step (median)"),
    "unet_total_s": Metric("s", "lower", "rel", "UNet, all steps"),
    "vae_decoder_s": Metric("s", "lower", "rel", "VAE decoder"),
    "load_s": Metric("s", "lower", "rel", "cold load"),
    "peak_rss_bytes": Metric("B", "lower", "rel", "peak memory"),
    "psnr_db": Metric("dB", "higher", "db", "image vs host reference"),
    "layer_s": Metric("s", "lower", "rel", "UNet block", per_layer=True),
}
#: the metrics whose verdict decides the night (layers only with thresholds.fail_on_layers)
HEADLINE = tuple(m for m, spec in METRICS.items() if not spec.per_layer)


def run_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Metric rows ({metric, layer, repeat, value, unit}) of one protocol run folder."""
    from host.traces.compare import _cold_load_seconds, generation_peak, layer_latency
    from host.traces.tables import load_run

    run = load_run(run_dir)
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: Any, repeat: int | None = None, layer: str | None = None) -> None:
        if value is None:
            return
        v = float(value)
        if math.isnan(v):
            return
        rows.append({"metric": metric, "layer": layer, "repeat": repeat, "value": v, "unit": METRICS[metric].unit})

    spans = run.spans[~run.spans["warmup"].astype(bool)]
    for rep, g in spans.groupby("repeat", sort=True):
        rep = int(rep)
        steps = g[(g["name"] == "unet_step") & (g["cat"] == "step")]["dur_s"]
        if len(steps):
            add("unet_step_s", float(np.median(steps)), rep)
            add("unet_total_s", float(steps.sum()), rep)
        for name, metric in (("text_encoder", "text_encoder_s"), ("vae_decoder", "vae_decoder_s")):
            d = g[(g["name"] == name) & (g["cat"] != "load")]["dur_s"]
            if len(d):
                add(metric, float(d.sum()), rep)
        total = g[g["cat"] == "total"]["dur_s"]
        if len(total):
            add("end_to_end_s", float(total.sum()), rep)
    load = _cold_load_seconds(run)
    add("load_s", None if math.isnan(load) else load)
    peak = generation_peak(run)
    if peak is not None:
        add("peak_rss_bytes", float(peak))
    layers = layer_latency(run, "block")
    for _, r in layers[layers["component"] == "unet"].iterrows():
        add("layer_s", r["median_s"], layer=str(r["block"]))
    return rows


def fidelity(run_dir: str | Path, reference: str | Path) -> list[dict[str, Any]]:
    """The ``psnr_db`` row of a run's image against the reference run's (image.f32 when both have one);
    raises OSError / ValueError when either image is missing or unreadable."""
    from host.traces.compare import load_image, psnr

    run_dir, reference = Path(run_dir), Path(reference)
    prefer = "f32" if (run_dir / "image.f32").is_file() and (reference / "image.f32").is_file() else "png"
    a, _ = load_image(run_dir, prefer)
    b, _ = load_image(reference, prefer)
    return [{"metric": "psnr_db", "layer": None, "repeat": None, "value": psnr(a, b), "unit": "dB"}]
