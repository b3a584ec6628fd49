"""TraceWriter durability and read_trace's tolerance of a crash-truncated last line."""
from __future__ import annotations

import threading

import pytest

from host.protocol import EventRecord, MemoryRecord, MetaRecord, ProtocolError, SpanRecord, TraceWriter, read_trace
from host.protocol.trace import read_trace_dicts

META = MetaRecord(t=0.0, run_id="r1", runner="python-host", runner_version="1", device={"model": "m", "os": "o", "soc": "s"},
                  runtime={"accelerator": "cpu", "precision": "fp32", "threads": 2, "delegate": "xnnpack"})


def _records(n: int) -> list:
    out: list = [META]
    for i in range(n):
        out.append(SpanRecord(t=i + 1.0, name="unet_step", cat="step", start=float(i), dur=1.0, component="unet", step=i))
        out.append(MemoryRecord(t=i + 1.0, rss_bytes=1000 + i, source="proc_status", peak_bytes=2000))
    out.append(EventRecord(t=n + 1.0, name="progress", message="done", args={"repeat": 0}))
    return out


def test_write_then_read(tmp_path):
    path = tmp_path / "trace.jsonl"
    recs = _records(3)
    with TraceWriter(path) as w:
        for r in recs:
            w.write(r)
    assert read_trace(path) == recs


def test_each_line_is_on_disk_before_close(tmp_path):
    path = tmp_path / "trace.jsonl"
    w = TraceWriter(path)
    w.write(META)
    assert read_trace(path) == [META]  # flushed without closing
    w.close()
    with pytest.raises(ValueError):
        w.write(META)


def test_new_writer_replaces_append_writer_extends(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)
    with TraceWriter(path, append=True) as w:
        w.write(EventRecord(t=1.0, name="progress", message="x"))
    assert len(read_trace(path)) == 2
    with TraceWriter(path) as w:
        w.write(META)
    assert len(read_trace(path)) == 1


@pytest.mark.parametrize("keep", [1, 10, -1])
def test_truncated_last_line_is_skipped(tmp_path, keep):
    path = tmp_path / "trace.jsonl"
    recs = _records(4)
    with TraceWriter(path) as w:
        for r in recs:
            w.write(r)
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + (keep if keep > 0 else len(data) - last_start - 2)])  # simulate a crash mid-write
    assert read_trace(path) == recs[:-1]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert read_trace(path) == [META]


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)
    with open(path, "a") as f:
        f.write('{"type": "span", "t": \n')
        f.write('{"type":"event","t":1,"name":"x","message":"y"}\n')
    with pytest.raises(ProtocolError, match=r"trace.jsonl:2: not a JSON line"):
        read_trace_dicts(path)


def test_invalid_record_names_line_and_key(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)
        w.write({"type": "memory", "t": 1.0, "source": "proc_status"})
    with pytest.raises(ProtocolError, match=r"^trace.jsonl:2: \$.rss_bytes: required key is missing$"):
        read_trace(path)


def test_first_record_must_be_meta(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(EventRecord(t=1.0, name="progress", message="x"))
    with pytest.raises(ProtocolError, match="first record must be meta"):
        read_trace(path)


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)

        def spam(name: str) -> None:
            for i in range(100):
                w.write(EventRecord(t=float(i), name=name, message="x" * 300))

        threads = [threading.Thread(target=spam, args=(f"e{k}",)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(read_trace(path)) == 301
