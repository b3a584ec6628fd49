"""Checks of the iOS app (ios_app/) that need no Mac: it cannot be built here, so this checks what can be.

* every .swift file parses (tree-sitter-swift) without ERROR or MISSING nodes;
* project.yml (XcodeGen) is valid YAML with the app target, its sources, the iOS deployment target and the
  CocoaPods step, and the Podfile pulls TensorFlowLiteSwift with the Metal delegate for that target;
* the protocol contract: every CodingKeys raw value in ios_app/Sources/Protocol is a key of the matching
  object in host/protocol/*.schema.json, and every schema key is covered (so renaming a key on either
  side fails here, naming the struct and the key); the enums and file names match host/protocol/constants.py;
* HostContract.swift and host_contract.json (read by the Python host) say the same thing.
"""
from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import tree_sitter_swift
import yaml
from tree_sitter import Language, Node, Parser

from host.protocol import constants as C

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "ios_app"
SOURCES = APP / "Sources"
PROTOCOL_SOURCES = SOURCES / "Protocol"
SCHEMAS = REPO / "host" / "protocol"
SWIFT_FILES = sorted(APP.rglob("*.swift"))
TARGET = "SDPhone"
DEPLOYMENT_TARGET = "16.0"


# ----------------------------------------------------------------------------------------------- helpers

@lru_cache(maxsize=1)
def _parser() -> Parser:
    return Parser(Language(tree_sitter_swift.language()))


@lru_cache(maxsize=None)
def _tree(path: Path):
    return _parser().parse(path.read_bytes())


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _problems(node: Node) -> list[str]:
    """The innermost ERROR / MISSING nodes under ``node`` as 'line:col: what'."""
    bad = [n for n in _walk(node) if n.is_error or n.is_missing]
    innermost = [n for n in bad if not any(d is not n and (d.is_error or d.is_missing) for d in _walk(n))]
    out = []
    for n in innermost or bad:
        what = f"missing {n.type}" if n.is_missing else f"cannot parse {n.text.decode(errors='replace')[:60]!r}"
        out.append(f"{n.start_point[0] + 1}:{n.start_point[1] + 1}: {what}")
    return out


def _name(decl: Node) -> str | None:
    name = decl.child_by_field_name("name")
    return name.text.decode() if name is not None else None


def _kind(decl: Node) -> str:
    kind = decl.child_by_field_name("declaration_kind")
    return kind.text.decode() if kind is not None else ""


def _enclosing_type(node: Node) -> Node | None:
    parent = node.parent
    while parent is not None and parent.type != "class_declaration":
        parent = parent.parent
    return parent


def _string_literal(node: Node, where: str) -> str:
    parts = []
    for child in node.children:
        if child.type == "line_str_text":
            parts.append(child.text.decode())
        elif child.type != '"':
            raise AssertionError(f"{where}: only plain string literals are checked here, got {child.type}")
    return "".join(parts)


def _coding_keys(path: Path) -> dict[str, dict[str, str]]:
    """{enclosing type name: {case name: raw value}} of every ``enum CodingKeys`` in ``path``."""
    out: dict[str, dict[str, str]] = {}
    for node in _walk(_tree(path).root_node):
        if node.type != "class_declaration" or _kind(node) != "enum" or _name(node) != "CodingKeys":
            continue
        owner = _enclosing_type(node)
        assert owner is not None, f"{path.name}: CodingKeys outside a type"
        keys: dict[str, str] = {}
        body = node.child_by_field_name("body")
        for entry in (c for c in body.children if c.type == "enum_entry"):
            current = None
            for child in entry.children:
                field = entry.field_name_for_child(list(entry.children).index(child))
                if field == "name":
                    current = child.text.decode().strip("`")
                    keys[current] = current  # implicit raw value: the case name
                elif field == "raw_value":
                    assert child.type == "line_string_literal", f"{path.name}: raw value of {current} is not a string"
                    keys[current] = _string_literal(child, f"{path.name}: {_name(owner)}.CodingKeys.{current}")
        out[_name(owner)] = keys
    return out


