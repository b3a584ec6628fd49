"""Checks of android_app/ that need no Android SDK.

* every .kt / .kts file parses with tree-sitter-kotlin without ERROR or MISSING nodes;
* the protocol contract: the key objects in android_app/.../protocol/Keys.kt (@SchemaObject, @SchemaEnum)
  match host/protocol/*.schema.json exactly, no JSON accessor in the app takes a string-literal key,
  every key constant is used by a read or write, the golden files' keys are all known to the app, and
  the run-folder file names / tensor names equal host/protocol/constants.py;
* HostContract.kt and android_app/host_contract.json (read by the Python host) say the same thing, and
  agree with app/build.gradle.kts, the manifest and the README's `am start` command;
* the Gradle files name the LiteRT, LiteRT GPU and MediaPipe artifacts and the SDK levels asked for;
* (slow, and only where `kotlinc` is on PATH) the pure-Kotlin protocol and pipeline code, compiled for the
  JVM, runs a run folder with a fake backend: trace / status validate against the schemas and image.f32
  equals the Python host runner's algorithm (host/runner/pipeline.py) fed the same fake models, bit for bit.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tree_sitter_kotlin
from tree_sitter import Language, Node, Parser

from host.protocol import constants as C
from tests.apps import contract

APP = contract.ROOT / "android_app"
MAIN = APP / "app" / "src" / "main" / "java" / "com" / "sdphone" / "runner"
KEYS_KT = MAIN / "protocol" / "Keys.kt"
HOST_CONTRACT_KT = MAIN / "HostContract.kt"

# JsonObj / JsonBuilder methods whose first argument is a JSON key (android_app/.../protocol/Json.kt).
ACCESSORS = {
    "has", "getString", "optString", "getNullableString", "getLong", "getInt", "optInt", "getDouble", "getBool",
    "getObj", "getArray", "getObjects", "getInts", "getDoubles", "getDoubleRows", "getIntRows", "put", "putOpt", "optBool",
}
# Key objects in Keys.kt that no schema pins down (args are open objects in every record).
UNBOUND_KEY_OBJECTS = {"Args"}

KOTLIN = Language(tree_sitter_kotlin.language())


# ----------------------------------------------------------------------------------------------- tree-sitter


@lru_cache(maxsize=None)
def _tree(path: Path):
    return Parser(KOTLIN).parse(path.read_bytes())


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for c in node.children:
        yield from _walk(c)


def _text(node: Node) -> str:
    return node.text.decode()


def _kotlin_files(*, main_only: bool = False) -> list[Path]:
    root = APP / "app" / "src" / "main" if main_only else APP
    return sorted(p for p in root.rglob("*.kt") if "build" not in p.relative_to(APP).parts)


def _string_value(node: Node) -> str | None:
    """The value of a Kotlin string literal without templates; None for anything else."""
    if node.type != "string_literal":
        return None
    out = []
    for c in node.children:
        if c.type == "string_content":
            out.append(_text(c))
        elif c.type == "escape_sequence":
            esc = _text(c)
            simple = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\b": "\b", '\\"': '"', "\\'": "'", "\\\\": "\\", "\\$": "$"}
            if esc in simple:
                out.append(simple[esc])
            elif esc.startswith("\\u"):
                out.append(chr(int(esc[2:], 16)))
            else:
                raise AssertionError(f"unknown escape {esc!r}")
        elif c.type in ('"', '"""'):
            continue
        else:
            return None  # a template ($name, ${...})
    return "".join(out)


def _annotation(obj: Node, name: str) -> Node | None:
    """The value_arguments node of annotation @name on a declaration, or None."""
    for c in obj.children:
        if c.type != "modifiers":
            continue
        for ann in c.children:
            if ann.type != "annotation":
                continue
            for inv in ann.children:
                if inv.type == "constructor_invocation":
                    user_type = next(x for x in inv.children if x.type == "user_type")
                    if _text(user_type) == name:
                        return next((x for x in inv.children if x.type == "value_arguments"), None)
                elif inv.type == "user_type" and _text(inv) == name:
                    return None
    return None


def _consts(obj: Node) -> dict[str, Any]:
    """`const val NAME = <string or int literal>` directly in an object's body."""
    out: dict[str, Any] = {}
    body = next((c for c in obj.children if c.type == "class_body"), None)
    for prop in body.children if body is not None else ():
        if prop.type != "property_declaration":
            continue
        mods = next((c for c in prop.children if c.type == "modifiers"), None)
        if mods is None or "const" not in _text(mods).split():
            continue
        name = _text(next(c for c in prop.children if c.type == "variable_declaration"))
        value_node = prop.children[-1]
        if value_node.type == "string_literal":
            value = _string_value(value_node)
            assert value is not None, f"{name}: const strings must be plain literals"
        elif value_node.type == "number_literal":
            value = int(_text(value_node))
        else:
            raise AssertionError(f"{name}: unexpected const initializer {value_node.type}")
        out[name] = value
    return out


def _objects(path: Path) -> dict[str, Node]:
    """Every object declaration of a file by dotted name (nested objects: Keys.Request)."""
    out: dict[str, Node] = {}

    def visit(node: Node, prefix: str) -> None:
        for c in node.children:
            if c.type == "object_declaration":
                name = prefix + _text(c.child_by_field_name("name"))
                out[name] = c
                body = next((x for x in c.children if x.type == "class_body"), None)
                if body is not None:
                    visit(body, name + ".")

    visit(_tree(path).root_node, "")
    return out


def _args(value_arguments: Node) -> tuple[list[Node], dict[str, Node]]:
    """(positional, named) argument expressions of a value_arguments node."""
    positional, named = [], {}
    for arg in value_arguments.children:
        if arg.type != "value_argument":
            continue
        kids = [k for k in arg.children if k.is_named]
        if len(kids) == 2 and kids[0].type == "identifier":
            named[_text(kids[0])] = kids[1]
        else:
            positional.append(kids[-1])
    return positional, named


@lru_cache(maxsize=None)
def _schema_objects() -> dict[str, tuple[str, bool, dict[str, Any]]]:
    """Keys.X objects marked @SchemaObject: name -> (pointer, open, consts)."""
    out = {}
    for name, obj in _objects(KEYS_KT).items():
        args = _annotation(obj, "SchemaObject")
        if args is None:
            continue
        _, named = _args(args)
        assert "pointer" in named, f"@SchemaObject on {name}: write pointer = \"...\" (named: the grammar needs it)"
        pointer = _string_value(named["pointer"])
        is_open = _text(named["open"]) == "true" if "open" in named else False
        out[name] = (pointer, is_open, _consts(obj))
    return out


