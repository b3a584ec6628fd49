"""Chrome JSON trace export."""
from __future__ import annotations

import json

from host.traces import perfetto, tables
from tests.host.traces.fake_runs import make_run


def test_export_run(tmp_path):
    d = make_run(tmp_path, "baseline", truncated_tail=True)
    out = perfetto.export_run(d)
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    assert isinstance(events, list) and trace["displayTimeUnit"] == "ms"
    body = [e for e in events if e["ph"] != "M"]
    assert [e["ts"] for e in body] == sorted(e["ts"] for e in body)
    spans = [e for e in body if e["ph"] == "X"]
    assert all(e["dur"] >= 0 for e in spans)
    run = tables.load_run(d)
    assert len(spans) == len(run.spans)
    assert {e["cat"] for e in spans} == set(run.spans["cat"])
    # One track per category, named.
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert all(names[e["tid"]] == e["cat"] for e in spans)
    counters = [e for e in body if e["ph"] == "C"]
    assert len(counters) == len(run.memory) and all(c["args"]["rss_mb"] > 0 for c in counters)
    assert any(e["ph"] == "i" and e["name"] == "progress" for e in body)
    step = next(e for e in spans if e["cat"] == "step")
    assert step["ts"] == round(run.spans[run.spans["cat"] == "step"]["start_s"].iloc[0] * 1e6, 3)


def test_negative_and_missing_values_are_safe():
    recs = [{"type": "meta", "t": 0, "run_id": "r"},
            {"type": "span", "t": 1, "name": "a", "cat": "step", "start": 0.5, "dur": -0.1},
            {"type": "span", "t": 1, "name": "b", "cat": "weird", "start": None, "dur": 0.1},
            {"type": "memory", "t": 0.2, "rss_bytes": None, "source": "x"}]
    tr = perfetto.chrome_trace(recs)
    body = [e for e in tr["traceEvents"] if e["ph"] != "M"]
    assert {e["name"]: e["dur"] for e in body} == {"a": 0.0, "b": 100000.0}
    json.dumps(tr)
    merged = perfetto.merge_traces([tr, perfetto.chrome_trace(recs)])
    assert {e["pid"] for e in merged["traceEvents"]} == {1, 2}
