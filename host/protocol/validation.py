"""JSON Schema validation of protocol files, with one-line errors naming the file and the JSON path.

The schemas (draft 2020-12) live next to this module: ``run_request.schema.json``,
``trace_record.schema.json`` and ``status.schema.json``. They are the contract the Kotlin and Swift
runners test against too.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from host.errors import HarnessError
from host.protocol.constants import RECORD_TYPES, REQUEST_FILE, STATUS_FILE, TRACE_FILE

SCHEMA_DIR = Path(__file__).resolve().parent
REQUEST_SCHEMA_FILE = "run_request.schema.json"
TRACE_RECORD_SCHEMA_FILE = "trace_record.schema.json"
STATUS_SCHEMA_FILE = "status.schema.json"


class ProtocolError(HarnessError):
    """A protocol file that breaks its schema or the protocol's rules. ``str()`` is one line:
    ``<file>: <JSON path>: <what is wrong>``."""


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / name


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file ``name`` (cached; treat it as read-only)."""
    with open(schema_path(name), encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def _validator(name: str, ref: str | None = None) -> Draft202012Validator:
    """Validator for schema ``name``, or for its ``$defs/<ref>`` branch (same root, so local $refs resolve)."""
    schema = load_schema(name)
    if ref is not None:
        schema = {k: v for k, v in schema.items() if k != "oneOf"} | {"$ref": f"#/$defs/{ref}"}
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if key.isidentifier() else f"{parent}[{json.dumps(key)}]"


def describe(error: ValidationError) -> str:
    """``<JSON path>: <problem>`` for one schema error, always one line, naming the offending key."""
    path, kind, inst = error.json_path, error.validator, error.instance
    if kind == "required" and isinstance(inst, dict):
        missing = [k for k in error.validator_value if k not in inst]
        return f"{_key_path(path, missing[0])}: required key is missing"
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(inst, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in known)
        return f"{_key_path(path, extra[0])}: unexpected key" if extra else f"{path}: unexpected key"
    if kind == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{path}: expected {want}, got {_short(inst)}"
    if kind == "const":
        return f"{path}: expected {_short(error.validator_value)}, got {_short(inst)}"
    if kind == "enum":
        return f"{path}: expected one of {_short(error.validator_value, 120)}, got {_short(inst)}"
    if kind in ("minItems", "maxItems"):
        return f"{path}: {len(inst)} items, {kind} is {error.validator_value}"
    if kind == "not":  # the schema's "not" rules are reserved values (a block may not be named "unet")
        return f"{path}: {_short(inst)} is reserved ({error.schema.get('description', 'not allowed')})"
    if kind == "pattern":
        return f"{path}: {_short(inst)} does not match {error.validator_value}"
    first = error.message.splitlines()[0] if error.message else kind
    return f"{path}: {first[:200]}"


def _check(validator: Draft202012Validator, instance: Any, source: str) -> None:
    error = best_match(validator.iter_errors(instance))  # prefers the shallowest error
    if error is not None:
        raise ProtocolError(f"{source}: {describe(error)}")


def validate_request(data: Any, source: str = REQUEST_FILE) -> dict[str, Any]:
    """Validate a RunRequest dict against ``run_request.schema.json``; returns ``data``."""
    _check(_validator(REQUEST_SCHEMA_FILE), data, source)
    return data


def validate_trace_record(data: Any, source: str = TRACE_FILE) -> dict[str, Any]:
    """Validate one trace record: its ``type`` picks the oneOf branch, so errors name the exact key."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: $: expected object, got {_short(data)}")
    kind = data.get("type")
    if kind not in RECORD_TYPES:
        problem = f"expected one of {list(RECORD_TYPES)}, got {_short(kind)}" if "type" in data else "required key is missing"
        raise ProtocolError(f"{source}: $.type: {problem}")
    # The branches' "type" consts are disjoint, so passing the branch named by "type" is passing the oneOf.
    _check(_validator(TRACE_RECORD_SCHEMA_FILE, kind), data, source)
    return data


def validate_status(data: Any, source: str = STATUS_FILE) -> dict[str, Any]:
    """Validate a status dict against ``status.schema.json``; returns ``data``."""
    _check(_validator(STATUS_SCHEMA_FILE), data, source)
    return data
