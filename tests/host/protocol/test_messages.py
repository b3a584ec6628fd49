"""Dataclass round trips: dict -> dataclass -> dict is the identity on valid files."""
from __future__ import annotations

import dataclasses
import json

import pytest

from host.protocol import (
    EventRecord, MemoryRecord, MetaRecord, RunRequest, SpanRecord, Status, record_from_dict,
)
from host.protocol.jsonio import dumps, read_json
from host.protocol.make_golden import GOLDEN_DIR


def test_request_round_trip():
    d = read_json(GOLDEN_DIR / "request.json")
    req = RunRequest.from_dict(d)
    assert req.to_dict() == d
    assert RunRequest.from_dict(json.loads(dumps(req.to_dict()))) == req


def test_request_is_frozen():
    req = RunRequest.from_dict(read_json(GOLDEN_DIR / "request.json"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.run_id = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.runtime.threads = 8  # type: ignore[misc]


def test_trace_records_round_trip():
    lines = (GOLDEN_DIR / "trace.jsonl").read_text().splitlines()
    kinds = set()
    for line in lines:
        d = json.loads(line)
        rec = record_from_dict(d)
        kinds.add(type(rec))
        assert rec.to_dict() == d
    assert kinds == {MetaRecord, SpanRecord, MemoryRecord, EventRecord}


def test_optional_fields_are_left_out_but_nullable_ones_kept():
    span = SpanRecord(t=1.0, name="generation", cat="total", start=0.0, dur=1.0)
    d = span.to_dict()
    assert d["component"] is None and d["step"] is None and "args" not in d
    assert d["type"] == "span" and list(d)[:2] == ["type", "t"]
    assert "peak_bytes" not in MemoryRecord(t=0.0, rss_bytes=1, source="proc_status").to_dict()
    meta = MetaRecord(t=0.0, run_id=None, runner="python-host", runner_version="1", device={"model": "m", "os": "o", "soc": "s"},
                      runtime={"accelerator": None, "precision": None, "threads": None, "delegate": None})
    assert meta.to_dict()["run_id"] is None
    assert record_from_dict(meta.to_dict()) == meta


@pytest.mark.parametrize("name", ["status.json", "status_error.json", "status_running.json"])
def test_status_round_trip(name):
    d = read_json(GOLDEN_DIR / name)
    st = Status.from_dict(d)
    assert st.to_dict() == d
    assert st.ok == (d["state"] == "ok")
