"""host.hostperf at tiny sizes: positive finite figures, fp32 enforced, --write touches only [roofline]."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from host import hostperf
from host.errors import HarnessError
from host.profiles import load_profile

REPO_PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"
TINY = ["--gemm-n", "96", "--gemm-repeats", "2", "--stream-elems", "65536", "--stream-repeats", "2"]


def _finite_positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_measure_tiny_returns_positive_finite_numbers():
    perf = hostperf.measure(threads=2, gemm_n=64, gemm_repeats=2, stream_elems=4096, stream_repeats=2)
    assert perf.gemm.n == 64 and perf.gemm.threads == 2
    assert _finite_positive(perf.gemm.flops_per_s) and _finite_positive(perf.gemm.best_s)
    assert 0 <= perf.gemm.rel_err <= hostperf.FP32_REL_TOL
    assert _finite_positive(perf.stream.copy_bytes_per_s) and _finite_positive(perf.stream.triad_bytes_per_s)
    assert perf.stream.array_bytes == 4 * 4096
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", perf.date)
    text = hostperf.report(perf)
    assert "GFLOP/s" in text and "GB/s" in text


def test_settings_are_restored():
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    mkldnn = torch.backends.mkldnn.matmul.fp32_precision
    with hostperf.strict_fp32(1):
        assert torch.get_num_threads() == 1
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert torch.get_num_threads() == threads
    assert torch.get_float32_matmul_precision() == precision
    assert torch.backends.mkldnn.matmul.fp32_precision == mkldnn


def test_fp32_check_rejects_reduced_precision():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
    assert hostperf.check_fp32(a, b, a @ b) < 1e-6
    with pytest.raises(HarnessError, match="not fp32-accurate"):
        hostperf.check_fp32(a, b, (a.bfloat16() @ b.bfloat16()).float())
    with pytest.raises(HarnessError, match="not fp32-accurate"):  # oneDNN's bf16 fpmath mode: inputs rounded
        hostperf.check_fp32(a, b, a.bfloat16().float() @ b.bfloat16().float())


def test_sizes_are_validated():
    with pytest.raises(HarnessError, match="gemm n must be >= 1"):
        hostperf.measure_gemm(n=0)
    with pytest.raises(HarnessError, match="stream repeats must be >= 1"):
        hostperf.measure_stream(elems=16, repeats=0)


def test_round_sig():
    assert hostperf.round_sig(131_042_775_123.4) == 1.31e11
    assert hostperf.round_sig(12_583_000_000.0) == 1.26e10


def test_main_prints_figures(capsys):
    assert hostperf.main(TINY) == 0
    out = capsys.readouterr().out
    assert "fp32 GEMM   96x96" in out and "bandwidth   triad" in out


def test_main_xnnpack_prints_the_runtime_rate_beside_the_peak(monkeypatch, capsys):
    monkeypatch.setattr(hostperf, "XNNPACK_GEMM_SHAPES", ((48, 32, 40), (16, 64, 8)))
    assert hostperf.main([*TINY, "--xnnpack"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("XNNPACK"))
    assert re.search(r"m x k x n GFLOP/s: 48x32x40 [\d.]+, 16x64x8 [\d.]+\): [\d.]+ GFLOP/s = \d+% of the fp32 GEMM", line)
    assert hostperf.main(TINY) == 0 and "XNNPACK" not in capsys.readouterr().out  # only when asked


def test_main_write_updates_only_roofline(tmp_path, capsys):
    path = tmp_path / "host.toml"
    shutil.copy(REPO_PROFILES / "host.toml", path)
    before, original = load_profile(path), path.read_text(encoding="utf-8")
    assert hostperf.main(["--write", str(path), *TINY]) == 0
    after = load_profile(path)
    for attr in ("device", "match", "hardware", "runtime", "references"):
        assert getattr(after, attr) == getattr(before, attr)
    src = after.roofline.source
    assert src.startswith(f"measured on this host by `python -m host.hostperf --write {path} --gemm-n 96")
    assert re.search(r"on \d{4}-\d{2}-\d{2}: peak = fp32 torch.matmul 96x96, 2 threads, best of 2", src)
    # figures rounded to 3 significant digits
    for x in (after.roofline.peak_flops, after.roofline.mem_bandwidth_bytes_per_s):
        assert _finite_positive(x) and x == float(f"{x:.2e}")
    assert path.read_text(encoding="utf-8").startswith(original.split("[roofline]")[0])
    assert f"wrote [roofline] of {path}" in capsys.readouterr().out


def test_main_write_refuses_non_host_profile(tmp_path, capsys):
    path = tmp_path / "s23.toml"
    shutil.copy(REPO_PROFILES / "s23.toml", path)
    original = path.read_text(encoding="utf-8")
    assert hostperf.main(["--write", str(path), *TINY]) == 1
    assert "host measurements go into a host profile only" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == original


def test_xnnpack_gemm_runs_a_fully_connected_model_and_checks_its_product():
    shapes = ((64, 48, 40), (32, 96, 16))
    r = hostperf.measure_xnnpack_gemm(shapes=shapes, repeats=2, threads=2)
    assert [s[:3] for s in r.shapes] == list(shapes)
    assert all(_finite_positive(s[3]) for s in r.shapes)
    best = max(2.0 * m * k * n / t for m, k, n, t in r.shapes)
    assert r.flops_per_s == pytest.approx(best) and r.best_shape in shapes
    assert 0 <= r.rel_err <= hostperf.FP32_REL_TOL


def test_fully_connected_model_computes_x_times_w_transposed(tmp_path):
    import numpy as np
    from ai_edge_litert.compiled_model import CompiledModel

    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 7), dtype=np.float32)
    x = rng.standard_normal((3, 7), dtype=np.float32)
    path = tmp_path / "fc.tflite"
    path.write_bytes(hostperf.fully_connected_model(3, 7, 5, w))
    m = CompiledModel.from_file(str(path))
    assert m.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["y"]}}
    ins, outs = m.create_input_buffers(0), m.create_output_buffers(0)
    ins[0].write(x)
    m.run_by_index(0, ins, outs)
    y = np.asarray(outs[0].read(15, np.float32)).reshape(3, 5)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(HarnessError, match=r"weights: shape \(7, 5\), expected \(5, 7\)"):
        hostperf.fully_connected_model(3, 7, 5, w.T)


def test_xnnpack_gemm_sizes_are_validated():
    with pytest.raises(HarnessError, match="gemm k must be >= 1"):
        hostperf.measure_xnnpack_gemm(shapes=((8, 0, 8),), repeats=1)
    with pytest.raises(HarnessError, match="no GEMM shapes"):
        hostperf.measure_xnnpack_gemm(shapes=(), repeats=1)


def test_xnnpack_gemm_rejects_a_product_that_is_not_fp32(monkeypatch):
    monkeypatch.setattr(hostperf, "fp32_rel_error", lambda a, b, c, rows=8: 3e-3)  # what bf16 inputs give
    with pytest.raises(HarnessError, match=r"XNNPACK's 16x32x8 FULLY_CONNECTED is not fp32-accurate \(relative error 3.0e-03"):
        hostperf.measure_xnnpack_gemm(shapes=((16, 32, 8),), repeats=1)