@lru_cache(maxsize=None)
def _schema_enums() -> dict[str, tuple[list[str], bool, dict[str, Any]]]:
    out = {}
    for name, obj in _objects(KEYS_KT).items():
        args = _annotation(obj, "SchemaEnum")
        if args is None:
            continue
        _, named = _args(args)
        lit = named.get("pointers")
        assert lit is not None and lit.type == "collection_literal", f"@SchemaEnum on {name}: write pointers = [..]"
        pointers = [_string_value(x) for x in lit.children if x.type == "string_literal"]
        subset = _text(named["subset"]) == "true" if "subset" in named else False
        out[name] = (pointers, subset, _consts(obj))
    return out


def test_schema_annotations_are_all_seen() -> None:
    """Each @SchemaObject / @SchemaEnum in Keys.kt attaches to an object in the parse tree (a misparse,
    e.g. an annotation read as an expression, would silently skip a contract check)."""
    text = KEYS_KT.read_text()
    assert len(_schema_objects()) == len(re.findall(r"^\s*@SchemaObject\(", text, re.M))
    assert len(_schema_enums()) == len(re.findall(r"^\s*@SchemaEnum\(", text, re.M))
    stray = [n for n in _walk(_tree(KEYS_KT).root_node)
             if n.type == "annotated_expression" and re.match(r"@Schema(Object|Enum)\b", _text(n))]
    assert not stray, f"annotations parsed as expressions: {[_text(n)[:60] for n in stray]}"


def _key_objects() -> dict[str, dict[str, Any]]:
    """Keys.X nested objects: short name (Request, Span, ...) -> consts."""
    return {name.split(".", 1)[1]: _consts(obj) for name, obj in _objects(KEYS_KT).items() if name.startswith("Keys.")}


def _top_consts(name: str) -> dict[str, Any]:
    return _consts(_objects(KEYS_KT)[name])


# ----------------------------------------------------------------------------------------------- parsing


def _errors(path: Path) -> list[str]:
    src = path.read_bytes()
    out = []
    for n in _walk(_tree(path).root_node):
        if n.is_error or n.is_missing:
            line = src.splitlines()[n.start_point[0]].decode(errors="replace").strip() if src else ""
            out.append(f"{path.relative_to(APP)}:{n.start_point[0] + 1}:{n.start_point[1] + 1}: "
                       f"{'MISSING ' + n.type if n.is_missing else 'ERROR'} in: {line[:100]}")
    return out


def test_android_project_layout() -> None:
    for rel in ("settings.gradle.kts", "build.gradle.kts", "gradle.properties", "gradle/libs.versions.toml",
                "gradle/wrapper/gradle-wrapper.properties", "app/build.gradle.kts", "app/proguard-rules.pro",
                "app/src/main/AndroidManifest.xml", "host_contract.json", "README.md"):
        assert (APP / rel).is_file(), f"android_app/{rel} is missing"
    assert not list(APP.rglob("gradle-wrapper.jar")), "no binary wrapper jar is committed (see the README)"
    names = {p.name for p in _kotlin_files(main_only=True)}
    for need in ("HostContract.kt", "Runner.kt", "TraceWriter.kt", "Keys.kt", "RunRequest.kt", "Records.kt",
                 "HeadlessRunActivity.kt", "MainActivity.kt", "DemoScreen.kt", "MediaPipeRunner.kt", "LiteRtBackend.kt"):
        assert need in names, f"{need} is missing from android_app/app/src/main"


def test_every_kotlin_file_parses() -> None:
    files = _kotlin_files()
    assert len(files) >= 15
    errors = [e for p in files for e in _errors(p)]
    assert not errors, "tree-sitter-kotlin found syntax errors:\n" + "\n".join(errors)


def test_every_gradle_script_parses() -> None:
    files = sorted(APP.rglob("*.kts"))
    assert {p.name for p in files} == {"settings.gradle.kts", "build.gradle.kts"} and len(files) == 3
    errors = [e for p in files for e in _errors(p)]
    assert not errors, "tree-sitter-kotlin found syntax errors:\n" + "\n".join(errors)


# ----------------------------------------------------------------------------------------------- protocol contract


def test_key_objects_match_the_schemas() -> None:
    objs = _schema_objects()
    assert len(objs) >= 18, "expected the @SchemaObject key objects of Keys.kt"
    unbound = set(_key_objects()) - {n.split(".", 1)[1] for n in objs}
    assert unbound == UNBOUND_KEY_OBJECTS, f"Keys objects without @SchemaObject: {sorted(unbound)}"
    problems = []
    for name, (pointer, is_open, consts) in sorted(objs.items()):
        keys = set(consts.values())
        props, required, closed = contract.properties(pointer)
        if is_open == closed:
            problems.append(f"{name}: open={is_open} but the schema at {pointer} has additionalProperties "
                            f"{'false' if closed else 'open'}")
        if not required <= keys:
            problems.append(f"{name}: required key(s) {sorted(required - keys)} of {pointer} have no Kotlin constant")
        if not props <= keys:
            problems.append(f"{name}: schema key(s) {sorted(props - keys)} of {pointer} have no Kotlin constant")
        if closed and keys - props:
            problems.append(f"{name}: Kotlin key(s) {sorted(keys - props)} are not in {pointer} (renamed or removed?)")
        if len(keys) != len(consts):
            problems.append(f"{name}: two constants share a value")
    assert not problems, "Keys.kt disagrees with host/protocol/*.schema.json:\n" + "\n".join(problems)


def test_value_objects_match_the_schema_enums() -> None:
    enums = _schema_enums()
    for need in ("RecordType", "SpanCat", "State", "AcceleratorName", "PrecisionName", "Dtype", "SchemaId", "RunnerName"):
        assert need in enums, f"Keys.kt: @SchemaEnum object {need} is missing"
    problems = []
    for name, (pointers, subset, consts) in sorted(enums.items()):
        allowed: set[Any] = set().union(*(contract.allowed_values(p) for p in pointers))
        values = set(consts.values())
        if subset and not values <= allowed:
            problems.append(f"{name}: {sorted(values - allowed)} not allowed by {pointers}")
        if not subset and values != allowed:
            problems.append(f"{name}: Kotlin {sorted(values)} != schema {sorted(allowed)} ({pointers})")
    assert not problems, "\n".join(problems)
    assert enums["RunnerName"][2] == {"ANDROID": "android"}


