"""Builds one variant: for each component, convert to .tflite, verify, and record it in a manifest.

Components are built one at a time and their memory is released between them, so the full-size
model fits this machine. A cached component (same key) is reused without importing torch.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from host.build import cache, quantize
from host.build.weights import WeightsSource
from models.config import COMPONENTS, ConfigError, ModelConfig, Variant, component_opts, get_variant

SCHEMA_VERSION = 1
GATE_TIMESTEP = 500.0
GATE_SEED = 1234

Log = Callable[[str], None]


@dataclass
class BuildOptions:
    root: Path
    verify: bool = True
    threads: int = 2
    components: tuple[str, ...] = COMPONENTS
    profile_blocks: bool = False    # also split the UNet into per-block models (host/build/blocks.py)
    progress: bool = False          # a terminal progress bar over the components


def component_key(component: str, cfg: ModelConfig, variant: Variant, weights: WeightsSource) -> str:
    part = {"text_encoder": cfg.text_encoder, "unet": cfg.unet, "vae_decoder": cfg.vae}[component]
    # The quantizer fix decides quantized bytes (and only those: fp32 keys stay as they were).
    fix = {} if variant.quantization == "fp32" else {"quantize_fix": quantize.source_hash()}
    # Winograd's code is in the graph only where a Winograd tile is on (so editing it leaves direct builds cached).
    opts = component_opts(component, variant.opts)
    if opts.get("winograd_unet") or opts.get("winograd_decoder"):
        fix["winograd"] = cache.scoped_hash("models/winograd.py")
    return cache.digest({**fix,
        "component": component,
        "config": part,
        "geometry": {"image_size": cfg.image_size, "cfg_batch": cfg.cfg_batch},
        "opts": opts,
        "quantization": variant.quantization,
        "weights": weights.identity,
        "code": cache.code_hash(),
        "tools": cache.tool_versions(),
        "schema": SCHEMA_VERSION,
    })


def _label(variant: Variant) -> str:
    from host.build.cli import variant_label

    return variant_label(variant.name, variant.quantization)


def check_buildable(variant: Variant) -> None:
    """Combinations that convert but fail the gates, refused before any work is done."""
    if variant.quantization == "int8" and (variant.opts.winograd_unet or variant.opts.winograd_decoder):
        # Dynamic-range int8 quantizes activations with one scale per tensor; Winograd-domain
        # activations span very different magnitudes per tile position: the tiny UNet's .tflite was
        # off by a relative error of 1.4 (0.04 without Winograd).
        raise ConfigError(f"variant {variant.name!r}: Winograd cannot be combined with int8 dynamic-range "
                          "quantization (set --winograd-unet 0 --winograd-decoder 0, or use fp16; "
                          "+flash-int8 is the optimized variant without Winograd)")


def build_variant(variant: Variant, weights: WeightsSource, opts: BuildOptions, log: Log = print) -> tuple[dict, Path, bool]:
    """Returns (manifest, build directory, whether everything came from the cache)."""
    check_buildable(variant)
    store = cache.Store(opts.root)
    cfg = weights.config
    keys = {c: component_key(c, cfg, variant, weights) for c in opts.components}
    build_key = cache.digest({"components": keys, "variant": variant.name, "blocks": opts.profile_blocks})
    manifest = store.load_build(build_key)
    # A build made with --no-verify never ran the diffusers gate; a verifying build takes it from the cache only
    # once that gate has run on it (below, without converting again).
    if manifest is not None and not (opts.verify and _unverified(manifest["components"].values())):
        store.link_latest(cfg.name, _label(variant), build_key)
        return manifest, store.build_dir(build_key), True

    from tqdm import tqdm

    comps = {}
    with tqdm(opts.components, desc=f"build {variant.name}", unit="component", disable=not opts.progress,
              file=sys.stdout, leave=False) as bar:
        for c in bar:
            bar.set_postfix_str(c)
            meta = store.load_component(keys[c])
            if meta is None:
                log(f"[{variant.name}] {c}: converting ...")
                meta = _build_component(c, cfg, variant, weights, keys[c], store, opts, log)
            elif opts.verify and _unverified([meta]):
                log(f"[{variant.name}] {c}: cached, built with --no-verify: running its diffusers gate ...")
                meta = _verify_cached_component(c, cfg, weights, keys[c], store, meta, log, variant.name)
            else:
                log(f"[{variant.name}] {c}: cached")
            comps[c] = meta

    if manifest is not None:  # the build existed, only unverified: its files stay, its manifest says verified now
        for c in opts.components:
            manifest["components"][c] = {**comps[c], "file": f"{c}.tflite", "cache_key": keys[c]}
        cache.write_json(store.build_dir(build_key) / "manifest.json", manifest)
        store.link_latest(cfg.name, _label(variant), build_key)
        return manifest, store.build_dir(build_key), False

    blocks = []
    if opts.profile_blocks:
        from host.build.blocks import build_blocks

        blocks = build_blocks(variant, weights, opts, log)
    final = store.build_dir(build_key)
    tmp = store.staging(final)
    for c in opts.components:
        os.link(store.component_dir(keys[c]) / "model.tflite", tmp / f"{c}.tflite")
        comps[c] = {**comps[c], "file": f"{c}.tflite", "cache_key": keys[c]}
    if blocks:
        (tmp / "blocks").mkdir()
        for i, b in enumerate(blocks):
            rel = f"blocks/{i:02d}_{b['name']}.tflite"
            os.link(b["file"], tmp / rel)
            blocks[i] = {**b, "file": rel}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": cfg.name,
        "config": cfg.to_dict(),
        "config_hash": cfg.digest(),
        "variant": {"name": variant.name, "switches": variant.opts.to_dict(), "quantization": variant.quantization},
        "weights": weights.describe(),
        "tokenizer": {"kind": "clip-bpe" if weights.tokenizer_dir else "fallback", "dir": weights.tokenizer_dir},
        "components": comps,
        "profile_blocks": blocks,
        "tool_versions": cache.tool_versions(),
        "code_hash": cache.code_hash(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_key": build_key,
    }
    cache.Store.commit(tmp, final, "manifest.json", manifest)
    store.link_latest(cfg.name, _label(variant), build_key)
    return store.load_build(build_key) or manifest, final, False


def _build_component(component: str, cfg: ModelConfig, variant: Variant, weights: WeightsSource, key: str,
                     store: cache.Store, opts: BuildOptions, log: Log) -> dict:
    from host.build import gates, tflite_info
    from host.build.convert import convert
    from host.runner.memory import reset_peak_rss
    from host.runtime import CompiledLiteRtModel, trim_heap
    from models.components import OUTPUT_NAMES, build_module, load_weights, sample_inputs

    reset_peak_rss()
    t0 = time.perf_counter()
    stages = _Stages()
    inputs = sample_inputs(component, cfg, seed=GATE_SEED, timestep=GATE_TIMESTEP)
    base_variant = get_variant("baseline")
    # The variant runs the baseline's PyTorch module (e.g. the text encoder of the `cpu` set, or baseline-int8).
    same_module = component_opts(component, variant.opts) == component_opts(component, base_variant.opts)
    is_baseline = variant.opts == base_variant.opts and variant.quantization == "fp32"
    results: list[gates.GateResult] = []

    # 1. The fp32 baseline PyTorch module: the reference every variant is held to.
    base = build_module(component, cfg, base_variant.opts)
    state = weights.state_dict(component, base)
    load_weights(base, state)
    stages.mark("baseline module and weights")
    y_base = _torch_output(component, base, inputs)
    stages.mark("baseline PyTorch run")
    if opts.verify:
        results.append(_diffusers_gate(component, cfg, state, inputs, y_base))
        stages.mark("diffusers reference run")
        gates.enforce(results)
    gc.collect()

    # 2. The variant module and its conversion. Where its PyTorch module is the baseline's, that module and its
    # output are used again (the reference above holds the same weight tensors, assigned, not copies).
    if same_module:
        module, y_var = base, y_base
        del base, state
    else:
        module = build_module(component, cfg, variant.opts)
        load_weights(module, state)
        # the module holds what it runs; the raw kernels it transformed are freed with the dict and the baseline,
        # before its forward
        del base, state
        gc.collect()
        stages.mark("variant module")
        y_var = _torch_output(component, module, inputs)
        stages.mark("variant PyTorch run")
    final = store.component_dir(key)
    tmp = store.staging(final)
    out_path = tmp / "model.tflite"
    if variant.quantization != "fp32":
        quantize.install()
    try:
        convert(component, module, inputs, OUTPUT_NAMES[component], variant.quantization, out_path)
    finally:
        release_export_state()
    del module
    gc.collect()
    trim_heap()  # what the converter freed goes back to the system before LiteRT packs the weights again
    convert_s = time.perf_counter() - t0
    stages.mark("conversion")

    # 3. The .tflite against its own PyTorch module, and against the baseline.
    # CompiledModel, as the host runner loads it (no weight cache: the gate loads each file once), with the file's
    # pages released while XNNPACK packs from them (the full-size `cpu` UNet's build peaked here, at 16.6 GiB)
    lite = CompiledLiteRtModel(str(out_path), threads=opts.threads)
    y_lite = lite.run(**{k: v.numpy() for k, v in inputs.items()})[OUTPUT_NAMES[component]]
    del lite
    trim_heap()
    stages.mark("LiteRT load and run")
    results.append(gates.check("tflite_vs_torch", component, y_lite, y_var, "rel_err",
                               gates.TFLITE_VS_TORCH_REL_ERR[variant.quantization]))
    if not is_baseline:
        metric, bound = gates.variant_bounds(component, variant.quantization)
        results.append(gates.check("variant_vs_baseline", component, y_lite, y_base, metric, bound))
    for r in results:
        _log_gate(log, variant.name, component, r)
    gates.enforce(results)

    hist = tflite_info.op_histogram(str(out_path))
    meta = {
        "component": component,
        "signature": {
            "name": component,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": _dtype(v)} for k, v in inputs.items()],
            "outputs": [{"name": OUTPUT_NAMES[component], "shape": list(y_lite.shape), "dtype": str(y_lite.dtype)}],
        },
        "switches": component_opts(component, variant.opts),
        "quantization": variant.quantization,
        "op_histogram": hist,
        "composites": tflite_info.composite_names(str(out_path)),
        "sha256": cache.file_sha256(out_path),
        "size_bytes": out_path.stat().st_size,
        "gates": [r.to_dict() for r in results],
        "verified": opts.verify,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "convert_seconds": round(convert_s, 2),
        "peak_rss_bytes": _memory()[1],
    }
    stages.mark("model info and hash")
    meta["stages"] = stages.rows
    store.commit(tmp, final, "component.json", meta)
    gc.collect()
    return meta


def _torch_output(component: str, module, inputs: dict):
    """The module's output on the gate inputs as numpy, rejected if not finite."""
    import torch

    from host.build import gates

    with torch.no_grad():
        y = module(**inputs).numpy()
    gates.require_finite(component, "PyTorch output", y)
    return y


