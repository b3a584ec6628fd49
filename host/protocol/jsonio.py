"""Reading and writing the protocol's JSON files: readable layout, atomic replace."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from host.protocol.validation import ProtocolError


def dumps(value: Any, indent: int = 2, _level: int = 0) -> str:
    """JSON text with objects indented and arrays of scalars kept on one line (compact for tables)."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return "[" + ", ".join(json.dumps(v, allow_nan=False) for v in value) + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent, _level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(value) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line ProtocolError naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ProtocolError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
