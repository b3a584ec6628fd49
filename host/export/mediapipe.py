"""Weights for Google's MediaPipe Image Generator, the peer engine of the Android runner.

The folder format is the one MediaPipe's ``image_generator_converter`` writes and
``ImageGeneratorOptions.setImageGeneratorModelDirectory`` reads: one file per tensor of the SD 1.x
checkpoint in its original CompVis/LDM naming, called ``<LDM key>.bin``, holding the tensor's values as raw
little-endian float16 in row-major order (no header); the VAE encoder is left out (generation does not
use it); plus the CLIP BPE merge list as ``bpe_simple_vocab_16e6.txt``.

Any weights source works (an LDM file, a diffusers folder, or the seeded random weights of a timing-only
comparison): the weights are taken through our loader, renamed to LDM by ``host.export.ldm`` and checked
to rename back to exactly what was loaded. The LDM files' DDPM schedule buffers are computed from the SD
1.x training schedule (scaled-linear betas 0.00085 to 0.012 over 1000 steps), as LDM registers them.

The vocabulary comes from ``--vocab`` (a ``bpe_simple_vocab_16e6.txt`` or a ``merges.txt``), else the
checkpoint folder's ``tokenizer/merges.txt`` (CLIP's merge list, the lines MediaPipe and CLIP read), else
it is synthetic: the same number of merges over the byte alphabet, loadable, useless for real prompts, and
said loudly (with random weights the images are noise anyway).

``python -m host.export mediapipe [--model sd14] [--checkpoint PATH] [--seed-weights N] [--vocab FILE]
--out DIR``; ``host.deploy --engine mediapipe`` calls it and pushes the folder (unchanged files skipped).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from host.errors import HarnessError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt"
MANIFEST = ".sdphone-mediapipe.json"
FORMAT = "mediapipe-image-generator-bins"
N_MERGES = 49152 - 256 - 2   # the merges CLIP's tokenizer reads (after the header line)
SYNTHETIC_VOCAB_WARNING = ("MediaPipe export: no CLIP vocabulary (pass --vocab bpe_simple_vocab_16e6.txt or a "
                           "checkpoint folder with tokenizer/merges.txt): wrote a synthetic merge list; the "
                           "Image Generator loads and runs with it, but prompts are not tokenized as CLIP would")
EXPORT_VERSION = 1


class ExportError(HarnessError):
    pass


def ldm_schedule(timesteps: int = 1000, start: float = 0.00085, end: float = 0.012) -> dict[str, np.ndarray]:
    """The DDPM buffers an SD 1.x LDM checkpoint carries (LatentDiffusion.register_schedule, v-posterior 0)."""
    betas = np.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def ldm_tensors(weights) -> dict[str, np.ndarray]:
    """Every tensor of the export, LDM-named, float32 (``weights``: a host.build.weights.WeightsSource)."""
    import torch

    from host.export.ldm import LDM_TEXT, to_ldm
    from models.components import build_module

    cfg = weights.config
    ours = {c: weights.state_dict(c, build_module(c, cfg)) for c in ("unet", "vae_decoder", "text_encoder")}
    ldm = to_ldm(cfg, ours["unet"], ours["vae_decoder"], ours["text_encoder"])
    _check_round_trip(ldm, ours)
    out = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in ldm.items()}
    out[LDM_TEXT + "text_model.embeddings.position_ids"] = np.arange(
        cfg.text_encoder.max_position_embeddings, dtype=np.float32)[None]
    out.update(ldm_schedule())
    return out


def _check_round_trip(ldm: dict, ours: dict) -> None:
    """The LDM names must load back (models.checkpoint's key-driven converters) to exactly our names."""
    from host.export.ldm import LDM_TEXT, LDM_UNET, LDM_VAE
    from models.checkpoint import _convert_ldm_unet, _convert_ldm_vae

    unet = _convert_ldm_unet({k[len(LDM_UNET):]: v for k, v in ldm.items() if k.startswith(LDM_UNET)})
    vae = _convert_ldm_vae({k[len(LDM_VAE):]: v for k, v in ldm.items() if k.startswith(LDM_VAE)})
    text = {k[len(LDM_TEXT):]: v for k, v in ldm.items() if k.startswith(LDM_TEXT)}
    want_text = {(k if k.startswith("text_model.") else "text_model." + k) for k in ours["text_encoder"]
                 if not k.endswith("position_ids")}
    for name, got, want in (("unet", set(unet), set(ours["unet"])), ("vae_decoder", set(vae), set(ours["vae_decoder"])),
                            ("text_encoder", set(text), want_text)):
        if got != want:
            diff = sorted(got ^ want)
            raise ExportError(f"{name}: LDM names do not load back to ours ({len(diff)} differ, e.g. {diff[0]})")


def synthetic_merges(n: int = N_MERGES) -> list[str]:
    """``n`` distinct merges of two byte-alphabet symbols (CLIP's byte-to-unicode alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, k = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    alphabet = [chr(c) for c in cs]
    out = []
    for a in alphabet:
        for b in alphabet + [c + "</w>" for c in alphabet]:
            out.append(f"{a} {b}")
            if len(out) == n:
                return out
    raise ExportError(f"cannot make {n} synthetic merges")


def vocab_text(vocab: str | os.PathLike | None, checkpoint: str | None) -> tuple[str, str]:
    """(the vocabulary file's text, where it came from)."""
    if vocab is not None:
        p = Path(vocab)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExportError(f"{p}: cannot read the vocabulary ({e})") from None
        lines = text.splitlines()
        if len(lines) < 2 or any(len(l.split(" ")) != 2 for l in lines[1:101] if l):
            raise ExportError(f"{p}: not a BPE merge list (expected a header line, then 'a b' pairs)")
        return text, str(p)
    if checkpoint and Path(checkpoint).is_dir() and (Path(checkpoint) / "tokenizer" / "merges.txt").is_file():
        p = Path(checkpoint) / "tokenizer" / "merges.txt"
        return p.read_text(encoding="utf-8"), str(p)
    return "#version: 0.2 (synthetic: sdphone)\n" + "\n".join(synthetic_merges()) + "\n", "synthetic"


def export_key(weights, vocab_source: str, vocab: str) -> str:
    blob = json.dumps([EXPORT_VERSION, weights.identity, weights.config.name,
                       hashlib.sha256(vocab.encode()).hexdigest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def export(weights, out: str | os.PathLike, *, vocab: str | os.PathLike | None = None,
           log: Callable[[str], None] = print) -> Path:
    """Write the MediaPipe folder to ``out`` (atomically: a sibling temp folder renamed into place)."""
    return _write(weights, Path(out), *vocab_text(vocab, weights.path if weights.kind == "checkpoint" else None),
                  log=log)


def _write(weights, out: Path, text: str, source: str, log: Callable[[str], None]) -> Path:
    if source == "synthetic":
        log(f"WARNING: {SYNTHETIC_VOCAB_WARNING}")
    tensors = ldm_tensors(weights)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        total = 0
        for key, arr in tensors.items():
            with np.errstate(over="ignore"):
                half = arr.astype("<f2")
            if not np.isfinite(half).all():
                bad = int((~np.isfinite(half)).sum())
                raise ExportError(f"{key}: {bad} value(s) do not fit float16 (largest |x| "
                                  f"{float(np.abs(arr).max()):.4g} > 65504)")
            half.tofile(tmp / f"{key}.bin")
            total += half.nbytes
        (tmp / VOCAB_FILE).write_text(text, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps({
            "format": FORMAT, "version": EXPORT_VERSION, "model": weights.config.name,
            "weights": weights.describe(), "tensors": len(tensors), "bytes": total, "dtype": "float16",
            "vocab": source, "key": export_key(weights, source, text)}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"MediaPipe Image Generator weights: {len(tensors)} tensors, {total / 2**20:.1f} MiB float16 -> {out}")
    return out


def cached_export(weights, root: str | os.PathLike, *, vocab: str | os.PathLike | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """The export in the artifact store (``<root>/mediapipe/<key>/``), made once per weights and vocabulary."""
    text, source = vocab_text(vocab, weights.path if weights.kind == "checkpoint" else None)
    folder = Path(root) / "mediapipe" / export_key(weights, source, text)
    if (folder / MANIFEST).is_file():
        return folder
    return _write(weights, folder, text, source, log=log)


def read_bin(path: str | os.PathLike) -> np.ndarray:
    """One exported tensor back, as float16 (flat: the format stores no shape)."""
    return np.fromfile(path, dtype="<f2")


def is_export(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST).is_file() and (Path(folder) / VOCAB_FILE).is_file()