def _key_uses() -> tuple[set[str], list[str]]:
    """(Keys constants used as JSON keys, e.g. "Span.NAME"; violations: string literals used as keys)."""
    used: set[str] = set()
    bad: list[str] = []

    def record(expr: Node, path: Path, what: str) -> None:
        if expr.type == "string_literal":
            bad.append(f"{path.relative_to(APP)}:{expr.start_point[0] + 1}: {what} with a string-literal key "
                       f"{_text(expr)} (use a Keys constant)")
        elif expr.type == "navigation_expression":
            text = _text(expr)
            used.add(text[len("Keys."):] if text.startswith("Keys.") else text)

    for path in _kotlin_files(main_only=True):
        if path == KEYS_KT:
            continue
        for n in _walk(_tree(path).root_node):
            if n.type == "call_expression":
                callee = n.children[0]
                name = _text(callee.children[-1]) if callee.type == "navigation_expression" else _text(callee)
                args = next((c for c in n.children if c.type == "value_arguments"), None)
                if name in ACCESSORS and args is not None:
                    pos, _ = _args(args)
                    if pos:
                        record(pos[0], path, f"{name}()")
            elif n.type == "infix_expression" and len(n.children) == 3 and _text(n.children[1]) == "to":
                record(n.children[0], path, "a `to` pair")
    return used, bad


def test_no_string_literal_json_keys() -> None:
    _, bad = _key_uses()
    assert not bad, "\n".join(bad)


def test_every_key_constant_is_read_or_written() -> None:
    used, _ = _key_uses()
    missing = [f"Keys.{obj}.{name}" for obj, consts in sorted(_key_objects().items()) for name in consts
               if f"{obj}.{name}" not in used]
    assert not missing, ("key constants that no JSON read or write uses (a schema key the runner does not "
                         "handle?): " + ", ".join(missing))


def test_required_schema_keys_are_handled() -> None:
    """Every required key of every schema object that the app models is read or written by the app."""
    used, _ = _key_uses()
    problems = []
    for name, (pointer, _open, consts) in _schema_objects().items():
        short = name.split(".", 1)[1]
        by_value = {v: k for k, v in consts.items()}
        _props, required, _closed = contract.properties(pointer)
        for key in sorted(required):
            const = by_value.get(key)
            if const is None or f"{short}.{const}" not in used:
                problems.append(f"{pointer}: required key {key!r} is not read/written via Keys.{short}")
    assert not problems, "\n".join(problems)


def _known(obj: str) -> set[str]:
    return set(_key_objects()[obj].values())


def _check_keys(value: Any, obj: str, where: str, problems: list[str]) -> None:
    unknown = set(value) - _known(obj)
    if unknown:
        problems.append(f"{where}: keys {sorted(unknown)} unknown to Keys.{obj}")


def test_golden_files_use_only_known_keys() -> None:
    problems: list[str] = []
    req = contract.golden_json("request.json")
    _check_keys(req, "Request", "request.json", problems)
    _check_keys(req["models"], "Models", "request.models", problems)
    models = list(req["models"].values())
    for m in models:
        _check_keys(m, "Model", "request.models.*", problems)
    blocks = req["profiling"]["block_models"]
    assert blocks, "the golden request has block models"
    for b in blocks:
        _check_keys(b, "BlockModel", "request.profiling.block_models[]", problems)
    for m in models + blocks:
        for t in m["inputs"] + m["outputs"]:
            _check_keys(t, "Tensor", "tensor", problems)
    for sub, obj in (("prompt", "Prompt"), ("noise", "Noise"), ("scheduler", "Scheduler"), ("image", "Image"),
                     ("runtime", "Runtime"), ("profiling", "Profiling")):
        _check_keys(req[sub], obj, f"request.{sub}", problems)
    seen_types = set()
    for name in ("trace.jsonl", "trace_error.jsonl", "trace_truncated.jsonl"):
        for rec in contract.golden_trace(name):
            kind = rec["type"]
            seen_types.add(kind)
            _check_keys(rec, kind.capitalize(), f"{name} {kind}", problems)
            if kind == "meta":
                _check_keys(rec["device"], "Device", f"{name} meta.device", problems)
                _check_keys(rec["runtime"], "MetaRuntime", f"{name} meta.runtime", problems)
    assert seen_types == set(_top_consts("RecordType").values())
    for name in ("status.json", "status_error.json", "status_running.json"):
        _check_keys(contract.golden_json(name), "Status", name, problems)
    assert not problems, "\n".join(problems)


def test_file_and_tensor_names_match_the_host() -> None:
    files = _top_consts("RunFiles")
    assert files["REQUEST"] == C.REQUEST_FILE
    assert files["NOISE"] == C.NOISE_FILE
    assert files["MODELS_DIR"] == C.MODELS_DIR
    assert files["TRACE"] == C.TRACE_FILE
    assert files["IMAGE_PNG"] == C.IMAGE_PNG
    assert files["IMAGE_F32"] == C.IMAGE_F32
    assert files["STATUS"] == C.STATUS_FILE
    req = contract.golden_json("request.json")
    assert req["noise"]["file"] == files["NOISE"]
    assert req["models_dir"] == files["MODELS_DIR"]
    assert all(b["file"].startswith(files["BLOCKS_DIR"] + "/") for b in req["profiling"]["block_models"])
    assert contract.golden_json("status.json")["images"] == [files["IMAGE_PNG"]]

    tensors = _top_consts("TensorNames")
    assert tensors["INPUT_IDS"] == C.TEXT_ENCODER_INPUT
    assert (tensors["SAMPLE"], tensors["T_EMB"], tensors["CONTEXT"]) == C.UNET_INPUTS
    assert tensors["LATENTS"] == C.VAE_INPUT
    assert tuple(_key_objects()["Models"].values()) == C.COMPONENTS

    version = re.search(r"const val PROTOCOL_VERSION = (\d+)", KEYS_KT.read_text())
    assert version and int(version.group(1)) == C.PROTOCOL_VERSION
    assert set(_top_consts("SpanCat").values()) == set(C.SPAN_CATS)
    assert set(_top_consts("State").values()) == set(C.STATES)


