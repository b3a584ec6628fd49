"""Small parts of the runner: the memory sampler and the block chain's feeding by name."""
from __future__ import annotations

import time

import numpy as np
import pytest

from host.protocol import BlockModelSpec, TensorSpec, TraceWriter, read_trace
from host.protocol.messages import MetaRecord
from host.runner import RunnerError
from host.runner.memory import MemorySampler, read_proc_status, reset_peak_rss
from host.runner.pipeline import run_blocks, to_uint8_hwc
from host.runner.tracing import Clock, Tracer

META = MetaRecord(t=0.0, run_id="r", runner="python-host", runner_version="1", device={"model": "m", "os": "o", "soc": "s"},
                  runtime={"accelerator": "cpu", "precision": "fp32", "threads": 1, "delegate": "xnnpack"})


def test_read_proc_status(tmp_path):
    rss, peak = read_proc_status()
    assert 0 < rss <= peak
    fake = tmp_path / "status"
    fake.write_text("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert read_proc_status(str(fake)) == (1024 * 1024, 2048 * 1024)
    assert read_proc_status(str(tmp_path / "missing")) is None


def test_reset_peak_rss_restarts_the_high_water_mark_from_the_resident_set(tmp_path):
    import mmap

    block = mmap.mmap(-1, 256 << 20)  # anonymous, returned to the system on close
    block.write(b"x" * (256 << 20))
    block.close()
    rss, peak = read_proc_status()
    assert peak - rss > 200 << 20
    assert reset_peak_rss() is True
    rss, peak = read_proc_status()
    assert peak - rss < 64 << 20
    assert reset_peak_rss(str(tmp_path / "no" / "clear_refs")) is False


def test_memory_sampler_writes_records_until_stopped(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.write(META)
        sampler = MemorySampler(Tracer(w, Clock()), 0.002).start()
        time.sleep(0.05)
        sampler.stop()
        sampler.stop()  # idempotent
        n = len(read_trace(path))
        time.sleep(0.01)
        assert len(read_trace(path)) == n  # nothing after stop
    mem = read_trace(path)[1:]
    assert len(mem) >= 3 and all(r.TYPE == "memory" and r.source == "proc_status" for r in mem)


def test_memory_is_sampled_while_the_gil_is_held(tmp_path):
    # LiteRT's bindings keep the GIL for a whole invocation; list.sort does too. A sampling thread would get
    # no sample in while it runs; the helper process keeps sampling and writing.
    path = tmp_path / "trace.jsonl"
    data = np.random.default_rng(0).random(3_000_000).tolist()
    with TraceWriter(path) as w:
        w.write(META)
        tracer = Tracer(w, Clock())
        sampler = MemorySampler(tracer, 0.01).start()
        time.sleep(0.3)  # the helper's interpreter starts
        t0 = tracer.now()
        data.sort()
        t1 = tracer.now()
        # read at once: records relayed through a thread of this process would still be waiting for the GIL
        inside = [r for r in read_trace(path)[1:] if t0 < r.t < t1]
        sampler.stop()
    assert t1 - t0 > 0.3, "the GIL-holding call was too short to tell"
    assert len(inside) >= 0.5 * (t1 - t0) / 0.01, (len(inside), t1 - t0)
    assert all(r.rss_bytes > 0 and r.peak_bytes >= r.rss_bytes for r in inside)
    times = [r.t for r in read_trace(path)[1:]]
    assert times == sorted(times)


def test_memory_sampler_falls_back_to_a_thread_on_another_status_file(tmp_path):
    status = tmp_path / "status"
    status.write_text("VmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    with TraceWriter(tmp_path / "trace.jsonl") as w:
        w.write(META)
        sampler = MemorySampler(Tracer(w, Clock()), 0.002, path=str(status)).start()
        time.sleep(0.03)
        sampler.stop()
        assert sampler._proc is None
    mem = read_trace(tmp_path / "trace.jsonl")[1:]
    assert len(mem) >= 3 and {r.rss_bytes for r in mem} == {1024 * 1024}


class _Add:
    """Stands in for a LiteRtModel: y = a + b."""

    def run(self, **kw):
        return {"y": kw["a"] + kw["b"]}


def _spec(name, ins, outs):
    t = lambda n: TensorSpec(n, (1,), "float32")  # noqa: E731
    return BlockModelSpec(name=name, file=f"{name}.tflite", signature=name, inputs=tuple(map(t, ins)),
                          outputs=tuple(map(t, outs)))


def test_block_chain_feeds_by_name_and_names_missing_inputs(tmp_path):
    with TraceWriter(tmp_path / "t.jsonl") as w:
        tracer = Tracer(w, Clock())
        one = np.ones(1, np.float32)
        pool = run_blocks([(_spec("first", ["a", "b"], ["y"]), _Add())], {"a": one, "b": one}, tracer, step=0, repeat=0)
        assert pool["y"] == 2
        with pytest.raises(RunnerError, match="block second: input 'zzz'"):
            run_blocks([(_spec("first", ["a", "b"], ["y"]), _Add()), (_spec("second", ["y", "zzz"], ["y"]), _Add())],
                       {"a": one, "b": one}, tracer, step=0, repeat=0)


def test_png_conversion_rounds_and_clips():
    img = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, 0.5], np.float32).reshape(1, 3, 1, 2)
    out = to_uint8_hwc(img)
    assert out.shape == (1, 2, 3)
    assert out.transpose(2, 0, 1).reshape(-1).tolist() == [0, 0, 128, 255, 255, 191]
