"""Loads Stable Diffusion 1.x weights into three state dicts in the diffusers / transformers naming.

Accepted inputs (``load_checkpoint``):

* a single file in the original CompVis/LDM layout (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.*``), as ``.safetensors`` or as a ``.ckpt`` / ``.pt`` / ``.pth`` pickle.
  Pickles are opened only with ``torch.load(weights_only=True)``: a checkpoint can never run code, and
  one whose pickle needs anything beyond tensors and plain containers is refused.
* a diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``).

Output naming (what ``Checkpoint`` holds), all float32:

* ``text_encoder``: transformers ``CLIPTextModel`` keys with the ``text_model.`` prefix;
* ``unet``: diffusers ``UNet2DConditionModel`` keys;
* ``vae_decoder``: diffusers ``AutoencoderKL`` keys, only ``post_quant_conv.*`` and ``decoder.*``.

The LDM -> diffusers conversion reads the block structure from the keys themselves (where the
down/upsamplers sit), so it needs no config; the result is then checked against a ``ModelConfig``
(the folder's own, the caller's, or SD 1.x full size for single files) for the shapes that identify
the architecture. ``match_state_dict`` / ``check_against`` do the complete per-key check against modules.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from models.config import ConfigError, ModelConfig, from_diffusers, sd14

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
SINGLE_FILE_EXTS = (".safetensors", ".ckpt", ".pt", ".pth")
LDM_UNET, LDM_VAE, LDM_TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
# Extras in a state dict that no module needs and whose absence no module minds.
HARMLESS_SUFFIXES = ("position_ids",)


class CheckpointError(Exception):
    """A checkpoint that cannot be used. ``str()`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


@dataclass
class Checkpoint:
    """Weights of one SD 1.x model, converted to the diffusers / transformers naming, float32."""

    path: str
    format: str  # "safetensors" | "ckpt" | "diffusers"
    text_encoder: dict[str, torch.Tensor]
    unet: dict[str, torch.Tensor]
    vae_decoder: dict[str, torch.Tensor]
    config: ModelConfig | None  # from a folder's config.json files; None for single files (SD 1.x = sd14())
    tokenizer_dir: str | None  # folder with vocab.json + merges.txt, when the checkpoint has one
    sha256: str  # of the file; for a folder, over the weight files' names, sizes and sha256
    dtype: torch.dtype  # the most common floating dtype of the source weights

    def component(self, name: str) -> dict[str, torch.Tensor]:
        if name not in COMPONENTS:
            raise KeyError(f"unknown component {name!r}; choose one of: {', '.join(COMPONENTS)}")
        return getattr(self, name)


class _Problem(Exception):
    """Internal: a problem without the path; load_checkpoint turns it into CheckpointError."""


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, model_config: ModelConfig | None = None) -> Checkpoint:
    """Loads a single-file SD 1.x checkpoint or a diffusers folder; see the module docstring.

    model_config: the architecture the weights must fit. Defaults to the folder's own config, or to
    ``sd14()`` for single files (which carry no config). A mismatch raises CheckpointError naming a
    key and both shapes.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file or folder")
    try:
        if p.is_dir():
            ckpt = _load_folder(p)
        else:
            ckpt = _load_single_file(p)
        problem = check_config(ckpt, model_config or ckpt.config or sd14())
        if problem:
            raise _Problem(problem)
    except _Problem as e:
        raise CheckpointError(p, str(e)) from None
    return ckpt


# ---------------------------------------------------------------------------------------------
# Reading tensors safely
# ---------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_safetensors_header(path: Path) -> None:
    """Raises _Problem unless the header parses and every tensor's bytes lie inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise _Problem(f"not a safetensors file: only {size} bytes")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise _Problem(f"safetensors header claims {n} bytes but the file has {size} (truncated or not safetensors)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise _Problem("safetensors header is not valid JSON (corrupt or not safetensors)") from None
    if not isinstance(header, dict):
        raise _Problem("safetensors header is not a JSON object")
    data = size - 8 - n
    need = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            info["dtype"], info["shape"]
        except (TypeError, KeyError, ValueError):
            raise _Problem(f"safetensors header entry {name!r} is malformed") from None
        need = max(need, int(end))
    if need > data:
        raise _Problem(f"truncated: tensor data needs {need} bytes but the file holds {data}")


def _read_safetensors(path: Path, keep: Callable[[str], bool] = lambda k: True) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    _check_safetensors_header(path)
    try:
        out = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                if keep(k):
                    out[k] = f.get_tensor(k)
        return out
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise _Problem(f"cannot read safetensors: {e}") from None


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED_RE = re.compile(r"Unsupported [^\n.]*")


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True (no code can run); unwraps Lightning's ``{"state_dict": ...}``."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" in msg.lower() or "weights_only" in msg:
            m, u = _GLOBAL_RE.search(msg), _UNSUPPORTED_RE.search(msg)
            what = f"it needs {m.group(1)}" if m else (u.group(0).strip() if u else "it holds more than tensors")
            raise _Problem(
                f"refused to load: the pickle is not weights-only ({what}); "
                "checkpoints are never unpickled with code execution — convert it to .safetensors"
            ) from None
        raise _Problem(f"not a readable PyTorch checkpoint (corrupt?): {_describe(e)}") from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise _Problem(f"not a readable PyTorch checkpoint (truncated or corrupt?): {_describe(e)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise _Problem(f"expected a dict of tensors, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _describe(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _to_float32(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _source_dtype(dicts: Iterable[Mapping[str, torch.Tensor]]) -> torch.dtype:
    counts = Counter(v.dtype for d in dicts for v in d.values() if v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


# ---------------------------------------------------------------------------------------------
# Single file (CompVis / LDM layout)
# ---------------------------------------------------------------------------------------------


def _wanted_ldm_key(k: str) -> bool:
    return k.startswith((LDM_UNET, LDM_TEXT, LDM_VAE + "decoder.", LDM_VAE + "post_quant_conv."))


def _load_single_file(p: Path) -> Checkpoint:
    ext = p.suffix.lower()
    if ext not in SINGLE_FILE_EXTS:
        raise _Problem(f"unknown checkpoint type {ext or '(no extension)'!r}; expected one of "
                       f"{', '.join(SINGLE_FILE_EXTS)} or a diffusers folder")
    if ext == ".safetensors":
        raw, fmt = _read_safetensors(p, _wanted_ldm_key), "safetensors"
        _require_ldm_components(raw, lambda: _safetensors_keys(p))
    else:
        full = _read_pickle(p)
        raw, fmt = {k: v for k, v in full.items() if _wanted_ldm_key(k)}, "ckpt"
        _require_ldm_components(raw, lambda: list(full))
    unet = _convert_ldm_unet({k[len(LDM_UNET):]: v for k, v in raw.items() if k.startswith(LDM_UNET)})
    vae = _convert_ldm_vae({k[len(LDM_VAE):]: v for k, v in raw.items() if k.startswith(LDM_VAE)})
    text = _normalize_text_keys({k[len(LDM_TEXT):]: v for k, v in raw.items() if k.startswith(LDM_TEXT)},
                                LDM_TEXT)
    return Checkpoint(
        path=str(p), format=fmt, text_encoder=_to_float32(text), unet=_to_float32(unet),
        vae_decoder=_to_float32(vae), config=None, tokenizer_dir=None, sha256=_sha256_file(p),
        dtype=_source_dtype([raw]),
    )


def _safetensors_keys(p: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt", device="cpu") as f:
        return list(f.keys())


def _require_ldm_components(raw: Mapping[str, torch.Tensor], all_keys: Callable[[], list[str]]) -> None:
    """Raises _Problem, with a hint at SD 2.x / SDXL, unless all three LDM components are present."""
    missing = [name for name, prefix in (("UNet", LDM_UNET), ("VAE decoder", LDM_VAE + "decoder."),
                                         ("text encoder", LDM_TEXT)) if not any(k.startswith(prefix) for k in raw)]
    if not missing:
        return
    keys = all_keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise _Problem("this looks like an SDXL checkpoint; only SD 1.x is supported")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise _Problem("this looks like an SD 2.x checkpoint (OpenCLIP text encoder); only SD 1.x is supported")
    if len(missing) == 3:
        sample = next(iter(keys), None)
        raise _Problem(
            "not a Stable Diffusion 1.x checkpoint: no key starts with "
            f"{LDM_UNET}, {LDM_VAE}decoder. or {LDM_TEXT}" + (f" (first key: {sample!r})" if sample else " (empty)")
        )
    prefixes = {"UNet": LDM_UNET, "VAE decoder": LDM_VAE + "decoder.", "text encoder": LDM_TEXT}
    raise _Problem(f"incomplete SD 1.x checkpoint: no {missing[0]} weights ({prefixes[missing[0]]}*)")


# LDM ResBlock children -> diffusers ResnetBlock2D children (UNet).
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# LDM VAE ResnetBlock children -> diffusers; the VAE attention block's 1x1 convs -> Linear layers.
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# SpatialTransformer children keep their names in diffusers' Transformer2DModel.
_TRANSFORMER_CHILDREN = ("norm.", "proj_in.", "proj_out.", "transformer_blocks.")


def _rename_child(rest: str, table: Mapping[str, str], where: str) -> str:
    for old in sorted(table, key=len, reverse=True):
        if rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    raise _Problem(f"unexpected key {where}{rest}")


def _indices(sd: Mapping[str, torch.Tensor], group: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in sd if k.startswith(group + ".") and k.split(".")[1].isdigit()})


def _ldm_unet_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """LDM module prefix -> (diffusers prefix, kind); kind is "resnet", "attn" or "plain".

    Levels are found from the keys: a down level ends at an ``input_blocks.i.0.op`` downsampler, an up
    level at the ``output_blocks.i.j.conv`` upsampler; so any depth and layers_per_block work.
    """
    table: dict[str, tuple[str, str]] = {
        "time_embed.0.": ("time_embedding.linear_1.", "plain"),
        "time_embed.2.": ("time_embedding.linear_2.", "plain"),
        "input_blocks.0.0.": ("conv_in.", "plain"),
        "middle_block.0.": ("mid_block.resnets.0.", "resnet"),
        "middle_block.1.": ("mid_block.attentions.0.", "attn"),
        "middle_block.2.": ("mid_block.resnets.1.", "resnet"),
        "out.0.": ("conv_norm_out.", "plain"),
        "out.2.": ("conv_out.", "plain"),
    }
    level = slot = 0
    for i in _indices(sd, "input_blocks"):
        if i == 0:
            continue
        if f"input_blocks.{i}.0.op.weight" in sd:
            table[f"input_blocks.{i}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", "plain")
            level, slot = level + 1, 0
            continue
        table[f"input_blocks.{i}.0."] = (f"down_blocks.{level}.resnets.{slot}.", "resnet")
        table[f"input_blocks.{i}.1."] = (f"down_blocks.{level}.attentions.{slot}.", "attn")
        slot += 1
    level = slot = 0
    for i in _indices(sd, "output_blocks"):
        table[f"output_blocks.{i}.0."] = (f"up_blocks.{level}.resnets.{slot}.", "resnet")
        upsampled = False
        for j in (1, 2):
            if f"output_blocks.{i}.{j}.conv.weight" in sd:
                table[f"output_blocks.{i}.{j}.conv."] = (f"up_blocks.{level}.upsamplers.0.conv.", "plain")
                upsampled = True
            else:
                table[f"output_blocks.{i}.{j}."] = (f"up_blocks.{level}.attentions.{slot}.", "attn")
        slot += 1
        if upsampled:
            level, slot = level + 1, 0
    return table


def _convert_ldm_unet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    table = _ldm_unet_prefixes(sd)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        parts = key.split(".")
        depth = 3 if parts[0] in ("input_blocks", "output_blocks") else 2
        if parts[0] == "input_blocks" and len(parts) > 3 and parts[3] in ("op", "conv") or \
                parts[0] == "output_blocks" and len(parts) > 3 and parts[3] == "conv":
            depth = 4
        prefix = ".".join(parts[:depth]) + "."
        if prefix not in table:
            raise _Problem(f"unexpected UNet key {LDM_UNET}{key} (not an SD 1.x UNet)")
        new, kind = table[prefix]
        rest = key[len(prefix):]
        if kind == "resnet":
            rest = _rename_child(rest, _UNET_RESNET, LDM_UNET + prefix)
        elif kind == "attn" and not rest.startswith(_TRANSFORMER_CHILDREN):
            raise _Problem(f"unexpected UNet key {LDM_UNET}{key} (not an SD 1.x UNet)")
        out[new + rest] = t
    return out


def _convert_ldm_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``decoder.*`` + ``post_quant_conv.*`` of the LDM autoencoder -> diffusers names (encoder dropped)."""
    ups = _indices({k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}, "up")
    n = len(ups)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.startswith("post_quant_conv."):
            out[key] = t
            continue
        if not key.startswith("decoder."):
            continue  # encoder / quant_conv: not needed for generation
        rest = key[len("decoder."):]
        parts = rest.split(".")
        if parts[0] in ("conv_in", "conv_out"):
            new = rest
        elif parts[0] == "norm_out":
            new = "conv_norm_out." + rest[len("norm_out."):]
        elif parts[:2] == ["mid", "block_1"] or parts[:2] == ["mid", "block_2"]:
            idx = 0 if parts[1] == "block_1" else 1
            new = f"mid_block.resnets.{idx}." + _rename_child(".".join(parts[2:]), _VAE_RESNET, "first_stage_model.decoder.mid.")
        elif parts[:2] == ["mid", "attn_1"]:
            child = _rename_child(".".join(parts[2:]), _VAE_ATTN, "first_stage_model.decoder.mid.attn_1.")
            new = "mid_block.attentions.0." + child
            if not child.startswith("group_norm.") and t.ndim == 4:
                t = t.reshape(t.shape[0], t.shape[1])  # 1x1 conv -> Linear
        elif parts[0] == "up" and len(parts) > 3 and parts[1].isdigit():
            level = n - 1 - int(parts[1])  # LDM counts decoder levels from the lowest resolution
            if parts[2] == "block" and parts[3].isdigit():
                new = f"up_blocks.{level}.resnets.{parts[3]}." + _rename_child(
                    ".".join(parts[4:]), _VAE_RESNET, f"first_stage_model.decoder.up.{parts[1]}.block.{parts[3]}.")
            elif parts[2:4] == ["upsample", "conv"]:
                new = f"up_blocks.{level}.upsamplers.0.conv." + ".".join(parts[4:])
            else:
                raise _Problem(f"unexpected VAE key {LDM_VAE}{key}")
        else:
            raise _Problem(f"unexpected VAE key {LDM_VAE}{key}")
        out["decoder." + new] = t
    return out


def _normalize_text_keys(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """CLIP text keys -> ``text_model.*`` (transformers 5 and pre-4.22 files omit the prefix)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(HARMLESS_SUFFIXES):
            continue
        if not k.startswith("text_model."):
            k = "text_model." + k
        if not k.startswith(("text_model.embeddings.", "text_model.encoder.", "text_model.final_layer_norm.")):
            raise _Problem(f"unexpected text encoder key {where}{k} (not a CLIP text model)")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# diffusers folder
# ---------------------------------------------------------------------------------------------

_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model", "model"),
    "vae": ("diffusion_pytorch_model", "model"),
    "text_encoder": ("model", "pytorch_model"),
}
# Old diffusers VAE files name the attention layers as in the retired AttentionBlock.
_VAE_DEPRECATED = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _weight_file(folder: Path, sub: str) -> Path:
    d = folder / sub
    if not d.is_dir():
        raise _Problem(f"diffusers folder has no {sub}/ subfolder")
    candidates = []
    for stem in _WEIGHT_NAMES[sub]:
        candidates += [f"{stem}.safetensors", f"{stem}.bin"]
    for stem in _WEIGHT_NAMES[sub]:
        candidates += [f"{stem}.fp16.safetensors", f"{stem}.fp16.bin"]
    for name in candidates:
        if (d / name).is_file():
            return d / name
    raise _Problem(f"{sub}/ has no weights file (looked for {', '.join(candidates[:2])} and variants)")


def _read_weights(f: Path, keep: Callable[[str], bool] = lambda k: True) -> dict[str, torch.Tensor]:
    try:
        sd = _read_safetensors(f, keep) if f.suffix == ".safetensors" else _read_pickle(f)
    except _Problem as e:
        raise _Problem(f"{f.parent.name}/{f.name}: {e}") from None
    return {k: v for k, v in sd.items() if keep(k)}


def _read_json(f: Path) -> dict:
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Problem(f"{f.parent.name}/{f.name} is missing") from None
    except (OSError, ValueError) as e:
        raise _Problem(f"{f.parent.name}/{f.name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise _Problem(f"{f.parent.name}/{f.name} is not a JSON object")
    return data


def _load_folder(p: Path) -> Checkpoint:
    if not (p / "model_index.json").is_file() and not (p / "unet").is_dir():
        raise _Problem("folder is not a diffusers pipeline (no model_index.json, no unet/)")
    files = {sub: _weight_file(p, sub) for sub in ("unet", "vae", "text_encoder")}
    unet = _read_weights(files["unet"])
    vae = _read_weights(files["vae"], lambda k: k.startswith(("decoder.", "post_quant_conv.")))
    for old, new in _VAE_DEPRECATED.items():
        vae = {k.replace(old, new) if "mid_block.attentions." in k else k: v for k, v in vae.items()}
    text = _normalize_text_keys(_read_weights(files["text_encoder"]), "text_encoder/")
    for name, sd in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        if not sd:
            raise _Problem(f"{files[name].parent.name}/{files[name].name} holds no usable weights")
    try:
        config = from_diffusers(p.name, _read_json(p / "unet" / "config.json"), _read_json(p / "vae" / "config.json"),
                                _read_json(p / "text_encoder" / "config.json"))
    except ConfigError as e:
        raise _Problem(str(e)) from None
    tok = p / "tokenizer"
    tokenizer_dir = str(tok) if (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file() else None
    h = hashlib.sha256()
    for sub in ("text_encoder", "unet", "vae"):
        f = files[sub]
        h.update(f"{sub}/{f.name}\0{f.stat().st_size}\0{_sha256_file(f)}\n".encode())
    return Checkpoint(
        path=str(p), format="diffusers", text_encoder=_to_float32(text), unet=_to_float32(unet),
        vae_decoder=_to_float32(vae), config=config, tokenizer_dir=tokenizer_dir, sha256=h.hexdigest(),
        dtype=_source_dtype([unet, vae, text]),
    )


# ---------------------------------------------------------------------------------------------
# Checks against a config and against modules
# ---------------------------------------------------------------------------------------------


def _shape(s: Iterable[int]) -> str:
    return str(tuple(int(x) for x in s))


def _expected_shapes(cfg: ModelConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(component, key, shape) for the weights that pin down widths, depth and vocabulary."""
    u, v, t = cfg.unet, cfg.vae, cfg.text_encoder
    b = u.block_out_channels
    rows = [
        ("unet", "conv_in.weight", (b[0], u.in_channels, 3, 3)),
        ("unet", "conv_out.weight", (u.out_channels, b[0], 3, 3)),
        ("unet", "time_embedding.linear_1.weight", (u.time_embed_dim, u.time_proj_dim)),
        ("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", (b[-1], u.cross_attention_dim)),
    ]
    for i, c in enumerate(b):
        rows.append(("unet", f"down_blocks.{i}.resnets.{u.layers_per_block - 1}.conv2.weight", (c, c, 3, 3)))
        if u.down_block_types[i].startswith("CrossAttn"):
            rows.append(("unet", f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                         (c, u.cross_attention_dim)))
    vb = v.block_out_channels
    rows += [
        ("vae_decoder", "post_quant_conv.weight", (v.latent_channels, v.latent_channels, 1, 1)),
        ("vae_decoder", "decoder.conv_in.weight", (vb[-1], v.latent_channels, 3, 3)),
        ("vae_decoder", "decoder.conv_out.weight", (v.out_channels, vb[0], 3, 3)),
    ]
    for i, c in enumerate(reversed(vb)):
        rows.append(("vae_decoder", f"decoder.up_blocks.{i}.resnets.{v.layers_per_block}.conv2.weight", (c, c, 3, 3)))
    rows += [
        ("text_encoder", "text_model.embeddings.token_embedding.weight", (t.vocab_size, t.hidden_size)),
        ("text_encoder", "text_model.embeddings.position_embedding.weight", (t.max_position_embeddings, t.hidden_size)),
        ("text_encoder", f"text_model.encoder.layers.{t.num_hidden_layers - 1}.mlp.fc1.weight",
         (t.intermediate_size, t.hidden_size)),
    ]
    return rows


def _absent_prefixes(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(component, prefix, what) for layers one past the config's depth, which must not exist."""
    u, v, t = cfg.unet, cfg.vae, cfg.text_encoder
    return [
        ("unet", f"down_blocks.{len(u.block_out_channels)}.", f"{len(u.block_out_channels)} down blocks"),
        ("unet", f"down_blocks.0.resnets.{u.layers_per_block}.", f"layers_per_block={u.layers_per_block}"),
        ("vae_decoder", f"decoder.up_blocks.{len(v.block_out_channels)}.", f"{len(v.block_out_channels)} up blocks"),
        ("vae_decoder", f"decoder.up_blocks.0.resnets.{v.layers_per_block + 1}.",
         f"layers_per_block={v.layers_per_block}"),
        ("text_encoder", f"text_model.encoder.layers.{t.num_hidden_layers}.", f"num_hidden_layers={t.num_hidden_layers}"),
    ]


def check_config(ckpt: Checkpoint, cfg: ModelConfig) -> str | None:
    """The first way the checkpoint's weights contradict ``cfg`` (one line), or None if none is seen."""
    for comp, key, shape in _expected_shapes(cfg):
        sd = ckpt.component(comp)
        if key not in sd:
            return f"{comp}: {key} is missing, the model config {cfg.name!r} expects it with shape {_shape(shape)}"
        if tuple(sd[key].shape) != shape:
            return (f"{comp}: {key} has shape {_shape(sd[key].shape)}, "
                    f"the model config {cfg.name!r} expects {_shape(shape)}")
    for comp, prefix, what in _absent_prefixes(cfg):
        if any(k.startswith(prefix) for k in ckpt.component(comp)):
            return f"{comp}: the checkpoint has {prefix}* but the model config {cfg.name!r} has {what}"
    return None


def _harmless(key: str) -> bool:
    return key.endswith(HARMLESS_SUFFIXES)


def match_state_dict(name: str, module: torch.nn.Module, state: Mapping[str, torch.Tensor],
                     path: str | os.PathLike | None = None) -> None:
    """Loads ``state`` into ``module``, or raises CheckpointError naming ``name`` and the first problem.

    Problems, in the module's key order: a missing key or a shape mismatch; then an unexpected key.
    ``position_ids`` buffers may be missing or extra. Values are copied into the module's own tensors
    (and dtypes).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not _harmless(k)]
    unexpected = [k for k in state if k not in expected and not _harmless(k)]
    for k, t in expected.items():
        if k in state and tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(path, f"{name}: {k} has shape {_shape(state[k].shape)}, "
                                        f"the model expects {_shape(t.shape)}")
        if missing and k == missing[0]:
            raise CheckpointError(path, f"{name}: {k} is missing from the checkpoint "
                                        f"({len(missing)} missing key{'s' if len(missing) > 1 else ''})")
    if unexpected:
        raise CheckpointError(path, f"{name}: {unexpected[0]} is in the checkpoint but not in the model "
                                    f"({len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''})")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def check_against(checkpoint: Checkpoint, modules: Mapping[str, torch.nn.Module]) -> None:
    """``match_state_dict`` for each of ``modules`` (keys from COMPONENTS); errors name the checkpoint."""
    for name, module in modules.items():
        match_state_dict(name, module, checkpoint.component(name), path=checkpoint.path)