def test_span_event_and_phase_names_are_the_protocols() -> None:
    golden = contract.golden_trace() + contract.golden_trace("trace_error.jsonl")
    span_names = {r["name"] for r in golden if r["type"] == "span"}
    assert set(_top_consts("SpanName").values()) <= span_names
    assert _top_consts("SpanName")["REFERENCE_BLOCK"] == C.REFERENCE_BLOCK
    phases = {r["args"]["phase"] for r in golden if r["type"] == "span" and r["cat"] == "load"}
    doc = (contract.ROOT / "docs" / "protocol.md").read_text()
    # The golden traces hold every model for the whole run; "stage" (residency "phase") is defined by the doc.
    documented = set(re.findall(r'"phase": "(\w+)"', doc))
    assert "stage" in documented
    load_phases = set(_top_consts("LoadPhase").values())
    assert phases <= load_phases, f"load phases of the golden traces unknown to LoadPhase: {sorted(phases - load_phases)}"
    assert load_phases <= phases | documented, f"LoadPhase values the protocol does not know: {sorted(load_phases - phases - documented)}"
    assert "stage" in load_phases
    events = doc[doc.index("* **Events** in use"):]
    events = events[:events.index("\n* ")]
    for name in _top_consts("EventName").values():
        assert f"`{name}`" in events, f"event {name!r} is not in docs/protocol.md's list of events"


def _call_parts(call: Node) -> tuple[str, Node | None, Node | None]:
    """(callee text, value_arguments, trailing lambda_literal) of a call_expression, with or without a
    trailing lambda (`f(a) { ... }` nests the plain call inside the outer call_expression)."""
    head, lam = call, None
    if call.children and call.children[-1].type == "annotated_lambda":
        lam = next(c for c in call.children[-1].children if c.type == "lambda_literal")
        head = call.children[0]
        if head.type != "call_expression":  # `f { ... }`: no parentheses
            return _text(head), None, lam
    args = next((c for c in head.children if c.type == "value_arguments"), None)
    return _text(head.children[0]), args, lam


def _calls(node: Node, callee: str) -> list[tuple[Node, Node | None, Node | None]]:
    """(call, value_arguments, trailing lambda) of every call of `callee` (full callee text, e.g.
    "models.runStage", or its last identifier, e.g. "runStage") under `node`, in source order; a call with a
    trailing lambda is listed once."""
    out = []
    for n in _walk(node):
        if n.type != "call_expression" or (n.parent is not None and n.parent.type == "call_expression"
                                             and n.parent.children[0] == n
                                             and n.parent.children[-1].type == "annotated_lambda"):
            continue
        name, args, lam = _call_parts(n)
        if name == callee or name.rsplit(".", 1)[-1] == callee:
            out.append((n, args, lam))
    return out


def _function(path: Path, name: str) -> Node:
    found = [n for n in _walk(_tree(path).root_node) if n.type == "function_declaration"
             and any(c.type == "identifier" and _text(c) == name for c in n.children)]
    assert len(found) == 1, f"{path.name}: expected one fun {name}, found {len(found)}"
    return found[0]


def _const_value(expr: Node) -> Any:
    """The value of `Obj.NAME` / `Keys.Obj.NAME` (a Keys.kt constant) or of a plain string literal."""
    if expr.type == "string_literal":
        return _string_value(expr)
    obj, _, name = _text(expr).rpartition(".")
    consts = _key_objects()[obj[len("Keys."):]] if obj.startswith("Keys.") else _top_consts(obj)
    return consts[name]


def test_enum_values_are_checked_with_their_path_and_the_schema_values() -> None:
    """Every enum / const key of the request's sections is checked by RunRequest.kt's oneOf(value, "<path>",
    allowed...): the path names the key that is read, the allowed values are the schema's, and an optional
    key (runtime.residency) falls back to the host's default (host/protocol/messages.py)."""
    from host.protocol import messages

    request_kt = MAIN / "protocol" / "RunRequest.kt"
    root = contract.schema("run_request.schema.json")
    want = {f"{sec}.{key}" for sec, node in root["properties"].items() if "properties" in node
            for key, prop in node["properties"].items() if "enum" in prop or "const" in prop}
    assert "runtime.residency" in want
    seen = set()
    for call, args, _ in _calls(_tree(request_kt).root_node, "oneOf"):
        if _text(call.children[0]) != "oneOf":
            continue  # the declaration's own recursion, if any
        pos, _ = _args(args)
        if len(pos) < 3 or pos[1].type != "string_literal":
            continue
        path = _string_value(pos[1])
        sec, _, key = path.partition(".")
        pointer = f"run_request.schema.json#/properties/{sec}/properties/{key}"
        allowed = {_const_value(a) for a in pos[2:]}
        assert allowed == contract.allowed_values(pointer), f"oneOf({path}): {sorted(allowed)} != the schema's"
        value = pos[0]
        reads = [a for c, a, _ in _calls(value, "getString") + _calls(value, "optString")]
        assert len(reads) == 1, f"oneOf({path}): the value must be one getString / optString read"
        read_key = _const_value(_args(reads[0])[0][0])
        assert read_key == key, f"oneOf({path}) checks the key {read_key!r}: its error would name the wrong key"
        required = key in root["properties"][sec].get("required", [])
        if required:
            assert _calls(value, "getString"), f"{path} is required: read it with getString"
        else:
            assert value.type == "binary_expression" and _text(value.children[1]) == "?:", (
                f"{path} is optional: `optString(...) ?: <default>`")
            spec = getattr(messages, sec.capitalize() + "Spec")
            assert _const_value(value.children[2]) == spec().__getattribute__(key), (
                f"{path}: the app's default differs from the host's ({spec.__name__}.{key})")
        seen.add(path)
    assert seen == want, f"enum keys without a oneOf check: {sorted(want - seen)}; unknown paths: {sorted(seen - want)}"


