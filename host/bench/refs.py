"""The two reference systems of ``python -m host.bench pipeline``, besides our own builds.

* ``litert-example``: litert-torch's own Stable Diffusion example
  (``litert_torch/generative/examples/stable_diffusion``: ``clip.CLIP``, ``diffusion.Diffusion``,
  ``decoder.Decoder``), built from its configs, every parameter written explicitly from seeded
  generators, and converted the way its ``convert_to_tflite.py`` does (positional signatures
  ``encode`` / ``diffusion`` / ``decode``). The converted files are cached in the artifact store under
  ``<artifacts>/litert-example/<model>/<key>/``.
* ``torch-eager``: diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers
  ``CLIPTextModel`` in fp32 PyTorch eager, carrying the same seeded weights as our builds
  (``host.build.reference``).

What the example expects, as its ``pipeline.py`` / ``convert_to_tflite.py`` use it:
  encode:    tokens int32 [1, L]                         -> context [1, L, D]   (called twice: cond, uncond)
  diffusion: latents [2, 4, h, w], context [2, L, D] (batch 0 cond, 1 uncond), time_emb [1, C0] -> [2, 4, h, w]
  decode:    latents [1, 4, h, w] (NOT divided by the scaling factor: the model divides) -> image [1, 3, H, W]
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

from host.errors import HarnessError

LITERT_EXAMPLE_DIR = "litert-example"
# Bump when the initialisation, the config patches or the conversion below change what gets written.
LITERT_EXAMPLE_RECIPE = 2
LITERT_EXAMPLE_FILES = {"text_encoder": "clip.tflite", "unet": "diffusion.tflite", "vae_decoder": "decoder.tflite"}
LITERT_EXAMPLE_SIGNATURES = {"text_encoder": "encode", "unet": "diffusion", "vae_decoder": "decode"}
DEVICE_TYPE = "cpu"  # the example's CPU configs (no StableHLO composites); its converter's flag defaults to "gpu"

Log = Callable[[str], None]


class BenchError(HarnessError):
    """A benchmark system that cannot be prepared or run; one line."""


# ---------------------------------------------------------------------------------------------- helpers


def _name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for t in ("litert-torch", "ai-edge-litert", "torch"):
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "absent"
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if callable(obj) and hasattr(obj, "__qualname__"):  # e.g. the CLIP config's build_rope: by name, not address
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))  # enums; never a per-process address in a cache key


def rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------------------------- litert-example


@dataclasses.dataclass
class ExampleConfigs:
    """The example's three configs for one model, plus what had to be changed to make them fit together."""

    model: str
    clip: Any
    diffusion: Any
    decoder: Any
    patches: list[str]

    @property
    def seq_len(self) -> int:
        return int(self.clip.max_seq_len)

    @property
    def vocab_size(self) -> int:
        return int(self.clip.vocab_size)

    @property
    def t_emb_dim(self) -> int:
        return int(self.diffusion.time_embedding_dim)

    @property
    def scaling_factor(self) -> float:
        return float(self.decoder.scaling_factor)

    def to_dict(self) -> dict:
        return {"model": self.model, "device_type": DEVICE_TYPE, "clip": _jsonable(self.clip),
                "diffusion": _jsonable(self.diffusion), "decoder": _jsonable(self.decoder), "patches": self.patches}


def example_configs(model: str) -> ExampleConfigs:
    """``get_model_config`` for sd14 (the example's SD 1.5 = the SD 1.4 architecture), ``get_fake_model_config``
    for tiny. The fake configs do not fit together as shipped (CLIP width 24, UNet cross-attention width 4):
    the UNet's ``transformer_cross_attention_dim`` is set to the CLIP width, and the patch is recorded."""
    from litert_torch.generative.examples.stable_diffusion import clip, decoder, diffusion

    patches: list[str] = []
    if model == "sd14":
        c, d, v = clip.get_model_config(), diffusion.get_model_config(batch_size=2, device_type=DEVICE_TYPE), \
            decoder.get_model_config(device_type=DEVICE_TYPE)
    elif model == "tiny":
        c, d, v = clip.get_fake_model_config(), diffusion.get_fake_model_config(batch_size=2, device_type=DEVICE_TYPE), \
            decoder.get_fake_model_config(device_type=DEVICE_TYPE)
    else:
        raise BenchError(f"litert-example: no litert-torch example config for model {model!r} (sd14 or tiny)")
    if d.transformer_cross_attention_dim != c.embedding_dim:
        patches.append(f"diffusion.transformer_cross_attention_dim {d.transformer_cross_attention_dim} -> "
                       f"{c.embedding_dim} (the CLIP config's embedding_dim)")
        d = dataclasses.replace(d, transformer_cross_attention_dim=c.embedding_dim)
    return ExampleConfigs(model, c, d, v, patches)


