"""``python -m host.deploy`` end to end on the tiny config, and its bad inputs."""
from __future__ import annotations

import errno
import json

import pandas as pd
import pytest

from host import deploy
from host.protocol import STATUS_FILE, TRACE_FILE, read_trace


def _args(tmp_path, artifact_root, *extra):
    return ["--model", "tiny", "--size", "64", "--steps", "2", "--out", str(tmp_path / "runs"),
            "--artifacts", str(artifact_root), *extra]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, artifact_root):
    tmp = tmp_path_factory.mktemp("deploy")
    rc = deploy.main(_args(tmp, artifact_root, "--per-op", "--block-steps", "1"))
    assert rc == 0
    return tmp / "runs" / "host" / "latest"


def test_main_job_leaves_a_complete_run_folder(deployed):
    session = deployed.resolve()
    # the host profile's optimized set (device_profiles/host.toml: runtime.optimized) beside the baseline
    assert session.name.endswith("_baseline-vs-cpu")
    info = json.loads((session / "deploy.json").read_text())
    assert info["variants"] == ["baseline", "cpu"] and info["device"] == "host"
    for variant in ("baseline", "cpu"):
        run = session / variant
        assert json.loads((run / STATUS_FILE).read_text())["state"] == "ok"
        assert (run / "image.png").is_file() and (run / "models" / "manifest.json").is_file()
        spans = [r for r in read_trace(run / TRACE_FILE) if r.TYPE == "span"]
        cats = {s.cat for s in spans}
        assert {"load", "component", "step", "total", "block", "op"} <= cats
        assert {s.name for s in spans if s.cat == "block"} >= {"conv_in", "mid_block", "conv_out"}
    spans = pd.read_parquet(session / "tables" / "spans.parquet")
    assert set(spans["variant"]) == {"baseline", "cpu"}
    assert (session / "tables" / "memory.csv").is_file()
    trace = json.loads((session / "timeline.perfetto.json").read_text())
    assert any(e.get("ph") == "X" for e in trace["traceEvents"])
    html = (session / "report.html").read_text()
    assert "Per-layer latency" in html and "Sum of the per-block models" in html
    summary = (session / "summary.txt").read_text()
    assert "baseline" in summary and "cpu" in summary and "sum of UNet blocks" in summary


def test_an_int8_variant_runs_beside_its_fp32_reference(tmp_path, artifact_root):
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "baseline", "--variant", "+flash-int8",
                           "--no-profile-blocks"))
    assert rc == 0
    session = (tmp_path / "runs" / "host" / "latest").resolve()
    assert session.name.endswith("_baseline-vs-+flash-int8")
    run = session / "+flash-int8"
    assert json.loads((run / STATUS_FILE).read_text())["state"] == "ok"
    manifest = json.loads((run / "models" / "manifest.json").read_text())
    assert manifest["variant"] == {**manifest["variant"], "name": "+flash", "quantization": "int8"}
    spans = pd.read_parquet(session / "tables" / "spans.parquet")
    assert set(spans["variant"]) == {"baseline", "+flash-int8"}
    summary = (session / "summary.txt").read_text()
    assert "+flash-int8" in summary


@pytest.mark.parametrize("extra, culprit", [
    (["--device", "nokia3310"], "nokia3310"),
    (["--variant", "turbo"], "turbo"),
    (["--variant", "baseline-int4"], "baseline-int4"),
    (["--variant", "optimized-int8"], "variant 'optimized': Winograd cannot be combined with int8"),
    (["--scheduler", "plms"], "plms"),
    (["--steps", "0"], "--steps"),
    (["--size", "100"], "--size 100"),
    (["--engine", "mediapipe"], "--engine mediapipe"),
    (["--engine", "mediapipe", "--size", "512"], "--engine mediapipe: the MediaPipe Image Generator peer runs"),
    (["--checkpoint", "/nope/model.safetensors"], "/nope/model.safetensors"),
])
def test_bad_input_is_one_line(extra, culprit, tmp_path, artifact_root, capsys):
    rc = deploy.main(_args(tmp_path, artifact_root, *extra))
    err = capsys.readouterr().err
    assert rc == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and culprit in lines[0], err
    assert "Traceback" not in err


def test_phone_profile_with_no_phone_attached_fails_fast(tmp_path, artifact_root, capsys):
    rc = deploy.main(_args(tmp_path, artifact_root, "--device", "s23"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: s23:")


def test_a_full_disk_keeps_what_was_collected(tmp_path, artifact_root, capsys, monkeypatch):
    import host.runner

    real_run = host.runner.run
    calls = []

    def run_then_fill_disk(run_dir, on_record=None):
        calls.append(run_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / TRACE_FILE))
        return real_run(run_dir, on_record=on_record)

    monkeypatch.setattr(host.runner, "run", run_then_fill_disk)
    rc = deploy.main(_args(tmp_path, artifact_root, "--no-profile-blocks"))
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and str(calls[1]) in err
    first = calls[0]
    assert json.loads((first / STATUS_FILE).read_text())["state"] == "ok"
    assert read_trace(first / TRACE_FILE)