def test_phase_residency_loads_each_component_for_its_stage_and_closes_it() -> None:
    """runtime.residency "phase" (docs/protocol.md, "Residency"), as the source does it: generate() reaches
    each component only through Models.runStage, in stage order and inside the generation span; a stage
    load is a `load` span with phase "stage" and the generation's repeat / warmup; the stage's model is
    closed when its stage ends, and the load measurements before the first generation are closed too."""
    pipeline, runner = MAIN / "runner" / "Pipeline.kt", MAIN / "runner" / "Runner.kt"

    gen = _function(pipeline, "generate")
    [(_, gen_args, gen_body)] = [c for c in _calls(gen, "tracer.span")
                                 if _text(_args(c[1])[0][0]) == "SpanName.GENERATION"]
    stages = _calls(gen_body, "models.runStage")
    assert [_text(_args(a)[0][0]) for _, a, _ in stages] == [
        "Keys.Models.TEXT_ENCODER", "Keys.Models.UNET", "Keys.Models.VAE_DECODER"], "stage order"
    inner = {"Keys.Models.TEXT_ENCODER": "SpanName.TEXT_ENCODER", "Keys.Models.UNET": "SpanName.UNET_STEP",
             "Keys.Models.VAE_DECODER": "SpanName.VAE_DECODER"}
    for _, args, lam in stages:
        pos, _ = _args(args)
        component = _text(pos[0])
        assert [_text(p) for p in pos[1:]] == ["repeat", "warmup"], f"runStage({component}): the generation's repeat, warmup"
        assert lam is not None, f"runStage({component}) runs its stage in a trailing lambda"
        params = [_text(v) for v in _walk(lam) if v.type == "variable_declaration" and v.parent.type == "lambda_parameters"]
        spans = [_text(_args(a)[0][0]) for _, a, _ in _calls(lam, "tracer.span")]
        assert spans == [inner[component]], f"runStage({component}) must hold exactly the {inner[component]} span(s)"
        assert len(params) == 1 and any(_text(c.children[0]) == f"{params[0]}.run" for c in _walk(lam)
                                        if c.type == "call_expression"), f"runStage({component}): run the model it hands over"
    direct = [_text(n) for n in _walk(gen) if n.type == "navigation_expression"
              and re.fullmatch(r"models\.(textEncoder|unet|vaeDecoder)", _text(n))]
    assert not direct, f"generate() bypasses runStage: {direct}"

    run_stage = _function(pipeline, "runStage")
    uses = _calls(run_stage, "use")
    assert any(".load(" in _text(c.children[0]) and [_text(p) for p in _args(a)[0]] == ["block"] for c, a, _ in uses), (
        "Models.runStage must close the stage-loaded model when its block ends: `loader.load(...).use(block)`")

    load = _function(runner, "load")
    [(_, span_args, span_body)] = _calls(load, "tracer.span")
    pos, named = _args(span_args)
    assert [_text(p) for p in pos[:2]] == ["SpanName.LOAD", "SpanCat.LOAD"]
    assert _text(named["repeat"]) == "repeat" and _text(named["warmup"]) == "warmup", "load spans carry repeat / warmup"
    puts = {_text(_args(a)[0][0]): _text(_args(a)[0][1]) for _, a, _ in _calls(named["args"], "put")}
    assert puts == {"Keys.Args.PHASE": "phase", "Keys.Args.FILE": "spec.file"}

    execute = _function(runner, "execute")
    branches = [n for n in _walk(execute) if n.type == "if_expression"
                and _text(next(c for c in n.children if c.is_named)) == "rt.residency == Residency.PHASE"]
    assert len(branches) == 1, "execute() must branch on rt.residency == Residency.PHASE"
    then = next(c for c in branches[0].children if c.type == "block")
    loop = next((n for n in _walk(then) if n.type == "for_statement"), None)
    assert loop is not None and any(_text(c.children[0]).startswith("load(") and _text(c.children[0]).endswith(".close")
                                    for c in _walk(loop) if c.type == "call_expression"), (
        "the phase branch measures each component's loads and closes the instance: `load(...).close()`")
    [(_, _, loader)] = _calls(then, "Models.perStage")
    [(_, stage_args, _)] = _calls(loader, "load")
    pos, named = _args(stage_args)
    assert "listOf(LoadPhase.STAGE)" in [_text(p) for p in pos], "stage loads use phase LoadPhase.STAGE"
    assert _text(named["repeat"]) == "repeat" and _text(named["warmup"]) == "warmup"
    assert _top_consts("LoadPhase")["STAGE"] == "stage" and _top_consts("Residency")["PHASE"] == "phase"


# ----------------------------------------------------------------------------------------------- host contract


@lru_cache(maxsize=None)
def _host_contract_json() -> dict[str, Any]:
    return json.loads((APP / "host_contract.json").read_text())


def _host_contract_kt() -> dict[str, Any]:
    return {k.lower(): v for k, v in _consts(_objects(HOST_CONTRACT_KT)["HostContract"]).items()}


def test_host_contract_kotlin_equals_json() -> None:
    kt, js = _host_contract_kt(), _host_contract_json()
    assert set(kt) == set(js), (f"only in HostContract.kt: {sorted(set(kt) - set(js))}; "
                                f"only in host_contract.json: {sorted(set(js) - set(kt))}")
    diff = {k: (kt[k], js[k]) for k in kt if kt[k] != js[k]}
    assert not diff, f"HostContract.kt vs host_contract.json (kotlin, json): {diff}"


def test_host_contract_is_consistent_with_the_build_and_manifest() -> None:
    c = _host_contract_json()
    pkg = c["package_id"]
    gradle = (APP / "app" / "build.gradle.kts").read_text()
    assert re.search(rf'namespace = "{re.escape(pkg)}"', gradle), "app/build.gradle.kts namespace != package_id"
    assert re.search(rf'applicationId = "{re.escape(pkg)}"', gradle), "applicationId != package_id"
    assert c["headless_activity"].startswith(".")
    assert c["headless_activity_class"] == pkg + c["headless_activity"]
    assert (MAIN / (c["headless_activity"][1:] + ".kt")).is_file()
    manifest = (APP / "app" / "src" / "main" / "AndroidManifest.xml").read_text()
    m = re.search(r'<activity\s[^>]*android:name="' + re.escape(c["headless_activity"]) + r'"[^>]*>', manifest, re.S)
    assert m, "the headless activity is not declared in AndroidManifest.xml"
    assert 'android:exported="true"' in m.group(0), "the headless activity must be exported for `am start`"
    files = f"/sdcard/Android/data/{pkg}/files/"
    for key in ("device_runs_root", "device_models_root", "device_mediapipe_model_dir"):
        assert c[key].startswith(files), f"{key} must be inside the app's external files dir {files}"
    markers = [c["log_started_marker"], c["log_progress_marker"], c["log_finished_marker"]]
    assert len(set(markers)) == 3 and all(re.fullmatch(r"[A-Z_]+", m) for m in markers)
    assert len(c["log_tag"]) <= 23, "logcat tags longer than 23 characters are rejected on older Android"
    assert c["engine_litert"] != c["engine_mediapipe"]


def test_readme_documents_the_exact_commands() -> None:
    c = _host_contract_json()
    readme = (APP / "README.md").read_text()
    am = f"adb shell am start -n {c['package_id']}/{c['headless_activity']}"
    assert am in readme, f"README.md must show `{am} ...`"
    assert f"--es {c['extra_run_dir']} {c['device_runs_root']}/" in readme
    assert f"adb logcat -s {c['log_tag']}" in readme
    assert c["log_finished_marker"] in readme
    for cmd in ("./gradlew :app:assembleRelease", "./gradlew :app:installDebug", "adb install"):
        assert cmd in readme, f"README.md must mention {cmd}"


# ----------------------------------------------------------------------------------------------- gradle