def init_explicitly(module, seed: int) -> dict[str, int]:
    """Write every parameter and floating buffer from a generator seeded by its name.

    The example leaves LayerNorm / GroupNorm scales and shifts as ``torch.empty`` (garbage, often NaN at
    scale) and expects a checkpoint loader to fill them. Here: matrices / conv kernels
    N(0, 1/fan_in), embedding tables N(0, 0.02), norm scales 1 + N(0, 0.02), biases N(0, 0.02).
    Returns counts per kind (for the record).
    """
    import torch

    counts = {"matrix": 0, "embedding": 0, "norm_scale": 0, "bias": 0, "buffer": 0}
    tensors = [(n, p, False) for n, p in module.named_parameters()] + \
              [(n, b, True) for n, b in module.named_buffers() if b.is_floating_point()]
    with torch.no_grad():
        for name, t, is_buffer in tensors:
            g = torch.Generator().manual_seed(_name_seed(seed, name))
            leaf = name.rsplit(".", 1)[-1]
            if "embedding" in name and t.dim() == 2:
                t.normal_(0.0, 0.02, generator=g)
                kind = "embedding"
            elif leaf == "bias":
                t.normal_(0.0, 0.02, generator=g)
                kind = "bias"
            elif t.dim() >= 2:
                t.normal_(0.0, 1.0 / math.sqrt(math.prod(t.shape[1:])), generator=g)
                kind = "matrix"
            else:  # 1-D weights are norm scales (LayerNorm / GroupNorm / RMSNorm)
                t.normal_(1.0, 0.02, generator=g)
                kind = "norm_scale"
            counts["buffer" if is_buffer else kind] += 1
            if not torch.isfinite(t).all():
                raise BenchError(f"litert-example: initialising {name} gave non-finite values")
    return counts


def example_inputs(cfgs: ExampleConfigs, latent: int, check_seed: int = 1234) -> dict[str, dict]:
    """Per component: ``trace`` inputs as the example's converter makes them (zeros, batch-1 tokens, the
    time embedding of t=0) and ``check`` inputs (seeded random, t=500) for the .tflite-vs-PyTorch check.
    The UNet's context is filled in from the text encoder's output."""
    import torch

    from models.timestep import timestep_embedding

    g = torch.Generator().manual_seed(check_seed)
    lat = (1, 4, latent, latent)
    return {
        "text_encoder": {"trace": (torch.zeros((1, cfgs.seq_len), dtype=torch.int32),),
                         "check": (torch.randint(0, cfgs.vocab_size, (1, cfgs.seq_len), generator=g).to(torch.int32),)},
        "unet": {"trace": [torch.zeros((2, *lat[1:])), None, torch.from_numpy(timestep_embedding([0.0], cfgs.t_emb_dim))],
                 "check": [torch.randn((2, *lat[1:]), generator=g), None,
                           torch.from_numpy(timestep_embedding([500.0], cfgs.t_emb_dim))]},
        "vae_decoder": {"trace": (torch.zeros(lat),), "check": (torch.randn(lat, generator=g) * 0.8,)},
    }