def _log_gate(log: Log, label: str, component: str, r) -> None:
    log(f"[{label}] {component}: {r.check} {r.metric}={r.value:.3g} (bound {r.bound:g}) {'ok' if r.passed else 'FAILED'}")


def _unverified(metas) -> bool:
    return any(m.get("verified") is False for m in metas)


def _diffusers_gate(component: str, cfg: ModelConfig, state: dict, inputs: dict, y_base):
    """Our baseline PyTorch module's output ``y_base`` against diffusers' / transformers' module on the same
    weight tensors (``state``) and inputs."""
    from host.build import gates
    from host.build.reference import reference_module, reference_output

    ref = reference_module(component, cfg, state)
    y_ref = reference_output(component, ref, inputs, GATE_TIMESTEP)
    del ref
    return gates.check("baseline_vs_diffusers", component, y_base, y_ref, "rel_err", gates.DIFFUSERS_REL_ERR)


def _verify_cached_component(component: str, cfg: ModelConfig, weights: WeightsSource, key: str, store: cache.Store,
                             meta: dict, log: Log, label: str) -> dict:
    """Runs the diffusers gate that a --no-verify build of this component left out (its key holds the model code
    and the weights the gate judges) and records it in the cached component; raises as a failed build would."""
    from host.build import gates
    from models.components import build_module, load_weights, sample_inputs

    inputs = sample_inputs(component, cfg, seed=GATE_SEED, timestep=GATE_TIMESTEP)
    base = build_module(component, cfg, get_variant("baseline").opts)
    state = weights.state_dict(component, base)
    load_weights(base, state)
    result = _diffusers_gate(component, cfg, state, inputs, _torch_output(component, base, inputs))
    del base, state
    gc.collect()
    _log_gate(log, label, component, result)
    gates.enforce([result])
    meta = {**meta, "verified": True, "gates": [result.to_dict(), *meta.get("gates", [])]}
    cache.write_json(store.component_dir(key) / "component.json", meta)
    return meta


def release_export_state() -> None:
    """Drops what torch.export keeps of its last trace; call it once a conversion is done.

    torch.export records its last trace's tensors in a module-level map (``_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT``
    in torch.fx.experimental.proxy_tensor, cleared only by the next export); through the graph's nodes it holds the
    traced module and every weight. Full-size `cpu` build, 2026-12-07: the UNet's weights stayed resident after
    its conversion (6.3 GiB at its LiteRT gate, 7.9 GiB when the VAE decoder's build began)."""
    from torch.fx.experimental import proxy_tensor

    held = getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", None)
    if isinstance(held, dict):
        held.clear()


class _Stages:
    """Wall time, the process's high-water mark and its resident set at the end of each stage of a component's build."""

    def __init__(self):
        self.rows: list[dict] = []
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        rss, peak = _memory()
        self.rows.append({"stage": name, "seconds": round(now - self._t, 2), "peak_rss_bytes": peak,
                          "rss_bytes": rss})
        self._t = now


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _memory() -> tuple[int | None, int | None]:
    """(resident set, high-water mark) of this process in bytes; (None, None) where there is no /proc."""
    from host.runner.memory import read_proc_status

    return read_proc_status() or (None, None)