def test_gradle_dependencies_and_sdk_levels() -> None:
    cat = tomllib.loads((APP / "gradle" / "libs.versions.toml").read_text())
    libs = cat["libraries"]
    coords = {(v.get("group") or v["module"].split(":")[0], v.get("name") or v["module"].split(":")[1]): v
              for v in libs.values()}
    ref = lambda lib: lib["version"]["ref"]  # noqa: E731  (toml: version.ref = "x" is a nested table)
    litert = coords[("com.google.ai.edge.litert", "litert")]
    gpu = coords[("com.google.ai.edge.litert", "litert-gpu")]
    assert ref(litert) == ref(gpu), "litert and litert-gpu must share one version"
    assert ("com.google.mediapipe", "tasks-vision-image-generator") in coords
    versions = cat["versions"]
    assert int(versions[ref(litert)].split(".")[0]) >= 2, "the CompiledModel API needs LiteRT 2.x"
    app = (APP / "app" / "build.gradle.kts").read_text()
    for lib in ("libs.litert)", "libs.litert.gpu)", "libs.mediapipe.image.generator)"):
        assert f"implementation({lib}" in app
    assert re.search(r"compileSdk = 35\b", app)
    min_sdk = int(re.search(r"minSdk = (\d+)", app).group(1))
    assert min_sdk >= 26
    assert "compose = true" in app and "kotlin.compose" in app
    wrapper = (APP / "gradle" / "wrapper" / "gradle-wrapper.properties").read_text()
    assert "distributionUrl=" in wrapper


# ----------------------------------------------------------------------------------------------- JVM run (slow)


def _kotlinc() -> str | None:
    return os.environ.get("KOTLINC") or shutil.which("kotlinc")


JVM_SOURCES = ["protocol/Json.kt", "protocol/Keys.kt", "protocol/RunRequest.kt", "protocol/Records.kt",
               "protocol/TraceWriter.kt", "runner/Backend.kt", "runner/Tracer.kt", "runner/Pipeline.kt",
               "runner/Runner.kt", "runner/Files.kt", "demo/DemoScheduler.kt", "demo/DemoRequests.kt"]


