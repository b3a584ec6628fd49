"""Where a build's weights come from: a user checkpoint, or seeded random weights (said loudly).

Resolving a source is cheap (no torch import, no weight read): the content identity of a checkpoint
is its sha256, remembered in a small index keyed by path, size and mtime, so a cache hit stays fast.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from host.errors import HarnessError
from host.hashing import file_sha256
from models.config import ConfigError, ModelConfig, from_diffusers, get_model_config

RANDOM_WEIGHTS_WARNING = (
    "NO CHECKPOINT: using seeded random weights. Images will be noise; timings and memory are real. "
    "Pass --checkpoint PATH (.safetensors, .ckpt or a diffusers folder) for real images."
)
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class WeightsError(HarnessError):
    pass


@dataclass
class WeightsSource:
    kind: str                      # "random" | "checkpoint"
    identity: str                  # "random-seed-<n>" or the checkpoint's content sha256
    config: ModelConfig
    path: str | None = None
    seed: int = 0
    _checkpoint: Any = field(default=None, repr=False)

    @property
    def warning(self) -> str | None:
        return RANDOM_WEIGHTS_WARNING if self.kind == "random" else None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "identity": self.identity, "path": self.path, "seed": self.seed if self.kind == "random" else None,
                "warning": self.warning}

    def state_dict(self, component: str, module) -> dict:
        """The component's weights, in our modules' parameter naming."""
        if self.kind == "random":
            from models.components import random_state_dict

            return random_state_dict(module, self.seed)
        ckpt = self.load()
        from models.clip import canonical_state_dict
        from models.checkpoint import match_state_dict

        state = {"text_encoder": lambda: canonical_state_dict(ckpt.text_encoder), "unet": lambda: ckpt.unet,
                 "vae_decoder": lambda: ckpt.vae_decoder}[component]()
        from models.checkpoint import CheckpointError

        try:
            match_state_dict(component, module, state, self.path)
        except CheckpointError as e:
            raise WeightsError(str(e)) from None
        return state

    def load(self):
        if self._checkpoint is None:
            from models.checkpoint import CheckpointError, load_checkpoint

            try:
                self._checkpoint = load_checkpoint(self.path, self.config)
            except CheckpointError as e:
                raise WeightsError(str(e)) from None
        return self._checkpoint

    @property
    def tokenizer_dir(self) -> str | None:
        if self.kind != "checkpoint" or not os.path.isdir(self.path):
            return None
        d = os.path.join(self.path, "tokenizer")
        return d if all(os.path.isfile(os.path.join(d, f)) for f in ("vocab.json", "merges.txt")) else None


def resolve(model: str, checkpoint: str | None, seed: int, image_size: int | None, index_path: str) -> WeightsSource:
    """Picks the architecture and the weights identity for a build, without reading any weights."""
    if checkpoint is None:
        cfg = get_model_config(model)
        if image_size:
            cfg = cfg.with_image_size(image_size)
        return WeightsSource("random", f"random-seed-{seed}", cfg, None, seed)
    path = os.path.abspath(checkpoint)
    if not os.path.exists(path):
        raise WeightsError(f"{checkpoint}: checkpoint not found")
    if os.path.isdir(path):
        cfg = _folder_config(path, image_size)
        files = sorted(
            os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(WEIGHT_SUFFIXES)
        )
        if not files:
            raise WeightsError(f"{checkpoint}: no weight files in this folder")
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.relpath(f, path).encode() + b"\0" + _file_sha256(f, index_path).encode())
        identity = h.hexdigest()
    else:
        if not path.endswith(WEIGHT_SUFFIXES):
            raise WeightsError(f"{checkpoint}: unknown checkpoint type (expected .safetensors, .ckpt or a diffusers folder)")
        # A single file carries no config: the --model architecture (sd14 by default) must match it,
        # which the loader checks shape by shape.
        cfg = get_model_config(model)
        if image_size:
            cfg = cfg.with_image_size(image_size)
        identity = _file_sha256(path, index_path)
    return WeightsSource("checkpoint", identity, cfg, path)


def _folder_config(path: str, image_size: int | None) -> ModelConfig:
    raw = {}
    for part in ("unet", "vae", "text_encoder"):
        f = os.path.join(path, part, "config.json")
        try:
            with open(f) as fh:
                raw[part] = json.load(fh)
        except FileNotFoundError:
            raise WeightsError(f"{f}: missing (a diffusers folder needs unet/, vae/ and text_encoder/ configs)") from None
        except json.JSONDecodeError as e:
            raise WeightsError(f"{f}: not valid JSON ({e.msg})") from None
    try:
        return from_diffusers(os.path.basename(path.rstrip("/")), raw["unet"], raw["vae"], raw["text_encoder"], image_size)
    except ConfigError as e:
        raise WeightsError(f"{path}: {e}") from None


def _file_sha256(path: str, index_path: str) -> str:
    st = os.stat(path)
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    index: dict[str, str] = {}
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    if key in index:
        return index[key]
    index[key] = file_sha256(path)
    os.makedirs(os.path.dirname(index_path), exist_ok=True)
    tmp = f"{index_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(index, f)
    os.replace(tmp, index_path)
    return index[key]
