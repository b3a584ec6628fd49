"""The per-block profile build: the UNet split into one .tflite per block, chained by tensor name.

Runners time the blocks one by one (``profiling.per_block`` in the run request) and report how far
the sum of blocks is from the whole-model step. Each block model is checked against its PyTorch
stage, and the chain of block models against the whole UNet.
"""
from __future__ import annotations

import time

from host.build import cache
from host.build.builder import GATE_SEED, GATE_TIMESTEP, BuildOptions, Log, component_key, release_export_state
from host.build.weights import WeightsSource
from models.config import Variant

BLOCK_CHAIN_REL_ERR = 1e-4


def block_key(unet_key: str, name: str) -> str:
    return cache.digest({"unet": unet_key, "block": name})


def build_blocks(variant: Variant, weights: WeightsSource, opts: BuildOptions, log: Log = print) -> list[dict]:
    """Returns one entry per UNet block: name, file path, signature inputs/outputs, sha256, size."""
    store = cache.Store(opts.root)
    cfg = weights.config
    unet_key = component_key("unet", cfg, variant, weights)
    from models.components import build_module

    # Stage names and tensor names depend only on the architecture: read them without weights.
    names = [s.name for s in build_module("unet", cfg, variant.opts).stages()]
    cached = [store.load_component(block_key(unet_key, n)) for n in names]
    if all(cached):
        return [dict(c, file=str(store.component_dir(block_key(unet_key, n)) / "model.tflite")) for c, n in zip(cached, names)]
    return _convert_blocks(variant, weights, opts, store, unet_key, log)


def _convert_blocks(variant, weights, opts, store, unet_key, log) -> list[dict]:
    import torch

    from host.build import gates
    from host.build.convert import convert
    from host.runtime import LiteRtModel
    from models.components import build_module, load_weights, sample_inputs

    cfg = weights.config
    if variant.quantization != "fp32":
        from host.build import quantize

        quantize.install()
    unet = build_module("unet", cfg, variant.opts)
    load_weights(unet, weights.state_dict("unet", unet))
    state = {k: v for k, v in sample_inputs("unet", cfg, seed=GATE_SEED, timestep=GATE_TIMESTEP).items()}
    with torch.no_grad():
        whole = unet(**state).numpy()
    lite_state = {k: v.numpy() for k, v in state.items()}
    out = []
    for stage in unet.stages():
        key = block_key(unet_key, stage.name)
        inputs = {k: state[k] for k in stage.inputs}
        with torch.no_grad():
            stage(state)
        meta = store.load_component(key)
        if meta is None:
            t0 = time.perf_counter()
            log(f"[{variant.name}] unet block {stage.name}: converting ...")
            final = store.component_dir(key)
            tmp = store.staging(final)
            try:
                convert(f"unet_{stage.name.replace('.', '_')}", _stage_module(unet, stage), inputs,
                        None, variant.quantization, tmp / "model.tflite")
            finally:
                release_export_state()
            lite = LiteRtModel(str(tmp / "model.tflite"), threads=opts.threads)
            got = lite.run(**{k: v.numpy() for k, v in inputs.items()})
            results = [gates.check("tflite_vs_torch", f"unet {stage.name}", got[o], state[o].numpy(), "rel_err",
                                   gates.TFLITE_VS_TORCH_REL_ERR[variant.quantization]) for o in stage.outputs]
            gates.enforce(results)
            meta = {
                "name": stage.name,
                "signature": lite.signature,
                "inputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in inputs.items()],
                "outputs": [{"name": o, "shape": list(state[o].shape), "dtype": "float32"} for o in stage.outputs],
                "sha256": cache.file_sha256(tmp / "model.tflite"),
                "size_bytes": (tmp / "model.tflite").stat().st_size,
                "gates": [r.to_dict() for r in results],
                "build_seconds": round(time.perf_counter() - t0, 2),
            }
            del lite
            store.commit(tmp, final, "component.json", meta)
        out.append(dict(meta, file=str(store.component_dir(key) / "model.tflite")))
    # The chain of block models, fed forward by tensor name, must reproduce the whole UNet.
    for b in out:
        lite = LiteRtModel(b["file"], threads=opts.threads)
        lite_state.update(lite.run(**{i["name"]: lite_state[i["name"]] for i in b["inputs"]}))
    r = gates.check("block_chain_vs_unet", "unet", lite_state["noise_pred"], whole, "rel_err", BLOCK_CHAIN_REL_ERR)
    gates.enforce([r])
    log(f"[{variant.name}] unet blocks: chain of {len(out)} block models rel_err={r.value:.3g} vs the whole UNet")
    return out


def _stage_module(unet, stage):
    """One UNet stage as a module with named inputs and named outputs (torch imported lazily)."""
    import torch

    class StageModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, **kw):
            return dict(zip(stage.outputs, stage.fn(*(kw[k] for k in stage.inputs))))

    return StageModule().eval()