@pytest.fixture(scope="module")
def jvm_harness(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    kotlinc = _kotlinc()
    if kotlinc is None or shutil.which("java") is None:
        pytest.skip("kotlinc / java not found (set KOTLINC or put kotlinc on PATH)")
    out = tmp_path_factory.mktemp("kotlin") / "harness.jar"
    tests = sorted((APP / "app" / "src" / "test" / "java" / "com" / "sdphone" / "runner" / "jvm").glob("*.kt"))
    srcs = [str(MAIN / s) for s in JVM_SOURCES] + [str(p) for p in tests]
    subprocess.run([kotlinc, *srcs, "-d", str(out)], check=True, capture_output=True, text=True)
    stdlib = Path(os.path.realpath(kotlinc)).parent.parent / "lib" / "kotlin-stdlib.jar"
    return ["java", "-cp", f"{out}{os.pathsep}{stdlib}", "com.sdphone.runner.jvm.JvmHarnessKt"]


F32 = np.float32
D_MODEL, T_EMB_W, LATENT = 8, 16, (1, 4, 8, 8)


class _FakeTE:
    def run(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        emb = (input_ids % 1000).astype(F32)[..., None] * F32(0.001) + np.arange(D_MODEL, dtype=F32)[None, None, :] * F32(0.01)
        return {"embeddings": emb.astype(F32)}


class _FakeUnet:
    def run(self, sample: np.ndarray, t_emb: np.ndarray, context: np.ndarray) -> dict[str, np.ndarray]:
        te = t_emb[:, 0][:, None, None, None]
        ctx = context[:, 1, 0][:, None, None, None]
        return {"noise_pred": (sample * F32(0.5) + te * F32(0.01)) + ctx * F32(0.1)}


class _FakeVae:
    def run(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        up = np.repeat(np.repeat(latents[:, :3], 8, axis=2), 8, axis=3)
        return {"image": up * F32(0.5) - F32(0.1)}


class _NullTracer:
    @contextmanager
    def span(self, *a: Any, **k: Any) -> Iterator[None]:
        yield


def _tensor(name: str, shape: list[int], dtype: str = "float32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


def _make_run(root: Path, *, steps: int = 4, warmup: int = 1, repeats: int = 2, residency: str | None = None,
              name: str = "run") -> Path:
    """A tiny but complete run folder: fake model files, real scheduler table and t_emb, numpy noise.
    ``runtime.residency`` is left out (the protocol's default, "all") unless given."""
    from host.schedulers import make_table, timestep_embedding

    run = root / name
    (run / "models" / "blocks").mkdir(parents=True)
    golden = contract.golden_json("request.json")

    def model_file(rel: str) -> str:
        data = f"fake model {rel}".encode()
        (run / "models" / rel).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    _, c, h, w = LATENT
    sample2 = [2, c, h, w]
    models = {
        "text_encoder": {"file": "text_encoder.tflite", "sha256": model_file("text_encoder.tflite"),
                         "signature": "text_encoder", "inputs": [_tensor("input_ids", [2, 77], "int32")],
                         "outputs": [_tensor("embeddings", [2, 77, D_MODEL])]},
        "unet": {"file": "unet.tflite", "sha256": model_file("unet.tflite"), "signature": "unet",
                 "inputs": [_tensor("sample", sample2), _tensor("t_emb", [2, T_EMB_W]), _tensor("context", [2, 77, D_MODEL])],
                 "outputs": [_tensor("noise_pred", sample2)]},
        "vae_decoder": {"file": "vae_decoder.tflite", "sha256": model_file("vae_decoder.tflite"),
                        "signature": "vae_decoder", "inputs": [_tensor("latents", list(LATENT))],
                        "outputs": [_tensor("image", [1, 3, 8 * h, 8 * w])]},
    }
    blocks = [
        {"name": "blk_a", "file": "blocks/blk_a.tflite", "sha256": model_file("blocks/blk_a.tflite"), "signature": "blk_a",
         "inputs": [_tensor("sample", sample2), _tensor("t_emb", [2, T_EMB_W])], "outputs": [_tensor("h", sample2)]},
        {"name": "blk_b", "file": "blocks/blk_b.tflite", "signature": "blk_b",
         "inputs": [_tensor("h", sample2), _tensor("context", [2, 77, D_MODEL])], "outputs": [_tensor("noise_pred", sample2)]},
    ]
    model_file("blocks/blk_b.tflite")
    noise = np.random.default_rng(42).standard_normal(LATENT, dtype=np.float32)
    (run / "noise.bin").write_bytes(noise.astype("<f4").tobytes())
    table = make_table("dpmpp_2m", steps)
    request = {
        "schema": "sdphone.run_request", "version": 1, "run_id": "jvm_test_optimized", "models_dir": "models",
        "models": models,
        "prompt": {"text": golden["prompt"]["text"], "negative": golden["prompt"]["negative"], "tokenizer": "fallback",
                   "tokens": golden["prompt"]["tokens"]},
        "noise": {"file": "noise.bin", "shape": list(LATENT), "dtype": "float32", "seed": 42,
                  "sha256": hashlib.sha256((run / "noise.bin").read_bytes()).hexdigest()},
        "scheduler": {**table.to_dict(), "t_emb": timestep_embedding(table.timestep, T_EMB_W).astype(float).tolist()},
        "guidance_scale": 7.5, "vae_scaling_factor": 0.18215,
        "image": {"height": 8 * h, "width": 8 * w},
        "runtime": {"accelerator": "cpu", "precision": "fp32", "threads": 1, "warmup": warmup, "repeats": repeats},
        "profiling": {"memory_interval_ms": 20, "per_op": True, "per_block": True, "block_models": blocks, "block_steps": 0},
    }
    if residency is not None:
        request["runtime"]["residency"] = residency
    (run / "request.json").write_text(json.dumps(request, indent=1))
    from host.protocol.messages import RunRequest

    RunRequest.from_dict(json.loads((run / "request.json").read_text()))  # the host accepts it
    return run


def _read_run(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from host.protocol.trace import read_trace_dicts
    from host.protocol.validation import validate_status, validate_trace_record

    records = read_trace_dicts(run / "trace.jsonl")
    for r in records:
        validate_trace_record(r)
    assert records[0]["type"] == "meta"
    status = json.loads((run / "status.json").read_text())
    validate_status(status)
    return records, status


@pytest.mark.slow
def test_jvm_runner_matches_the_host_algorithm(jvm_harness: list[str], tmp_path: Path) -> None:
    from PIL import Image

    from host.protocol.messages import RunRequest
    from host.runner.loading import load_inputs
    from host.runner.pipeline import Models, generate, to_uint8_hwc

    steps, warmup, repeats = 4, 1, 2
    run = _make_run(tmp_path, steps=steps, warmup=warmup, repeats=repeats)
    out = subprocess.run([*jvm_harness, "run", str(run)], check=True, capture_output=True, text=True)
    ledger_line, status_line = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    records, status = _read_run(run)
    assert status["state"] == "ok", status
    assert status_line == status
    assert status["images"] == ["image.png"] and status["run_id"] == "jvm_test_optimized"
    # residency "all" (the default: the request has no runtime.residency): the three models held together
    # (+ 1: the UNet loaded again to be timed beside the block chain)
    assert ledger_line == {"loads": 3 * 2 + 1, "peak_live": 3, "live_at_end": 0}

    meta = records[0]
    assert meta["runner"] == "android" and meta["runtime"]["accelerator"] == "cpu" and meta["runtime"]["delegate"] == "fake"
    assert meta["runtime"]["residency"] == "all"
    spans = [r for r in records if r["type"] == "span"]
    events = [r for r in records if r["type"] == "event"]
    count = lambda name, cat: sum(1 for s in spans if s["name"] == name and s["cat"] == cat)  # noqa: E731
    assert count("load", "load") == 3 * 2 + 2 + 1
    assert [s["args"]["phase"] for s in spans if s["cat"] == "load" and s["component"] == "unet"][-1] == "reference"
    assert [s["args"]["phase"] for s in spans if s["cat"] == "load"][:2] == ["cold", "warm"]
    assert count("unet_step", "step") == steps * (warmup + repeats)
    assert count("generation", "total") == warmup + repeats
    assert count("text_encoder", "component") == count("vae_decoder", "component") == warmup + repeats
    assert count("blk_a", "block") == count("blk_b", "block") == steps + 1
    # a warm-up round, then the whole UNet beside the chain: before it at even steps, after it at odd ones
    assert [(s["name"], s["step"], s["warmup"]) for s in spans if s["cat"] == "block"] == (
        [("unet", 0, True), ("blk_a", 0, True), ("blk_b", 0, True)]
        + [x for i in range(steps) for x in ([("unet", i, False), ("blk_a", i, False), ("blk_b", i, False)] if i % 2 == 0
                                             else [("blk_a", i, False), ("blk_b", i, False), ("unet", i, False)])])
    assert all(s["args"] == {"reference": True} for s in spans if s["cat"] == "block" and s["name"] == "unet")
    assert all(s["repeat"] == repeats - 1 for s in spans if s["cat"] == "block")
    assert [s["warmup"] for s in spans if s["cat"] == "total"] == [True] * warmup + [False] * repeats
    assert any(e["name"] == "warning" and "per_op" in e["message"] for e in events)
    check = next(e for e in events if e["name"] == "per_block_check")
    assert check["args"] == {"output": "noise_pred", "max_abs_diff": 0.0}
    assert sum(1 for e in events if e["name"] == "progress" and "generation" in e["message"]) == warmup + repeats
    assert any(r["type"] == "memory" and r["source"] == "proc_status" for r in records)
    assert all(a["t"] <= b["t"] + 1e-6 for a, b in zip(spans, spans[1:]) if a["cat"] == b["cat"] == "step")

    # The host runner's algorithm on the same fake models must give the very same floats.
    req = RunRequest.from_dict(json.loads((run / "request.json").read_text()))
    models = Models(text_encoder=_FakeTE(), unet=_FakeUnet(), vae_decoder=_FakeVae(),
                    outputs={"text_encoder": "embeddings", "unet": "noise_pred", "vae_decoder": "image"})
    gen = generate(models, load_inputs(run, req), steps, _NullTracer(), repeat=0, warmup=False)
    kotlin_img = np.fromfile(run / "image.f32", dtype="<f4").reshape(gen.image.shape)
    assert np.array_equal(kotlin_img, gen.image), f"max |diff| {np.max(np.abs(kotlin_img - gen.image))}"
    png = np.asarray(Image.open(run / "image.png").convert("RGB"))
    assert np.array_equal(png, to_uint8_hwc(gen.image))


@pytest.mark.slow
def test_jvm_runner_failures_follow_the_protocol(jvm_harness: list[str], tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    (run / "models" / "unet.tflite").write_bytes(b"corrupt")
    subprocess.run([*jvm_harness, "run", str(run)], check=True, capture_output=True, text=True)
    records, status = _read_run(run)
    assert status["state"] == "error" and "unet.tflite" in status["message"] and "sha256 mismatch" in status["message"]
    errors = [r for r in records if r["type"] == "event" and r["name"] == "error"]
    assert len(errors) == 1 and errors[0]["message"] == status["message"]
    assert not (run / "image.png").exists()

    raw = json.loads((run / "request.json").read_text())
    raw["runtime"]["turbo"] = True  # an unknown key: the schema's additionalProperties: false
    (run / "request.json").write_text(json.dumps(raw))
    subprocess.run([*jvm_harness, "run", str(run)], check=True, capture_output=True, text=True)
    records, status = _read_run(run)
    assert status["state"] == "error" and "turbo" in status["message"] and status["run_id"] == "jvm_test_optimized"
    assert records[0]["runtime"] == {"accelerator": None, "precision": None, "threads": None, "delegate": None,
                                     "residency": None, "engine": "fake-jvm"}

    raw["runtime"].pop("turbo")
    raw["runtime"]["residency"] = "sometimes"
    (run / "request.json").write_text(json.dumps(raw))
    subprocess.run([*jvm_harness, "run", str(run)], check=True, capture_output=True, text=True)
    records, status = _read_run(run)
    assert status["state"] == "error" and "runtime.residency" in status["message"], status


@pytest.mark.slow
def test_jvm_runner_phase_residency_loads_each_model_for_its_stage(jvm_harness: list[str], tmp_path: Path) -> None:
    """runtime.residency "phase" (docs/protocol.md, "Residency"), as host/runner/run.py does it: the usual
    cold / warm loads, each released; then per generation a `load` span (phase "stage") right before each
    stage, inside the generation span, the model closed after its stage: one component open at a time."""
    steps, warmup, repeats = 3, 1, 2
    held = _make_run(tmp_path, steps=steps, warmup=warmup, repeats=repeats, name="held")
    subprocess.run([*jvm_harness, "run", str(held)], check=True, capture_output=True, text=True)
    run = _make_run(tmp_path, steps=steps, warmup=warmup, repeats=repeats, residency="phase", name="phase")
    out = subprocess.run([*jvm_harness, "run", str(run)], check=True, capture_output=True, text=True)
    ledger = json.loads(out.stdout.strip().splitlines()[-2])
    records, status = _read_run(run)
    assert status["state"] == "ok", status
    assert ledger == {"loads": 3 * 2 + 3 * (warmup + repeats) + 1, "peak_live": 1, "live_at_end": 0}
    assert records[0]["runtime"]["residency"] == "phase"

    request = json.loads((run / "request.json").read_text())
    spans = [r for r in records if r["type"] == "span"]
    loads = [(s["component"], s["args"]["phase"]) for s in spans if s["cat"] == "load"]
    components = ("text_encoder", "unet", "vae_decoder")
    assert loads == ([(c, p) for c in components for p in ("cold", "warm")]
                     + [(c, "stage") for _ in range(warmup + repeats) for c in components]
                     + [("blk_a", "cold"), ("blk_b", "cold"), ("unet", "reference")])
    gens = [s for s in spans if s["name"] == "generation"]
    assert len(gens) == warmup + repeats
    for g in gens:
        inside = [s for s in spans if s["cat"] != "total" and g["start"] <= s["start"] and s["t"] <= g["t"]]
        assert all(s["repeat"] == g["repeat"] and s["warmup"] == g["warmup"] for s in inside)
        order = [(s["cat"], s["component"]) for s in inside if s["cat"] in ("load", "component", "step")]
        assert order == ([("load", "text_encoder"), ("component", "text_encoder"), ("load", "unet")]
                         + [("step", "unet")] * steps + [("load", "vae_decoder"), ("component", "vae_decoder")])
        for s in inside:
            if s["cat"] == "load":
                assert s["args"] == {"phase": "stage", "file": request["models"][s["component"]]["file"]}
    # the measured loads before the first generation keep repeat 0 / warmup false
    assert all(s["repeat"] == 0 and not s["warmup"] for s in spans if s["cat"] == "load" and s["args"]["phase"] != "stage")
    check = next(r for r in records if r["type"] == "event" and r["name"] == "per_block_check")
    assert check["args"]["max_abs_diff"] == 0.0
    # same models, same inputs: the very same image as with every model held
    assert (run / "image.f32").read_bytes() == (held / "image.f32").read_bytes()


@pytest.mark.slow
def test_jvm_parses_the_golden_request_losslessly(jvm_harness: list[str]) -> None:
    out = subprocess.run([*jvm_harness, "parse", str(contract.GOLDEN / "request.json")],
                         check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == contract.golden_json("request.json")


@pytest.mark.slow
def test_jvm_residency_is_optional_with_the_hosts_default(jvm_harness: list[str], tmp_path: Path) -> None:
    from host.protocol.messages import RuntimeSpec

    golden = contract.golden_json("request.json")
    for value, want in ((None, RuntimeSpec().residency), ("phase", "phase"), ("sometimes", None)):
        req = json.loads(json.dumps(golden))
        if value is None:
            del req["runtime"]["residency"]
        else:
            req["runtime"]["residency"] = value
        path = tmp_path / "request.json"
        path.write_text(json.dumps(req))
        got = json.loads(subprocess.run([*jvm_harness, "parse", str(path)], check=True, capture_output=True,
                                        text=True).stdout)
        if want is None:
            assert "runtime.residency" in got["error"] and "sometimes" in got["error"], got
        else:
            assert got["runtime"]["residency"] == want


@pytest.mark.slow
@pytest.mark.parametrize("name,steps,karras", [("dpmpp_2m", 20, False), ("dpmpp_2m", 25, True), ("euler", 30, True),
                                               ("euler", 20, False), ("ddim", 50, False)])
def test_jvm_demo_scheduler_matches_the_host(jvm_harness: list[str], name: str, steps: int, karras: bool) -> None:
    from host.schedulers import make_table, timestep_embedding

    out = subprocess.run([*jvm_harness, "table", name, str(steps), str(karras).lower(), "320"],
                         check=True, capture_output=True, text=True)
    k = json.loads(out.stdout)
    t = make_table(name, steps, karras=karras)
    for f in ("timestep", "in_scale", "d_x", "d_eps", "x_x", "x_d", "x_dprev", "sigmas"):
        np.testing.assert_allclose(k[f], getattr(t, f), rtol=1e-12, atol=1e-300, err_msg=f)
    np.testing.assert_allclose(k["init_scale"], t.init_scale, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(k["t_emb"], dtype=np.float32), timestep_embedding(t.timestep, 320))
