"""Content hashes of files, streamed (model files run to several GB)."""
from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 24


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
