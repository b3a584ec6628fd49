"""The JSON Schemas against the golden files, and their one-line errors on broken ones."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from host.protocol import (
    ProtocolError, RunRequest, SPAN_CATS, Status, read_trace, validate_request, validate_status,
    validate_trace_record,
)
from host.protocol.constants import RECORD_TYPES
from host.protocol.jsonio import read_json
from host.protocol.make_golden import GOLDEN_DIR, write_golden
from host.protocol.validation import (
    REQUEST_SCHEMA_FILE, STATUS_SCHEMA_FILE, TRACE_RECORD_SCHEMA_FILE, load_schema,
)
from host.schedulers import make_table, timestep_embedding


@pytest.fixture(scope="module")
def golden_request() -> dict:
    return read_json(GOLDEN_DIR / "request.json")


@pytest.mark.parametrize("name", [REQUEST_SCHEMA_FILE, TRACE_RECORD_SCHEMA_FILE, STATUS_SCHEMA_FILE])
def test_schemas_are_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_golden_files_are_up_to_date(tmp_path):
    write_golden(tmp_path)
    for f in GOLDEN_DIR.iterdir():
        if f.suffix in (".json", ".jsonl"):
            assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f"{f.name}: run python -m host.protocol.make_golden"


def test_golden_request_is_valid_and_realistic(golden_request):
    req = RunRequest.from_dict(golden_request)
    table = req.scheduler.table
    assert (table.name, table.steps, req.image.height, req.image.width) == ("dpmpp_2m", 20, 512, 512)
    assert table == make_table("dpmpp_2m", 20)
    assert np.array_equal(np.asarray(req.scheduler.t_emb, np.float32), timestep_embedding(table.timestep, 320))
    assert req.models["unet"].input("sample").shape == (2, 4, 64, 64)
    assert req.noise.sha256 == __import__("hashlib").sha256(
        np.random.default_rng(42).standard_normal((1, 4, 64, 64), dtype=np.float32).tobytes()).hexdigest()
    assert req.profiling.per_block and req.profiling.per_op and len(req.profiling.block_models) > 1


def test_golden_trace_covers_every_record_type_and_span_cat():
    records = read_trace(GOLDEN_DIR / "trace.jsonl")
    assert records[0].TYPE == "meta"
    assert {r.TYPE for r in records} == set(RECORD_TYPES)
    assert {r.cat for r in records if r.TYPE == "span"} == set(SPAN_CATS)
    loads = [(r.component, r.args["phase"]) for r in records if r.TYPE == "span" and r.cat == "load"]
    for c in ("text_encoder", "unet", "vae_decoder"):
        assert loads.index((c, "cold")) < loads.index((c, "warm"))
    steps = [r.step for r in records if r.TYPE == "span" and r.name == "unet_step" and not r.warmup]
    assert steps == list(range(20))
    ts = [r.t for r in records]
    assert ts == sorted(ts)


@pytest.mark.parametrize("name", ["status.json", "status_error.json", "status_running.json"])
def test_golden_statuses_validate(name):
    Status.from_dict(read_json(GOLDEN_DIR / name))


def test_golden_error_and_truncated_traces_read():
    err = read_trace(GOLDEN_DIR / "trace_error.jsonl")
    assert [r.name for r in err if r.TYPE == "event"][-1] == "error"
    cut = read_trace(GOLDEN_DIR / "trace_truncated.jsonl")
    assert cut[0].TYPE == "meta" and len(cut) < len(err)
    assert not (GOLDEN_DIR / "trace_truncated.jsonl").read_text().endswith("\n")


def _mutate(d: dict, path: list, value=..., delete=False) -> dict:
    d = copy.deepcopy(d)
    node = d
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


REQUEST_BREAKS = [
    (["models", "unet", "sha256"], None, True, "$.models.unet.sha256: required key is missing"),
    (["noise"], None, True, "$.noise: required key is missing"),
    (["runtime", "threads"], "4", False, "$.runtime.threads: expected integer"),
    (["runtime", "accelerator"], "tpu", False, "$.runtime.accelerator: expected one of"),
    (["scheduler", "t_emb", 3, 5], "x", False, "$.scheduler.t_emb[3][5]: expected number"),
    (["prompt", "tokens"], [[1, 2]], False, "$.prompt.tokens: 1 items"),
    (["models", "vae_decoder", "sha256"], "abc", False, "$.models.vae_decoder.sha256: \"abc\" does not match"),
    (["image", "height"], 100, False, "$.image.height"),
    (["profiling", "memory_interval"], 5, False, "$.profiling.memory_interval: unexpected key"),
    (["version"], 2, False, "$.version: expected 1"),
    (["profiling", "block_models", 0, "name"], "unet", False,
     "$.profiling.block_models[0].name: \"unet\" is reserved (unet is reserved for the whole UNet's reference spans)"),
    (["profiling", "block_reference"], "yes", False, "$.profiling.block_reference: expected boolean"),
]


@pytest.mark.parametrize("path,value,delete,expected", REQUEST_BREAKS, ids=[".".join(map(str, b[0])) for b in REQUEST_BREAKS])
def test_broken_request_is_rejected_naming_the_key(golden_request, path, value, delete, expected):
    with pytest.raises(ProtocolError) as e:
        validate_request(_mutate(golden_request, path, value, delete))
    msg = str(e.value)
    assert msg.startswith("request.json: ") and expected in msg and "\n" not in msg


CROSS_FIELD_BREAKS = [
    (["scheduler", "t_emb"], lambda r: r[:19], "$.scheduler.t_emb: 19 rows, expected 20"),
    (["scheduler", "x_x"], lambda r: r[:19], "$.scheduler.x_x: length 19, expected 20"),
    (["prompt", "tokens", 1], lambda r: r[:76], "$.prompt.tokens[1]: 76 ids"),
    (["noise", "shape"], lambda r: [1, 4, 32, 32], "$.noise.shape"),
    (["image", "width"], lambda r: 768, "$.image"),
]


@pytest.mark.parametrize("path,change,expected", CROSS_FIELD_BREAKS, ids=[".".join(map(str, b[0])) for b in CROSS_FIELD_BREAKS])
def test_cross_field_rules(golden_request, path, change, expected):
    node = golden_request
    for key in path:
        node = node[key]
    with pytest.raises(ProtocolError) as e:
        RunRequest.from_dict(_mutate(golden_request, path, change(node)))
    assert expected in str(e.value) and "\n" not in str(e.value)


def _span(**kw) -> dict:
    base = {"type": "span", "t": 1.0, "name": "unet_step", "cat": "step", "start": 0.5, "dur": 0.5,
            "component": "unet", "step": 0, "repeat": 0, "warmup": False}
    return {**base, **kw}


@pytest.mark.parametrize("record,expected", [
    ({k: v for k, v in _span().items() if k != "dur"}, "$.dur: required key is missing"),
    (_span(cat="kernel"), "$.cat: expected one of"),
    (_span(step="0"), "$.step: expected integer or null"),
    (_span(extra=1), "$.extra: unexpected key"),
    ({"type": "memory", "t": 1.0, "source": "proc_status"}, "$.rss_bytes: required key is missing"),
    ({"type": "memory", "t": 1.0, "source": "proc_status", "rss_bytes": 1.5}, "$.rss_bytes: expected integer"),
    ({"type": "event", "t": 1.0, "name": "error"}, "$.message: required key is missing"),
    ({"type": "meta", "t": 0.0}, "required key is missing"),
    ({"type": "progress", "t": 0.0}, "$.type: expected one of"),
    ({"t": 0.0}, "$.type: required key is missing"),
])
def test_broken_trace_records_are_rejected_naming_the_key(record, expected):
    with pytest.raises(ProtocolError) as e:
        validate_trace_record(record)
    assert str(e.value).startswith("trace.jsonl: ") and expected in str(e.value)


def test_every_golden_trace_line_validates_alone():
    for line in (GOLDEN_DIR / "trace.jsonl").read_text().splitlines():
        validate_trace_record(json.loads(line))


@pytest.mark.parametrize("status,expected", [
    ({"state": "error", "run_id": "r", "finished_t": 1.0}, "$.message: required key is missing"),
    ({"state": "ok", "run_id": "r", "finished_t": 1.0}, "$.images: required key is missing"),
    ({"state": "done", "run_id": "r"}, "$.state: expected one of"),
    ({"state": "error", "run_id": "r", "finished_t": 1.0, "message": "two\nlines"}, "$.message"),
    ({"run_id": "r"}, "$.state: required key is missing"),
])
def test_broken_status_is_rejected(status, expected):
    with pytest.raises(ProtocolError) as e:
        validate_status(status)
    assert str(e.value).startswith("status.json: ") and expected in str(e.value)
