"""Shared helpers for the app contract tests (tests/apps/): the protocol's JSON schemas and golden files.

Generic on purpose: each app's test maps its own source-level names onto these.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "host" / "protocol"
GOLDEN = PROTOCOL / "golden"
SCHEMA_FILES = ("run_request.schema.json", "trace_record.schema.json", "status.schema.json")


@lru_cache(maxsize=None)
def schema(name: str) -> dict[str, Any]:
    """One of host/protocol/*.schema.json, parsed."""
    return json.loads((PROTOCOL / name).read_text())


def resolve(pointer: str) -> dict[str, Any]:
    """The schema object at ``"<file>#<json pointer>"`` (e.g. ``run_request.schema.json#/$defs/model``),
    following ``$ref`` (local to that file) on the way and at the end."""
    file, _, frag = pointer.partition("#")
    root = schema(file)
    node: Any = root
    for part in [p for p in frag.split("/") if p]:
        node = _deref(root, node)
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return _deref(root, node)


def _deref(root: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local $refs are supported, got {ref}"
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def properties(pointer: str) -> tuple[set[str], set[str], bool]:
    """(property names, required names, closed?) of the schema object at ``pointer``."""
    node = resolve(pointer)
    props = set(node.get("properties", {}))
    required = set(node.get("required", []))
    closed = node.get("additionalProperties", True) is False
    return props, required, closed


def allowed_values(pointer: str) -> set[Any]:
    """The values an ``enum`` or ``const`` at ``pointer`` allows (null left out)."""
    node = resolve(pointer)
    if "const" in node:
        values = [node["const"]]
    elif "enum" in node:
        values = list(node["enum"])
    else:
        raise KeyError(f"{pointer}: neither enum nor const")
    return {v for v in values if v is not None}


def golden_json(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def golden_trace(name: str = "trace.jsonl") -> list[dict[str, Any]]:
    """Records of a golden trace (a truncated last line is skipped, as readers do)."""
    out = []
    lines = (GOLDEN / name).read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return out