def _all_coding_keys() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path in sorted(PROTOCOL_SOURCES.glob("*.swift")):
        for owner, keys in _coding_keys(path).items():
            assert owner not in out, f"{owner}: CodingKeys declared twice"
            out[owner] = keys
    return out


def _static_lets(path: Path, type_name: str) -> dict[str, Any]:
    """``static let NAME = <string or integer literal>`` members of the type (enum/struct) ``type_name``."""
    decls = [n for n in _walk(_tree(path).root_node) if n.type == "class_declaration" and _name(n) == type_name]
    assert len(decls) == 1, f"{path.name}: expected one declaration of {type_name}, found {len(decls)}"
    out: dict[str, Any] = {}
    for prop in decls[0].child_by_field_name("body").children:
        if prop.type != "property_declaration" or not any(
                c.type == "modifiers" and b"static" in c.text for c in prop.children):
            continue
        name = prop.child_by_field_name("name").text.decode()
        value = prop.child_by_field_name("value")
        assert value is not None, f"{path.name}: {type_name}.{name} has no literal value"
        if value.type == "line_string_literal":
            out[name] = _string_literal(value, f"{path.name}: {type_name}.{name}")
        elif value.type == "integer_literal":
            out[name] = int(value.text.decode())
        elif value.type == "array_literal":
            out[name] = [_string_literal(v, f"{path.name}: {type_name}.{name}")
                         for v in value.children if v.type == "line_string_literal"]
        else:
            raise AssertionError(f"{path.name}: {type_name}.{name}: unsupported literal {value.type}")
    return out


def _enum_cases(path: Path, type_name: str) -> list[str]:
    """Raw values of a String enum's cases (implicit raw value = case name)."""
    decls = [n for n in _walk(_tree(path).root_node)
             if n.type == "class_declaration" and _kind(n) == "enum" and _name(n) == type_name]
    assert len(decls) == 1, f"{path.name}: expected one enum {type_name}"
    out = []
    for entry in (c for c in decls[0].child_by_field_name("body").children if c.type == "enum_entry"):
        for i, child in enumerate(entry.children):
            field = entry.field_name_for_child(i)
            if field == "name":
                out.append(child.text.decode().strip("`"))
            elif field == "raw_value":
                out[-1] = _string_literal(child, f"{path.name}: {type_name}")
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def _pointer(doc: dict, pointer: str) -> dict:
    node: Any = doc
    for part in pointer.lstrip("#/").split("/") if pointer != "#" else ():
        node = node[part]
    return node


@lru_cache(maxsize=1)
def _contract() -> dict[str, Any]:
    return json.loads((APP / "host_contract.json").read_text())


@lru_cache(maxsize=1)
def _project() -> dict:
    return yaml.safe_load((APP / "project.yml").read_text())


# Which schema object each Codable struct of Sources/Protocol encodes.
STRUCT_SCHEMA = {
    "RunRequest": ("run_request", "#"),
    "ModelsSpec": ("run_request", "#/properties/models"),
    "ModelSpec": ("run_request", "#/$defs/model"),
    "BlockModelSpec": ("run_request", "#/$defs/block_model"),
    "TensorSpec": ("run_request", "#/$defs/tensor"),
    "PromptSpec": ("run_request", "#/properties/prompt"),
    "NoiseSpec": ("run_request", "#/properties/noise"),
    "SchedulerSpec": ("run_request", "#/properties/scheduler"),
    "ImageSpec": ("run_request", "#/properties/image"),
    "RuntimeSpec": ("run_request", "#/properties/runtime"),
    "ProfilingSpec": ("run_request", "#/properties/profiling"),
    "MetaRecord": ("trace_record", "#/$defs/meta"),
    "DeviceInfo": ("trace_record", "#/$defs/meta/properties/device"),
    "RuntimeInfo": ("trace_record", "#/$defs/meta/properties/runtime"),
    "SpanRecord": ("trace_record", "#/$defs/span"),
    "MemoryRecord": ("trace_record", "#/$defs/memory"),
    "EventRecord": ("trace_record", "#/$defs/event"),
    "RunStatus": ("status", "#"),
}


