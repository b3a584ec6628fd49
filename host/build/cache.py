"""Content-addressed artifact store.

  <root>/components/<key>/model.tflite + component.json   one converted, verified component
  <root>/builds/<key>/manifest.json + <component>.tflite   one variant (hard links to the components)
  <root>/latest/<model>/<variant>                          alias link to the newest build of that name

A component's key hashes everything that can change its bytes: the architecture config, the switches
that touch its graph, quantization, the weights identity, our source code and the tool versions.
Writes are atomic: a directory is filled under a temporary name and renamed into place, and its
metadata file is written last, so an interrupted build never leaves something that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any
from host.hashing import file_sha256  # noqa: F401  (part of the store's API)

TOOLS = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "tensorflow-cpu", "diffusers", "transformers")
_ROOT = Path(__file__).resolve().parents[2]
# The sources that decide a .tflite's bytes and its verdict: authoring, conversion, gate bounds.
_SOURCES = ("models/*.py", "host/build/convert.py", "host/build/gates.py")
#: sources only some graphs contain: each is part of the keys of the components that use it (``scoped_hash``)
SCOPED = ("models/winograd.py",)


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "absent"
    return out


@lru_cache(maxsize=1)
def code_hash() -> str:
    h = hashlib.sha256()
    scoped = {_ROOT / p for p in SCOPED}
    for pattern in _SOURCES:
        for p in sorted(_ROOT.glob(pattern)):
            if p not in scoped:
                h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def scoped_hash(source: str) -> str:
    """The hash of one of the SCOPED sources."""
    if source not in SCOPED:
        raise ValueError(f"{source} is not a scoped source")
    return hashlib.sha256((_ROOT / source).read_bytes()).hexdigest()[:16]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def component_dir(self, key: str) -> Path:
        return self.root / "components" / key

    def build_dir(self, key: str) -> Path:
        return self.root / "builds" / key

    def load_component(self, key: str) -> dict | None:
        meta = self.component_dir(key) / "component.json"
        if not meta.is_file() or not (self.component_dir(key) / "model.tflite").is_file():
            return None
        try:
            return json.loads(meta.read_text())
        except json.JSONDecodeError:
            return None

    def staging(self, final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    @staticmethod
    def commit(tmp: Path, final: Path, meta_name: str, meta: dict) -> None:
        write_json(tmp / meta_name, meta)
        if final.exists():  # a concurrent or earlier identical build: same key, same content
            shutil.rmtree(tmp)
            return
        os.replace(tmp, final)

    def load_build(self, key: str) -> dict | None:
        meta = self.build_dir(key) / "manifest.json"
        if not meta.is_file():
            return None
        try:
            manifest = json.loads(meta.read_text())
        except json.JSONDecodeError:
            return None
        files = [c["file"] for c in manifest["components"].values()] + [b["file"] for b in manifest.get("profile_blocks", [])]
        if all((self.build_dir(key) / f).is_file() for f in files):
            return manifest
        return None

    def link_latest(self, model: str, variant: str, key: str) -> Path:
        link = self.root / "latest" / model / variant
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(self.build_dir(key), link.parent))
        os.replace(tmp, link)
        return link


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
