"""Creates small SD 1.x checkpoints in the real on-disk formats, for tests.

Every helper is a plain function that takes a target directory, so any test can reuse them:

* ``make_reference_models(config, seed)``  -> ``ReferenceModels``: the diffusers ``UNet2DConditionModel`` and
  ``AutoencoderKL`` and the transformers ``CLIPTextModel`` for ``config`` (default ``models.config.tiny()``),
  with seeded random weights. ``ReferenceModels.state_dicts()`` gives the three state dicts in the naming
  that ``models.checkpoint`` produces (``text_model.*``, UNet, ``post_quant_conv.*`` + ``decoder.*``).
* ``write_tokenizer_dir(dir, vocab_size)``: a tiny CLIP BPE tokenizer folder (vocab.json + merges.txt + configs).
* ``write_diffusers_folder(dir, models)``: a diffusers pipeline folder (model_index.json, unet/, vae/,
  text_encoder/, tokenizer/) written with ``save_pretrained``.
* ``to_ldm_state_dict(models)``: the same weights in the original CompVis/LDM single-file layout, through
  ``host.export.ldm`` (driven by the config, not by the keys: independent of the loader, so loading it
  back is a real round-trip check of both).
* ``write_ldm_safetensors(path, models)`` / ``write_ldm_ckpt(path, models)``: single-file checkpoints.
* ``write_malicious_ckpt(path, marker)``: a pickle that would run ``os.system("touch marker")`` if unpickled
  without ``weights_only``.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from models.config import ModelConfig, tiny

# Words the tiny tokenizer knows as whole tokens (everything else falls apart into byte tokens).
TOKENIZER_WORDS = ("a", "photo", "of", "cat", "an", "astronaut", "riding", "horse", "on", "mars", "the", "dog")


@dataclass
class ReferenceModels:
    """The three reference components (diffusers / transformers classes) for one config."""

    config: ModelConfig
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The expected loader output: keys ``text_encoder``, ``unet``, ``vae_decoder``."""
        te = {}
        for k, v in self.text_encoder.state_dict().items():
            if k.endswith("position_ids"):
                continue
            te[k if k.startswith("text_model.") else "text_model." + k] = v
        vae = {k: v for k, v in self.vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
        return {"text_encoder": te, "unet": dict(self.unet.state_dict()), "vae_decoder": vae}


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter gets distinct random values (default inits leave many exact zeros/ones)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def make_reference_models(config: ModelConfig | None = None, seed: int = 0) -> ReferenceModels:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = config or tiny()
    u, v, t = cfg.unet, cfg.vae, cfg.text_encoder
    unet = UNet2DConditionModel(
        sample_size=u.sample_size,
        in_channels=u.in_channels,
        out_channels=u.out_channels,
        down_block_types=u.down_block_types,
        up_block_types=u.up_block_types,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=u.cross_attention_dim,
        norm_num_groups=u.norm_num_groups,
        norm_eps=u.norm_eps,
    )
    vae = AutoencoderKL(
        in_channels=v.out_channels,
        out_channels=v.out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(v.block_out_channels),
        up_block_types=v.up_block_types,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_num_groups,
        sample_size=cfg.image_size,
        scaling_factor=v.scaling_factor,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            max_position_embeddings=t.max_position_embeddings,
            layer_norm_eps=t.layer_norm_eps,
            hidden_act=t.hidden_act,
            bos_token_id=t.vocab_size - 2,
            eos_token_id=t.vocab_size - 1,
            pad_token_id=t.vocab_size - 1,
        )
    )
    gen = torch.Generator().manual_seed(seed)
    for m in (unet, vae, text_encoder):
        _randomize(m, gen)
        m.eval()
    return ReferenceModels(cfg, unet, vae, text_encoder)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (the public byte-level BPE convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer_dir(directory: str | os.PathLike, vocab_size: int = 1000,
                        words: tuple[str, ...] = TOKENIZER_WORDS) -> Path:
    """A CLIP-style BPE tokenizer folder with exactly ``vocab_size`` entries.

    Layout like CLIP's: 256 byte tokens, the same with ``</w>``, the merge results (each word merged
    left to right into one ``word</w>`` token), unreachable filler, then ``<|startoftext|>`` =
    vocab_size-2 and ``<|endoftext|>`` = vocab_size-1 (also pad, as for SD 1.x).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if pair not in merges:
                merges.append(pair)
                if merged not in vocab_list:
                    vocab_list.append(merged)
            parts = [merged] + parts[2:]
    if len(vocab_list) + 2 > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} too small for {len(vocab_list) + 2} tokens")
    vocab_list += [f"<|unused{i}|>" for i in range(vocab_size - 2 - len(vocab_list))]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (d / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    return d


# ---------------------------------------------------------------------------------------------
# diffusers folder
# ---------------------------------------------------------------------------------------------


def write_diffusers_folder(directory: str | os.PathLike, models: ReferenceModels, *, fp16_variant: bool = False,
                           text_model_prefix: bool = False, with_tokenizer: bool = True) -> Path:
    """A diffusers pipeline folder.

    fp16_variant: save only ``*.fp16.safetensors`` weight files (half precision), as hub variants do.
    text_model_prefix: rewrite the text encoder file with ``text_model.*`` keys (transformers 4.x files,
        e.g. the SD 1.5 hub repos), instead of transformers 5's bare keys.
    """
    from safetensors.torch import load_file, save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    kw = {"variant": "fp16"} if fp16_variant else {}
    if fp16_variant:
        # Save half-precision copies without touching the reference modules.
        import copy

        for name, m in (("unet", models.unet), ("vae", models.vae), ("text_encoder", models.text_encoder)):
            copy.deepcopy(m).half().save_pretrained(d / name, **kw)
    else:
        models.unet.save_pretrained(d / "unet")
        models.vae.save_pretrained(d / "vae")
        models.text_encoder.save_pretrained(d / "text_encoder")
    if text_model_prefix:
        te_file = d / "text_encoder" / ("model.fp16.safetensors" if fp16_variant else "model.safetensors")
        sd = load_file(te_file)
        save_file({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()},
                  te_file, metadata={"format": "pt"})
    if with_tokenizer:
        write_tokenizer_dir(d / "tokenizer", models.config.text_encoder.vocab_size)
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }, indent=2))
    return d


def to_ldm_state_dict(models: ReferenceModels, *, old_text_keys: bool = False,
                      extras: bool = True) -> dict[str, torch.Tensor]:
    """The reference weights in the original single-file layout (``model.diffusion_model.*`` ...).

    old_text_keys: text encoder keys without ``text_model.`` (files saved with transformers < 4.22).
    extras: also add what real files carry and the loader must skip: the VAE encoder, the noise
        schedule buffers, EMA bookkeeping and the text encoder's ``position_ids``.
    """
    from host.export.ldm import LDM_TEXT, to_ldm

    cfg = models.config
    vae_all = dict(models.vae.state_dict())
    sd = to_ldm(cfg, dict(models.unet.state_dict()), vae_all, models.state_dicts()["text_encoder"])
    te_prefix = LDM_TEXT + ("" if old_text_keys else "text_model.")
    if old_text_keys:
        sd = {(te_prefix + k[len(LDM_TEXT + "text_model."):] if k.startswith(LDM_TEXT) else k): v for k, v in sd.items()}
    if extras:
        for k, v in vae_all.items():
            if k.startswith(("encoder.", "quant_conv.")):
                sd["first_stage_model." + k] = v  # names not converted: the loader must ignore them anyway
        sd[te_prefix + "embeddings.position_ids"] = torch.arange(cfg.text_encoder.max_position_embeddings)[None]
        sd["betas"] = torch.linspace(1e-4, 2e-2, 10)
        sd["alphas_cumprod"] = torch.linspace(1.0, 0.1, 10)
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(100, dtype=torch.int32)
    return {k: v.contiguous() for k, v in sd.items()}


def write_ldm_safetensors(path: str | os.PathLike, models: ReferenceModels, dtype: torch.dtype | None = None,
                          **kw) -> Path:
    from safetensors.torch import save_file

    sd = to_ldm_state_dict(models, **kw)
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    p = Path(path)
    save_file(sd, p)
    return p


def write_ldm_ckpt(path: str | os.PathLike, models: ReferenceModels, *, wrap: bool = True, **kw) -> Path:
    """A ``.ckpt``: a plain dict of tensors, inside ``{"state_dict": ...}`` when ``wrap`` (as Lightning saves)."""
    sd = to_ldm_state_dict(models, **kw)
    obj = {"state_dict": sd, "global_step": 470000, "epoch": 6} if wrap else sd
    p = Path(path)
    torch.save(obj, p)
    return p


class _RunsShell:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_malicious_ckpt(path: str | os.PathLike, marker: str | os.PathLike, *, legacy: bool = False) -> Path:
    """A checkpoint whose pickle runs ``touch marker`` when loaded unsafely.

    legacy=False: torch.save's zip format; legacy=True: a bare pickle stream.
    """
    obj = {"state_dict": {"model.diffusion_model.conv_in.weight": torch.zeros(1)},
           "payload": _RunsShell(f"touch {marker}")}
    p = Path(path)
    if legacy:
        with open(p, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, p)
    return p