# ----------------------------------------------------------------------------------------------- Swift syntax

def test_the_app_has_its_sources():
    names = {p.relative_to(SOURCES).as_posix() for p in SWIFT_FILES}
    for required in ("App/HostContract.swift", "App/SDPhoneApp.swift", "Runner/Runner.swift",
                     "Protocol/TraceWriter.swift", "Protocol/RunRequest.swift", "Protocol/TraceRecords.swift",
                     "Protocol/Status.swift", "Demo/DemoView.swift"):
        assert required in names, f"ios_app/Sources/{required} is missing"


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: p.relative_to(APP).as_posix())
def test_swift_file_parses(path: Path):
    problems = _problems(_tree(path).root_node)
    assert not problems, f"{path.relative_to(REPO)}: " + "; ".join(problems[:5])


def test_the_parser_does_report_broken_swift():
    """Guards the test above: a grammar that accepted anything would make it pass vacuously."""
    broken = _parser().parse(b"struct A { func f( { let x = }\n")
    assert _problems(broken.root_node)


# ----------------------------------------------------------------------------------------------- project

def test_project_yml_target_sources_and_deployment_target():
    project = _project()
    assert project["name"] == TARGET
    assert project["options"]["deploymentTarget"]["iOS"] == DEPLOYMENT_TARGET
    target = project["targets"][TARGET]
    assert target["type"] == "application" and target["platform"] == "iOS"
    assert str(target["deploymentTarget"]) == DEPLOYMENT_TARGET
    sources = [s["path"] if isinstance(s, dict) else s for s in target["sources"]]
    assert "Sources" in sources and (APP / "Sources").is_dir()
    settings = target["settings"]["base"]
    assert settings["PRODUCT_BUNDLE_IDENTIFIER"] == _contract()["bundle_id"], (
        "project.yml PRODUCT_BUNDLE_IDENTIFIER differs from host_contract.json bundle_id")
    assert str(settings["CURRENT_PROJECT_VERSION"]) == _contract()["bundle_version"], (
        "project.yml CURRENT_PROJECT_VERSION (CFBundleVersion) differs from host_contract.json bundle_version")
    assert str(project["settings"]["base"]["SWIFT_VERSION"]).startswith("5")
    info = target["info"]["properties"]
    assert info["UIFileSharingEnabled"] is True, "the host pushes into Documents: file sharing must be on"


def test_project_yml_installs_the_pods():
    """The dependency: XcodeGen runs `pod install` after generating, and the Podfile has the TFLite pod."""
    assert "pod install" in _project()["options"]["postGenCommand"]
    podfile = (APP / "Podfile").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in podfile.splitlines())
    assert re.search(rf"^target '{TARGET}' do$", code, re.M), f"Podfile has no target '{TARGET}'"
    assert re.search(rf"^platform :ios, '{re.escape(DEPLOYMENT_TARGET)}'$", code, re.M)
    pod = re.search(r"pod 'TensorFlowLiteSwift', '~> (\d+\.\d+\.\d+)', :subspecs => \[([^\]]*)\]", code)
    assert pod, "Podfile must pull TensorFlowLiteSwift with subspecs"
    subspecs = re.findall(r"'(\w+)'", pod.group(2))
    assert "Metal" in subspecs and "CoreML" in subspecs
    swift = "\n".join(p.read_text() for p in SWIFT_FILES)
    assert "import TensorFlowLite" in swift and "MetalDelegate(" in swift and "isPrecisionLossAllowed" in swift