def litert_example_key(cfgs: ExampleConfigs, latent: int, seed: int) -> str:
    blob = {"configs": cfgs.to_dict(), "latent": latent, "cfg_batch": 2, "seed": seed, "recipe": LITERT_EXAMPLE_RECIPE,
            "tools": _tool_versions()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def build_litert_example(root: Path, model: str, latent: int, seed: int = 0, log: Log = print) -> tuple[Path, dict]:
    """Convert (or find in the cache) the example's three components for ``latent`` x ``latent`` latents.

    Returns (folder, meta). Each component is built, initialised, checked finite in PyTorch, converted,
    and its .tflite checked against the PyTorch output once; one component at a time.
    """
    from host.build.cache import Store

    cfgs = example_configs(model)
    key = litert_example_key(cfgs, latent, seed)
    final = Path(root) / LITERT_EXAMPLE_DIR / model / key
    meta_path = final / "meta.json"
    if meta_path.is_file() and all((final / f).is_file() for f in LITERT_EXAMPLE_FILES.values()):
        meta = json.loads(meta_path.read_text())
        return final, {**meta, "cached": True}

    import numpy as np
    import torch
    import litert_torch
    from litert_torch.generative.examples.stable_diffusion import clip, decoder, diffusion

    from host.runtime import LiteRtModel

    store = Store(root)
    tmp = store.staging(final)
    ins = example_inputs(cfgs, latent)
    comps: dict[str, dict] = {}
    t_all = time.perf_counter()

    def one(component: str, factory) -> Any:
        t0 = time.perf_counter()
        log(f"litert-example {component}: building and initialising")
        m = factory().eval()
        counts = init_explicitly(m, seed + {"text_encoder": 0, "unet": 1, "vae_decoder": 2}[component])
        n_params = sum(p.numel() for p in m.parameters())
        trace, check = tuple(ins[component]["trace"]), tuple(ins[component]["check"])
        with torch.inference_mode():
            y = m(*check).detach().clone()
        y_np = y.numpy()
        if not np.isfinite(y_np).all():
            raise BenchError(f"litert-example {component}: non-finite PyTorch output after initialisation")
        path = tmp / LITERT_EXAMPLE_FILES[component]
        log(f"litert-example {component}: converting ({n_params / 1e6:.2f} M parameters)")
        try:
            with torch.inference_mode():
                litert_torch.signature(LITERT_EXAMPLE_SIGNATURES[component], m, trace).convert().export(str(path))
        except Exception as e:  # noqa: BLE001 - the converter raises many types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise BenchError(f"litert-example {component}: conversion failed ({type(e).__name__}: {first})") from e
        del m  # free the PyTorch weights before LiteRT loads (and XNNPACK packs) its own copy
        gc.collect()
        lite = LiteRtModel(str(path), threads=2)
        names = sorted(lite.inputs)  # args_0, args_1, ...: the traced positional order
        y_lite = next(iter(lite.run(**{n: a.numpy() for n, a in zip(names, check)}).values()))
        if not np.isfinite(y_lite).all():
            raise BenchError(f"litert-example {component}: non-finite .tflite output")
        comps[component] = {
            "file": LITERT_EXAMPLE_FILES[component], "signature": lite.signature,
            "inputs": {k: [list(map(int, s)), d] for k, (s, d) in lite.inputs.items()},
            "outputs": {k: [list(map(int, s)), d] for k, (s, d) in lite.outputs.items()},
            "parameters": int(n_params), "init_counts": counts, "size_bytes": path.stat().st_size,
            "tflite_vs_torch_rel_err": rel_err(y_lite, y_np), "build_seconds": round(time.perf_counter() - t0, 2),
        }
        log(f"litert-example {component}: .tflite vs PyTorch rel err {comps[component]['tflite_vs_torch_rel_err']:.3g}")
        del lite
        gc.collect()
        return y

    ctx1 = one("text_encoder", lambda: clip.CLIP(cfgs.clip))
    ctx = torch.cat([ctx1, ctx1])  # what the pipeline feeds: [cond, uncond], [2, L, D]
    ins["unet"]["trace"][1] = torch.zeros_like(ctx)
    ins["unet"]["check"][1] = ctx
    one("unet", lambda: diffusion.Diffusion(cfgs.diffusion))
    one("vae_decoder", lambda: decoder.Decoder(cfgs.decoder))
    meta = {"model": model, "latent": latent, "key": key, "seed": seed, "configs": cfgs.to_dict(),
            "dims": {"seq_len": cfgs.seq_len, "vocab_size": cfgs.vocab_size, "t_emb_dim": cfgs.t_emb_dim,
                     "scaling_factor": cfgs.scaling_factor},
            "components": comps, "tools": _tool_versions(), "recipe": LITERT_EXAMPLE_RECIPE,
            "build_seconds": round(time.perf_counter() - t_all, 2)}
    Store.commit(tmp, final, "meta.json", meta)
    return final, {**json.loads(meta_path.read_text()), "cached": False}


# ---------------------------------------------------------------------------------------------- torch-eager


def fp32_settings() -> dict[str, Any]:
    """Pin PyTorch to plain fp32 on the CPU (no autocast, no bf16/tf32 shortcuts) and say what was set."""
    import torch

    torch.set_float32_matmul_precision("highest")
    for mod in (torch.backends, getattr(torch.backends, "mkldnn", None)):
        for sub in ("", "matmul", "conv"):
            obj = getattr(mod, sub, None) if sub else mod
            if obj is not None and hasattr(obj, "fp32_precision"):
                try:
                    obj.fp32_precision = "ieee"
                except (AttributeError, RuntimeError, ValueError):
                    pass
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
        flags = sorted({w for w in line.split() if w.startswith("amx") or w in ("avx512_bf16", "avx512_fp16")})
    except OSError:
        pass
    return {
        "dtype": "float32",
        "autocast_cpu_enabled": bool(torch.is_autocast_enabled("cpu")),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn_fp32_precision": getattr(getattr(torch.backends, "mkldnn", None), "fp32_precision", None),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_amx_flags": flags,
    }


def build_torch_eager(model: str, size: int, seed: int = 0, log: Log = print) -> tuple[dict, dict]:
    """The diffusers / transformers modules carrying our seeded weights (the ones the build gates compare
    against), fp32, eval, no grad. Returns ({component: module}, info)."""
    import torch

    from host.build.reference import reference_module
    from host.build.weights import resolve
    from models.components import build_module, random_state_dict

    weights = resolve(model, None, seed, size, "/dev/null")
    cfg = weights.config
    mods, info = {}, {"parameters": {}}
    for c in ("text_encoder", "unet", "vae_decoder"):
        log(f"torch-eager {c}: building diffusers/transformers module with our seeded weights")
        ours = build_module(c, cfg)
        state = random_state_dict(ours, weights.seed)
        del ours
        m = reference_module(c, cfg, state).float().eval().requires_grad_(False)
        del state
        if c == "vae_decoder":  # decode() uses post_quant_conv + decoder only; drop the encoder's weights
            m.encoder = None
            m.quant_conv = None
        bad = [n for n, p in m.named_parameters() if p.dtype != torch.float32]
        if bad:
            raise BenchError(f"torch-eager {c}: parameter {bad[0]} is not float32")
        info["parameters"][c] = int(sum(p.numel() for p in m.parameters()))
        mods[c] = m
        gc.collect()
    info["config_hash"] = cfg.digest()
    return mods, info
