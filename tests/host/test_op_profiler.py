"""host.op_profiler: LiteRT C-API per-op profiling on the tiny builds, checked against host.runtime."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from host.errors import HarnessError
from host.op_profiler import OpProfilerUnavailable, profile_ops
from host.runtime import LiteRtModel


@pytest.fixture(scope="module")
def build_dir(tiny_builds):
    _, path = tiny_builds.get("baseline")
    return path


def _inputs(model: LiteRtModel, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in model.inputs.items():
        if np.issubdtype(np.dtype(dtype), np.floating):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 10, shape).astype(dtype)
    return out


def _libc_path() -> str | None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    found = re.search(r"(/\S*/libc\.so[.0-9]*)$", maps.read_text(), re.M)
    return found.group(1) if found else None


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_xnnpack_events_and_outputs(build_dir, component):
    path = str(build_dir / f"{component}.tflite")
    ref_model = LiteRtModel(path, threads=2)
    feed = _inputs(ref_model)
    ref = ref_model.run(**feed)

    prof = profile_ops(path, feed, threads=2, runs=2)

    assert prof.runs == 2 and len(prof) == len(prof.events) > 0
    assert all(e.elapsed_us >= 0 for e in prof)
    assert all(e.start_us is None or e.start_us >= 0 for e in prof)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.events[0].elapsed_us = 1
    for run in range(2):
        ops = prof.op_events(run)
        assert ops, f"no op events in run {run}"
        # XNNPACK takes (nearly) everything: its operators are reported one event each.
        assert sum(e.is_delegated for e in ops) >= len(ops) // 2
        assert all(e.partition is not None and e.node_index is not None for e in ops if e.is_delegated)
        assert all(e.node_index is not None and e.start_us is not None for e in ops if not e.is_delegated)
        op_us, wall = prof.op_time_us(run), prof.run_wall_us[run]
        assert 0.05 * wall <= op_us <= 1.5 * wall + 200, (op_us, wall)
        invoke = prof.invoke_us(run)
        assert invoke is not None and op_us <= invoke * 1.1 + 100 and invoke <= wall * 1.1 + 100
    assert set(prof.outputs) == set(ref)
    for name in ref:
        assert prof.outputs[name].shape == ref[name].shape
        assert _rel_err(prof.outputs[name], ref[name]) < 1e-5, name


def test_builtin_mode_is_per_tflite_node(build_dir):
    path = str(build_dir / "vae_decoder.tflite")
    ref_model = LiteRtModel(path)
    feed = _inputs(ref_model, seed=1)
    ref = ref_model.run(**feed)

    prof = profile_ops(path, feed, threads=2, runs=1, kernel_mode="builtin")

    ops = prof.op_events(0)
    assert ops and not any(e.is_delegated for e in ops)
    assert all(e.event_type == "OPERATOR_INVOKE_EVENT" and e.tag.isupper() for e in ops)
    assert [e.node_index for e in ops] == list(range(len(ops)))  # every node, in order
    assert "CONV_2D" in prof.by_op_type(0)
    starts = [e.start_us for e in ops]
    assert starts == sorted(starts)
    for name in ref:
        assert _rel_err(prof.outputs[name], ref[name]) < 1e-5, name


def test_bad_inputs_are_harness_errors(build_dir):
    path = str(build_dir / "vae_decoder.tflite")
    feed = _inputs(LiteRtModel(path))
    (name, arr), = feed.items()
    with pytest.raises(HarnessError, match="missing input"):
        profile_ops(path, {})
    with pytest.raises(HarnessError, match="shape"):
        profile_ops(path, {name: arr[..., :-1]})
    with pytest.raises(HarnessError, match="unknown input"):
        profile_ops(path, {**feed, "nope": arr})
    with pytest.raises(HarnessError, match="kernel_mode"):
        profile_ops(path, feed, kernel_mode="gpu")


def test_unavailable_library_raises_cleanly(tmp_path, build_dir):
    path = str(build_dir / "vae_decoder.tflite")
    feed = _inputs(LiteRtModel(path))
    with pytest.raises(OpProfilerUnavailable, match="not found") as info:
        profile_ops(path, feed, library_path=str(tmp_path / "libLiteRt.so"))
    assert isinstance(info.value, HarnessError) and "\n" not in str(info.value)

    libc = _libc_path()
    if libc:  # a loadable library that lacks the LiteRT C API
        with pytest.raises(OpProfilerUnavailable, match="does not export LiteRt") as info:
            profile_ops(path, feed, library_path=libc)
        assert "\n" not in str(info.value)