def test_nothing_generated_is_committed():
    """The .xcodeproj / workspace / Pods are generated: none may be tracked (XcodeGen spec only)."""
    try:
        tracked = subprocess.run(["git", "ls-files", "ios_app"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    opaque = [f for f in tracked if re.search(r"\.(xcodeproj|xcworkspace)/|(^|/)Pods/|\.pbxproj$", f)]
    assert not opaque, f"generated Xcode files are tracked: {opaque}"
    ignored = (APP / ".gitignore").read_text().split()
    for pattern in ("*.xcodeproj/", "*.xcworkspace/", "Pods/", "Generated/"):
        assert pattern in ignored


def test_readme_says_how_to_build_and_drive_it():
    readme = (APP / "README.md").read_text()
    for needle in ("brew install xcodegen", "xcodegen generate", "pod install", "SDPhone.xcworkspace",
                   "Developer Mode", "pymobiledevice3", "house_arrest", "--run-dir", "TensorFlowLiteSwift"):
        assert needle in readme, f"ios_app/README.md does not mention {needle!r}"


# ----------------------------------------------------------------------------------------------- protocol contract

def test_every_protocol_struct_is_mapped_to_a_schema_object():
    found = set(_all_coding_keys())
    assert found == set(STRUCT_SCHEMA), (
        f"Codable structs in Sources/Protocol without a schema mapping here: {sorted(found - set(STRUCT_SCHEMA))}; "
        f"mapped but gone from the Swift: {sorted(set(STRUCT_SCHEMA) - found)}")


@pytest.mark.parametrize("struct", sorted(STRUCT_SCHEMA))
def test_coding_keys_match_the_schema(struct: str):
    schema_name, pointer = STRUCT_SCHEMA[struct]
    obj = _pointer(_schema(schema_name), pointer)
    properties = set(obj.get("properties", {}))
    required = set(obj.get("required", ()))
    keys = _all_coding_keys()[struct]
    raw = set(keys.values())
    where = f"{struct}.CodingKeys vs {schema_name}.schema.json {pointer}"
    assert len(raw) == len(keys), f"{where}: two cases share a raw value"
    unknown = sorted(raw - properties)
    assert not unknown, f"{where}: {unknown} are not schema keys (renamed on one side?)"
    missing_required = sorted(required - raw)
    assert not missing_required, f"{where}: required schema keys {missing_required} have no CodingKeys case"
    if obj.get("additionalProperties") is False:
        missing = sorted(properties - raw)
        assert not missing, f"{where}: schema keys {missing} have no CodingKeys case"


def test_every_coding_key_in_the_protocol_sources_is_a_schema_key():
    """The brief's global form of the check above (also covers a CodingKeys of an unmapped type)."""
    def keys_of(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "properties" and isinstance(v, dict):
                    yield from v
                yield from keys_of(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys_of(v)

    schema_keys = {k for name in ("run_request", "trace_record", "status") for k in keys_of(_schema(name))}
    for struct, keys in _all_coding_keys().items():
        stray = sorted(set(keys.values()) - schema_keys)
        assert not stray, f"{struct}.CodingKeys: {stray} appear in no schema"


def test_enums_match_the_protocol_vocabulary():
    records = PROTOCOL_SOURCES / "TraceRecords.swift"
    span = _pointer(_schema("trace_record"), "#/$defs/span/properties/cat")["enum"]
    assert _enum_cases(records, "SpanCategory") == list(C.SPAN_CATS) == span
    states = _pointer(_schema("status"), "#/properties/state")["enum"]
    assert _enum_cases(PROTOCOL_SOURCES / "Status.swift", "RunState") == list(C.STATES) == states
    record_types = _static_lets(records, "RecordType")
    assert list(record_types.values()) == list(C.RECORD_TYPES)
    assert set(record_types) == set(record_types.values())


def test_protocol_constants_match_the_host():
    consts = _static_lets(PROTOCOL_SOURCES / "ProtocolFiles.swift", "ProtocolConstants")
    assert consts == {
        "version": C.PROTOCOL_VERSION,
        "requestSchema": C.REQUEST_SCHEMA,
        "traceSchema": C.TRACE_SCHEMA,
        "components": list(C.COMPONENTS),
        "textEncoderInput": C.TEXT_ENCODER_INPUT,
        "unetSample": C.UNET_INPUTS[0],
        "unetTimeEmbedding": C.UNET_INPUTS[1],
        "unetContext": C.UNET_INPUTS[2],
        "vaeInput": C.VAE_INPUT,
        "referenceBlock": C.REFERENCE_BLOCK,
    }
    assert _schema("run_request")["properties"]["schema"]["const"] == consts["requestSchema"]
    assert _schema("trace_record")["$defs"]["meta"]["properties"]["schema"]["const"] == consts["traceSchema"]


def test_file_names_match_the_protocol():
    files = _static_lets(PROTOCOL_SOURCES / "ProtocolFiles.swift", "ProtocolFiles")
    assert files == {
        "request": C.REQUEST_FILE,
        "noise": C.NOISE_FILE,
        "modelsDir": C.MODELS_DIR,
        "trace": C.TRACE_FILE,
        "imagePng": C.IMAGE_PNG,
        "imageF32": C.IMAGE_F32,
        "status": C.STATUS_FILE,
    }


def test_file_names_are_spelled_only_in_protocol_files():
    """Everything else refers to ProtocolFiles, so a renamed file cannot be missed somewhere."""
    names = {C.REQUEST_FILE, C.NOISE_FILE, C.TRACE_FILE, C.IMAGE_PNG, C.IMAGE_F32, C.STATUS_FILE}
    home = PROTOCOL_SOURCES / "ProtocolFiles.swift"
    for path in SWIFT_FILES:
        if path == home:
            continue
        for node in _walk(_tree(path).root_node):
            if node.type == "line_str_text" and node.text.decode() in names:
                pytest.fail(f"{path.relative_to(REPO)}:{node.start_point[0] + 1}: spells {node.text.decode()!r}; "
                            "use ProtocolFiles")


def test_runner_writes_the_protocol_records():
    runner = (SOURCES / "Runner" / "Runner.swift").read_text()
    for name in ('"load"', '"text_encoder"', '"unet_step"', '"vae_decoder"', '"generation"',
                 '"progress"', '"error"', '"warning"', '"per_block_check"', '"error_type"',
                 '"phase"', '"cold"', '"warm"', '"stage"', '"residency"', '"max_abs_diff"'):
        assert name in runner, f"Runner.swift never writes {name}"
    monitor = (SOURCES / "Runner" / "MemoryMonitor.swift").read_text()
    for name in ('"phys_footprint"', "TASK_VM_INFO", '"oom"', '"warning"'):
        assert name in monitor, f"MemoryMonitor.swift never uses {name}"
    writer = (PROTOCOL_SOURCES / "TraceWriter.swift").read_text()
    assert "synchronize()" in writer, "TraceWriter must make every line durable"


def _args(value_arguments: Node | None) -> tuple[list[Node], dict[str, Node]]:
    """(positional, labelled) argument values of a call's value_arguments."""
    positional, named = [], {}
    for arg in value_arguments.children if value_arguments is not None else ():
        if arg.type != "value_argument":
            continue
        label = next((c for c in arg.children if c.type == "value_argument_label"), None)
        value = arg.child_by_field_name("value")
        if label is None:
            positional.append(value)
        else:
            named[label.text.decode()] = value
    return positional, named


def _calls(node: Node, callee: str) -> list[tuple[Node, list[Node], dict[str, Node], Node | None]]:
    """(call, positional args, labelled args, trailing closure) of every call of ``callee`` (the full callee,
    e.g. "models.withStage", or its last name, e.g. "withStage") under ``node``, in source order."""
    out = []
    for n in _walk(node):
        if n.type != "call_expression":
            continue
        name = n.children[0].text.decode()
        if name != callee and name.rsplit(".", 1)[-1] != callee:
            continue
        suffix = next((c for c in n.children if c.type == "call_suffix"), None)
        if suffix is None:
            continue
        args = next((c for c in suffix.children if c.type == "value_arguments"), None)
        closure = next((c for c in suffix.children if c.type == "lambda_literal"), None)
        out.append((n, *_args(args), closure))
    return out


def _function(path: Path, name: str, owner: str | None = None) -> Node:
    found = [n for n in _walk(_tree(path).root_node) if n.type == "function_declaration" and _name(n) == name
             and (owner is None or _name(_enclosing_type(n)) == owner)]
    assert len(found) == 1, f"{path.name}: expected one func {name}, found {len(found)}"
    return found[0]


def _string(node: Node) -> str | None:
    return _string_literal(node, "argument") if node is not None and node.type == "line_string_literal" else None


def test_runtime_enums_are_checked_with_their_path_and_the_schema_values():
    """RunRequest.check() guards every enum key of `runtime` with `guard [values].contains(runtime.<key>)`,
    throwing at "$.runtime.<key>", with exactly the schema's values; an optional key (residency) decodes to
    the host's default (host/protocol/messages.py RuntimeSpec) when absent."""
    from host.protocol.messages import RuntimeSpec

    path = PROTOCOL_SOURCES / "RunRequest.swift"
    runtime = _pointer(_schema("run_request"), "#/properties/runtime")
    enums = {k: v["enum"] for k, v in runtime["properties"].items() if "enum" in v}
    assert "residency" in enums
    checked = {}
    for guard in (n for n in _walk(_tree(path).root_node) if n.type == "guard_statement"):
        cond = next(c for c in guard.children if c.is_named)
        if cond.type != "call_expression" or cond.children[0].type != "navigation_expression":
            continue
        target = cond.children[0].child_by_field_name("target")
        if target is None or target.type != "array_literal" or not cond.children[0].text.endswith(b".contains"):
            continue
        (arg,), _ = _args(next(c for c in cond.children[1].children if c.type == "value_arguments"))
        m = re.fullmatch(r"runtime\.(\w+)", arg.text.decode())
        if not m:
            continue
        key = m.group(1)
        values = [_string(v) for v in target.children if v.type == "line_string_literal"]
        assert values == enums.get(key), f"runtime.{key}: the check allows {values}, the schema {enums.get(key)}"
        throws = [a[0] for _, a, _, _ in _calls(guard, "fail") if a]
        assert [_string(t) for t in throws] == [f"$.runtime.{key}"], f"runtime.{key}: the error must name $.runtime.{key}"
        checked[key] = values
    assert set(checked) == set(enums), f"runtime enum keys without a check: {sorted(set(enums) - set(checked))}"

    text = path.read_text()
    defaults = dict(re.findall(r'static let (\w+) = "([^"]*)"', text))
    for key in sorted(set(runtime["properties"]) - set(runtime.get("required", ()))):
        m = re.search(rf"\b{key} = try c\.decodeIfPresent\(\w+\.self, forKey: \.{key}\) \?\? RuntimeSpec\.(\w+)", text)
        assert m, f"runtime.{key} is optional: decode it with decodeIfPresent and a RuntimeSpec default"
        assert defaults.get(m.group(1)) == getattr(RuntimeSpec(), key), (
            f"runtime.{key}: the app's default {defaults.get(m.group(1))!r} is not the host's")


def test_phase_residency_loads_each_component_for_its_stage_and_releases_it():
    """runtime.residency "phase" (docs/protocol.md, "Residency"), as Runner.swift does it: generate() reaches
    each component only through LoadedModels.withStage, in stage order inside the generation span; a stage
    load is a `load` span with phase "stage" and the generation's repeatIndex / warmup; the stage's model
    is only ever a local of withStage (released when the stage returns), and the load measurements before
    the first generation are dropped as soon as they are taken."""
    path = SOURCES / "Runner" / "Runner.swift"

    gen = _function(path, "generate")
    [(_, _, _, body)] = [c for c in _calls(gen, "tracer.span") if _string(c[1][0]) == "generation"]
    stages = _calls(body, "models.withStage")
    assert [_string(a[0]) for _, a, _, _ in stages] == ["text_encoder", "unet", "vae_decoder"], "stage order"
    inner = {"text_encoder": "text_encoder", "unet": "unet_step", "vae_decoder": "vae_decoder"}
    for _, pos, named, closure in stages:
        component = _string(pos[0])
        assert {k: v.text.decode() for k, v in named.items()} == {"repeatIndex": "repeatIndex", "warmup": "warmup"}
        assert closure is not None, f"withStage({component}) runs its stage in a trailing closure"
        spans = [_string(a[0]) for _, a, _, _ in _calls(closure, "tracer.span")]
        assert spans == [inner[component]], f"withStage({component}) must hold exactly the {inner[component]} span"
        params = [p.text.decode() for p in _walk(closure) if p.type == "lambda_parameter"]
        assert len(params) == 1 and _calls(closure, f"{params[0]}.run"), f"withStage({component}): run the model it hands over"
    direct = [n.text.decode() for n in _walk(gen) if n.type == "navigation_expression"
              and re.fullmatch(r"models\.(textEncoder|unet|vaeDecoder)", n.text.decode())]
    assert not direct, f"generate() bypasses withStage: {direct}"

    models = next(n for n in _walk(_tree(path).root_node) if n.type == "class_declaration" and _name(n) == "LoadedModels")
    bindings = [next(c for c in p.children if c.type == "value_binding_pattern").text.decode()
                for p in models.child_by_field_name("body").children if p.type == "property_declaration"]
    assert bindings and set(bindings) == {"let"}, "LoadedModels stores nothing mutable: a stage model cannot outlive its stage"
    with_stage = _function(path, "withStage", owner="LoadedModels")
    loaded = _calls(with_stage, "stageLoader")
    assert len(loaded) == 1 and loaded[0][0].parent.type == "try_expression"
    binding = loaded[0][0].parent.parent
    assert binding.type == "property_declaration" and binding.text.decode().startswith("let "), (
        "withStage keeps the stage model in a local `let` only")

    load = _function(path, "loadModel")
    [(_, pos, named, _)] = _calls(load, "tracer.span")
    assert _string(pos[0]) == "load" and pos[1].text.decode() == ".load"
    assert named["repeatIndex"].text.decode() == "repeatIndex" and named["warmup"].text.decode() == "warmup"
    assert '"phase": .string(phase)' in load.text.decode() and '"file": .string(' in load.text.decode()

    execute = _function(path, "execute")
    branches = [n for n in _walk(execute) if n.type == "if_statement"
                and n.child_by_field_name("condition").text.decode() == 'rt.residency == "phase"']
    assert len(branches) == 1, 'execute() must branch on rt.residency == "phase"'
    branch = branches[0]
    then = next(c for c in branch.children if c.type == "statements")
    loop = next(n for n in _walk(then) if n.type == "for_statement")
    assert re.search(r"_ = try load\(", loop.text.decode()), "the load measurements are taken, then dropped"
    [(_, _, named, loader)] = _calls(then, "LoadedModels")
    [(_, _, stage, _)] = _calls(loader, "self.loadModel")
    assert stage["phases"].text.decode() == '["stage"]'
    assert stage["repeatIndex"].text.decode() == "repeatIndex" and stage["warmup"].text.decode() == "warmup"


# ----------------------------------------------------------------------------------------------- host contract

def test_host_contract_swift_equals_json():
    swift = _static_lets(SOURCES / "App" / "HostContract.swift", "HostContract")
    from_swift = {_snake(k): v for k, v in swift.items()}
    from_json = {k: v for k, v in _contract().items() if not k.startswith("_")}
    only_swift = sorted(set(from_swift) - set(from_json))
    only_json = sorted(set(from_json) - set(from_swift))
    assert not only_swift and not only_json, (
        f"HostContract.swift only: {only_swift}; host_contract.json only: {only_json}")
    differ = {k: (from_swift[k], from_json[k]) for k in from_swift if from_swift[k] != from_json[k]}
    assert not differ, f"HostContract.swift vs host_contract.json (swift, json): {differ}"


def test_host_contract_values_fit_the_protocol():
    contract = _contract()
    assert contract["runner"] in C.RUNNERS and contract["runner"] == "ios"
    assert contract["protocol_version"] == C.PROTOCOL_VERSION
    assert contract["documents_run_root"].startswith("Documents/")
    assert contract["demo_run_root"].startswith("Documents/")
    assert contract["run_dir_argument"].startswith("--")
    assert re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", contract["bundle_id"])
    assert contract["exit_code_ok"] == 0 and contract["exit_code_error"] != 0
